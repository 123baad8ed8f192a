"""Push-to-running time of a small Python app: a first push against code-only redeploys.

Run by ``bench/run push``. It starts its own pikud in a temp PIKU_ROOT and
pushes over the local transport (``remote.piku.receivepack``, no ssh), timing
each ``git push`` from its start until the new code answers HTTP on loopback.
The app has a requirements.txt naming a local wheel, so pip really runs but
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.apps import get, git, push, python_app  # noqa: E402  (the e2e tests' sample app)
from tests.waiting import wait_for  # noqa: E402

CLI = [sys.executable, "-m", "pikud.cli"]


def answered(probe):  # type: ignore[no-untyped-def]
    """``probe`` as a predicate: a daemon or app still booting counts as "not yet"."""
    def attempt():  # type: ignore[no-untyped-def]
        try:
            return probe()
        except (OSError, urllib.error.URLError, ValueError, KeyError, StopIteration):
            return None
    return attempt


def web_port(env: dict[str, str], app: str) -> int:
    out = subprocess.run([*CLI, "ps", app, "--json"], env=env, capture_output=True, text=True)
    procs = json.loads(out.stdout)["processes"]
    return next(p["port"] for p in procs if p["kind"] == "web" and p["state"] == "RUNNING")


def timed_push(work: Path, env: dict[str, str], app: str, version: str) -> float:
    started = time.monotonic()
    push(work, env)
    wait_for(answered(lambda: get(web_port(env, app), timeout=1).startswith(version)), 60,
             "the new code", interval=0.01)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redeploys", type=int, default=5, help="code-only redeploys to time")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pkb-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKU")}
    env["PIKU_ROOT"] = str(root)
    log = open(root.parent / f"{root.name}.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "pikud", "serve"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(answered(lambda: (root / "pikud.sock").exists() and subprocess.run(
            [*CLI, "apps"], env=env, capture_output=True).returncode == 0), 20, "pikud")
        work = python_app(root.parent / f"{root.name}-app", "v0")
        git(work, "remote", "add", "piku", "bench")
        git(work, "config", "remote.piku.receivepack", " ".join(CLI) + " git-receive-pack")
        first = timed_push(work, env, "bench", "v0")
        redeploys = []
        for n in range(1, args.redeploys + 1):
            python_app(work, f"v{n}")
            redeploys.append(timed_push(work, env, "bench", f"v{n}"))
        python_app(work, "deps", extra={"requirements.txt":
                                        "./wheels/tinypkg-1.0-py3-none-any.whl\n# changed\n"})
        deps = timed_push(work, env, "bench", "deps")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.parent / f"{root.name}-app", ignore_errors=True)
        (root.parent / f"{root.name}.log").unlink(missing_ok=True)
    median = statistics.median(redeploys)
    rows = [
        ("first push (new virtualenv + pip)", f"{first:.2f} s"),
        (f"code-only redeploy (median of {len(redeploys)})", f"{median:.2f} s"),
        ("  fastest / slowest", f"{min(redeploys):.2f} s / {max(redeploys):.2f} s"),
        ("dependency change (new virtualenv + pip)", f"{deps:.2f} s"),
        ("first push / code-only redeploy", f"{first / median:.1f}x (target: >= 3x)"),
    ]
    print(f"pikud push-to-running on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()})")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("\n| measurement | time |\n|---|---|")
    for name, value in rows:
        print(f"| {name.strip()} | {value} |")


if __name__ == "__main__":
    main()
