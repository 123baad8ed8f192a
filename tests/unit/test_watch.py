"""FileWatcher: a watch that cannot be made is said, never raised into an app's commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Run in a child: the descriptor limit is lowered to what is open, so inotify_init1 fails
# with EMFILE, as on a server whose user has no inotify instance or descriptor left.
PROBE = """
import asyncio, logging, os, resource, sys
from pathlib import Path
from pikud.watch import FileWatcher

async def main() -> None:
    logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
    import asyncinotify                     # loaded while descriptors are left
    watcher = FileWatcher(lambda app, why: None)
    folder = Path(sys.argv[1])
    opened = len(os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (opened, hard))
    watcher.watch("hello", folder, [])
    watcher.watch("hello", folder, [])
    print("returned")

asyncio.run(main())
"""


def test_a_watch_that_cannot_be_made_is_logged_and_the_watch_call_returns(tmp_path: Path) -> None:
    (tmp_path / "ENV").write_text("")
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "returned"
    warnings = [line for line in lines if line.startswith("WARNING hello: cannot watch")]
    assert len(warnings) == 4, lines        # ENV and SCALING, twice
    assert "no inotify instance or descriptor left: raise fs.inotify.max_user_instances" \
        in warnings[0]
