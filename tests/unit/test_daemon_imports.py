"""What the daemon's start imports: the new image after a re-exec pays for all of it
before its router accepts again (issue #13), and every pikud holds it in memory (#16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60.0
LOADED = "import sys, pikud.daemon, json; print(json.dumps(sorted(sys.modules)))"


def test_the_daemon_imports_jinja2_and_croniter_only_when_the_work_needs_them() -> None:
    """jinja2 is for writing nginx sites, croniter for apps with cron entries."""
    result = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True,
                            cwd=REPO, timeout=DEADLINE, check=True)
    imported = json.loads(result.stdout)
    assert "pikud.daemon" in imported
    assert not [name for name in imported
                if name.split(".")[0] in ("jinja2", "croniter", "dateutil")]
