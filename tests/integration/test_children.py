"""procman/children.py against real processes, without a daemon."""

from __future__ import annotations

import subprocess
import sys
import time

from pikud.procman.children import descendants

# A process whose threads start and end all the time: /proc/PID/task changes under a walk.
CHURN = ("import threading\n"
         "while True:\n"
         "    t = threading.Thread(target=lambda: None); t.start(); t.join()\n")


def test_walking_a_process_whose_threads_come_and_go_closes_what_it_opens() -> None:
    """A thread that ends between the listing of /proc/PID/task and the read of its
    children file ends that walk early; the listing is closed all the same (an unclosed
    one is a ResourceWarning, an error under this suite's filterwarnings)."""
    child = subprocess.Popen([sys.executable, "-c", CHURN])
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert child.pid in descendants(child.pid)
    finally:
        child.kill()
        child.wait()
