"""Fixtures shared by the integration tests: a real pikud, real apps, deadlines.

Every wait polls with a deadline; every daemon started here is stopped at
teardown, and the teardown fails the test if any app process outlived it.

The property tests run under the hypothesis profile HYPOTHESIS_PROFILE names:
"ci" (the default: the same examples on every run, nothing saved) or "long"
(20 times as many examples, new ones on each run) to fuzz for longer locally.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from pikud import crondeny, identity
from pikud.control.client import Client
from pikud.identity import Account
from pikud.procman.children import find_processes
from tests.processes import alive, proc_stat  # noqa: F401 (the tests import them from here)
from tests.waiting import wait_for

STARTUP_DEADLINE = 15.0

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          database=None, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None, database=None,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(count: int) -> int:
    """``count`` examples under the "ci" profile, scaled up as much under a longer one."""
    return max(1, count * settings.default.max_examples // 100)


def nofile(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn: the daemon starts with these open-files limits."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def app_processes(root: Path) -> set[int]:
    """Pids of app processes started by a daemon of ``root`` that are still alive."""
    return find_processes((b"PIKU_PROCESS=", f"PIKU_ROOT={root}".encode()))


# argv -> (argv to run, more environment, descriptors to pass)
Launch = Callable[[list[str]], tuple[list[str], dict[str, str], tuple[int, ...]]]


class Pikud:
    """One real `pikud serve` in its own PIKU_ROOT."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(root / "pikud.sock", timeout=30)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIKU")}
        env["PIKU_ROOT"] = str(self.root)
        env["PIKU_HTTP_ADDRESS"] = "127.0.0.1:0"          # the built-in router, on a free port
        env["PIKU_PROXY"] = "builtin"
        return env

    def start(self, *args: str, extra_env: dict[str, str] | None = None,
              preexec_fn: Callable[[], None] | None = None, cwd: Path | None = None,
              launch: Launch | None = None) -> Pikud:
        """``preexec_fn`` runs in the child before the exec (e.g. to set an rlimit); ``cwd``
        away from this checkout lets PYTHONPATH choose the pikud it runs; ``launch`` turns
        the argv into the one to run, with more environment and the descriptors to pass
        (the systemd stand-in's)."""
        sock = self.root / "pikud.sock"
        argv = [sys.executable, "-m", "pikud", "serve", *args]
        env, fds = dict(self.env, **(extra_env or {})), tuple[int, ...]()
        if launch is not None:
            argv, more, fds = launch(argv)
            env.update(more)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
                pass_fds=fds, cwd=cwd)
        wait_for(lambda: sock.exists() and self._ready(), STARTUP_DEADLINE, "pikud to listen")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.output()
        try:
            self.client.request("GET", "/status")
            return True
        except Exception:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def http_port(self) -> int:
        """The port the built-in router got."""
        return int(self.api("GET", "/status")["http"].rsplit(":", 1)[1])

    def get(self, app: str, path: str = "/", timeout: float = 15,
            host: str | None = None) -> tuple[int, str]:
        """(status, body) of one request to ``app`` (or ``host``) through the built-in router."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": host or f"{app}.localhost"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.client.request(method, path, body)

    def cli(self, *args: str, check: bool = False, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "pikud.cli", *args], env=self.env,
                                capture_output=True, text=True, input=input, timeout=timeout)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def add_app(self, name: str, procfile: str, env: str | None = None) -> Path:
        app = self.root / "apps" / name
        app.mkdir(parents=True, exist_ok=True)
        (app / "Procfile").write_text(procfile)
        if env is not None:
            (app / "ENV").write_text(env)
        return app

    def processes(self, app: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/apps/{app}")["processes"])

    def process(self, app: str, name: str) -> dict[str, Any]:
        return next(p for p in self.processes(app) if p["name"] == name)

    def wait_state(self, app: str, name: str, state: str, timeout: float = 15.0
                   ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            proc = self.process(app, name)
            return proc if proc["state"] == state else None
        return wait_for(check, timeout, f"{name} to be {state}")  # type: ignore[no-any-return]

    def log_text(self, app: str, source: str) -> str:
        path = self.root / "logs" / app / f"{source}.log"
        return path.read_text(errors="replace") if path.exists() else ""


# Fast policy values for tests: they are settings, so nothing is faked.
FAST = ("PIKU_START_SECS=0.3\nPIKU_BACKOFF_BASE=0.1\nPIKU_BACKOFF_MAX=0.5\n"
        "PIKU_STOP_TIMEOUT=3\n")


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A PIKU_ROOT short enough for unix socket paths (108 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="pk-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def deny_files_restored() -> Iterator[None]:
    """/etc/cron.deny and /etc/at.deny as they were before a test whose daemon runs as root
    (it adds each app user it makes, crondeny.py): the users go at teardown, so do their
    lines, and a file that was missing."""
    before = {entry.deny: entry.deny.read_bytes() if entry.deny.exists() else None
              for entry in crondeny.DENY_FILES}
    try:
        yield
    finally:
        for path, text in before.items():
            if text is not None:
                path.write_bytes(text)
            else:
                path.unlink(missing_ok=True)


@pytest.fixture
def www_data() -> str:
    """nginx's workers' user on Debian; tests of what it may reach skip without it."""
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data user here")
    return "www-data"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder under /tmp that others (nginx's workers) may enter: pytest's tmp_path sits
    in a 0700 one."""
    folder = Path(tempfile.mkdtemp(prefix="pkn-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pikud_factory(short_root: Path, tmp_path: Path) -> Iterator[Callable[..., Pikud]]:
    made: list[Pikud] = []

    def make(*args: str, extra_env: dict[str, str] | None = None,
             preexec_fn: Callable[[], None] | None = None, cwd: Path | None = None) -> Pikud:
        daemon = Pikud(short_root, tmp_path / "pikud.log")
        made.append(daemon)
        return daemon.start(*args, extra_env=extra_env, preexec_fn=preexec_fn, cwd=cwd)

    yield make
    for daemon in made:
        if daemon.proc is not None:
            code = daemon.stop()
            assert code == 0, f"pikud exited {code}:\n{daemon.output()}"
    left = app_processes(short_root)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def pikud(pikud_factory: Callable[..., Pikud]) -> Pikud:
    return pikud_factory()


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def app_users(open_dir: Path) -> Iterator[Account]:
    """This process's identity as a root pikud with app users (identity.py), whose deploy
    user is ``nobody`` with a home of its own (``open_dir``/home, 0777); put back after."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("app users need root and setpriv")
    nobody = pwd.getpwnam("nobody")
    home = open_dir / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    deploy = Account(nobody.pw_name, nobody.pw_uid, nobody.pw_gid, str(home))
    identity.use(identity.Identity(deploy, shutil.which("setpriv") or "setpriv"))
    try:
        yield deploy
    finally:
        identity.use(identity.Identity())
