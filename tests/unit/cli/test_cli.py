"""The `piku` command through main() and as a real program (`python -m pikud.cli`).

Commands that need the daemon talk to a stub control server on a real unix
socket (tests.unit.control.stubdaemon); the rest need nothing but a temp dir.
"""

from __future__ import annotations

import grp
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pikud.cli import main
from pikud.paths import LAYOUT, cli_argv
from tests.unit.control.stubdaemon import StubDaemon, running

REPO = Path(__file__).resolve().parents[3]
SSH_KEYGEN = shutil.which("ssh-keygen")
DEADLINE = 30


def piku(*args: str, env: dict[str, str] | None = None, input: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    """Run the real program, as sshd would."""
    return subprocess.run([sys.executable, "-m", "pikud.cli", *args], capture_output=True,
                          text=True, input=input,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                          timeout=DEADLINE)


@pytest.fixture
def root(short_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PIKU_ROOT, short enough to hold a unix socket."""
    monkeypatch.setenv("PIKU_ROOT", str(short_root))
    return short_root


@pytest.fixture
def stub(root: Path) -> Iterator[StubDaemon]:
    with running(root / "pikud.sock") as daemon:
        yield daemon


# -- no daemon needed ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["help"], ["--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    for command in ("apps", "config:set", "logs", "ps:scale", "run", "setup:ssh"):
        assert f"  {command} " in out


def test_help_for_one_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", "ps:scale"]) == 0
    assert "Usage: piku ps:scale [OPTIONS] APP COUNTS..." in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err


def test_setup_creates_the_layout(root: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    root.chmod(0o755)                      # nginx's workers may enter: nothing to chmod
    target = root / "piku"
    sockets = target / "nginx" / "sockets"
    monkeypatch.setenv("PIKU_ROOT", str(target))
    for _ in range(2):                     # safe to run again
        assert main(["setup"]) == 0
        assert (capsys.readouterr().out.splitlines()[:len(LAYOUT)]
                == [f"-----> {target / name}" for name in LAYOUT])
    assert sorted(p.name for p in target.iterdir()) == sorted(LAYOUT)
    assert stat.S_IMODE(sockets.stat().st_mode) == 0o700
    assert main(["setup", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    user = data.pop("nginx_user")
    assert user in (None, "www-data")
    # only the sockets folder is left to give to nginx's group (as root, with --fix)
    grant = [f"chgrp -R www-data {sockets} && chmod u=rwx,g=rxs,o-rw {sockets}"] if user else []
    assert data == {"root": str(target), "dirs": [str(target / name) for name in LAYOUT],
                    "fixes": grant, "fixed": []}


def test_setup_says_how_to_let_nginx_in_and_does_it_with_fix(root: Path, www_data: str) -> None:
    """PIKU_ROOT in a 0700 folder (a Debian 12 home): nginx's workers cannot serve from it."""
    if not (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")):
        pytest.skip("nginx is not installed")
    target = root / "piku"
    advice = (f"-----> Warning: nginx (user www-data) cannot serve static files under "
              f"{target}/releases: {root} is mode 0700; fix with `chmod o+x {root}` "
              "(or give group www-data access)")
    checked = piku("setup", env={"PIKU_ROOT": str(target)})
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[len(LAYOUT):] == [advice]
    assert stat.S_IMODE(root.stat().st_mode) == 0o700         # only said
    fixed = piku("setup", "--fix", env={"PIKU_ROOT": str(target)})
    assert fixed.stdout.splitlines()[len(LAYOUT):] == [advice, f"-----> Fixed: chmod o+x {root}"]
    assert stat.S_IMODE(root.stat().st_mode) == 0o701
    again = piku("setup", "--json", env={"PIKU_ROOT": str(target)})
    sockets = target / "nginx" / "sockets"
    grant = f"chgrp -R www-data {sockets} && chmod u=rwx,g=rxs,o-rw {sockets}"
    assert json.loads(again.stdout)["fixes"] == [grant]     # what the root folder hid
    if os.geteuid() != 0:
        return                                  # only root may chgrp to www-data
    granted = piku("setup", "--fix", "--json", env={"PIKU_ROOT": str(target)})
    assert json.loads(granted.stdout)["fixed"] == [grant]
    assert stat.S_IMODE(sockets.stat().st_mode) == 0o2750
    assert sockets.stat().st_gid == grp.getgrnam("www-data").gr_gid
    again = piku("setup", "--json", env={"PIKU_ROOT": str(target)})
    assert json.loads(again.stdout)["fixes"] == []


def test_a_stopped_daemon_is_one_line(root: Path) -> None:
    result = piku("ps", "myapp")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"Error: pikud is not running (no socket at {root / 'pikud.sock'})\n"


@pytest.mark.parametrize(("argv", "named"), [
    (["config:set", "app", "GOOD=1", "BAD"], "'BAD' is not KEY=VALUE"),
    (["config:set", "app", "=value"], "'=value' is not KEY=VALUE"),
    (["config:set", "app", "A='unclosed"], "cannot split"),
    (["config:unset", "app", "A=1"], "'A=1' is not a KEY"),
    (["ps:scale", "app", "web"], "'web' is not KIND=N"),
    (["ps:scale", "app", "web=two"], "web=two: N must be a whole number"),
    (["ps:scale", "app", "web=-1"], "web=-1: N must be a whole number"),
    (["ps:scale", "app", "web=" + "9" * 4400], "web=999999999999...: N is too large"),
    (["ps:scale", "app", "web=1", "web=2"], "web is given twice"),
    (["run", "app"], "no command given"),
    (["logs", "app", "-n", "-3"], "-3 is not in the range"),
])
def test_bad_arguments_fail_before_connecting(root: Path, argv: list[str], named: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err
    assert "not running" not in err


COMMANDS = ["access", "access:grant", "access:revoke", "apps", "audit", "cloudflare:refresh",
            "config", "config:get", "config:live", "config:set", "config:unset", "cron",
            "cron:run", "deploy", "destroy", "git-hook", "git-receive-pack", "git-upload-pack",
            "help", "logs", "ps", "ps:scale", "releases", "restart", "rollback", "run", "scp",
            "setup", "setup:ssh", "sftp", "start", "status", "stop", "update"]

# Imports pikud.cli, then every module that any line under pikud/cli/ imports (a
# command body's own imports too), and prints what got loaded and what the group holds.
IMPORT_EVERY_COMMAND = """
import ast, importlib, json, pathlib, sys
import pikud.cli
for source in sorted(pathlib.Path(pikud.cli.__file__).parent.glob("*.py")):
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            importlib.import_module(node.module)
print(json.dumps({"modules": sorted(sys.modules), "commands": sorted(pikud.cli.piku.commands)}))
"""


def test_the_cli_does_not_import_the_daemon_stack() -> None:
    """Every command is on the group once pikud.cli is imported, and all that the
    commands import (their bodies too) leaves the daemon's libraries out, and
    http.client with the email and ssl packages it pulls in (the control client
    speaks HTTP itself: those imports were a third of `piku apps`)."""
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERY_COMMAND], capture_output=True,
                            text=True, cwd=REPO, timeout=DEADLINE, check=True)
    loaded = json.loads(result.stdout)
    imported = loaded["modules"]
    assert "pikud.cli" in imported
    assert loaded["commands"] == COMMANDS
    assert not [name for name in imported
                if name.split(".")[0] in ("aiohttp", "uvloop", "jinja2", "croniter")]
    assert not [name for name in imported if name.split(".")[0] in ("http", "email", "ssl")]


def test_the_cli_leaves_the_push_path_to_the_git_commands() -> None:
    """Every ssh command pays for what `import pikud.cli` loads: the repository work
    and the app-spec parsers it brings are imported by the git commands alone."""
    listing = "import json, sys, pikud.cli; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True,
                            cwd=REPO, timeout=DEADLINE, check=True)
    imported = json.loads(result.stdout)
    assert "pikud.cli.push" in imported
    assert [name for name in ("pikud.deploy.receive", "pikud.appspec", "subprocess")
            if name in imported] == []


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"Usage: piku {command} ")


