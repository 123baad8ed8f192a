"""pikud as root: each app as its own system user, builds and pikud.sock as the deploy user.

A real daemon as root, a throwaway deploy user owning PIKU_ROOT, and the
piku-APP users the daemon makes. Every user and group made here or by the
daemon is removed at teardown, even after a failure. Skipped when not root.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pikud import crondeny
from pikud.identity import MARKER, user_name
from tests.conftest import FAST, Pikud
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="app users need pikud to run as root")

WORKER = "worker: sleep 1000\ncron1: 0 0 1 1 * id -u >\"$DATA_ROOT/cron-uid\"\n"


def remove_user(name: str) -> None:
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)     # if userdel left it


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def python() -> tuple[str, dict[str, str]]:
    """An interpreter other users may run, and the PYTHONPATH that gives it pikud's CLI
    (this checkout, click): the tests' own may sit in root's 0700 home (pyenv)."""
    path = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                            sysconfig.get_paths()["purelib"]])
    for candidate in (sys.executable, "/usr/bin/python3"):
        probe = as_user(65534, 65534, [candidate, "-c", "import pikud.cli"],
                        {"PYTHONPATH": path}, check=False)
        if probe is not None and probe.returncode == 0:
            return candidate, {"PYTHONPATH": path}
    pytest.skip("no Python that user nobody can run with pikud's CLI")


@pytest.fixture
def deploy_user(run_id: str, short_root: Path, deny_files_restored: None,
                ) -> Iterator[pwd.struct_passwd]:
    """A system user that owns PIKU_ROOT, as piku does; every piku-APP user of this run's
    apps (GECOS ``pikud app <name with run_id>``) is removed after it."""
    name = f"pkt-{run_id}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                    str(short_root), "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        os.chown(short_root, pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid)
        short_root.chmod(0o755)
        yield pwd.getpwnam(name)
    finally:
        for entry in pwd.getpwall():
            if entry.pw_gecos.startswith(MARKER) and run_id in entry.pw_gecos:
                remove_user(entry.pw_name)
        remove_user(name)
    assert not [e.pw_name for e in pwd.getpwall() if run_id in e.pw_name + e.pw_gecos]
    assert not [g.gr_name for g in grp.getgrall() if run_id in g.gr_name]


def as_user(uid: int, gid: int, argv: list[str], env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str] | None:
    """``argv`` run as ``uid``; None (when not ``check``) if it cannot even start."""
    try:
        return subprocess.run(argv, user=uid, group=gid, extra_groups=[], env=env,
                              capture_output=True, text=True, timeout=30, cwd="/")
    except PermissionError:
        if check:
            raise
        return None


def run_as(uid: int, gid: int, argv: list[str], env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    result = as_user(uid, gid, argv, env)
    assert result is not None
    return result


def readable_by(uid: int, gid: int, path: Path) -> str:
    """What a process of ``uid`` gets opening ``path``: "ok" or the error's name."""
    probe = ("try:\n    open(PATH, 'rb').close(); print('ok')\n"
             "except OSError as e:\n    print(type(e).__name__)").replace("PATH", repr(str(path)))
    return run_as(uid, gid, ["/bin/sh", "-c", f"exec python3 -c {shlex.quote(probe)}"],
                  {"PATH": "/usr/bin:/bin"}).stdout.strip()


def status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.partition(":")[2].split()[0] if line.split()[1:] else ""
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def owner_mode(path: Path) -> tuple[str, str]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, oct(stat.S_IMODE(st.st_mode))


@pytest.fixture
def as_root(deploy_user: pwd.struct_passwd, pikud_factory: Callable[..., Pikud]) -> Pikud:
    """pikud as root on a PIKU_ROOT the deploy user owns; stopped before the users go."""
    return pikud_factory()


