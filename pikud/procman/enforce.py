"""Enforcing an app's limits (pikud.limits) on each process a slot spawns.

Two ways, chosen once when the daemon starts (``detect``):

- cgroup v2, when pikud has a subtree of its own (systemd's ``Delegate=yes``):
  the daemon moves itself to ROOT/daemon, and each spawn gets a cgroup
  ROOT/apps/APP/KIND.N.SEQ with memory.max (memory.swap.max 0,
  memory.oom.group 1: the whole slot is killed, then restarted by the
  backoff), cpu.max and pids.max. An OOM kill in it (memory.events) is
  reported as ``exceeded PIKU_MEMORY_MAX 256M``.
- rlimits otherwise: RLIMIT_AS for memory (address space, not resident
  memory: an allocation past it fails), RLIMIT_NPROC for tasks (counted per
  uid by the kernel), nothing for a CPU share.

RLIMIT_NOFILE limits open files either way (a cgroup has no such limit).
"""

# Design notes: the limits are set by exec wrappers in front of the command,
# not by a preexec_fn or by prlimit(2) on the pid once Popen returns. A
# preexec_fn takes every such spawn off the vfork path (FACTS.md) and is not
# safe beside the loop's threads; a prlimit after the spawn races with what
# the shell forks first. ``prlimit --as=N -- CMD`` (util-linux) sets its own
# limits and execs, and ``sh -c 'echo $$ >PROCS && exec "$@"'`` moves itself
# into the cgroup: the app's first instruction runs confined, nothing it
# forks escapes, and the pid stays the one spawn() returned. A spawn has its
# own cgroup because two generations of one slot overlap during a switch.

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pikud import identity
from pikud.limits import Limits
from pikud.procman.children import descendants
from pikud.programs import which

log = logging.getLogger(__name__)

CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD = 100_000            # microseconds: cpu.max's default period
_RLIMITS = {"memory": "--as", "tasks": "--nproc", "nofile": "--nofile"}


@dataclass(frozen=True)
class Confinement:
    """One spawn's limits and, under cgroups, its cgroup and OOM kills before it ran."""

    limits: Limits
    cgroup: Path | None = None
    oom_kills: int = 0


class Rlimits:
    """Limits as rlimits, set by prlimit(1) before the command execs."""

    def __init__(self, prlimit: str | None, no_cgroups: str) -> None:
        self.prlimit = prlimit
        self.no_cgroups = no_cgroups        # why cgroup v2 is not used, for push and logs

    def how(self, name: str) -> tuple[bool, str]:
        """Whether the limit ``name`` (a Limits field) is enforced here, and how (or why not)."""
        if name == "cpu":
            return False, ("cannot be enforced: no rlimit limits a share of the CPU "
                           f"({self.no_cgroups})")
        if self.prlimit is None:
            return False, "cannot be enforced: prlimit (util-linux) is not on PATH"
        return True, {
            "memory": "enforced as RLIMIT_AS per process: address space, larger than resident "
                      "memory; an allocation past it fails",
            "tasks": "enforced as RLIMIT_NPROC, which the kernel counts per user: every process "
                     "and thread of the app's own user counts (app users: pikud runs as root), "
                     "so a fork fails once the app's processes together reach it"
                     if identity.current().separate else
                     f"enforced as RLIMIT_NPROC, which the kernel counts per user: every process "
                     f"and thread of uid {os.getuid()} (every app of this daemon, and pikud) "
                     "counts, so a fork fails once they together reach it",
            "nofile": "enforced as RLIMIT_NOFILE per process",
        }[name]

    def lines(self, kinds: Mapping[str, Limits]) -> list[str]:
        """One line per limit in force: its key and value, the kinds, and how it is enforced."""
        grouped: dict[tuple[str, str], list[str]] = {}
        for kind, limits in kinds.items():
            for name in limits.set():
                grouped.setdefault((name, limits.named(name)), []).append(kind)
        return [f"Limit {named} on {', '.join(names)}: {self.how(name)[1]}"
                for (name, named), names in grouped.items()]

    def _rlimit_argv(self, limits: Limits, names: Sequence[str]) -> list[str]:
        options = [f"{_RLIMITS[name]}={getattr(limits, name)}" for name in names
                   if getattr(limits, name) is not None]
        if not options or self.prlimit is None:
            return []
        return [self.prlimit, *options, "--"]

    def confine(self, slot: str, argv: list[str], limits: Limits,
                ) -> tuple[list[str], Confinement]:
        """``argv`` wrapped so it runs under ``limits``, and what to check after it ended."""
        return self._rlimit_argv(limits, list(_RLIMITS)) + argv, Confinement(limits)

    def adopted(self, pid: int, limits: Limits) -> Confinement | None:
        """The confinement of a process a previous image of the daemon spawned."""
        return Confinement(limits) if limits else None

    def exceeded(self, confinement: Confinement) -> str | None:
        """Why the spawn ended, when a limit ended it: ``exceeded PIKU_MEMORY_MAX 256M``."""
        return None

    def note(self, confinement: Confinement | None, code: int | None) -> str:
        """What to add to a spawn's exit: ``; exceeded PIKU_MEMORY_MAX 256M`` when a cgroup
        limit ended it; for a failure under rlimits, the ones it ran under."""
        if confinement is None:
            return ""
        exceeded = self.exceeded(confinement)
        if exceeded:
            return f"; {exceeded}"
        return self.under(confinement) if code != 0 else ""

    def under(self, confinement: Confinement) -> str:
        """What to add to a failed spawn's exit: the rlimits it ran under, whose
        breach the kernel does not report (the app's own error says it)."""
        names = [name for name in confinement.limits.set() if self.how(name)[0]]
        if not names:
            return ""
        return "; ran under " + ", ".join(confinement.limits.named(name) for name in names)

    def usage(self, confinement: Confinement | None, pid: int) -> dict[str, int]:
        """What ps shows beside the limits: tasks (processes) and open files of ``pid``."""
        used = {"tasks": len(descendants(pid))}
        with contextlib.suppress(OSError):
            used["nofile"] = len(os.listdir(f"/proc/{pid}/fd"))
        return used

    def release(self, confinement: Confinement | None) -> None:
        """The spawn's processes are gone: drop what it was given."""


