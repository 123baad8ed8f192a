"""Tables for pikud.app.formation: an AppSpec and its env -> ProcessSpecs and cron JobSpecs.

No daemon and no processes: ports come from a counter.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pikud.app.formation import MAX_SHARED_VALUE, Allocate, cron_jobs, env_pairs, process_specs
from pikud.appsettings import AppSettings
from pikud.appspec import AppSpec, parse_procfile
from pikud.errors import CronError, ProcfileError
from pikud.paths import Paths
from pikud.procman.sockets import Address, socket_path

PATHS = Paths(Path("/srv/piku"))
SOURCE = Path("/srv/piku/releases/app/3")
ENV = {"PATH": "/usr/bin", "GREETING": "hi"}
DEFAULTS = AppSettings()


def spec(procfile: str, scaling: dict[str, int], env: dict[str, str] | None = None,
         settings: AppSettings = DEFAULTS) -> AppSpec:
    return AppSpec("app", parse_procfile(procfile), dict(env or {}), scaling, settings)


def counter(start: int = 9000) -> Allocate:
    """Ports from ``start`` on; socket paths with the same numbers as tokens."""
    numbers = itertools.count(start)

    def allocate(slot: str, unix: bool) -> Address:
        number = next(numbers)
        return socket_path(PATHS.sockets, slot, f"t{number}") if unix else number
    return allocate


FORMATIONS = [
    # (Procfile, SCALING, ENV, ports known, slots -> port, ports after)
    ("web: serve\nworker: work\n", {"web": 1, "worker": 2}, {}, {},
     {"app:web.1": 9000, "app:worker.1": None, "app:worker.2": None},
     {"app:web.1": 9000}),
    ("web: serve\n", {"web": 2}, {}, {"app:web.1": 8123},          # a slot keeps its port
     {"app:web.1": 8123, "app:web.2": 9000}, {"app:web.1": 8123, "app:web.2": 9000}),
    ("web: serve\n", {"web": 1}, {}, {"app:web.1": 8123, "app:web.2": 8124},   # scaled down
     {"app:web.1": 8123}, {"app:web.1": 8123, "app:web.2": 8124}),
    ("web: serve\n", {"web": 2}, {"PORT": "5000"}, {},             # PORT in ENV serves all
     {"app:web.1": 5000, "app:web.2": 5000}, {}),
    ("web: serve\nworker: work\n", {"web": 0, "worker": 1}, {}, {},
     {"app:worker.1": None}, {}),
    ("release: migrate\ncron1: */5 * * * * tick\nstatic: /:public\nworker: work\n",
     {"worker": 1}, {}, {}, {"app:worker.1": None}, {}),        # not supervised: not slots
]


@pytest.mark.parametrize(("procfile", "scaling", "env", "known", "slots", "after"), FORMATIONS)
def test_the_slots_and_their_ports(procfile: str, scaling: dict[str, int], env: dict[str, str],
                                   known: dict[str, int], slots: dict[str, int | None],
                                   after: dict[str, int]) -> None:
    specs, ports = process_specs("app", spec(procfile, scaling, env), ENV, SOURCE, PATHS,
                                 known, counter())
    assert {name: s.port for name, s in specs.items()} == slots
    assert ports == after
    assert known == dict(known)                 # the ports given are not changed


def test_a_slot_gets_the_release_env_its_kind_port_and_paths() -> None:
    settings = AppSettings(stop_timeout=3.0, log_max_bytes=4096, log_backups=2)
    specs, _ = process_specs("app", spec("web: serve\nworker: work\n", {"web": 1, "worker": 1},
                                         settings=settings),
                             ENV, SOURCE, PATHS, {}, counter(7000))
    web, worker = specs["app:web.1"], specs["app:worker.1"]
    assert dict(web.env) == dict(ENV, PROC_TYPE="web", PIKU_ROOT="/srv/piku", PORT="7000")
    assert dict(worker.env) == dict(ENV, PROC_TYPE="worker", PIKU_ROOT="/srv/piku")
    assert (web.kind, web.index, web.command, web.cwd) == ("web", 1, "serve", SOURCE)
    assert web.log_path == Path("/srv/piku/logs/app/web.1.log")
    assert (worker.stop_timeout, worker.log_max_bytes, worker.log_backups) == (3.0, 4096, 2)
    assert not web.inherits and web.listen_address is None


def test_the_slots_of_a_kind_share_one_env_and_a_web_slot_adds_its_own_port() -> None:
    """The daemon holds every slot's spec: no copy of the app's env per slot or kind."""
    specs, _ = process_specs("app", spec("web: serve\nworker: work\n", {"web": 2, "worker": 2},
                                         {"PORT": "5000"}),
                             dict(ENV, PORT="5000"), SOURCE, PATHS, {}, counter())
    assert specs["app:worker.1"].env is specs["app:worker.2"].env
    one, two = specs["app:web.1"].env, specs["app:web.2"].env
    assert one == tuple(sorted(dict(ENV, PROC_TYPE="web", PIKU_ROOT="/srv/piku",
                                    PORT="5000").items()))
    assert all(a is b for a, b in zip(one, two, strict=True) if a[0] != "PORT")
    worker = dict((pair[0], pair) for pair in specs["app:worker.1"].env)
    assert all(worker[pair[0]] is pair for pair in one if pair[0] not in ("PORT", "PROC_TYPE"))


def test_apps_share_the_pairs_of_the_daemons_env() -> None:
    """Most of every app's env is the daemon's own: one pair for all apps, not a copy each."""
    one, _ = process_specs("one", spec("worker: work\n", {"worker": 1}), dict(ENV, APP="one"),
                           SOURCE, PATHS, {}, counter())
    two, _ = process_specs("two", spec("worker: work\n", {"worker": 1}), dict(ENV, APP="two"),
                           SOURCE, PATHS, {}, counter())
    first, second = dict(one["one:worker.1"].env), dict(two["two:worker.1"].env)
    assert (first["APP"], second["APP"]) == ("one", "two")
    pairs = {pair[0]: pair for pair in one["one:worker.1"].env}
    assert all(pairs[pair[0]] is pair for pair in two["two:worker.1"].env
               if pair[0] in ENV)


def test_a_long_value_is_not_kept_in_the_shared_table() -> None:
    """A certificate in one app's ENV is not held for other apps, nor after it is gone."""
    long = "x" * (MAX_SHARED_VALUE + 1)
    first = env_pairs({"CERT": long, "SHORT": "v"})
    second = env_pairs({"CERT": long, "SHORT": "v"})
    assert first == second == (("CERT", long), ("SHORT", "v"))
    assert first[0] is not second[0] and first[1] is second[1]


