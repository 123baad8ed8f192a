"""The CLI's start-up: `piku apps` against a bare `python -c pass` of the same interpreter.

Run by ``bench/run cli``. A ``pikud serve`` in a temp PIKU_ROOT with no apps;
then, taking turns, ``--runs`` wall times of ``python -c pass`` and of
``python -m pikud.cli apps`` (what the `piku` script and sshd's forced command
run), each a fresh process of the same interpreter; the medians and their ratio
(issue #16's target: at most 5). The daemon is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.measure import load_average  # noqa: E402
from bench.wsgi import CLI, start_pikud, stop_pikud  # noqa: E402


def wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True, timeout=60)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command")
    args = parser.parse_args()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pkc-", dir="/tmp") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIKU")}
        env["PIKU_ROOT"] = str(root)
        daemon = None
        with open(root / "pikud.log", "wb") as log:
            try:
                daemon = start_pikud(root, env, log)
                bare, apps = [], []
                for _ in range(args.runs):
                    bare.append(wall([sys.executable, "-c", "pass"], env))
                    apps.append(wall([*CLI, "apps"], env))
            finally:
                stop_pikud(notes, daemon, root)
    b, a = statistics.median(bare) * 1000, statistics.median(apps) * 1000
    print(f"CPython {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{load_average()}; medians of {args.runs} runs each, taking turns")
    print(f"python -c pass     {b:6.1f} ms")
    print(f"piku apps          {a:6.1f} ms   ({a / b:.1f}x python -c pass; target <= 5x)")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
