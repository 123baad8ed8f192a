"""Deploy speed: pikud (granian, gunicorn) against the uWSGI emperor as piku sets it up.

Run by ``bench/run push``. One hello-world Flask app (bench/wsgi.py's, flask from
PyPI through requirements.txt), three setups one after the other in one run,
each behind its own fresh nginx master (bench/wsgi.py's), with the same
measuring code:

* pikud with its default server (granian), then with ``PIKU_WSGI_SERVER=gunicorn``:
  a ``pikud serve`` in a temp PIKU_ROOT, the app pushed over the local git
  transport (``remote.piku.receivepack``, no ssh).
* piku: a bare repo whose post-receive hook does what piku's deploy does for a
  requirements.txt app: ``git fetch`` + ``git reset --hard`` into the live app
  folder, ``virtualenv`` when there is none and ``pip install -r`` when
  requirements.txt is newer than it, then the vassal written into the
  emperor's folder (``uwsgi --emperor``; bench/wsgi.py's vassal and site).
  piku's own CLI start-up (about 0.1 s) is not in these figures.

Figures:

* first deploy, cold cache: from the start of ``git push`` to the first 200
  through nginx, with an empty package cache (pikud: UV_CACHE_DIR, or
  PIP_CACHE_DIR with PIKU_PYTHON_INSTALLER=pip; piku: PIP_CACHE_DIR);
* first deploy, warm cache: the same again after the app was destroyed (pikud)
  or its virtualenv, vassal and checkout removed (piku), the cache kept;
* code-only redeploy: median over ``--redeploys`` pushes of a changed app.py,
  the ``git push`` wall time and the time until nginx first answers with the
  new version;
* restart: median wall time of ``piku restart bench`` over ``--restarts``
  (piku: what its restart does, unlink and rewrite of the vassal; the emperor
  reloads the vassal after the command has returned);
* PSS per app, 1 and ``--apps`` apps: the PSS (bench/wsgi.py's ``memory``)
  of every process under the supervisor (pikud: the app servers and their
  workers; piku: each vassal's master and workers) over the number of apps,
  once the set of processes stayed the same for 2 s, every app having
  answered through nginx; apps 2.. are the same app pushed under other names
  (each with its own environment, from the warm cache). Taken idle, then again
  after ``--load`` seconds of ``wrk -t2 -c8`` through nginx at each app in turn
  (serving is what makes uWSGI's forked workers stop sharing their pages). The
  supervisor's own PSS (pikud, or the uWSGI emperor) is the row below.

Each setup runs with its own defaults, as a user gets them: granian 1 worker
with 4 threads and 2 runtime threads, gunicorn (like piku's vassal) 2 processes
x 4 threads. ``--piku-tuning`` gives pikud's apps piku's ``UWSGI_PROCESSES=2``
and ``UWSGI_THREADS=4``.

The piku column needs Debian's ``uwsgi``, ``uwsgi-plugin-python3`` and
``virtualenv``, and the load needs ``wrk``: ``bench/run push`` installs them
when run as root. Without uwsgi the table has the pikud columns only; without
wrk, no PSS after load. Every process started is stopped in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.wsgi import (  # noqa: E402  (the wsgi benchmark's setups)
    CLI,
    HOST,
    UWSGI,
    Nginx,
    app_settings,
    commit_app,
    descendants,
    get,
    memory,
    piku_site,
    piku_vassal,
    pikud_root,
    run,
    start_emperor,
    start_pikud,
    stop_emperor,
    stop_nginx,
    stop_pikud,
    work_tree,
)

DEADLINE = 300.0            # for one deploy to answer


@dataclass
class Deploys:
    name: str
    cold: float = float("nan")
    warm: float = float("nan")
    redeploy_push: list[float] = field(default_factory=list)
    redeploy_new: list[float] = field(default_factory=list)
    restart: list[float] = field(default_factory=list)
    # keyed by (apps, after load): MiB, processes under the supervisor, the supervisor's MiB
    pss_per_app: dict[tuple[int, bool], float] = field(default_factory=dict)
    processes: dict[tuple[int, bool], int] = field(default_factory=dict)
    pss_supervisor: dict[tuple[int, bool], float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def answers(port: int, version: str, started: float, host: str = HOST) -> float:
    """Seconds from ``started`` until nginx on ``port`` answers 200 with ``version`` for
    the site of ``host``."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            status, body = get(port, timeout=5, host=host)
        except (OSError, ValueError, IndexError):
            status, body = 0, b""
        if status == 200 and body.endswith(version.encode()):
            return time.monotonic() - started
        time.sleep(0.01)
    raise RuntimeError(f"no 200 with {version} within {DEADLINE:g} s")


