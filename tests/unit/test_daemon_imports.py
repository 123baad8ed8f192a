"""What the daemon's start imports: the new image after a re-exec pays for all of it
before its router accepts again (issue #13), and every pikud holds it in memory (#16)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pikud.reexec import ReexecRefused, preflight

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


BUILD = ("import sys, json, pikud.launch; pikud.launch.hold_off_ssl('asyncio'); "
         "from pathlib import Path; import pikud.deploy.pipeline; "
         "from pikud.deploy.runtimes import envcache; "
         "envcache.content_key(['python'], [Path(sys.executable)]); "
         "print(json.dumps(sorted(sys.modules)))")


def test_a_build_leaves_openssl_out_of_the_daemon() -> None:
    """The build pipeline, every runtime and an environment's content key, imported as a
    daemon behind nginx imports them (ssl held off: launch.py), need no hashlib, which
    sets up OpenSSL's digests and would map libcrypto from the first build on."""
    result = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True,
                            cwd=REPO, timeout=DEADLINE, check=True)
    imported = json.loads(result.stdout)
    assert "pikud.deploy.runtimes.envcache" in imported
    assert not {"hashlib", "_hashlib", "_ssl"} & set(imported)


@pytest.mark.parametrize("module", ["proxy/router.py", "deploy/pipeline.py", "cron/scheduler.py",
                                    "cron/jobs.py"])
async def test_a_reexec_preflight_imports_what_the_daemon_imports_only_at_first_use(
        module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pikud.daemon leaves the router (and aiohttp) to a daemon that routes, the build to
    the first deploy and cron's scheduler to the first app with cron entries; the
    preflight of a re-exec still imports them, so new code that cannot route, build or
    schedule is refused beforehand."""
    shutil.copytree(REPO / "pikud", tmp_path / "pikud",
                    ignore=shutil.ignore_patterns("__pycache__"))
    broken = tmp_path / "pikud" / module
    broken.write_text(broken.read_text() + "raise ImportError('broken on purpose')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReexecRefused, match="broken on purpose"):
        await preflight("uvloop")
