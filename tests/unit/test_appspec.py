"""Tables for pikud.appspec: every parser, error path and the expander."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pikud.appsettings import AppSettings
from pikud.appspec import (
    RELEASE_KINDS,
    STATIC_KIND,
    SYSTEMD_VARS,
    WEB_KINDS,
    AppSpec,
    Procfile,
    format_env,
    format_scaling,
    is_cron,
    live_env,
    load_spec,
    merge_env,
    parse_env,
    parse_procfile,
    parse_scale_args,
    parse_scaling,
    supervised_kinds,
    validate_app_name,
)
from pikud.errors import AppNameError, EnvError, ProcfileError, ScalingError, SpecError
from pikud.paths import Paths

# --- app names ------------------------------------------------------------

@pytest.mark.parametrize("name", ["x", "ok-app_1.2", "MyApp", "9lives", "a.b", "a" * 64])
def test_app_name_ok(name: str) -> None:
    assert validate_app_name(name) == name


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"),
    ("a/b", "contains '/'"),
    ("..", "contains '..'"),
    ("a..b", "contains '..'"),
    (".x", "must start with a letter or digit"),
    ("-x", "must start with a letter or digit"),
    ("_x", "must start with a letter or digit"),
    ("a;b", "contains ';'"),
    ("a b", "contains ' '"),
    ("a$b", "contains '$'"),
    ("'myapp'", "must start with a letter or digit"),
    ("app\n", "contains '\\n'"),
    ("x" * 65, "longer than 64"),
])
def test_app_name_bad(name: str, reason: str) -> None:
    with pytest.raises(AppNameError, match="app name") as info:
        validate_app_name(name)
    assert reason in str(info.value)
    assert isinstance(info.value, SpecError)


# --- Procfile -------------------------------------------------------------

@pytest.mark.parametrize(("text", "entries"), [
    ("web: python app.py\n", {"web": "python app.py"}),
    ("# comment\n\n  # indented comment\nworker:  run --x  \n", {"worker": "run --x"}),
    ("web:gunicorn app:app\nworker : celery -A x\n",
     {"web": "gunicorn app:app", "worker": "celery -A x"}),
    ("web: echo 'a: b' # not a comment\n", {"web": "echo 'a: b' # not a comment"}),
    ("cron1: */5 * * * * ./job\nstatic: /s:public\nrelease: ./migrate\r\n",
     {"cron1": "*/5 * * * * ./job", "static": "/s:public", "release": "./migrate"}),
    ("w_1-a: x\n9: y\n", {"w_1-a": "x", "9": "y"}),
    ("k" * 63 + ": x", {"k" * 63: "x"}),
])
def test_procfile_ok(text: str, entries: dict[str, str]) -> None:
    procfile = parse_procfile(text)
    assert procfile.entries == entries
    assert list(procfile.entries) == list(entries)
    assert procfile.warnings == ()


@pytest.mark.parametrize(("text", "line", "words"), [
    ("web: ok\n\njust words\n", 3, ["expected 'kind: command'", "'just words'"]),
    ("# c\n-web: x\n", 2, ["invalid kind '-web'", "'-web: x'"]),
    ("we b: x\n", 1, ["invalid kind 'we b'"]),
    ("w.b: x\n", 1, ["invalid kind 'w.b'"]),
    (": x\n", 1, ["invalid kind ''"]),
    ("k" * 64 + ": x\n", 1, ["invalid kind"]),
    ("web: x\nworker:   \n", 2, ["empty command for kind 'worker'"]),
    ("web: a\x00b\n", 1, ["NUL"]),
    ("web: x\njwsgi: app.jar\n", 2, ["kind 'jwsgi' (piku's uWSGI Java plugin) is not supported "
                                     "by pikud"]),
    ("rwsgi: config.ru\n", 1, ["kind 'rwsgi'", "not supported by pikud"]),
    ("php: .\n", 1, ["kind 'php' (piku's uWSGI PHP plugin)", "as a 'web' kind on $PORT"]),
])
def test_procfile_bad_line(text: str, line: int, words: list[str]) -> None:
    with pytest.raises(ProcfileError) as info:
        parse_procfile(text, "apps/a/Procfile")
    assert (info.value.file, info.value.line) == ("apps/a/Procfile", line)
    assert str(info.value).startswith(f"apps/a/Procfile, line {line}: ")
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_procfile_empty(text: str) -> None:
    with pytest.raises(ProcfileError, match=r"^Procfile: no process kinds$"):
        parse_procfile(text)


def test_procfile_duplicate_later_wins() -> None:
    procfile = parse_procfile("# c\nweb: one\nworker: w\nweb: two\n")
    assert procfile.entries == {"worker": "w", "web": "two"}
    assert procfile.warnings == ("Procfile, line 4: duplicate kind 'web' (line 2 is ignored)",)


def test_procfile_wsgi_drops_web() -> None:
    procfile = parse_procfile("web: a\nwsgi: app:application\n", "apps/x/Procfile")
    assert procfile.entries == {"wsgi": "app:application"}
    assert procfile.warnings == ("apps/x/Procfile, line 1: 'web' is ignored because 'wsgi' "
                                 "is defined (line 2)",)


@pytest.mark.parametrize(("text", "supervised"), [
    ("web: a\nworker: b\n", ["web", "worker"]),
    ("preflight: p\nrelease: r\nstatic: s\ncron1: * * * * * x\ncronjob: x\nweb: w\n", ["web"]),
    ("release: r\n", []),
    ("clock: c\nwsgi: w\ncrontab: c\n", ["clock", "wsgi"]),
])
def test_supervised_kinds(text: str, supervised: list[str]) -> None:
    assert supervised_kinds(parse_procfile(text)) == supervised


@pytest.mark.parametrize(("kind", "cron"), [("cron", True), ("cron1", True), ("cronjob", True),
                                            ("web", False), ("xcron", False), ("Cron", False)])
def test_is_cron(kind: str, cron: bool) -> None:
    assert is_cron(kind) is cron


def test_kind_constants() -> None:
    assert RELEASE_KINDS == ("preflight", "release")
    assert STATIC_KIND == "static"
    assert WEB_KINDS == ("web", "wsgi", "asgi")


# --- ENV ------------------------------------------------------------------

BASE = {"HOME": "/home/piku", "DATA_ROOT": "/d", "EMPTY": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("A=1\nB = two words \n", {"A": "1", "B": "two words"}),
    ("# c\n\n   # c2\nA=1\n", {"A": "1"}),
    ("export A=1\nexport\tB=2\nexport=3\n", {"A": "1", "B": "2", "export": "3"}),
    ("A=\n", {"A": ""}),
    ("A=x=y=z\n", {"A": "x=y=z"}),
    ("A=a # not a comment\n", {"A": "a # not a comment"}),
    ("A='  padded  '\nB=\"  dq  \"\n", {"A": "  padded  ", "B": "  dq  "}),
    ("A=''\nB=\"\"\n", {"A": "", "B": ""}),
    ("A='$HOME ${HOME} \\$'\n", {"A": "$HOME ${HOME} \\$"}),
    ("A=\"$HOME/x\"\n", {"A": "/home/piku/x"}),
    ("A=$HOME\nB=${HOME}/b\nC=$DATA_ROOT/db.sqlite\n",
     {"A": "/home/piku", "B": "/home/piku/b", "C": "/d/db.sqlite"}),
    ("HOME=/srv\nA=$HOME\n", {"HOME": "/srv", "A": "/srv"}),
    ("A=1\nB=$A$A\nA=2\nC=$A-$B\n", {"A": "2", "B": "11", "C": "2-11"}),
    ("A=[$NOPE][${NOPE}]$EMPTY.\n", {"A": "[][]."}),
    ("A=\\$HOME\nB=cost \\$5\n", {"A": "$HOME", "B": "cost $5"}),
    ("A=$$HOME\n", {"A": "$/home/piku"}),
    ("A=100$ $ $1 $-\n", {"A": "100$ $ $1 $-"}),
    ("A=C:\\path\\x\n", {"A": "C:\\path\\x"}),
    ("A=\\${HOME}\n", {"A": "${HOME}"}),
    ("A=$HOME_DIR/${HOME}_x\n", {"A": "//home/piku_x"}),
    ("A=it's\nB=say \"hi\"\n", {"A": "it's", "B": "say \"hi\""}),
    ("A='it's'\n", {"A": "it's"}),
    ("A=1\nA=2\n", {"A": "2"}),
    ("_A1=x\r\nB=y\r\n", {"_A1": "x", "B": "y"}),
])
def test_parse_env(text: str, expected: dict[str, str]) -> None:
    assert parse_env(text, "ENV", BASE) == expected


def test_parse_env_keeps_base_out() -> None:
    assert parse_env("A=$HOME\n", "ENV", BASE) == {"A": "/home/piku"}


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    ("A=1\nno equals here\n", 2, None, ["expected KEY=VALUE", "'no equals here'"]),
    ("export A\n", 1, None, ["expected KEY=VALUE", "'A'"]),
    ("=value\n", 1, None, ["missing key", "'=value'"]),
    ("A=1\n\n1A=2\n", 3, "1A", ["invalid key '1A'"]),
    ("A-B=1\n", 1, "A-B", ["invalid key 'A-B'"]),
    ("A B=1\n", 1, "A B", ["invalid key 'A B'"]),
    ("A='open\n", 1, "A", ["A: unterminated ' quote", "\"'open\""]),
    ("A=\"open\n", 1, "A", ["A: unterminated \" quote"]),
    ("A='\n", 1, "A", ["unterminated ' quote"]),
    ("A='x\"\n", 1, "A", ["unterminated ' quote"]),
    ("A=1\nB=${HOME\n", 2, "B", ["B: unterminated '${'"]),
    ("A=${1}\n", 1, "A", ["A: bad substitution '${1}'"]),
    ("A=${}\n", 1, "A", ["bad substitution '${}'"]),
    ("A=\"${A-b}\"\n", 1, "A", ["bad substitution '${A-b}'"]),
    ("A=x\x00y\n", 1, None, ["NUL"]),
])
def test_parse_env_bad(text: str, line: int, key: str | None, words: list[str]) -> None:
    with pytest.raises(EnvError) as info:
        parse_env(text, "envs/a/ENV", BASE)
    assert (info.value.file, info.value.line, info.value.key) == ("envs/a/ENV", line, key)
    assert str(info.value).startswith(f"envs/a/ENV, line {line}: ")
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("layers", "expected"), [
    ([], {}),
    ([("apps/a/ENV", None), ("envs/a/ENV", None)], {}),
    ([("apps/a/ENV", "A=1\nB=$HOME\n"), ("envs/a/ENV", None)], {"A": "1", "B": "/home/piku"}),
    ([("apps/a/ENV", "A=1\nB=2\n"), ("envs/a/ENV", "B=3\nC=$A$B\n")],
     {"A": "1", "B": "3", "C": "13"}),
    ([("apps/a/ENV", "HOME=/app\n"), ("envs/a/ENV", "X=$HOME\n")], {"HOME": "/app", "X": "/app"}),
    ([("l1", "A=a\n"), ("l2", "B=${A}b\n"), ("l3", "C=${B}c\nA=z\n")],
     {"A": "z", "B": "ab", "C": "abc"}),
    ([("l1", "A=a\n"), ("l2", "A=$A$A\n")], {"A": "aa"}),
    ([("l1", None), ("l2", "A='$A'\n")], {"A": "$A"}),
])
def test_merge_env(layers: list[tuple[str, str | None]], expected: dict[str, str]) -> None:
    assert merge_env(layers, BASE) == expected


def test_merge_env_error_names_layer() -> None:
    with pytest.raises(EnvError, match=r"^envs/a/ENV, line 2: expected KEY=VALUE"):
        merge_env([("apps/a/ENV", "A=1\n"), ("envs/a/ENV", "B=1\noops\n")], BASE)


ROUND_TRIP_VALUES = ["plain", "", " ", "  lead", "trail  ", "\tt", "a b", "it's", "'", "''",
                     "'quoted'", '"', '"dq"', "$HOME", "${HOME}", "\\$", "a\\b", "\\", "#",
                     "#x", "x#y", "=", "a=b", "export", "ünïcødé", "\u2028mid\u2028", "a\x0bb",
                     "\x85", "x'y\"z$#\\"]


def test_format_env_round_trip() -> None:
    values = {f"K{i}": value for i, value in enumerate(ROUND_TRIP_VALUES)}
    values["export"] = "e"
    text = format_env(values)
    assert parse_env(text, "ENV", {"HOME": "/h"}) == values
    assert list(parse_env(text, "ENV", {})) == list(values)


@pytest.mark.parametrize(("values", "text"), [
    ({}, ""),
    ({"A": "1", "B": "two words"}, "A=1\nB=two words\n"),
    ({"A": "", "B": " x", "C": "$x", "D": "it's"}, "A=''\nB=' x'\nC='$x'\nD='it's'\n"),
])
def test_format_env_text(values: dict[str, str], text: str) -> None:
    assert format_env(values) == text


@pytest.mark.parametrize(("values", "words"), [
    ({"A": "a\nb"}, ["A: value contains a newline"]),
    ({"A": "a\rb"}, ["A: value contains a carriage return"]),
    ({"A": "a\x00b"}, ["A: value contains a NUL byte"]),
    ({"1A": "x"}, ["invalid key '1A'"]),
    ({"": "x"}, ["invalid key ''"]),
])
def test_format_env_bad(values: dict[str, str], words: list[str]) -> None:
    with pytest.raises(EnvError) as info:
        format_env(values)
    assert info.value.key == next(iter(values))
    for word in words:
        assert word in str(info.value)


# --- SCALING --------------------------------------------------------------

@pytest.mark.parametrize(("text", "kinds", "expected"), [
    ("", None, {}),
    ("web: 2\nworker:0\n", None, {"web": 2, "worker": 0}),
    ("# c\n\nweb=3\n  worker = 1000 \n", ["web", "worker"], {"web": 3, "worker": 1000}),
    ("web: 1\nweb: 4\n", ["web"], {"web": 4}),
    ("web: 007\n", None, {"web": 7}),
])
def test_parse_scaling(text: str, kinds: list[str] | None, expected: dict[str, int]) -> None:
    assert parse_scaling(text, "envs/a/SCALING", kinds) == expected


@pytest.mark.parametrize(("text", "kinds", "line", "words"), [
    ("web: 1\nbogus\n", None, 2, ["expected 'kind: N'", "'bogus'"]),
    ("web: x\n", None, 1, ["count in 'web: x' must be a whole number from 0 to 1000"]),
    ("web: -1\n", None, 1, ["count in 'web: -1'"]),
    ("web: 1001\n", None, 1, ["count in 'web: 1001'"]),
    ("web= 1.5\n", None, 1, ["count in 'web= 1.5'"]),
    ("web:\n", None, 1, ["count in 'web:'"]),
    ("web: ١\n", None, 1, ["count in 'web: ١'"]),
    ("-w: 1\n", None, 1, ["invalid kind '-w'"]),
    ("web: 1\n\nworker: 2\n", ["web", "clock"], 3, ["unknown kind 'worker'",
                                                     "(known: web, clock)"]),
    ("web: 1\n", [], 1, ["unknown kind 'web' (known: none)"]),
])
def test_parse_scaling_bad(text: str, kinds: list[str] | None, line: int,
                           words: list[str]) -> None:
    with pytest.raises(ScalingError) as info:
        parse_scaling(text, "envs/a/SCALING", kinds)
    assert (info.value.file, info.value.line) == ("envs/a/SCALING", line)
    assert str(info.value).startswith(f"envs/a/SCALING, line {line}: ")
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("scaling", [{}, {"web": 0}, {"web": 3, "worker": 1000, "w_2-x": 1}])
def test_scaling_round_trip(scaling: dict[str, int]) -> None:
    text = format_scaling(scaling)
    assert parse_scaling(text, "SCALING") == scaling
    assert text == "".join(f"{kind}: {count}\n" for kind, count in scaling.items())


@pytest.mark.parametrize(("scaling", "word"), [
    ({"web": -1}, "count in 'web: -1'"), ({"web": 1001}, "count in 'web: 1001'"),
    ({"a b": 1}, "invalid kind"),
])
def test_format_scaling_bad(scaling: dict[str, int], word: str) -> None:
    with pytest.raises(ScalingError, match=word):
        format_scaling(scaling)


@pytest.mark.parametrize(("args", "expected"), [
    ([], {}),
    (["web=3", "worker=0"], {"web": 3, "worker": 0}),
    ([" web = 2 "], {"web": 2}),
])
def test_parse_scale_args(args: list[str], expected: dict[str, int]) -> None:
    assert parse_scale_args(args, ["web", "worker"]) == expected


@pytest.mark.parametrize(("args", "words"), [
    (["web"], ["expected KIND=N", "'web'"]),
    (["web:3"], ["expected KIND=N", "'web:3'"]),
    (["web=x"], ["count in 'web=x' must be a whole number from 0 to 1000"]),
    (["web=1001"], ["count in 'web=1001'"]),
    (["web=-1"], ["count in 'web=-1'"]),
    (["cron1=2"], ["unknown kind 'cron1' (known: web, worker)"]),
    (["=2"], ["invalid kind ''", "'=2'"]),
    (["web=1", "web=2"], ["kind 'web' is given more than once"]),
])
def test_parse_scale_args_bad(args: list[str], words: list[str]) -> None:
    with pytest.raises(ScalingError) as info:
        parse_scale_args(args, ["web", "worker"])
    assert (info.value.file, info.value.line) == ("ps:scale", None)
    assert str(info.value).startswith("ps:scale: ")
    for word in words:
        assert word in str(info.value)


# --- load_spec and live_env ------------------------------------------------

def make_app(root: Path, app: str = "myapp", *, procfile: str | None = "web: run\n",
             env: str | None = None, override: str | None = None,
             scaling: str | None = None) -> Paths:
    paths = Paths(root)
    paths.app(app).mkdir(parents=True)
    paths.env_dir(app).mkdir(parents=True)
    for path, text in ((paths.app(app) / "Procfile", procfile), (paths.app(app) / "ENV", env),
                       (paths.env_file(app), override), (paths.scaling_file(app), scaling)):
        if text is not None:
            path.write_text(text, encoding="utf-8")
    return paths


BASE_ENV = {"HOME": "/home/piku", "USER": "piku", "PATH": "/usr/bin:/bin",
            "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1000",
            "WATCHDOG_PID": "1", "LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x",
            "LANG": "C.UTF-8"}


def test_load_spec_full(tmp_path: Path) -> None:
    paths = make_app(
        tmp_path,
        procfile="wsgi: app:app\nweb: nope\nworker: w\ncron1: * * * * * x\nrelease: r\n",
        env="A=1\nDB=sqlite:///$DATA_ROOT/db\nPIKU_STOP_TIMEOUT=3\nB=$A\n",
        override="A=2\nC=$A$B\nPIKU_LOG_BACKUPS=7\n",
        scaling="wsgi: 3\nold: 2\ncron1: 1\nrelease: 0\n")
    spec = load_spec(paths, "myapp", BASE_ENV)
    assert isinstance(spec, AppSpec) and spec.name == "myapp"
    assert spec.procfile.entries == {"wsgi": "app:app", "worker": "w",
                                     "cron1": "* * * * * x", "release": "r"}
    assert spec.env == {"A": "2", "DB": f"sqlite:///{tmp_path}/data/myapp/db",
                        "PIKU_STOP_TIMEOUT": "3", "B": "1", "C": "21", "PIKU_LOG_BACKUPS": "7"}
    assert spec.scaling == {"wsgi": 3, "worker": 1}
    assert spec.settings == AppSettings(stop_timeout=3.0, log_backups=7)
    assert spec.warnings == (
        "apps/myapp/Procfile, line 2: 'web' is ignored because 'wsgi' is defined (line 1)",
        "envs/myapp/SCALING: kind 'old' is not in the Procfile; its count (2) is dropped",
        "envs/myapp/SCALING: count 0 for 'release' is ignored; only long-running kinds "
        "are scaled")


def test_load_spec_minimal(tmp_path: Path) -> None:
    spec = load_spec(make_app(tmp_path), "myapp", {}, AppSettings(start_retries=9))
    assert spec.procfile == Procfile({"web": "run"})
    assert (spec.env, spec.scaling, spec.warnings) == ({}, {"web": 1}, ())
    assert spec.settings == AppSettings(start_retries=9)


def test_load_spec_bom_and_crlf(tmp_path: Path) -> None:
    paths = make_app(tmp_path, procfile="\ufeffweb: run\r\nworker: w\r\n", env="\ufeffA=1\r\n")
    spec = load_spec(paths, "myapp", {})
    assert spec.procfile.entries == {"web": "run", "worker": "w"}
    assert spec.env == {"A": "1"}


@pytest.mark.parametrize(("files", "error", "message"), [
    ({"procfile": None}, ProcfileError, "no Procfile in apps/myapp"),
    ({"procfile": "web run\n"}, ProcfileError, "apps/myapp/Procfile, line 1: expected"),
    ({"procfile": "# nothing\n"}, ProcfileError, "apps/myapp/Procfile: no process kinds"),
    ({"env": "A=1\nbad\n"}, EnvError, "apps/myapp/ENV, line 2: expected KEY=VALUE"),
    ({"override": "\n\nX='\n"}, EnvError, "envs/myapp/ENV, line 3: X: unterminated"),
    ({"override": "PIKU_STOP_TIMEOUT=x\n"}, EnvError, "PIKU_STOP_TIMEOUT: expected"),
    ({"scaling": "web: lots\n"}, ScalingError, "envs/myapp/SCALING, line 1: count in 'web: lots'"),
    ({"override": "UWSGI_IDLE=soon\n"}, EnvError, "UWSGI_IDLE: expected a number of seconds"),
    ({"override": "PIKU_IDLE_TIMEOUT=60\n"}, EnvError,
     "PIKU_IDLE_TIMEOUT: a web process that binds $PORT itself cannot be started on demand"),
])
def test_load_spec_errors(tmp_path: Path, files: dict[str, str | None], error: type[SpecError],
                          message: str) -> None:
    paths = make_app(tmp_path, **files)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        load_spec(paths, "myapp", {})
    assert str(info.value).startswith(message)


def test_load_spec_unreadable(tmp_path: Path) -> None:
    paths = make_app(tmp_path)
    (paths.app("myapp") / "ENV").mkdir()
    paths.scaling_file("myapp").write_bytes(b"web: \xff\n")
    with pytest.raises(EnvError, match=r"^apps/myapp/ENV: cannot read: "):
        load_spec(paths, "myapp", {})
    (paths.app("myapp") / "ENV").rmdir()
    with pytest.raises(ScalingError, match=r"^envs/myapp/SCALING: not valid UTF-8 \(byte 5\)"):
        load_spec(paths, "myapp", {})


@pytest.mark.parametrize("app", ["../etc", "a/b", ""])
def test_load_spec_checks_name_first(tmp_path: Path, app: str) -> None:
    with pytest.raises(AppNameError):
        load_spec(Paths(tmp_path), app, {})


def test_live_env(tmp_path: Path) -> None:
    paths = make_app(tmp_path, env="X=$VIRTUAL_ENV\nPATH=$PATH:/opt/bin\n")
    spec = load_spec(paths, "myapp", BASE_ENV)
    env = live_env(spec, paths, BASE_ENV)
    venv = str(paths.virtualenv("myapp"))
    assert SYSTEMD_VARS.isdisjoint(env)
    assert env == {
        "LANG": "C.UTF-8", "APP": "myapp", "HOME": "/home/piku", "USER": "piku",
        "LOG_ROOT": str(tmp_path / "logs/myapp"), "DATA_ROOT": str(tmp_path / "data/myapp"),
        "CACHE_ROOT": str(tmp_path / "cache/myapp"), "PWD": str(tmp_path / "apps/myapp"),
        "VIRTUAL_ENV": venv, "PATH": f"{venv}/bin:/usr/bin:/bin:/opt/bin",
        "BIND_ADDRESS": "127.0.0.1", "PYTHONUNBUFFERED": "1", "X": venv,
    }
    assert all(isinstance(value, str) for value in env.values())


@pytest.mark.parametrize(("base", "app_env", "expected"), [
    ({}, "BIND_ADDRESS=0.0.0.0\n", {"BIND_ADDRESS": "0.0.0.0"}),
    ({"BIND_ADDRESS": "10.0.0.1"}, None, {"BIND_ADDRESS": "10.0.0.1"}),
    ({}, "HOME=/srv\nAPP=other\nPYTHONUNBUFFERED=0\n",
     {"HOME": "/srv", "APP": "other", "PYTHONUNBUFFERED": "0"}),
    ({"NOTIFY_SOCKET": "/n"}, "NOTIFY_SOCKET=/mine\nLISTEN_FDS=3\nWATCHDOG_PID=1\n",
     {"NOTIFY_SOCKET": None, "LISTEN_FDS": None, "WATCHDOG_PID": None}),
    ({"LISTEN_ADDRESS": "keep"}, None, {"LISTEN_ADDRESS": "keep"}),
])
def test_live_env_overrides(tmp_path: Path, base: dict[str, str], app_env: str | None,
                            expected: dict[str, str | None]) -> None:
    paths = make_app(tmp_path, env=app_env)
    env = live_env(load_spec(paths, "myapp", base), paths, base)
    for key, value in expected.items():
        assert env.get(key) == value


def test_live_env_without_home_user_or_path(tmp_path: Path) -> None:
    paths = make_app(tmp_path)
    env = live_env(load_spec(paths, "myapp", {}), paths, {})
    assert env["HOME"] and env["USER"]
    assert env["PATH"] == f"{paths.virtualenv('myapp')}/bin:{os.defpath}"


def test_scale_to_zero_needs_no_socket_from_workers_or_when_web_takes_the_daemons(
        tmp_path: Path) -> None:
    paths = make_app(tmp_path, procfile="web: run\nworker: w\n",
                     override="UWSGI_IDLE=60\nPIKU_LISTEN_FDS=1\n")
    assert load_spec(paths, "myapp", {}).settings.idle_timeout == 60.0
    paths = make_app(tmp_path / "2", procfile="wsgi: app:app\n", override="UWSGI_IDLE=60\n")
    assert load_spec(paths, "myapp", {}).settings.idle_timeout == 60.0