def gone(port: int) -> None:
    """Wait until nginx on ``port`` no longer answers 200 (the app was removed)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            if get(port, timeout=5)[0] != 200:
                return
        except (OSError, ValueError, IndexError):
            return
        time.sleep(0.01)
    raise RuntimeError(f"the app still answers after {DEADLINE:g} s")


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """(start, wall time) of ``action``."""
    started = time.monotonic()
    action()
    return started, time.monotonic() - started


def measure(fig: Deploys, port: int, first: Callable[[str], None], clean: Callable[[], None],
            redeploy: Callable[[str], None], restart: Callable[[], None],
            args: argparse.Namespace) -> None:
    """The common part: cold and warm first deploys, redeploys, restarts."""
    started, _ = timed(lambda: first("v0"))
    fig.cold = answers(port, "v0", started)
    clean()
    started, _ = timed(lambda: first("v1"))
    fig.warm = answers(port, "v1", started)
    for n in range(2, 2 + args.redeploys):
        started, wall = timed(lambda n=n: redeploy(f"v{n}"))    # type: ignore[misc]
        fig.redeploy_new.append(answers(port, f"v{n}", started))
        fig.redeploy_push.append(wall)
    for _ in range(args.restarts):
        fig.restart.append(timed(restart)[1])
        answers(port, f"v{1 + args.redeploys}", time.monotonic())


def settled(pids: Callable[[], list[int]]) -> list[int]:
    """``pids()`` once it stayed the same for 2 s: an old generation drained, workers up."""
    deadline = time.monotonic() + DEADLINE
    last: list[int] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = sorted(pids())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 2:
            return now
        time.sleep(0.1)
    raise RuntimeError(f"the app processes still changed after {DEADLINE:g} s")


def load(port: int, hosts: list[str], seconds: float) -> None:
    """``wrk -t2 -c8`` through nginx for ``seconds`` at each site of ``hosts`` in turn."""
    for host in hosts:
        run(["wrk", "-t2", "-c8", f"-d{seconds:g}s", "-H", f"Host: {host}",
             f"http://127.0.0.1:{port}/"], timeout=seconds + 60)


def app_memory(fig: Deploys, port: int, add: Callable[[str], None], supervisor: int,
               args: argparse.Namespace) -> None:
    """PSS per app with the one app, then with ``args.apps`` (``add`` deploys one more
    under the name it is given, answering ``Hello from <name>``); each idle, then after
    ``args.load`` seconds of load at each app (without wrk, idle only, and a note)."""
    wrk = shutil.which("wrk") is not None
    if not wrk:
        fig.notes.append("no wrk on PATH: no PSS after load (apt-get install wrk)")

    def take(apps: int, loaded: bool) -> None:
        pids = settled(lambda: descendants(supervisor))
        fig.pss_per_app[apps, loaded] = memory(pids)[1] / apps
        fig.processes[apps, loaded] = len(pids)
        fig.pss_supervisor[apps, loaded] = memory([supervisor])[1]

    def idle_then_loaded(apps: int) -> None:
        take(apps, False)
        if wrk:
            load(port, hosts, args.load)
            take(apps, True)

    hosts = [HOST]
    idle_then_loaded(1)
    for n in range(2, args.apps + 1):
        add(f"bench{n}")
        answers(port, f"bench{n}", time.monotonic(), host=f"bench{n}.example")
        hosts.append(f"bench{n}.example")
    idle_then_loaded(args.apps)


def pikud_setup(name: str, server: str | None, args: argparse.Namespace) -> Deploys:
    fig = Deploys(name)
    base = Path(tempfile.mkdtemp(prefix="pkp-", dir="/tmp"))
    base.chmod(0o755)
    nginx = Nginx(base, base / "root" / "nginx")
    root, env = pikud_root(base, nginx)
    env.update(UV_CACHE_DIR=str(base / "uv-cache"), PIP_CACHE_DIR=str(base / "pip-cache"))
    work = base / "work"
    receivepack = " ".join(CLI) + " git-receive-pack"
    work_tree(work, receivepack)

    def push(version: str, remote: str = "piku", host: str = HOST) -> None:
        commit_app(work, version, app_settings(nginx, server, host, args.piku_tuning)
                   + f"PIKU_PYTHON_INSTALLER={args.installer}\n")
        run(["git", "-C", str(work), "push", "--quiet", remote, "main"], env=env, timeout=600)

    def add(app: str) -> None:
        run(["git", "-C", str(work), "remote", "add", app, app])
        run(["git", "-C", str(work), "config", f"remote.{app}.receivepack", receivepack])
        push(app, app, f"{app}.example")

    def clean() -> None:
        run([*CLI, "destroy", "bench"], env=env)

    def restart() -> None:
        run([*CLI, "restart", "bench"], env=env, timeout=120)

    daemon: subprocess.Popen[bytes] | None = None
    with open(base / "pikud.log", "wb") as log:
        try:
            nginx.start()
            daemon = start_pikud(root, env, log)
            measure(fig, nginx.http_port, push, clean, push, restart, args)
            app_memory(fig, nginx.http_port, add, daemon.pid, args)
        finally:
            try:
                stop_pikud(fig.notes, daemon, root)
            finally:
                stop_nginx(fig.notes, nginx)
    done(base, args)
    return fig


HOOK = """#!/bin/sh
# What piku's deploy does for a requirements.txt app (see bench/push.py).
set -e
unset GIT_DIR GIT_WORK_TREE
while read -r old new ref; do rev=$new; done
app={app}
env={env}
[ -d "$app/.git" ] || git clone --quiet {repo} "$app"
cd "$app"
git fetch --quiet
git reset --quiet --hard "$rev"
if [ ! -d "$env" ]; then {virtualenv} "$env" >/dev/null; fresh=1; fi
if [ -n "$fresh" ] || [ requirements.txt -nt "$env" ]; then
    "$env/bin/pip" install --quiet -r requirements.txt
    touch "$env"
