"""PIKU_*_MAX on real processes: rlimits under a real daemon (these machines have cgroup v1
and an empty cgroup2 mount), and cgroup v2 on a hierarchy the test mounts, where it can."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pikud.limits import Limits
from pikud.procman import enforce
from pikud.procman.enforce import CONTROLLERS, Cgroups, Rlimits
from tests.conftest import FAST, Pikud, wait_for
from tests.integration.inprocess import Harness

PY = sys.executable
HOG = f'{PY} -c "import time; time.sleep(0.1); bytearray(200 * 2**20)"'
OPENER = f"{PY} -c \"import os; [os.open('/dev/null', os.O_RDONLY) for _ in range(100)]\""
LIMITS = ("PIKU_MEMORY_MAX=1G\nPIKU_MEMORY_MAX_HOG=64M\nPIKU_NOFILE_MAX=64\n"
          "PIKU_NOFILE_MAX_OPENER=32\nPIKU_NOFILE_MAX_CRON1=16\nPIKU_CPU_MAX=50%\n")


def test_rlimits_stop_an_allocation_and_an_open_and_ps_and_logs_say_under_what(
        pikud: Pikud) -> None:
    pikud.add_app("capped", f"hog: {HOG}\nopener: {OPENER}\ncalm: sleep 300\n"
                  f"cron1: @reboot {OPENER}\n",
                  FAST + LIMITS + "PIKU_START_RETRIES=1\nPIKU_FATAL_COOLOFF=600\n")
    pikud.api("POST", "/apps/capped/deploy")
    hog = pikud.wait_state("capped", "capped:hog.1", "FATAL")
    assert hog["last_exit"] == ("exit status 1; ran under PIKU_MEMORY_MAX_HOG 64M, "
                                "PIKU_NOFILE_MAX 64")
    assert "MemoryError" in pikud.log_text("capped", "hog.1")
    assert ("pikud: capped:hog.1 exit status 1; ran under PIKU_MEMORY_MAX_HOG 64M, "
            "PIKU_NOFILE_MAX 64 after") in pikud.log_text("capped", "hog.1")
    opener = pikud.wait_state("capped", "capped:opener.1", "FATAL")
    assert opener["last_exit"].endswith("ran under PIKU_MEMORY_MAX 1G, PIKU_NOFILE_MAX_OPENER 32")
    assert "[Errno 24] Too many open files" in pikud.log_text("capped", "opener.1")

    cron = wait_for(lambda: "run ended:" in (log := pikud.log_text("capped", "cron1")) and log,
                    10, "the cron run")
    assert "[Errno 24] Too many open files" in cron
    assert ("run ended: exit status 1; ran under PIKU_MEMORY_MAX 1G, PIKU_NOFILE_MAX_CRON1 16"
            in cron), cron

    calm = pikud.wait_state("capped", "capped:calm.1", "RUNNING")
    assert calm["limits"] == {"PIKU_MEMORY_MAX": "1G", "PIKU_CPU_MAX": "50%",
                              "PIKU_NOFILE_MAX": "64"}
    with open(f"/proc/{calm['pid']}/limits") as f:
        rows = {line[:26].strip(): line[26:].split()[:2] for line in f}
    assert rows["Max address space"] == [str(2 ** 30)] * 2
    assert rows["Max open files"] == ["64", "64"]
    ps = pikud.cli("ps", "capped", check=True).stdout
    assert "LIMITS" in ps and "mem 1G cpu 50% files 3/64" in ps, ps
    assert "exit status 1; ran under PIKU_MEMORY_MAX_HOG 64M" in ps


def test_a_task_limit_below_what_a_server_runs_is_refused(pikud: Pikud) -> None:
    pikud.add_app("few", "wsgi: app:application\n", "PIKU_TASKS_MAX_WSGI=1\n")
    with pytest.raises(Exception, match="PIKU_TASKS_MAX_WSGI: a wsgi process runs 2 processes"):
        pikud.api("POST", "/apps/few/deploy")


# -- cgroup v2 ---------------------------------------------------------------

def _cgroup2(tmp: Path) -> Path:
    """A cgroup2 hierarchy mounted at ``tmp`` with the memory, cpu and pids controllers
    offered to a fresh child cgroup, or a skip with the exact reason."""
    if os.geteuid() != 0:
        pytest.skip("mounting cgroup2 needs root")
    mounted = subprocess.run(["mount", "-t", "cgroup2", "none", str(tmp)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t cgroup2 failed: {mounted.stderr.strip()}")
    offered = (tmp / "cgroup.controllers").read_text().split()
    missing = [c for c in CONTROLLERS if c not in offered]
    if missing:
        subprocess.run(["umount", str(tmp)], check=True)
        pytest.skip(f"the cgroup2 hierarchy offers {offered or 'no controllers'}, not "
                    f"{', '.join(missing)}: they are bound to cgroup v1 hierarchies here")
    (tmp / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
    root = tmp / "pikud-test"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "cg"
    mount.mkdir()
    root = _cgroup2(mount)
    try:
        yield root
    finally:
        for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_dir():
                path.rmdir()
        root.rmdir()
        subprocess.run(["umount", str(mount)], check=True)


async def test_cgroup_memory_max_kills_the_slot_and_the_exit_says_which_limit(
        cgroup_root: Path, harness: Harness) -> None:
    enforce.use(Cgroups(cgroup_root, shutil.which("prlimit")))
    try:
        limits = Limits(memory=64 * 2 ** 20, cpu=0.5, tasks=16)
        hog = harness.process(replace(harness.spec(HOG), limits=limits))
        hog.start()
        await harness.events.nth("t:worker.1", "BACKOFF")
        assert hog.last_exit == "killed by SIGKILL; exceeded PIKU_MEMORY_MAX 64M"
        calm = harness.process(replace(harness.spec("sleep 300", "t:calm.1"), limits=limits))
        calm.start()
        await harness.events.nth("t:calm.1", "RUNNING")
        assert calm.confinement is not None and calm.confinement.cgroup is not None
        assert calm.child is not None
        group = calm.confinement.cgroup
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (group / "pids.max").read_text().strip() == "16"
        assert str(calm.child.pid) in (group / "cgroup.procs").read_text().split()
        async with asyncio.timeout(10):
            await asyncio.gather(hog.stop(), calm.stop())
        assert not group.exists()
    finally:
        enforce.use(Rlimits(shutil.which("prlimit"), "pikud did not look for cgroup v2"))
