"""procman/enforce.py: what each way says at push, the argv it wraps, the cgroup files it
writes, and how it finds a delegated cgroup v2 subtree (from /proc-shaped files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pikud.limits import Limits
from pikud.procman.enforce import Cgroups, NoCgroups, Rlimits, delegated

M = 1024 ** 2
PRLIMIT = "/usr/bin/prlimit"
KINDS = {"web": Limits(memory=256 * M, cpu=0.5),
         "worker": Limits(memory=256 * M, tasks=10, nofile=64),
         "clock": Limits()}


def test_rlimits_say_how_each_limit_is_enforced_and_that_cpu_cannot_be() -> None:
    assert Rlimits(PRLIMIT, "no cgroup v2 hierarchy is mounted").lines(KINDS) == [
        "Limit PIKU_MEMORY_MAX 256M on web, worker: enforced as RLIMIT_AS per process: "
        "address space, larger than resident memory; an allocation past it fails",
        "Limit PIKU_CPU_MAX 50% on web: cannot be enforced: no rlimit limits a share of the "
        "CPU (no cgroup v2 hierarchy is mounted)",
        "Limit PIKU_TASKS_MAX 10 on worker: enforced as RLIMIT_NPROC, which the kernel counts "
        f"per user: every process and thread of uid {os.getuid()} (every app of this daemon, "
        "and pikud) counts, so a fork fails once they together reach it",
        "Limit PIKU_NOFILE_MAX 64 on worker: enforced as RLIMIT_NOFILE per process",
    ]


def test_without_prlimit_no_rlimit_is_enforced() -> None:
    lines = Rlimits(None, "x").lines({"web": Limits(nofile=64)})
    assert lines == ["Limit PIKU_NOFILE_MAX 64 on web: cannot be enforced: prlimit "
                     "(util-linux) is not on PATH"]
    assert Rlimits(None, "x").confine("a:web.1", ["/bin/sh"], Limits(nofile=64))[0] == ["/bin/sh"]


def test_rlimits_wrap_the_command_in_prlimit_and_note_them_on_a_failure() -> None:
    enforcer = Rlimits(PRLIMIT, "x")
    limits = KINDS["worker"]
    argv, confinement = enforcer.confine("a:worker.1", ["/bin/sh", "-c", "exec w"], limits)
    assert argv == [PRLIMIT, f"--as={256 * M}", "--nproc=10", "--nofile=64", "--",
                    "/bin/sh", "-c", "exec w"]
    assert enforcer.exceeded(confinement) is None
    assert enforcer.under(confinement) == ("; ran under PIKU_MEMORY_MAX 256M, PIKU_TASKS_MAX 10, "
                                           "PIKU_NOFILE_MAX 64")
    assert enforcer.under(enforcer.confine("a:web.1", [], KINDS["web"])[1]) == (
        "; ran under PIKU_MEMORY_MAX 256M")        # not the CPU share it could not enforce


def test_a_cgroup_per_spawn_with_its_limits_joined_before_the_exec(tmp_path: Path) -> None:
    enforcer = Cgroups(tmp_path, PRLIMIT)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu +pids\n"
    argv, confinement = enforcer.confine("a:worker.1", ["/bin/sh"], KINDS["worker"])
    group = tmp_path / "apps" / "a" / "worker.1.1"
    assert confinement.cgroup == group
    assert argv == ["/bin/sh", "-c", 'echo $$ >"$0" && exec "$@"', str(group / "cgroup.procs"),
                    PRLIMIT, "--nofile=64", "--", "/bin/sh"]
    assert {name: (group / name).read_text() for name in
            ("memory.max", "memory.oom.group", "cpu.max", "pids.max")} == {
        "memory.max": f"{256 * M}\n", "memory.oom.group": "1\n", "cpu.max": "max\n",
        "pids.max": "10\n"}
    assert (tmp_path / "apps" / "a" / "cgroup.subtree_control").exists()
    (group / "memory.events").write_text("low 0\noom 1\noom_kill 1\n")
    assert enforcer.exceeded(confinement) == "exceeded PIKU_MEMORY_MAX 256M"
    again = enforcer.confine("a:web.1", [], KINDS["web"])[1].cgroup
    assert again is not None and (again / "cpu.max").read_text() == "50000 100000\n"
    for path in group.iterdir():
        path.unlink()
    enforcer.release(confinement)
    assert not group.exists()


def test_cgroups_say_how_and_keep_rlimit_nofile(tmp_path: Path) -> None:
    assert Cgroups(tmp_path, PRLIMIT).lines({"worker": KINDS["worker"]}) == [
        "Limit PIKU_MEMORY_MAX 256M on worker: enforced by cgroup v2 memory.max per process "
        "(past it the process is OOM-killed and restarted)",
        "Limit PIKU_TASKS_MAX 10 on worker: enforced by cgroup v2 pids.max per process",
        "Limit PIKU_NOFILE_MAX 64 on worker: enforced as RLIMIT_NOFILE per process",
    ]


def _proc(tmp: Path, own: str, controllers: str) -> tuple[Path, Path]:
    proc, mount = tmp / "proc", tmp / "cgroup"
    proc.mkdir()
    (proc / "cgroup").write_text(f"4:memory:/x\n0::{own}\n")
    (proc / "mountinfo").write_text(
        "25 30 0:22 / /sys rw - sysfs sysfs rw\n"
        f"31 25 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n")
    directory = mount / own.lstrip("/")
    directory.mkdir(parents=True)
    (directory / "cgroup.controllers").write_text(controllers + "\n")
    (directory / "cgroup.subtree_control").write_text("")
    return proc, directory


def test_a_delegated_subtree_is_found(tmp_path: Path) -> None:
    proc, directory = _proc(tmp_path, "/system.slice/pikud.service", "cpu memory pids io")
    assert delegated(proc) == directory
    (directory / "apps").mkdir()
    (directory / "daemon").mkdir()
    (directory / "daemon" / "cgroup.controllers").write_text("cpu memory pids\n")
    (proc / "cgroup").write_text("0::/system.slice/pikud.service/daemon\n")
    assert delegated(proc) == directory       # after a re-exec: it moved itself there


@pytest.mark.parametrize(("own", "controllers", "why"), [
    ("/", "cpu memory pids", "pikud's cgroup / is not delegated to it: Delegate=yes in "
                             "pikud.service"),
    ("/user.slice", "hugetlb", "offers no memory, cpu, pids controller here"),
    ("/user.slice", "memory pids", "offers no cpu controller here"),
])
def test_why_no_subtree(tmp_path: Path, own: str, controllers: str, why: str) -> None:
    proc, _ = _proc(tmp_path, own, controllers)
    with pytest.raises(NoCgroups, match=why.replace("(", r"\(").replace(")", r"\)")):
        delegated(proc)


def test_no_cgroup2_mount(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text("4:memory:/x\n")
    (proc / "mountinfo").write_text("25 30 0:22 / /sys rw - sysfs sysfs rw\n")
    with pytest.raises(NoCgroups, match="no cgroup v2 hierarchy is mounted"):
        delegated(proc)