LISTENING = [
    # (Procfile, ENV, the web slot inherits the daemon's socket)
    ("web: serve\n", {}, False),
    ("web: serve\n", {"PIKU_LISTEN_FDS": "true"}, True),
    ("worker: work\n", {"PIKU_LISTEN_FDS": "true"}, False),
]


@pytest.mark.parametrize(("procfile", "env", "inherits"), LISTENING)
def test_who_inherits_the_daemons_socket(procfile: str, env: dict[str, str],
                                         inherits: bool) -> None:
    kind = procfile.split(":")[0]
    settings = AppSettings(listen_fds=env.get("PIKU_LISTEN_FDS") == "true")
    specs, _ = process_specs("app", spec(procfile, {kind: 1}, env, settings), ENV, SOURCE,
                             PATHS, {}, counter())
    assert specs[f"app:{kind}.1"].inherits is inherits


UNIX = "/srv/piku/nginx/sockets/app.{kind}.1.t7100.sock"
UPSTREAMS = [
    # (Procfile, ENV, settings, the slot's port, its socket)
    ("wsgi: app:application\n", {}, DEFAULTS, None, UNIX.format(kind="wsgi")),
    ("asgi: app:app\n", {"PIKU_ASGI_SERVER": "uvicorn"}, DEFAULTS, None,
     UNIX.format(kind="asgi")),
    ("wsgi: app:application\n", {}, AppSettings(upstream="tcp"), 7100, None),
    ("wsgi: app:application\n", {"PORT": "5000"}, DEFAULTS, 5000, None),     # fixed: TCP
    ("web: serve\n", {}, DEFAULTS, 7100, None),           # binds $PORT itself
    ("web: serve\n", {}, AppSettings(listen_fds=True), 7100, None),
]


@pytest.mark.parametrize(("procfile", "env", "settings", "port", "path"), UPSTREAMS)
def test_wsgi_and_asgi_serve_on_a_unix_socket_unless_told_otherwise(
        procfile: str, env: dict[str, str], settings: AppSettings, port: int | None,
        path: str | None) -> None:
    kind = procfile.split(":")[0]
    specs, addresses = process_specs("app", spec(procfile, {kind: 1}, env, settings), ENV,
                                     SOURCE, PATHS, {}, counter(7100))
    slot = specs[f"app:{kind}.1"]
    assert (slot.port, slot.socket) == (port, path)
    assert slot.upstream == (f"unix:{path}" if path else f"127.0.0.1:{port}")
    assert dict(slot.env).get("PIKU_SOCKET") == path
    assert dict(slot.env).get("PORT") == (str(port) if port else None)
    assert addresses == ({f"app:{kind}.1": path or port} if "PORT" not in env else {})


