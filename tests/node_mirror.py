"""The machine's own node served as nodejs.org serves it, on a loopback port (stdlib only).

nodeenv downloads ``index.json`` (to resolve a partial version such as 20) and
``vX.Y.Z/node-vX.Y.Z-linux-x64.tar.gz`` from the base URL its ``--mirror``
names; pikud passes ``NODEENV_MIRROR`` there. This machine cannot reach
nodejs.org, so the tests serve the node on PATH instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.net import HttpServer

# nodeenv comes with the test tools (pyproject's test extra), beside the test's python.
NODEENV = (shutil.which("nodeenv", path=str(Path(sys.executable).parent))
           or shutil.which("nodeenv"))


@dataclass
class NodeMirror:
    url: str
    version: str                    # "20.20.2": the version of the node on PATH
    requests: list[str]             # the paths asked for, in order


def node_archive(node: str, npm: str, version: str) -> bytes:
    """``node-vX.Y.Z-linux-x64/`` with bin/node (a copy of ``node``), bin/npm, bin/npx and
    lib/node_modules/npm (the folder ``npm`` runs from).

    Not compressed (nodeenv opens it with tarfile's "r:*"): gzip would cost
    seconds on a 100 MB binary.
    """
    top = f"node-v{version}-linux-x64"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as archive:
        archive.add(os.path.realpath(node), arcname=f"{top}/bin/node")
        archive.add(Path(os.path.realpath(npm)).parents[1], arcname=f"{top}/lib/node_modules/npm")
        for name in ("npm", "npx"):
            link = tarfile.TarInfo(f"{top}/bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, f"../lib/node_modules/npm/bin/{name}-cli.js"
            archive.addfile(link)
    return data.getvalue()


@contextlib.contextmanager
def node_mirror() -> Iterator[NodeMirror]:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, "node and npm are needed to serve them"
    reported = subprocess.run([node, "--version"], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    version = reported.removeprefix("v")
    files = {
        f"/v{version}/node-v{version}-linux-x64.tar.gz": node_archive(node, npm, version),
        "/index.json": json.dumps([{"version": reported, "lts": False,
                                    "files": ["linux-x64"]}]).encode(),
    }
    requests: list[str] = []

    def respond(request: BaseHTTPRequestHandler) -> tuple[int, str, bytes]:
        requests.append(request.path)
        body = files.get(request.path)
        return (200, "application/octet-stream", body) if body else (404, "text/plain", b"")

    server = HttpServer(respond)
    try:
        yield NodeMirror(server.url(""), version, requests)
    finally:
        server.close()


def nodeenv_alone(folder: Path) -> str:
    """A PATH with nodeenv and no node at all: a server where nodeenv must install it."""
    assert NODEENV is not None, "nodeenv is a test dependency: pip install -e '.[test]'"
    folder.mkdir()
    (folder / "nodeenv").symlink_to(NODEENV)
    return str(folder)