class Cgroups(Rlimits):
    """Limits in a cgroup v2 subtree delegated to pikud (``root``)."""

    def __init__(self, root: Path, prlimit: str | None) -> None:
        super().__init__(prlimit, "")
        self.root = root
        self.apps = root / "apps"
        self._sequence = itertools.count(1)
        self.apps.mkdir(exist_ok=True)
        for parent in (root, self.apps):
            _enable(parent)

    def how(self, name: str) -> tuple[bool, str]:
        if name == "nofile":
            return super().how(name)
        return True, {"memory": "enforced by cgroup v2 memory.max per process (past it the "
                                "process is OOM-killed and restarted)",
                      "cpu": "enforced by cgroup v2 cpu.max per process",
                      "tasks": "enforced by cgroup v2 pids.max per process"}[name]

    def confine(self, slot: str, argv: list[str], limits: Limits,
                ) -> tuple[list[str], Confinement]:
        app, _, rest = slot.partition(":")
        app_dir = self.apps / app
        if not app_dir.is_dir():
            app_dir.mkdir(exist_ok=True)
            _enable(app_dir)
        while True:         # a re-exec starts the count again beside adopted processes
            cgroup = app_dir / f"{rest}.{next(self._sequence)}"
            try:
                cgroup.mkdir()
                break
            except FileExistsError:
                continue
        memory = "max" if limits.memory is None else str(limits.memory)
        _write(cgroup / "memory.max", memory)
        if limits.memory is not None:
            _write(cgroup / "memory.oom.group", "1")
            if (cgroup / "memory.swap.max").exists():
                _write(cgroup / "memory.swap.max", "0")
        _write(cgroup / "cpu.max", "max" if limits.cpu is None
               else f"{max(int(limits.cpu * CPU_PERIOD), 1000)} {CPU_PERIOD}")
        _write(cgroup / "pids.max", "max" if limits.tasks is None else str(limits.tasks))
        join = ["/bin/sh", "-c", 'echo $$ >"$0" && exec "$@"', str(cgroup / "cgroup.procs")]
        wrapped = join + self._rlimit_argv(limits, ["nofile"]) + argv
        return wrapped, Confinement(limits, cgroup, _oom_kills(cgroup))

    def adopted(self, pid: int, limits: Limits) -> Confinement | None:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                path = next(line[3:].strip() for line in f if line.startswith("0::"))
        except (OSError, StopIteration):
            return None
        parts = path.split("/")
        cgroup = self.apps.joinpath(*parts[-2:])
        if len(parts) < 3 or parts[-3] != "apps" or not cgroup.is_dir():
            return None             # spawned with no limits: in the daemon's cgroup
        return Confinement(limits, cgroup, _oom_kills(cgroup))

    def exceeded(self, confinement: Confinement) -> str | None:
        if confinement.cgroup is None or confinement.limits.memory is None:
            return None
        if _oom_kills(confinement.cgroup) > confinement.oom_kills:
            return f"exceeded {confinement.limits.named('memory')}"
        return None

    def under(self, confinement: Confinement) -> str:
        return ""       # a cgroup's breach is seen (exceeded), or was none

    def usage(self, confinement: Confinement | None, pid: int) -> dict[str, int]:
        used = super().usage(confinement, pid)
        if confinement is not None and confinement.cgroup is not None:
            with contextlib.suppress(OSError, ValueError):
                used["tasks"] = int((confinement.cgroup / "pids.current").read_text())
                used["memory"] = int((confinement.cgroup / "memory.current").read_text())
        return used

    def release(self, confinement: Confinement | None) -> None:
        if confinement is None or confinement.cgroup is None:
            return
        try:
            confinement.cgroup.rmdir()
        except OSError as exc:      # a process escaped the stop: the cgroup stays, empty later
            log.warning("cgroup %s not removed: %s", confinement.cgroup, exc.strerror)


