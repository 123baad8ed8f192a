"""git push over a real sshd to a real daemon: builds, rejections, releases, rollback."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from pikud.procman.children import descendants
from tests.conftest import Pikud, alive, wait_for
from tests.e2e.apps import WEB_APP, address, committed, get, git, local_remote, push, python_app
from tests.e2e.conftest import SshServer


def ssh_push(ssh: SshServer, work: Path, app: str, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
    git(work, "remote", "remove", "piku", check=False)
    git(work, "remote", "add", "piku", f"{ssh.user}@127.0.0.1:{app}")
    return push(work, ssh.git_env(), check)


def web(pikud: Pikud, app: str) -> dict:
    return wait_for(lambda: next((p for p in pikud.processes(app) if p["kind"] == "web"
                                  and p["state"] == "RUNNING"), None), 15, f"{app} web")


def test_first_push_builds_and_runs_then_a_code_push_reuses_the_env(
        pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    work = python_app(tmp_path / "hello", "v1")
    first = ssh_push(sshd, work, "hello")
    out = first.stderr
    assert "remote: -----> Checking out" in out and "Building with the python runtime" in out
    assert "tinypkg" in out                                   # pip really ran
    assert "-----> hello is live: release 1" in out
    old = web(pikud, "hello")
    assert get(old["port"]) == "v1 tinypkg=42"

    python_app(work, "v2")                                     # code only
    second = ssh_push(sshd, work, "hello").stderr
    assert "unchanged" in second and "tinypkg-1.0" not in second.split("Building")[1]
    new = web(pikud, "hello")
    assert get(new["port"]) == "v2 tinypkg=42"
    # The old generation retires after the push has returned.
    wait_for(lambda: not alive(old["pid"]), 20, "the old generation to retire")
    assert "retired: hello:web.1" in pikud.log_text("hello", "pikud")
    assert [p["name"] for p in pikud.processes("hello")] == ["hello:web.1"]
    assert (pikud.root / "apps/hello").resolve() == pikud.root / "releases/hello/2"


def test_rejected_pushes_leave_the_running_release_serving(
        pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    work = python_app(tmp_path / "steady", "good")
    ssh_push(sshd, work, "steady")
    running = web(pikud, "steady")
    cases = {
        "build": {"requirements.txt": "./wheels/missing-1.0-py3-none-any.whl\n"},
        "release": {"Procfile": "web: python3 server.py\nrelease: echo migrating; exit 3\n"},
        "procfile": {"Procfile": "web python3 server.py\n"},
        "dies at once": {"Procfile": "web: python3 -c 'raise SystemExit(1)'\n"},
        "never ready": {"Procfile": "web: sleep 300\n",
                        "ENV": "PIKU_START_SECS=0.3\nPIKU_READY_TIMEOUT=1\n"},
        "health 500": {"ENV": "PIKU_START_SECS=0.3\nPIKU_HEALTHCHECK=/h\nPIKU_READY_TIMEOUT=1\n",
                       "VERSION": "broken\n",
                       "server.py": WEB_APP.replace("self.send_response(200)",
                                                    "self.send_response(500)")},
    }
    for label, files in cases.items():
        python_app(work, f"bad-{label}", extra=files)
        result = ssh_push(sshd, work, "steady", check=False)
        assert result.returncode != 0, label
        assert "[remote rejected]" in result.stderr, (label, result.stderr)
        assert get(running["port"]) == "good tinypkg=42", label
        assert pikud.process("steady", "steady:web.1")["pid"] == running["pid"], label
        git(work, "reset", "--quiet", "--hard", "HEAD~1")
    assert "failed (exit status 3)" in push_output(sshd, work, "steady", "release")
    releases = pikud.api("GET", "/apps/steady/releases")["releases"]
    assert [r["number"] for r in releases] == [1]
    assert sorted(p.name for p in (pikud.root / "releases/steady").iterdir()) == ["1"]


def push_output(ssh: SshServer, work: Path, app: str, label: str) -> str:
    python_app(work, f"again-{label}", extra={
        "Procfile": "web: python3 server.py\nrelease: echo migrating; exit 3\n"})
    result = ssh_push(ssh, work, app, check=False)
    git(work, "reset", "--quiet", "--hard", "HEAD~1")
    return result.stderr


def test_releases_and_rollback(pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    work = python_app(tmp_path / "rb", "one")
    ssh_push(sshd, work, "rb")
    python_app(work, "two")
    ssh_push(sshd, work, "rb")
    listing = sshd.ssh("releases", "rb")
    assert listing.returncode == 0, listing.stderr
    assert "*2" in listing.stdout.replace(" ", "") and "tester@laptop" in listing.stdout
    back = sshd.ssh("rollback", "rb")
    assert back.returncode == 0, back.stderr
    assert "is on release 1" in back.stdout
    assert get(web(pikud, "rb")["port"]) == "one tinypkg=42"
    forward = sshd.ssh("rollback", "rb", "2")
    assert forward.returncode == 0 and get(web(pikud, "rb")["port"]) == "two tinypkg=42"
    bad = sshd.ssh("rollback", "rb", "9")
    assert bad.returncode == 1 and "no release 9" in bad.stderr


def pushes_at_once(ssh: SshServer, first: tuple[Path, str], second: tuple[Path, str],
                   started: Path) -> list[subprocess.CompletedProcess[str]]:
    """Start the first push, and the second once the first is building."""
    results: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(target=lambda: results.append(git(
        first[0], "push", "piku", first[1], env=ssh.git_env(), check=False)))
    thread.start()
    wait_for(started.exists, 120, "the first push to start building")
    results.append(git(second[0], "push", "--force", "piku", second[1], env=ssh.git_env(),
                       check=False))
    thread.join(300)
    return results


def test_pushes_to_one_app_are_serialized_and_to_two_apps_run_together(
        pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    a, b = python_app(tmp_path / "a", "a1"), python_app(tmp_path / "b", "b1")
    for work, app in ((a, "a"), (b, "b")):
        git(work, "remote", "add", "piku", f"{sshd.user}@127.0.0.1:{app}")
    both = pushes_at_once(sshd, (a, "main"), (b, "main"), pikud.root / "releases/a/1")
    assert [r.returncode for r in both] == [0, 0], [r.stderr for r in both]
    assert not any("Waiting for another action" in r.stderr for r in both)

    a2 = tmp_path / "a2"
    git(tmp_path, "clone", "--quiet", str(a), str(a2))
    git(a2, "remote", "add", "piku", f"{sshd.user}@127.0.0.1:a")
    slow = {"Procfile": "web: python3 server.py\nrelease: sleep 2\n"}     # holds the app's lock
    python_app(a, "a-main", extra=slow)
    python_app(a2, "a-other")
    first, second = pushes_at_once(sshd, (a, "main"), (a2, "main:other"),
                                   pikud.root / "releases/a/2")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "Waiting for another action on a to finish" in second.stderr
    assert get(web(pikud, "a")["port"]) == "a-other tinypkg=42"

    # A push that waited while another one moved its branch is refused, not deployed.
    python_app(a, "a-main-2", extra=slow)
    python_app(a2, "a-stale")
    first, stale = pushes_at_once(sshd, (a, "main"), (a2, "main"), pikud.root / "releases/a/4")
    assert first.returncode == 0, first.stderr
    assert stale.returncode != 0 and "while this push waited" in stale.stderr, stale.stderr
    assert get(web(pikud, "a")["port"]) == "a-main-2 tinypkg=42"


def test_stock_client_forms_over_ssh(pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    ssh_push(sshd, python_app(tmp_path / "cmd", "c1"), "cmd")
    ps = sshd.ssh("ps", "cmd")
    assert ps.returncode == 0 and "web.1" in ps.stdout and "RUNNING" in ps.stdout
    run = sshd.ssh("run", "cmd", "test", "-t", "0", "&&", "echo", "tty", "$APP", tty=True)
    assert run.returncode == 0 and "tty cmd" in run.stdout, run.stdout + run.stderr
    plain = sshd.ssh("run", "cmd", "cat", "VERSION")
    assert plain.stdout.strip() == "c1"
    for words in (("--", "cat", "VERSION"), ("cat", "--", "VERSION")):    # piku's two forms
        assert sshd.ssh("run", "cmd", *words).stdout.strip() == "c1"
    assert "Usage" in sshd.ssh().stdout                    # no command: the help


def test_clone_from_the_same_remote(pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    ssh_push(sshd, python_app(tmp_path / "src", "cl"), "cl")
    clone = subprocess.run(["git", "clone", "--quiet", f"{sshd.user}@127.0.0.1:cl",
                            str(tmp_path / "copy")], env=sshd.git_env(), capture_output=True,
                           text=True, timeout=60)
    assert clone.returncode == 0, clone.stderr
    assert (tmp_path / "copy/VERSION").read_text().strip() == "cl"


def test_malformed_key_is_refused_and_changes_nothing(pikud: Pikud, sshd: SshServer,
                                                       tmp_path: Path) -> None:
    keys = sshd.home / ".ssh/authorized_keys"
    before = keys.read_bytes()
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 not-base64!! someone\n")
    result = pikud.cli("setup:ssh", str(bad))
    assert result.returncode != 0 and "base64" in result.stderr.lower()
    assert keys.read_bytes() == before
    assert "NAME=tester@laptop" in before.decode()


def test_local_remote_without_ssh_and_old_releases_are_pruned(pikud: Pikud,
                                                              tmp_path: Path) -> None:
    env = "PIKU_START_SECS=0.3\nPIKU_KEEP_RELEASES=2\n"
    work = python_app(tmp_path / "local", "l1", extra={"ENV": env})
    local_remote(work, "local")
    result = push(work, pikud.env)
    assert "local is live: release 1" in result.stderr
    assert get(web(pikud, "local")["port"]) == "l1 tinypkg=42"
    first_env = {p.name for p in (pikud.root / "envs/local").glob("python-*")}
    python_app(work, "l2", extra={"ENV": env, "requirements.txt":
                                  "./wheels/tinypkg-1.0-py3-none-any.whl\n# new env\n"})
    push(work, pikud.env)
    python_app(work, "l3", extra={"ENV": env, "requirements.txt":
                                  "./wheels/tinypkg-1.0-py3-none-any.whl\n# newer env\n"})
    out = push(work, pikud.env).stderr
    assert "Pruned releases 1" in out
    assert [r["number"] for r in pikud.api("GET", "/apps/local/releases")["releases"]] == [3, 2]
    assert sorted(p.name for p in (pikud.root / "releases/local").iterdir()) == ["2", "3"]
    envs = {p.name for p in (pikud.root / "envs/local").glob("python-*")}
    assert len(envs) == 2 and not envs & first_env          # release 1's env went with it


def test_an_unknown_nginx_key_is_reported_at_push_and_config_set(pikud: Pikud,
                                                                tmp_path: Path) -> None:
    """A mistyped NGINX_* key is a warning in the push and once in the app's log, not silence."""
    work = committed(tmp_path / "typo", {"Procfile": "worker: sleep 300\n",
                                         "ENV": "PIKU_START_SECS=0.2\nNGINX_HTTPS_ONY=true\n"},
                     "a typo")
    local_remote(work, "typo")
    out = git(work, "push", "piku", "main", env=dict(pikud.env)).stderr
    warning = ("NGINX_HTTPS_ONY is not an nginx setting pikud knows; it is ignored "
               "(did you mean NGINX_HTTPS_ONLY?)")
    assert f"remote: -----> Warning: {warning}" in out, out
    assert "typo is live: release 1" in out
    assert pikud.log_text("typo", "pikud").count(warning) == 1
    pikud.cli("config:set", "typo", "NGINX_CACHE_TIMES=1h", check=True)
    log = pikud.log_text("typo", "pikud")
    assert log.count("NGINX_CACHE_TIMES is not an nginx setting pikud knows") == 1, log