# -- setup:ssh ----------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME in a temp dir."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def pubkey(tmp_path: Path) -> tuple[Path, str]:
    """A real ed25519 key and its fingerprint as ssh-keygen lists it."""
    if SSH_KEYGEN is None:
        pytest.skip("ssh-keygen is not installed")
    private = tmp_path / "id_ed25519"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "jane@laptop",
                    "-f", str(private)], check=True, timeout=DEADLINE)
    listed = subprocess.run([SSH_KEYGEN, "-lf", str(private) + ".pub"], check=True,
                            capture_output=True, text=True, timeout=DEADLINE)
    return private.with_suffix(".pub"), listed.stdout.split()[1]


def test_setup_ssh_adds_the_key_once(home: Path, pubkey: tuple[Path, str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    pub, fingerprint = pubkey
    keys = home / ".ssh" / "authorized_keys"
    assert main(["setup:ssh", str(pub)]) == 0
    assert capsys.readouterr().out == f"-----> Added key {fingerprint} (jane@laptop) to {keys}\n"
    piku_bin = shlex.join(cli_argv())      # run in-process here: this interpreter, -m pikud.cli
    assert keys.read_text() == (
        f'command="FINGERPRINT={fingerprint} NAME=jane@laptop {piku_bin} --ssh-command",'
        "no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding "
        f"{pub.read_text().strip()}\n")
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.parent.stat().st_mode) & 0o077 == 0

    before = keys.read_bytes()
    assert main(["setup:ssh", str(pub)]) == 0
    assert capsys.readouterr().out == (f"-----> Key {fingerprint} is already in {keys}; "
                                       "nothing changed\n")
    assert main(["setup:ssh", str(pub), "--name", "other", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "fingerprint": fingerprint, "name": "other", "file": str(keys), "added": False}
    assert keys.read_bytes() == before


def test_setup_ssh_reads_stdin_and_keeps_other_lines(home: Path, pubkey: tuple[Path, str]) -> None:
    pub, fingerprint = pubkey
    keys = home / ".ssh" / "authorized_keys"
    keys.parent.mkdir(mode=0o700)
    keys.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld old@key\n")
    result = piku("setup:ssh", "-", "--name", "ci-bot", input=pub.read_text(),
                  env={"HOME": str(home)})
    assert (result.returncode, result.stderr) == (0, "")
    assert "(ci-bot)" in result.stdout
    lines = keys.read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld old@key"
    assert lines[1].startswith(f'command="FINGERPRINT={fingerprint} NAME=ci-bot ')


@pytest.mark.parametrize(("edit", "args", "named"), [
    (lambda t, b, c: f"{t} {b[:-4]}!!!! {c}", [], "not valid base64"),
    (lambda t, b, c: f"ssh-foo {b} {c}", [], "unknown key type 'ssh-foo'"),
    (lambda t, b, c: f"ssh-rsa {b} {c}", [], "not a ssh-rsa key"),
    (lambda t, b, c: f"{t} {b} {c}", ["--name", "jane doe"],
     "key name 'jane doe' may only contain"),
    (lambda t, b, c: f"{t} {b} Jane Doe", [], "key name 'Jane Doe' may only contain"),
    (lambda t, b, c: "", [], "expected one public key line"),
])
def test_setup_ssh_refuses_malformed_keys(home: Path, pubkey: tuple[Path, str], tmp_path: Path,
                                          edit: Callable[[str, str, str], str], args: list[str],
                                          named: str, capsys: pytest.CaptureFixture[str]) -> None:
    pub, _ = pubkey
    keys = home / ".ssh" / "authorized_keys"
    keys.parent.mkdir(mode=0o700)
    keys.write_bytes(b"# existing\nssh-ed25519 AAAA other\n")
    before = keys.read_bytes()
    bad = tmp_path / "bad.pub"
    key_type, b64, comment = pub.read_text().split()
    bad.write_text(edit(key_type, b64, comment) + "\n")
    assert main(["setup:ssh", str(bad), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and named in err
    assert keys.read_bytes() == before
    assert os.listdir(keys.parent) == ["authorized_keys"]


# -- against a stub daemon ----------------------------------------------------------------------

def _detail(state: str = "running") -> dict[str, object]:
    return {"name": "myapp", "state": state, "formation": {"web": 1}, "processes": [
        {"name": "myapp:web.1", "kind": "web", "index": 1, "pid": 42, "state": "RUNNING",
         "uptime": 252, "restarts": 0, "last_exit": None, "rss": 2048}]}


PS_TABLE = [
    "myapp: running  formation: web=1",
    "PROCESS  STATE    PID  UPTIME  RESTARTS  LAST EXIT   RSS",
    "web.1    RUNNING   42   4m12s         0  -          2.0K",
]


def test_ps(stub: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("GET", "/apps/myapp", _detail())
    assert main(["ps", "myapp"]) == 0
    assert capsys.readouterr().out.splitlines() == PS_TABLE
    assert main(["ps", "myapp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _detail()


def test_apps(stub: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("GET", "/apps", {"apps": [{"name": "b", "state": "stopped"},
                                      {"name": "a", "state": "running"}]})
    assert main(["apps"]) == 0
    assert capsys.readouterr().out == "* a\n  b\n"


def test_server_errors_are_one_line(stub: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    stub.on("GET", "/apps/nope", status=404,
            body={"ok": False,
                  "error": {"code": "app_not_found", "message": "app 'nope' not found"}})
    assert main(["ps", "nope"]) == 1
    assert capsys.readouterr().err == "Error: app 'nope' not found\n"


@pytest.mark.parametrize(("command", "done"), [
    ("restart", "restarted"), ("stop", "stopped"), ("start", "started")])
def test_lifecycle_commands(stub: StubDaemon, command: str, done: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("POST", f"/apps/myapp/{command}", _detail())
    assert main([command, "myapp"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"-----> myapp {done}", *PS_TABLE]


def test_deploy_prints_progress_then_the_table(stub: StubDaemon,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    stub.on("POST", "/apps/myapp/deploy?progress=1", lines=[
        {"progress": "-----> Building"}, {"end": True, "data": _detail()}])
    assert main(["deploy", "myapp"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "-----> Building", "-----> myapp deployed", *PS_TABLE]


def test_config_set_shell_splits_and_sends_once(stub: StubDaemon,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("POST", "/apps/myapp/config", {"config": {"GREETING": "hello world", "N": "1"}})
    stub.ok("GET", "/apps/myapp", _detail())
    # What sshd hands over after the client wrote: config:set myapp 'GREETING="hello world"' N=1
    assert main(["config:set", "myapp", 'GREETING="hello', 'world"', "N=1"]) == 0
    assert [(r.method, r.path, r.body) for r in stub.requests] == [
        ("POST", "/apps/myapp/config", {"set": {"GREETING": "hello world", "N": "1"}}),
        ("GET", "/apps/myapp", None)]
    assert capsys.readouterr().out.splitlines()[:2] == [
        "-----> Setting GREETING=hello world for myapp", "-----> Setting N=1 for myapp"]


def test_config_unset(stub: StubDaemon) -> None:
    stub.ok("POST", "/apps/myapp/config", {"config": {}})
    stub.ok("GET", "/apps/myapp", _detail())
    assert main(["config:unset", "myapp", "A", "B"]) == 0
    assert stub.requests[0].body == {"unset": ["A", "B"]}


def test_config_get_and_show(stub: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("GET", "/apps/myapp/config", {"config": {"B": "2", "A": "x=y"}})
    assert main(["config", "myapp"]) == 0
    assert capsys.readouterr().out == "A=x=y\nB=2\n"
    assert main(["config:get", "myapp", "A"]) == 0
    assert capsys.readouterr().out == "x=y\n"
    assert main(["config:get", "myapp", "MISSING"]) == 0      # as piku: nothing, exit 0
    assert capsys.readouterr() == ("", "")
    assert main(["config:get", "myapp", "MISSING", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"MISSING": None}


def test_destroy_says_what_was_kept(stub: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("DELETE", "/apps/myapp", {"removed": ["/r/apps/myapp", "/r/repos/myapp"],
                                      "kept": ["/r/data/myapp", "/r/cache/myapp"]})
    assert main(["destroy", "myapp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == ["-----> Removed /r/apps/myapp", "-----> Removed /r/repos/myapp",
                       "-----> Kept /r/data/myapp", "-----> Kept /r/cache/myapp"]
    assert "data and cache were kept" in out[4]


def test_ps_scale_sends_the_counts(stub: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("POST", "/apps/myapp/scale", _detail())
    assert main(["ps:scale", "myapp", "web=1", "worker=0"]) == 0
    assert stub.requests[0].body == {"scaling": {"web": 1, "worker": 0}}
    assert capsys.readouterr().out.splitlines()[0] == "-----> myapp scaled"


def test_logs_without_follow(stub: StubDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [{"source": "web.1", "line": "a"}, {"source": "worker.1", "line": "b"}]
    stub.ok("GET", "/apps/myapp/logs?lines=5&kind=web", {"lines": lines})
    assert main(["logs", "myapp", "web", "-n", "5", "--no-follow"]) == 0
    assert capsys.readouterr().out == "web.1    | a\nworker.1 | b\n"


def test_logs_follow_until_the_stream_ends(stub: StubDaemon,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    lines = [{"source": "web.1", "line": "a"}, {"source": "web.1", "line": "b"}]
    stub.on("GET", "/apps/myapp/logs?lines=20&follow=1", lines=[*lines, {"end": True}])
    assert main(["logs", "myapp"]) == 0
    assert capsys.readouterr().out == "web.1 | a\nweb.1 | b\n"
    assert main(["logs", "myapp", "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines


def test_logs_ctrl_c_exits_quietly(stub: StubDaemon, root: Path) -> None:
    stub.on("GET", "/apps/myapp/logs?lines=20&follow=1",
            lines=[{"source": "web.1", "line": "first"}, {"end": True}], pause_after=1)
    proc = subprocess.Popen([sys.executable, "-m", "pikud.cli", "logs", "myapp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PIKU_ROOT": str(root)})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "web.1 | first\n"      # now it waits on the stream
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (0, "", "")


def test_run_execs_in_the_app_dir_with_the_live_env(stub: StubDaemon, root: Path,
                                                    tmp_path: Path) -> None:
    live_env = {"GREETING": "hi there", "PATH": "/usr/bin:/bin"}
    stub.ok("GET", "/apps/myapp/config/live", {"env": live_env, "cwd": str(tmp_path)})
    # As sshd passes it: the words of `run myapp echo "$GREETING"; pwd -P` split on spaces.
    result = piku("run", "myapp", "echo", '"$GREETING";', "pwd", "-P", env={"PIKU_ROOT": str(root)})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"hi there\n{tmp_path.resolve()}\n"


@pytest.mark.parametrize("words", [
    ("--", "echo", "a", "-n"),                  # the stock client's `piku run -- CMD`
    ("echo", "--", "a", "-n"),                  # piku's docstring: `run APP ls -- -al`
    ("echo", "a", "-n", "--"),
    ("--", "echo", "a", "-n", "--"),            # only the first is piku's; a later one is CMD's
])
def test_run_drops_the_first_double_dash_as_piku_does(stub: StubDaemon, root: Path,
                                                       tmp_path: Path,
                                                       words: tuple[str, ...]) -> None:
    stub.ok("GET", "/apps/myapp/config/live", {"env": {"PATH": "/usr/bin:/bin"},
                                               "cwd": str(tmp_path)})
    result = piku("run", "myapp", *words, env={"PIKU_ROOT": str(root)})
    assert (result.returncode, result.stderr) == (0, "")
    expected = "a -n --\n" if words.count("--") == 2 else "a -n\n"
    assert result.stdout == expected


def test_run_in_a_missing_dir_is_an_error(stub: StubDaemon, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    stub.ok("GET", "/apps/myapp/config/live", {"env": {}, "cwd": str(tmp_path / "gone")})
    assert main(["run", "myapp", "ls"]) == 1
    assert capsys.readouterr().err == (f"Error: cannot enter {tmp_path / 'gone'}: "
                                       "No such file or directory\n")


def test_cloudflare_refresh_exits_1_when_a_site_failed(stub: StubDaemon,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = {"changed": True, "file": "/f", "ranges": 2, "ipv4": 1, "ipv6": 1, "sources": [],
            "nginx": True, "apps": [{"name": "a", "site": "updated", "error": None},
                                    {"name": "b", "site": "failed", "error": "nginx said no"}]}
    stub.ok("POST", "/cloudflare/refresh", data)
    assert main(["cloudflare:refresh"]) == 1
    out = capsys.readouterr().out
    assert "b    failed" in out and "-----> b: nginx said no" in out
    data["apps"] = data["apps"][:1]
    assert main(["cloudflare:refresh", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == data
    assert [(r.method, r.path) for r in stub.requests] == [("POST", "/cloudflare/refresh")] * 2


# -- sshd's forced command ----------------------------------------------------------------------

@pytest.mark.parametrize("original", ["", None])
def test_ssh_command_without_a_command_shows_the_help(original: str | None) -> None:
    env = {"SSH_ORIGINAL_COMMAND": original} if original is not None else {}
    result = piku("--ssh-command", env=env)
    assert result.returncode == 0 and "Usage: piku" in result.stdout and "  ps " in result.stdout


def test_ssh_command_words_are_not_expanded(root: Path) -> None:
    result = piku("--ssh-command", env={"SSH_ORIGINAL_COMMAND": "ps /etc/* ~"})
    assert result.returncode == 2
    assert "unexpected extra argument (~)" in result.stderr
    assert "/etc/passwd" not in result.stderr


def test_ssh_command_words_keep_their_quotes(stub: StubDaemon,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    stub.ok("POST", "/apps/myapp/config", {"config": {"GREETING": "hello world"}})
    stub.ok("GET", "/apps/myapp", _detail())
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", 'config:set myapp GREETING="hello world"')
    assert main(["--ssh-command"]) == 0
    assert stub.requests[0].body == {"set": {"GREETING": "hello world"}}


def test_scp_serves_the_clients_download(tmp_path: Path) -> None:
    """`piku download FILE` sends `scp -f ~/.piku/apps/APP/FILE`: scp's source side runs,
    with ~/ expanded as the old forced command's shell did. The test speaks scp's protocol."""
    home = tmp_path / "home"
    (home / ".piku/apps/app").mkdir(parents=True)
    (home / ".piku/apps/app/FILE").write_bytes(b"hello\n")
    with subprocess.Popen(
            [sys.executable, "-m", "pikud.cli", "scp", "-f", "~/.piku/apps/app/FILE"],
            env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE) as source:
        assert source.stdin is not None and source.stdout is not None
        try:
            source.stdin.write(b"\0")               # ready
            source.stdin.flush()
            assert source.stdout.readline() == b"C0644 6 FILE\n"
            source.stdin.write(b"\0")
            source.stdin.flush()
            assert source.stdout.read(7) == b"hello\n\0"
            source.stdin.write(b"\0")
            source.stdin.close()
            assert source.wait(timeout=DEADLINE) == 0
        finally:
            if source.poll() is None:
                source.kill()


def test_update_says_how_pikud_is_upgraded(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["update"]) == 1
    assert "pikud does not update itself over ssh" in capsys.readouterr().err