def test_each_app_runs_as_its_own_user(as_root: Pikud, short_root: Path,
                                       deploy_user: pwd.struct_passwd, run_id: str,
                                       python: tuple[str, dict[str, str]]) -> None:
    alpha, beta = f"alpha-{run_id}", f"beta-{run_id}"
    deployer = deploy_user.pw_name
    pikud = as_root
    assert "app users: on (each app as piku-APP; builds and pikud.sock as " + deployer \
        in pikud.output()
    assert owner_mode(short_root / "pikud.sock") == (deployer, "0o600")
    for app in (alpha, beta):
        pikud.add_app(app, WORKER, FAST)
        pikud.api("POST", f"/apps/{app}/start")
    users = {app: pwd.getpwnam(user_name(app)) for app in (alpha, beta)}
    a, b = users[alpha], users[beta]
    assert a.pw_gecos == f"pikud app {alpha}" and a.pw_shell == "/usr/sbin/nologin"
    assert a.pw_uid != b.pw_uid

    # Its processes and a cron run have the app's uid (and no supplementary groups).
    worker = pikud.wait_state(alpha, f"{alpha}:worker.1", "RUNNING")
    assert status(worker["pid"], "Uid") == str(a.pw_uid)
    assert status(worker["pid"], "Gid") == str(a.pw_gid)
    assert status(worker["pid"], "Groups") == ""
    environ = Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
    assert f"HOME={short_root}/data/{alpha}".encode() in environ
    assert f"USER={a.pw_name}".encode() in environ
    pikud.api("POST", f"/apps/{alpha}/cron/cron1/run")
    ran = short_root / "data" / alpha / "cron-uid"
    assert wait_for(lambda: ran.exists() and ran.read_text().strip(), 10, "the cron run") \
        == str(a.pw_uid)

    # Folders: data/ and cache/ the app's alone; logs/ and envs/ the deploy user's.
    assert owner_mode(short_root / "data" / alpha) == (a.pw_name, "0o700")
    assert owner_mode(short_root / "cache" / alpha) == (a.pw_name, "0o700")
    assert owner_mode(short_root / "logs" / alpha) == (deployer, "0o750")
    assert owner_mode(short_root / "envs" / alpha) == (deployer, "0o711")

    # The deploy user's CLI works through the socket (the console: admin).
    env = dict(pikud.env, HOME=str(short_root), **python[1])
    cli = [python[0], "-m", "pikud.cli"]
    result = run_as(deploy_user.pw_uid, deploy_user.pw_gid,
                     [*cli, "config:set", alpha, "SECRET=s3"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert owner_mode(short_root / "envs" / alpha / "ENV") == (deployer, "0o600")
    assert owner_mode(short_root / "envs" / alpha / "LIVE_ENV") == (deployer, "0o600")
    worker = pikud.wait_state(alpha, f"{alpha}:worker.1", "RUNNING")
    assert b"SECRET=s3" in Path(f"/proc/{worker['pid']}/environ").read_bytes()

    # Another app's user reads none of this app's config, logs or data.
    log = short_root / "logs" / alpha / "pikud.log"     # what pikud did to the app
    assert log.exists()
    for path in (short_root / "envs" / alpha / "ENV", short_root / "envs" / alpha / "LIVE_ENV",
                 log, ran):
        assert readable_by(b.pw_uid, b.pw_gid, path) == "PermissionError", path
    assert readable_by(a.pw_uid, a.pw_gid, ran) == "ok"

    # An app's user cannot reach pikud.sock: the file refuses it, and so does pikud.
    result = run_as(b.pw_uid, b.pw_gid, [*cli, "apps"], env)
    assert result.returncode != 0 and "ermission denied" in result.stdout + result.stderr
    (short_root / "pikud.sock").chmod(0o666)        # past the file's mode: pikud's own check
    result = run_as(b.pw_uid, b.pw_gid, [*cli, "apps"], env)
    assert result.returncode != 0
    assert f"uid {b.pw_uid} may not use this socket" in result.stdout + result.stderr
    audit = [json.loads(line) for line in (short_root / "audit.log").read_text().splitlines()]
    assert any(entry["outcome"] == "forbidden" and str(b.pw_uid) in entry["message"]
               for entry in audit)
    (short_root / "pikud.sock").chmod(0o600)

    # The app's user may not use cron (scripts/test-deps installs it); a crontab root gave
    # it anyway goes with destroy.
    crontab = shutil.which("crontab")
    assert crontab, "cron is a test dependency (scripts/test-deps)"
    assert a.pw_name in Path("/etc/cron.deny").read_text().split()
    crondeny.undeny(a.pw_name)                  # crontab refuses a denied user, even root
    subprocess.run([crontab, "-u", a.pw_name, "-"], input="* * * * * true\n", text=True,
                   check=True, timeout=30)
    crondeny.deny(a.pw_name)
    spooled = Path("/var/spool/cron/crontabs", a.pw_name)
    assert spooled.exists()

    # destroy removes the user; what it keeps goes to the deploy user.
    result = run_as(deploy_user.pw_uid, deploy_user.pw_gid, [*cli, "destroy", alpha],
                     env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not spooled.exists()
    assert a.pw_name not in Path("/etc/cron.deny").read_text().split()
    with pytest.raises(KeyError):
        pwd.getpwnam(a.pw_name)
    with pytest.raises(KeyError):
        grp.getgrnam(a.pw_name)
    assert owner_mode(short_root / "data" / alpha)[0] == deployer
    assert pwd.getpwuid(ran.stat().st_uid).pw_name == deployer

    # A process of the app's user that pikud did not start (userdel refuses): destroy still
    # finishes, and says the user was kept and why.
    stray = subprocess.Popen(["sleep", "1000"], user=b.pw_uid, group=b.pw_gid,
                             extra_groups=[], start_new_session=True)
    try:
        answer = pikud.api("DELETE", f"/apps/{beta}")
    finally:
        stray.kill()
        stray.wait(10)
    assert f"user {b.pw_name}" not in answer["removed"]
    assert [line for line in answer["kept"] if line.startswith(f"user {b.pw_name} (")], answer
    assert pwd.getpwnam(b.pw_name).pw_uid == b.pw_uid
    assert f"{beta}: app user kept:" in pikud.output()
    assert beta not in [app["name"] for app in pikud.api("GET", "/apps")["apps"]]


def test_a_deploy_user_that_does_not_exist_stops_the_start(short_root: Path,
                                                             tmp_path: Path) -> None:
    (short_root / "pikud.toml").write_text('deploy_user = "no-such-user-pk"\n')
    daemon = Pikud(short_root, tmp_path / "pikud.log")
    result = subprocess.run([sys.executable, "-m", "pikud", "serve"], env=daemon.env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "deploy_user 'no-such-user-pk' is not a user here" in result.stderr
    assert not (short_root / "pikud.sock").exists()


def test_pikud_toml_the_deploy_user_could_write_stops_the_start_and_a_sighup(
        deploy_user: pwd.struct_passwd, short_root: Path, tmp_path: Path,
        pikud_factory: Callable[..., Pikud]) -> None:
    """As root, pikud runs the commands pikud.toml names: a file the deploy user owns or
    could write (or a link to one) is refused with the fix; a root-owned 0644 one is read."""
    settings = short_root / "pikud.toml"
    serve = [sys.executable, "-m", "pikud", "serve"]
    env = Pikud(short_root, tmp_path / "pikud.log").env
    settings.write_text('nginx_test = ["/bin/sh", "-c", "id >/tmp/pwned"]\n')
    os.chown(settings, deploy_user.pw_uid, deploy_user.pw_gid)
    refused = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert (f"{settings}: owned by {deploy_user.pw_name} with mode -rw-r--r-- (0644), 1 "
            f"link(s): pikud runs as root and runs the commands it names, so only root may "
            f"write it: chown root:root {settings} && chmod 644 {settings}") in refused.stderr
    os.chown(settings, 0, 0)
    settings.chmod(0o664)
    refused = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "mode -rw-rw-r-- (0664)" in refused.stderr
    settings.rename(short_root / "real.toml")
    settings.symlink_to(short_root / "real.toml")
    (short_root / "real.toml").chmod(0o644)
    refused = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "without following a link" in refused.stderr
    assert not (short_root / "pikud.sock").exists()

    settings.unlink()
    (short_root / "real.toml").rename(settings)
    settings.write_text("events_kept = 7\n")
    daemon = pikud_factory()
    assert "app users: on" in daemon.output()
    settings.write_text("events_kept = 9\n")        # the deploy user's again, then a SIGHUP
    os.chown(settings, deploy_user.pw_uid, deploy_user.pw_gid)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: kept the settings in force" in daemon.output(), 10,
             "the SIGHUP's refusal")
    assert f"only root may write it: chown root:root {settings}" in daemon.output()


def test_as_root_on_a_root_owned_root_apps_share_its_uid(pikud: Pikud) -> None:
    """The quick start as root, and the test suite: nothing changes hands."""
    assert "app users: off (every app runs as uid 0)" in pikud.output()
    pikud.add_app("solo", "worker: sleep 1000\n", FAST)
    pikud.api("POST", "/apps/solo/start")
    worker = pikud.wait_state("solo", "solo:worker.1", "RUNNING")
    assert status(worker["pid"], "Uid") == "0"
    with pytest.raises(KeyError):
        pwd.getpwnam(user_name("solo"))


# The build's own step (npm runs the package's install script): what it is and reaches.
PROBE = """id -u >"$DATA_ROOT/build-uid"
: >built-here
printf '%s' "$HOME" >"$DATA_ROOT/build-home"
for path in OTHER/envs/B/ENV OTHER/envs/B/LIVE_ENV OTHER/data/B/secret OTHER/logs/B/pikud.log \\
            OTHER/pikud/access.json; do
    cat "$path" >/dev/null 2>&1 && echo "read $path" >>"$DATA_ROOT/reached"
done
for path in OTHER/pikud/access.json OTHER/cache/B/build/poison OTHER/envs/B/ENV; do
    (: >>"$path") 2>/dev/null && echo "wrote $path" >>"$DATA_ROOT/reached"
done
exit 0
"""


def push(deploy_user: pwd.struct_passwd, work: Path, app: str, env: dict[str, str],
         python: tuple[str, dict[str, str]], message: str) -> None:
    """Commit ``work`` and git push it to ``app`` through the local transport, as the
    deploy user (git refuses a repository of another owner)."""
    script = (f"cd {work} && git add -A && git commit --quiet -m {message} && "
              "{ git remote get-url piku >/dev/null 2>&1 || git remote add piku " + app + "; } && "
              f"git config remote.piku.receivepack '{python[0]} -m pikud.cli git-receive-pack'"
              " && git push --quiet piku HEAD:main")
    result = run_as(deploy_user.pw_uid, deploy_user.pw_gid, ["/bin/sh", "-c", script], env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_push_builds_and_releases_as_the_app_and_reaches_no_other_app(
        as_root: Pikud, short_root: Path, deploy_user: pwd.struct_passwd, run_id: str,
        python: tuple[str, dict[str, str]]) -> None:
    """A Node app whose npm install script probes what it can reach; then a redeploy and a
    rollback, all as the app's user, while the checkout stays the deploy user's."""
    if shutil.which("npm") is None:
        pytest.skip("no npm here to run a package's install script")
    app, other = f"built-{run_id}", f"other-{run_id}"
    as_root.add_app(other, WORKER, FAST + "SECRET=b-only\n")
    as_root.api("POST", f"/apps/{other}/start")
    as_root.wait_state(other, f"{other}:worker.1", "RUNNING")
    (short_root / "data" / other / "secret").write_text("b's data")
    access = short_root / "pikud" / "access.json"
    assert not access.exists()

    uid, gid = deploy_user.pw_uid, deploy_user.pw_gid
    work = short_root / "work"          # the deploy user's, like a clone in its home
    work.mkdir()
    os.chown(work, uid, gid)
    env = dict(as_root.env, HOME=str(short_root), PATH="/usr/bin:/bin", **python[1],
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    files = {
        "Procfile": "web: exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n"
                    "release: id -u >\"$DATA_ROOT/release-uid\"\n",
        "ENV": FAST,
        "package.json": json.dumps({"name": "built", "version": "1.0.0", "private": True,
                                    "scripts": {"install": "sh probe.sh"}}),
        "probe.sh": PROBE.replace("OTHER", str(short_root)).replace("/B/", f"/{other}/"),
    }
    run_as(uid, gid, ["git", "init", "--quiet", "--initial-branch=main", str(work)], env)
    for name, text in files.items():
        (work / name).write_text(text)
        os.chown(work / name, uid, gid)
    push(deploy_user, work, app, env, python, "v1")

    account = pwd.getpwnam(user_name(app))
    data = short_root / "data" / app
    assert (data / "build-uid").read_text().strip() == str(account.pw_uid)
    assert (data / "build-home").read_text() == str(short_root / "cache" / app / "build")
    assert not (data / "reached").exists(), (data / "reached").read_text()
    assert not access.exists()
    assert (data / "release-uid").read_text().strip() == str(account.pw_uid)
    assert owner_mode(short_root / "cache" / app / "build") == (account.pw_name, "0o700")
    release = short_root / "releases" / app / "1"
    assert (release / "built-here").exists()                # the app's while it was built,
    assert owner_mode(release)[0] == deploy_user.pw_name    # read-only to it once it runs
    assert pwd.getpwuid((release / "Procfile").stat().st_uid).pw_name == deploy_user.pw_name
    modules = (release / "node_modules").resolve()
    assert modules.parent.parent == short_root / "envs" / app
    assert owner_mode(modules.parent)[0] == account.pw_name  # envs/APP/node-KEY, made for it
    assert pwd.getpwuid((short_root / "repos" / app).stat().st_uid).pw_name \
        == deploy_user.pw_name
    web = as_root.wait_state(app, f"{app}:web.1", "RUNNING")
    assert status(web["pid"], "Uid") == str(account.pw_uid)
    assert wait_for(lambda: as_root.get(app)[0] == 200, 15, "the app to answer")

    # A redeploy builds release 2 the same way; a rollback goes back to release 1.
    (work / "v2").write_text("2")
    os.chown(work / "v2", uid, gid)
    push(deploy_user, work, app, env, python, "v2")
    assert as_root.api("GET", f"/apps/{app}")["release"] == 2
    assert owner_mode(short_root / "releases" / app / "2")[0] == deploy_user.pw_name
    as_root.api("POST", f"/apps/{app}/rollback", {"release": 1})
    assert as_root.api("GET", f"/apps/{app}")["release"] == 1
    as_root.wait_state(app, f"{app}:web.1", "RUNNING")
    assert wait_for(lambda: as_root.get(app)[0] == 200, 15, "the rolled-back app to answer")


HELLO = '''\
def application(environ, start_response):
    body = b"hello " + environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''


@pytest.fixture
def shared_servers(open_dir: Path) -> Path:
    """granian and gunicorn in a virtualenv every user may run (uv, offline from its cache):
    the tests' own Python may sit in root's 0700 home."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs uv and /usr/bin/python3 for a virtualenv other users may run")
    venv = open_dir / "venv"
    subprocess.run([uv, "venv", "-q", "--python", "/usr/bin/python3", str(venv)], check=True,
                   timeout=120)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    "granian", "gunicorn"], check=True, timeout=300,
                   env=dict(os.environ, UV_OFFLINE="1"))
    return venv / "bin"


def connect_as(uid: int, gid: int, path: str) -> str:
    """What a process of ``uid`` gets connecting to unix socket ``path``: "ok" or the
    error's name."""
    probe = ("import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
             "    s.connect(PATH); print('ok')\nexcept OSError as e:\n"
             "    print(type(e).__name__)").replace("PATH", repr(path))
    return run_as(uid, gid, ["/usr/bin/python3", "-c", probe], {"PATH": "/usr/bin:/bin"}
                  ).stdout.strip()


def test_granian_and_gunicorn_serve_from_each_apps_own_socket_folder(
        deploy_user: pwd.struct_passwd, short_root: Path, run_id: str, shared_servers: Path,
        pikud_factory: Callable[..., Pikud]) -> None:
    """granian binds its socket as the app's user: in nginx/sockets/piku-APP, the app
    user's (2750, setgid), which no other app enters; gunicorn is handed the daemon's."""
    pikud = pikud_factory(extra_env={"PATH": f"{shared_servers}:{os.environ['PATH']}"})
    sockets = short_root / "nginx" / "sockets"
    names = {f"gran-{run_id}": "", f"gun-{run_id}": "PIKU_WSGI_SERVER=gunicorn\n"}
    paths = {}
    for name, env in names.items():
        app = pikud.add_app(name, "wsgi: hello:application\n",
                            FAST + "UWSGI_PROCESSES=1\n" + env)
        (app / "hello.py").write_text(HELLO)
        pikud.api("POST", f"/apps/{name}/deploy")
        proc = pikud.wait_state(name, f"{name}:wsgi.1", "RUNNING")
        folder = sockets / user_name(name)
        assert Path(proc["socket"]).parent == folder
        assert owner_mode(folder) == (user_name(name), "0o2750")
        assert folder.stat().st_gid == sockets.stat().st_gid
        assert stat.S_IMODE(os.stat(proc["socket"]).st_mode) == 0o660
        assert pikud.get(name, "/x") == (200, "hello /x")
        paths[name] = proc["socket"]
    assert stat.S_IMODE(sockets.stat().st_mode) & 0o001      # the apps' users pass it

    gran, gun = (pwd.getpwnam(user_name(name)) for name in names)
    assert connect_as(gun.pw_uid, gun.pw_gid, paths[f"gran-{run_id}"]) == "PermissionError"
    assert connect_as(gran.pw_uid, gran.pw_gid, paths[f"gun-{run_id}"]) == "PermissionError"
    assert connect_as(65534, 65534, paths[f"gun-{run_id}"]) == "PermissionError"

    for name in names:
        pikud.cli("destroy", name, check=True)
        assert not (sockets / user_name(name)).exists()


def test_nginx_folder_and_site_configs_are_roots_but_certificates_the_deploy_users(
        deploy_user: pwd.struct_passwd, short_root: Path,
        pikud_factory: Callable[..., Pikud]) -> None:
    """nginx's master (root) includes nginx/*.conf: with app users the deploy user may not
    write there. A pair acme.sh (the deploy user) overwrites in place stays its own."""
    uid, gid = deploy_user.pw_uid, deploy_user.pw_gid
    nginx = short_root / "nginx"
    nginx.mkdir(mode=0o755)
    planted = {"old.conf": 0o664, "old.crt": 0o644, "old.key": 0o600}
    for name, mode in planted.items():
        (nginx / name).write_text("# made by the deploy user\n")
        (nginx / name).chmod(mode)
        os.chown(nginx / name, uid, gid)
    (nginx / "linked.conf").symlink_to(short_root / "elsewhere.conf")
    os.chown(nginx, uid, gid)
    pikud = pikud_factory()
    assert owner_mode(nginx) == ("root", "0o755")
    assert owner_mode(nginx / "old.conf") == ("root", "0o644")
    assert not (nginx / "linked.conf").is_symlink()
    assert owner_mode(nginx / "old.crt") == (deploy_user.pw_name, "0o644")
    assert owner_mode(nginx / "old.key") == (deploy_user.pw_name, "0o600")
    assert pwd.getpwuid((nginx / "sockets").stat().st_uid).pw_name == "root"
    assert f"app users: {short_root} is not root's alone" in pikud.output()
    script = f"echo 'load_module /tmp/x.so;' >{nginx}/evil.conf || echo refused; " \
             f"echo 'events {{}}' >>{nginx}/old.conf || echo refused; " \
             f"echo renewed >{nginx}/old.crt && echo renewed"
    result = run_as(uid, gid, ["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"})
    assert result.stdout.split() == ["refused", "refused", "renewed"], result.stderr
    assert not (nginx / "evil.conf").exists()


PRELOAD = r'''
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *out = fopen(OUT, "a");
    if (out) { fprintf(out, "%d\n", (int)getuid()); fclose(out); }
}
'''


def test_an_apps_ld_preload_is_loaded_as_its_user_never_as_root(
        as_root: Pikud, open_dir: Path, run_id: str) -> None:
    """The app's ENV reaches its processes whole, but the loader's variables do not reach
    the wrappers that run as root before the uid changes (setpriv, prlimit)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build a preloaded library")
    seen = open_dir / "seen"
    seen.mkdir(mode=0o777)
    seen.chmod(0o777)
    source, library = open_dir / "preload.c", open_dir / "preload.so"
    source.write_text(PRELOAD.replace("OUT", json.dumps(str(seen / "uids"))))
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True,
                   timeout=60)
    library.chmod(0o755)
    app = f"pre-{run_id}"
    as_root.add_app(app, "worker: sleep 1000\n",
                    FAST + f"LD_PRELOAD={library}\nPIKU_NOFILE_MAX=512\n")
    as_root.api("POST", f"/apps/{app}/start")
    worker = as_root.wait_state(app, f"{app}:worker.1", "RUNNING")
    assert f"LD_PRELOAD={library}".encode() in \
        Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
    uids = set((seen / "uids").read_text().split())
    assert uids == {str(pwd.getpwnam(user_name(app)).pw_uid)}, uids


def test_a_link_an_app_puts_where_pikud_gives_folders_is_refused_not_followed(
        as_root: Pikud, short_root: Path, open_dir: Path, run_id: str) -> None:
    """cache/APP is the app's: a link it leaves at cache/APP/build must not make root give
    the folder it points to (/etc, say) to the app's user at the next change."""
    app = f"link-{run_id}"
    as_root.add_app(app, "worker: sleep 1000\n", FAST)
    as_root.api("POST", f"/apps/{app}/start")
    as_root.wait_state(app, f"{app}:worker.1", "RUNNING")
    account = pwd.getpwnam(user_name(app))
    target = open_dir / "roots"
    target.mkdir(mode=0o755)
    build = short_root / "cache" / app / "build"
    result = run_as(account.pw_uid, account.pw_gid,
                    ["/bin/sh", "-c", f"rm -rf {build} && ln -s {target} {build}"])
    assert result.returncode == 0, result.stderr
    refused = as_root.cli("restart", app)
    assert refused.returncode != 0
    assert f"{build} is not a folder" in refused.stderr, refused.stderr
    assert owner_mode(target) == ("root", "0o755")