def _write(path: Path, value: str) -> None:
    path.write_text(value + "\n")


def _enable(cgroup: Path) -> None:
    """Let the children of ``cgroup`` use the memory, cpu and pids controllers."""
    _write(cgroup / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))


def _oom_kills(cgroup: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in (cgroup / "memory.events").read_text().splitlines():
            event, _, count = line.partition(" ")
            if event == "oom_kill":
                return int(count)
    return 0


class NoCgroups(Exception):
    """Why the cgroup v2 way is not available (a sentence for the push and the log)."""


def _cgroup2_mount(mountinfo: str) -> Path | None:
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return Path(before.split()[4])
    return None


def delegated(proc: Path = Path("/proc/self")) -> Path:
    """The cgroup v2 directory delegated to this process, or NoCgroups saying why not."""
    own = [line[3:] for line in (proc / "cgroup").read_text().splitlines()
           if line.startswith("0::")]
    mount = _cgroup2_mount((proc / "mountinfo").read_text())
    if not own or mount is None:
        raise NoCgroups("no cgroup v2 hierarchy is mounted")
    directory = mount / own[0].lstrip("/")
    if directory.name == "daemon" and (directory.parent / "apps").is_dir():
        directory = directory.parent        # set up by this daemon's previous image
    offered = set((directory / "cgroup.controllers").read_text().split())
    missing = [c for c in CONTROLLERS if c not in offered]
    if missing:
        raise NoCgroups(f"the cgroup v2 hierarchy at {mount} offers no {', '.join(missing)} "
                        "controller here: bound to cgroup v1, or not delegated")
    if own[0] == "/" or not os.access(directory / "cgroup.subtree_control", os.W_OK):
        raise NoCgroups(f"pikud's cgroup {own[0]} is not delegated to it: Delegate=yes in "
                        "pikud.service")
    return directory


def take(root: Path) -> Cgroups:
    """Move the daemon into ROOT/daemon (a cgroup with processes cannot give controllers
    to its children) and set up ROOT/apps."""
    (root / "daemon").mkdir(exist_ok=True)
    _write(root / "daemon" / "cgroup.procs", str(os.getpid()))
    return Cgroups(root, which("prlimit"))


def detect() -> Rlimits:
    """The way limits are enforced on this machine, logged once."""
    prlimit = which("prlimit")
    try:
        enforcer: Rlimits = take(delegated())
    except NoCgroups as exc:
        enforcer = Rlimits(prlimit, str(exc))
    except OSError as exc:
        enforcer = Rlimits(prlimit, f"cgroup v2 could not be set up: {exc}")
    if isinstance(enforcer, Cgroups):
        log.info("limits: enforced through cgroup v2 in %s", enforcer.root)
    else:
        log.info("limits: enforced through rlimits (%s)", enforcer.no_cgroups)
    return enforcer


_current: list[Rlimits] = []


def use(enforcer: Rlimits) -> None:
    """Make ``enforcer`` the way every slot's limits are enforced (the daemon, at start)."""
    _current[:] = [enforcer]


def current() -> Rlimits:
    """The way set by ``use``; rlimits where no daemon looked for cgroup v2 (a test)."""
    if not _current:
        _current.append(Rlimits(which("prlimit"), "pikud did not look for cgroup v2"))
    return _current[0]