def test_a_push_says_how_each_limit_is_enforced(pikud: Pikud, tmp_path: Path) -> None:
    """These machines have no delegated cgroup v2: memory and files are rlimits, a CPU share
    cannot be enforced, and a per-kind key for no kind is a warning."""
    work = committed(tmp_path / "capped", {
        "Procfile": "worker: sleep 300\n",
        "ENV": ("PIKU_START_SECS=0.2\nPIKU_NOFILE_MAX=256\n"
                "PIKU_CPU_MAX_WORKER=25%\nPIKU_MEMORY_MAX_WROKER=1G\n")}, "limits")
    local_remote(work, "capped")
    out = git(work, "push", "piku", "main", env=dict(pikud.env)).stderr
    assert ("remote: -----> Limit PIKU_CPU_MAX_WORKER 25% on worker: cannot be enforced: "
            "no rlimit limits a share of the CPU (") in out, out
    assert ("remote: -----> Limit PIKU_NOFILE_MAX 256 on worker: enforced as RLIMIT_NOFILE "
            "per process") in out
    assert ("remote: -----> Warning: PIKU_MEMORY_MAX_WROKER: the Procfile has no kind "
            "'wroker'; ignored") in out
    assert "capped is live: release 1" in out
    assert pikud.process("capped", "capped:worker.1")["limits"] == {
        "PIKU_CPU_MAX_WORKER": "25%", "PIKU_NOFILE_MAX": "256"}


