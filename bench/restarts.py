#!/usr/bin/env python3
"""The daemon's memory over many restarts: does it grow?

One `pikud serve` in a temp PIKU_ROOT with APPS apps x 2 `sleep 3600` workers,
then ROUNDS rounds of `POST /apps/NAME/restart` for every app (16 at a time).
After the deploy and after each tenth of the rounds: the daemon's RSS and
PSS (/proc/PID/smaps_rollup) and its open descriptors.

    bench/.venv/bin/python bench/restarts.py                  # 20 apps, 600 rounds
    bench/.venv/bin/python bench/restarts.py --apps 5 --rounds 50
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import pikud
    from pikud.control.client import Client
except ImportError as exc:  # pragma: no cover - a usage error
    sys.exit(f"restarts.py: {exc}; run it with bench/.venv/bin/python (bench/run makes it)")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import measure  # noqa: E402


def memory(pid: int) -> tuple[float, float, int]:
    """RSS and PSS (MiB) and open descriptors of ``pid``."""
    found = {}
    for line in (measure.read_text(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("Rss", "Pss"):
            found[key] = int(value.split()[0]) / 1024
    return found["Rss"], found["Pss"], len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=600)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="br-", dir="/tmp"))
    names = [f"app{i:03d}" for i in range(1, args.apps + 1)]
    for name in names:
        app = root / "apps" / name
        app.mkdir(parents=True)
        (app / "Procfile").write_text("worker: sleep 3600\n")
        (app / "ENV").write_text("PIKU_START_SECS=0\nPIKU_STOP_TIMEOUT=5\n")
        (root / "envs" / name).mkdir(parents=True)
        (root / "envs" / name / "SCALING").write_text("worker: 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKU")}
    # As installed: nginx in front, so no built-in router (and no aiohttp) in the daemon.
    env.update(PIKU_ROOT=str(root), PIKU_PROXY="nginx")
    load_before, started = measure.load_average(), time.monotonic()
    with open(root / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "pikud", "serve"], env=env, cwd=root,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    rows: list[list[str]] = []

    def record(label: str) -> None:
        rss, pss, fds = memory(daemon.pid)
        rows.append([label, f"{time.monotonic() - started:.0f}", f"{rss:.1f}", f"{pss:.1f}",
                     str(fds)])
        measure.progress(f"{label}: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB, {fds} descriptors")

    def each(verb: str) -> None:
        def one(name: str) -> None:
            Client(root / "pikud.sock", timeout=300).request("POST", f"/apps/{name}/{verb}")
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, names))

    def alive() -> None:
        if daemon.poll() is not None:
            raise RuntimeError(f"pikud exited with {daemon.returncode}; see {root}/daemon.log")
    try:
        measure.wait_answering(Client(root / "pikud.sock"), alive, "pikud", 30)
        each("deploy")
        record("deployed")
        for n in range(1, args.rounds + 1):
            each("restart")
            if n % max(1, args.rounds // 10) == 0:
                record(f"after {n} rounds")
    finally:
        if daemon.poll() is None:       # every request has returned: the shutdown stops all
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
    shutil.rmtree(root, ignore_errors=True)
    plain, md = measure.tables(["", "s", "RSS (MiB)", "PSS (MiB)", "descriptors"], rows)
    print(f"pikud from {measure.pikud_source(pikud.__file__)}; {args.apps} apps x 2 workers, "
          f"{args.rounds} rounds of restarting every app ({args.apps * args.rounds} app "
          f"restarts, {2 * args.apps * args.rounds} processes); load average before "
          f"{load_before}, after {measure.load_average()}\n")
    print(plain + "\n\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