def test_granian_binds_the_socket_itself_and_gunicorn_is_handed_it() -> None:
    specs, _ = process_specs("app", spec("wsgi: app:application\n", {"wsgi": 1}), ENV, SOURCE,
                             PATHS, {}, counter(7100))
    granian = specs["app:wsgi.1"]
    assert '--uds "$PIKU_SOCKET" --uds-permissions 0660' in granian.command
    assert "--port" not in granian.command and not granian.inherits
    assert granian.listen_address is None
    specs, _ = process_specs("app", spec("wsgi: app:application\n", {"wsgi": 1},
                                         {"PIKU_WSGI_SERVER": "gunicorn"}), ENV, SOURCE,
                             PATHS, {}, counter(7100))
    gunicorn = specs["app:wsgi.1"]
    assert gunicorn.inherits and gunicorn.listen_address == UNIX.format(kind="wsgi")
    assert "--uds" not in gunicorn.command


def test_a_slot_keeps_its_socket_until_the_upstream_setting_changes() -> None:
    kept = {"app:wsgi.1": "/srv/piku/nginx/sockets/app.wsgi.1.old.sock"}
    wsgi = spec("wsgi: app:application\n", {"wsgi": 1})
    specs, addresses = process_specs("app", wsgi, ENV, SOURCE, PATHS, kept, counter(7100))
    assert specs["app:wsgi.1"].socket == kept["app:wsgi.1"] and addresses == kept
    tcp = spec("wsgi: app:application\n", {"wsgi": 1}, settings=AppSettings(upstream="tcp"))
    specs, addresses = process_specs("app", tcp, ENV, SOURCE, PATHS, kept, counter(7100))
    assert specs["app:wsgi.1"].port == 7100 and addresses == {"app:wsgi.1": 7100}
    specs, addresses = process_specs("app", wsgi, ENV, SOURCE, PATHS, addresses, counter(7200))
    assert specs["app:wsgi.1"].socket == UNIX.format(kind="wsgi").replace("7100", "7200")


def test_while_nginx_cannot_reach_the_sockets_every_slot_serves_on_a_port() -> None:
    """The sockets folder not yet nginx's group's (an upgrade before `piku setup --fix`):
    ports, not a 502 for every request; the sockets come back with the next change."""
    wsgi = spec("wsgi: app:application\n", {"wsgi": 1})
    specs, addresses = process_specs("app", wsgi, ENV, SOURCE, PATHS, {}, counter(7100),
                                     unix=False)
    assert (specs["app:wsgi.1"].port, specs["app:wsgi.1"].socket) == (7100, None)
    assert "--port $PORT" in specs["app:wsgi.1"].command
    assert addresses == {"app:wsgi.1": 7100}
    specs, _ = process_specs("app", wsgi, ENV, SOURCE, PATHS, addresses, counter(7200))
    assert specs["app:wsgi.1"].socket == UNIX.format(kind="wsgi").replace("7100", "7200")


def test_a_bad_wsgi_target_is_refused() -> None:
    with pytest.raises(ProcfileError, match="module:callable"):
        process_specs("app", spec("wsgi: not a target\n", {"wsgi": 1}), ENV, SOURCE, PATHS,
                      {}, counter())


def test_cron_entries_become_jobs_with_the_env_and_settings() -> None:
    settings = AppSettings(stop_timeout=4.0)
    jobs = cron_jobs("app", spec("cron1: */5 * * * * tick\ncron2: @daily tock\nworker: w\n",
                                 {"worker": 1}, {"TZ": "Europe/Paris",
                                                 "PIKU_CRON_OVERLAP": "queue"}, settings),
                     ENV, SOURCE, PATHS)
    assert [(job.name, job.entry.command) for job in jobs] == [("app:cron1", "tick"),
                                                               ("app:cron2", "tock")]
    job = jobs[0]
    assert dict(job.env) == dict(ENV, PIKU_ROOT="/srv/piku")
    assert (job.cwd, job.log_path) == (SOURCE, Path("/srv/piku/logs/app/cron1.log"))
    assert (job.tz, job.overlap, job.stop_timeout) == ("Europe/Paris", "queue", 4.0)


def test_a_bad_cron_setting_is_refused_by_name() -> None:
    with pytest.raises(CronError, match="PIKU_CRON_OVERLAP"):
        cron_jobs("app", spec("cron1: * * * * * x\n", {}, {"PIKU_CRON_OVERLAP": "sometimes"}),
                  ENV, SOURCE, PATHS)