WSGI_APP = '''\
def application(environ, start_response):
    body = f"wsgi {open('VERSION').read().strip()} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''
FD_APP = '''\
import os, socket
from http.server import BaseHTTPRequestHandler, HTTPServer

assert os.environ["LISTEN_FDS"] == "1" and os.environ["LISTEN_PID"] == str(os.getpid())


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("fd " + open("VERSION").read().strip()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)         # the daemon's listening socket
server.serve_forever()
'''
ASGI_APP = '''\
async def app(scope, receive, send):
    assert scope["type"] == "http"
    body = f"asgi {open('VERSION').read().strip()}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


def listen_backlog(where: int | str) -> int:
    """The backlog of the socket listening on 127.0.0.1:``where`` or at the unix socket
    ``where`` (ss shows it as Send-Q)."""
    if isinstance(where, str):
        line = subprocess.run(["ss", "-Hlx", "src", where], capture_output=True, text=True,
                              check=True).stdout.split()
        return int(line[3])
    line = subprocess.run(["ss", "-Hltn", f"sport = :{where}"], capture_output=True, text=True,
                          check=True).stdout.split()
    return int(line[2])


def test_wsgi_and_asgi_apps_are_served_by_an_app_server_in_their_env(
        pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    """granian by default, gunicorn on request; each added to the app's own virtualenv."""
    for app, procfile, env, expect, server in (
            ("wsgiapp", "wsgi: wsgi_app:application\n", "", "wsgi w1 /", "granian"),
            ("gunapp", "wsgi: wsgi_app:application\n",
             "PIKU_WSGI_SERVER=gunicorn\nUWSGI_PROCESSES=1\nUWSGI_MAX_REQUESTS=100\n"
             "UWSGI_LISTEN=77\n", "wsgi w1 /", "gunicorn"),
            ("asgiapp", "asgi: asgi_app:app\n", "UWSGI_GEVENT=1\n", "asgi w1", "granian"),
            ("uviapp", "asgi: asgi_app:app\n",
             "PIKU_ASGI_SERVER=uvicorn\nUWSGI_PROCESSES=1\nUWSGI_LISTEN=77\n",
             "asgi w1", "uvicorn"),
            ("fdweb", "web: python3 fd_app.py\n", "PIKU_LISTEN_FDS=yes\n", "fd w1", "python3")):
        work = python_app(tmp_path / app, "w1", procfile, extra={
            "wsgi_app.py": WSGI_APP, "asgi_app.py": ASGI_APP, "fd_app.py": FD_APP,
            "ENV": "PIKU_START_SECS=0.5\nPIKU_STOP_TIMEOUT=3\n" + env})
        out = ssh_push(sshd, work, app).stderr
        assert server == "python3" or ("Installing Python dependencies from requirements.txt "
                                       "and the app servers (") in out, out
        proc = wait_for(lambda app=app: next((p for p in pikud.processes(app)
                                              if p["state"] == "RUNNING"), None),
                        30, f"{app} to run")
        assert get(address(proc)) == expect
        assert (proc["socket"] is None) == (server == "python3"), proc   # wsgi/asgi: unix
        cmdline = Path(f"/proc/{proc['pid']}/cmdline").read_bytes().split(b"\0")
        assert any(server.encode() in word for word in cmdline[:2]), cmdline
        environ = Path(f"/proc/{proc['pid']}/environ").read_bytes().split(b"\0")
        inherited = f"LISTEN_PID={proc['pid']}".encode() in environ
        assert inherited == (server != "granian"), (app, environ)     # the daemon's socket
        if "UWSGI_LISTEN=77" in env:          # the server kept the backlog it was given
            assert listen_backlog(address(proc)) == 77, app
        if server == "python3":
            continue

        assert list((pikud.root / "envs" / app).glob(f"python-*/bin/{server}"))
        if app == "asgiapp":                  # reported in the push, and in the app's log once
            assert ("-----> Warning: UWSGI_GEVENT has no meaning for the asgi server pikud runs "
                    "(granian); it is ignored") in out, out
    assert pikud.log_text("asgiapp", "pikud").count("UWSGI_GEVENT has no meaning") == 1
    assert pikud.cli("restart", "asgiapp").returncode == 0
    assert pikud.log_text("asgiapp", "pikud").count("UWSGI_GEVENT has no meaning") == 1
    # granian stops its own workers: only its main process gets the SIGTERM, so a
    # restart never waits out the stop timeout (it hung when its workers got one too).
    for app in ("wsgiapp", "gunapp"):
        assert pikud.cli("restart", app).returncode == 0
        assert "did not stop within" not in pikud.log_text(app, "pikud"), app
    # kill -9 of granian's worker (one by default, with two runtime threads): granian's
    # main replaces it; the slot is not restarted.
    slot = pikud.wait_state("wsgiapp", "wsgiapp:wsgi.1", "RUNNING")
    main = slot["pid"]
    assert b"--runtime-threads" in Path(f"/proc/{main}/cmdline").read_bytes()
    first = wait_for(lambda: len(descendants(main) - {main}) == 1 and descendants(main) - {main},
                     10, "granian's worker")
    os.kill(min(first), 9)
    workers = wait_for(lambda: len((now := descendants(main) - {main}) - first) == 1
                       and len(now) == 1 and now, 15, "granian's replacement worker")
    assert pikud.process("wsgiapp", "wsgiapp:wsgi.1")["restarts"] == slot["restarts"]
    assert get(address(slot)) == "wsgi w1 /"
    # kill -9 of granian's main: its workers (re-parented to pikud, still on the port)
    # are stopped before the respawn, which then serves.
    os.kill(main, 9)
    # RUNNING with no pid is the old slot in the instant before its exit is handled.
    again = wait_for(lambda: (p := pikud.process("wsgiapp", "wsgiapp:wsgi.1"))["state"]
                     == "RUNNING" and p["pid"] not in (None, main) and p, 30, "the respawn")
    assert [pid for pid in workers if alive(pid)] == []
    assert get(address(again)) == "wsgi w1 /"


def test_uwsgi_idle_set_on_a_pushed_wsgi_app_moves_it_to_gunicorn_and_zero(
        pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    """piku's UWSGI_IDLE by config:set: no rebuild, since a build installs both servers."""
    work = python_app(tmp_path / "idler", "w1", "wsgi: wsgi_app:application\n", extra={
        "wsgi_app.py": WSGI_APP,
        "ENV": "PIKU_START_SECS=0.5\nPIKU_STOP_TIMEOUT=3\nUWSGI_PROCESSES=1\n"})
    ssh_push(sshd, work, "idler")
    serving = pikud.wait_state("idler", "idler:wsgi.1", "RUNNING")
    assert b"granian" in Path(f"/proc/{serving['pid']}/cmdline").read_bytes()
    [gunicorn] = (pikud.root / "envs" / "idler").glob("python-*/bin/gunicorn")

    hidden = gunicorn.rename(gunicorn.with_name("gunicorn.hidden"))     # as an older build
    try:
        refused = pikud.cli("config:set", "idler", "UWSGI_IDLE=1")
        assert refused.returncode == 1
        assert "UWSGI_IDLE: the wsgi entry would run gunicorn" in refused.stderr, refused.stderr
        assert "piku deploy" in refused.stderr
        assert not (pikud.root / "envs/idler/ENV").exists()
        assert pikud.process("idler", "idler:wsgi.1")["pid"] == serving["pid"]
    finally:
        hidden.rename(gunicorn)

    pikud.cli("config:set", "idler", "UWSGI_IDLE=1", check=True)
    asleep = pikud.wait_state("idler", "idler:wsgi.1", "IDLE", timeout=30)
    assert asleep["pid"] is None and not alive(serving["pid"])
    assert get(address(asleep)) == "wsgi w1 /"          # waited for gunicorn to boot
    pid = pikud.wait_state("idler", "idler:wsgi.1", "RUNNING")["pid"]
    assert b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    pikud.wait_state("idler", "idler:wsgi.1", "IDLE", timeout=30)
    assert not alive(pid)
