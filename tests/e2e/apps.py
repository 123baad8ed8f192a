"""Sample apps for the e2e tests: a git work tree per app, a local wheel for pip."""

from __future__ import annotations

import base64
import hashlib
import socket
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WEB_APP = '''\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
import tinypkg

VERSION = open("VERSION").read().strip()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{VERSION} tinypkg={tinypkg.VALUE}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


print("serving", VERSION, flush=True)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def make_wheel(directory: Path, name: str = "tinypkg", value: int = 42) -> Path:
    """A minimal pure-Python wheel, so pip really installs without the network."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-1.0-py3-none-any.whl"
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: pikud-tests\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            data = text.encode()
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


def git(work: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["git", "-C", str(work), *args], capture_output=True, text=True,
                            env=env, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def push(work: Path, env: Mapping[str, str], check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    """``git push piku main`` from ``work`` (a local remote, or ssh with its ``env``);
    with ``check``, a failed push fails the test with git's output."""
    return git(work, "push", "piku", "main", env=dict(env), check=check)


def committed(work: Path, files: Mapping[str, str], message: str) -> Path:
    """``work`` with ``files`` written (a repository on main, made if missing) and
    everything in it committed."""
    work.mkdir(parents=True, exist_ok=True)
    if not (work / ".git").exists():
        git(work, "init", "--quiet", "--initial-branch=main")
        git(work, "config", "user.email", "tester@example.invalid")
        git(work, "config", "user.name", "Tester")
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "--allow-empty", "-m", message)
    return work


def python_app(work: Path, version: str = "v1", procfile: str | None = None,
               extra: dict[str, str] | None = None) -> Path:
    """A web app with a requirements.txt naming a local wheel; committed on main."""
    make_wheel(work / "wheels")
    return committed(work, {
        "requirements.txt": "./wheels/tinypkg-1.0-py3-none-any.whl\n",
        "server.py": WEB_APP,
        "VERSION": version + "\n",
        "Procfile": procfile or "web: python3 server.py\n",
        "ENV": "PIKU_START_SECS=0.5\nPIKU_STOP_TIMEOUT=3\n",
        **(extra or {}),
    }, f"version {version}")


def get(where: int | str, timeout: float = 5) -> str:
    """The body of ``GET /`` from a loopback port, or a unix socket's path."""
    if isinstance(where, int):
        with urllib.request.urlopen(f"http://127.0.0.1:{where}/", timeout=timeout) as response:
            return response.read().decode()
    with socket.socket(socket.AF_UNIX) as sock:      # HTTP/1.0: the answer ends at close
        sock.settimeout(timeout)
        sock.connect(where)
        sock.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", head
    return body.decode()


def address(process: dict[str, Any]) -> int | str:
    """Where a process of ``GET /apps/APP`` serves: its unix socket, else its port."""
    return process["socket"] or process["port"]


def local_remote(work: Path, app: str) -> None:
    """Point the work tree's `piku` remote at this machine's pikud, without ssh."""
    git(work, "remote", "add", "piku", app)
    git(work, "config", "remote.piku.receivepack",
        f"{sys.executable} -m pikud.cli git-receive-pack")