fi
cp {vassal} {enabled}
"""


class PikuApp:
    """One app laid out as piku lays it out, in ``base``/``name``: a bare repo whose hook
    deploys (HOOK), the checkout, its virtualenv, its vassal and its nginx site; the
    work tree ``work`` gets a remote ``name`` for it."""

    def __init__(self, base: Path, name: str, nginx: Nginx, sites: Path, vassals: Path,
                 make_env: str, work: Path) -> None:
        home = base / name
        home.mkdir()
        self.name, self.work = name, work
        self.app_dir, self.venv, repo = home / "app", home / "env", home / "repo.git"
        sock = home / f"{name}.sock"
        (sites / f"{name}.conf").write_text(piku_site(sock, nginx.http_port, name))
        self.vassal = home / f"{name}_wsgi.1.ini"
        self.vassal.write_text(piku_vassal(self.app_dir, self.venv, sock, home, name))
        self.enabled = vassals / self.vassal.name
        run(["git", "init", "--quiet", "--bare", str(repo)])
        hook = repo / "hooks" / "post-receive"
        hook.write_text(HOOK.format(app=self.app_dir, env=self.venv, repo=repo,
                                    virtualenv=make_env, vassal=self.vassal,
                                    enabled=self.enabled))
        hook.chmod(0o755)
        run(["git", "-C", str(work), "remote", "add", name, str(repo)])

    def push(self, version: str, env: dict[str, str]) -> None:
        commit_app(self.work, version, "")
        run(["git", "-C", str(self.work), "push", "--quiet", self.name, "main"], env=env,
            timeout=600)


def uwsgi_setup(args: argparse.Namespace) -> Deploys:
    fig = Deploys("piku (uWSGI emperor)")
    base = Path(tempfile.mkdtemp(prefix="pkp-", dir="/tmp"))
    base.chmod(0o755)
    sites, vassals, work = base / "sites", base / "uwsgi-enabled", base / "work"
    for folder in (sites, vassals):
        folder.mkdir()
    nginx = Nginx(base, sites)
    python = "/usr/bin/python3" if UWSGI.startswith("/usr/bin") else sys.executable
    virtualenv = shutil.which("virtualenv")
    make_env = f"{virtualenv} --python={python}" if virtualenv else f"{python} -m venv"
    if not virtualenv:
        fig.notes.append("no virtualenv on PATH: `python3 -m venv` made the environments")
    env = dict(os.environ, PIP_CACHE_DIR=str(base / "pip-cache"))
    work_tree(work, "git-receive-pack")
    bench = PikuApp(base, "bench", nginx, sites, vassals, make_env, work)

    def push(version: str) -> None:
        bench.push(version, env)

    def clean() -> None:
        bench.enabled.unlink()
        gone(nginx.http_port)           # the emperor stopped the vassal
        shutil.rmtree(bench.venv)
        shutil.rmtree(bench.app_dir)

    def restart() -> None:              # piku restart: the vassal removed and written again
        bench.enabled.unlink()
        shutil.copy(bench.vassal, bench.enabled)

    def add(name: str) -> None:
        app = PikuApp(base, name, nginx, sites, vassals, make_env, work)
        run(nginx.reload_command)       # its site, as piku's deploy reloads nginx
        app.push(name, env)

    emperor: subprocess.Popen[bytes] | None = None
    try:
        nginx.start()
        emperor = start_emperor(vassals, base / "emperor.log")
        measure(fig, nginx.http_port, push, clean, push, restart, args)
        app_memory(fig, nginx.http_port, add, emperor.pid, args)
    finally:
        try:
            stop_emperor(fig.notes, emperor)
        finally:
            stop_nginx(fig.notes, nginx)
    done(base, args)
    return fig


def done(base: Path, args: argparse.Namespace) -> None:
    if args.keep:
        print(f"kept {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)


def report(figs: list[Deploys], args: argparse.Namespace, elapsed: float) -> None:
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}" if values else "-"

    rows = [
        ("first deploy, cold cache: push start -> first 200 (s)",
         [f"{f.cold:.2f}" for f in figs]),
        ("first deploy, warm cache: push start -> first 200 (s)",
         [f"{f.warm:.2f}" for f in figs]),
        (f"code-only redeploy: push start -> first 200 of the new version, median of "
         f"{args.redeploys} (s)", [median(f.redeploy_new) for f in figs]),
        ("code-only redeploy: `git push` wall time, median (s)",
         [median(f.redeploy_push) for f in figs]),
        (f"restart: command wall time, median of {args.restarts} (s)",
         [median(f.restart) for f in figs]),
    ]
    def mib(values: dict[tuple[int, bool], float], key: tuple[int, bool]) -> str:
        return f"{values[key]:.1f}" if key in values else "-"

    for apps in sorted({1, args.apps}):
        for loaded in (False, True):
            key, when = (apps, loaded), f"after {args.load:g} s of load" if loaded else "idle"
            n = f"{apps} app{'s' if apps > 1 else ''}"
            rows += [(f"PSS per app, {n}, {when}: the app's processes (MiB)",
                      [mib(f.pss_per_app, key) for f in figs]),
                     (f"processes under the supervisor, {n}, {when}",
                      [str(f.processes.get(key, "-")) for f in figs]),
                     (f"PSS of the supervisor (pikud, emperor), {n}, {when} (MiB)",
                      [mib(f.pss_supervisor, key) for f in figs])]
    names = [f.name for f in figs]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\n{platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
          f"CPython {platform.python_version()}, pikud at {commit} (its Python apps built "
          f"with {args.installer}, {'piku' if args.piku_tuning else 'its own'} process "
          f"defaults); load average {os.getloadavg()[0]:.2f} after a "
          f"{elapsed:.0f} s run\n")
    width = max(len(label) for label, _ in rows)
    cols = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    print(" " * width + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols, strict=True)))
    for label, values in rows:
        print(label.ljust(width) + "  "
              + "  ".join(v.rjust(c) for v, c in zip(values, cols, strict=True)))
    print("\n|  | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, values in rows:
        print(f"| {label} | " + " | ".join(values) + " |")
    for f in figs:
        for note in f.notes:
            print(f"{f.name}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redeploys", type=int, default=5, help="code-only redeploys to time")
    parser.add_argument("--restarts", type=int, default=5, help="restarts to time")
    parser.add_argument("--apps", type=int, default=10,
                        help="apps for the second PSS per app figure (the first is 1)")
    parser.add_argument("--load", type=float, default=5,
                        help="seconds of wrk at each app before the PSS after load")
    parser.add_argument("--piku-tuning", action="store_true",
                        help="pikud's apps get piku's 2 processes x 4 threads, not pikud's "
                             "defaults")
    parser.add_argument("--only", action="append", choices=("granian", "gunicorn", "uwsgi"),
                        help="run only these setups (repeatable)")
    parser.add_argument("--installer", choices=("uv", "pip"), default="uv",
                        help="PIKU_PYTHON_INSTALLER for pikud's builds")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders (logs)")
    args = parser.parse_args()
    only = args.only or ["granian", "gunicorn", "uwsgi"]
    if "uwsgi" in only and not os.access(UWSGI, os.X_OK):
        print(f"{UWSGI} is missing: no uWSGI column (bench/run push installs it as root)",
              file=sys.stderr)
        only.remove("uwsgi")
    started = time.monotonic()
    figs = []
    for which in only:
        print(f"-----> {which}", file=sys.stderr, flush=True)
        if which == "uwsgi":
            figs.append(uwsgi_setup(args))
        else:
            figs.append(pikud_setup(f"pikud ({which})", None if which == "granian" else which,
                                    args))
    report(figs, args, time.monotonic() - started)


if __name__ == "__main__":
    main()
