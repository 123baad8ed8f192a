"""What an app should run: its AppSpec and release -> ProcessSpecs and cron JobSpecs.

Pure: the environment (``release_env``, computed once per change by the
caller) and the web slots' addresses are given, and an address a new web
slot needs (a unix socket's path or a loopback port) comes from
``allocate``, so a table of specs can be checked with no daemon and no
processes (tests/unit/app/test_formation.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pikud.appspec import WEB_KINDS, AppSpec, is_cron, supervised_kinds
from pikud.deploy.servers import server_command
from pikud.paths import Paths
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ProcessSpec
from pikud.procman.sockets import Address

if TYPE_CHECKING:
    from pikud.cron.jobs import JobSpec

SERVED_KINDS = ("wsgi", "asgi")      # entries that name a Python object, served by an app server

JOB_KEYS = {"TZ", "PIKU_CRON_OVERLAP", "PIKU_CRON_TIMEOUT"}    # what job_settings reads
Allocate = Callable[[str, bool], Address]     # (slot, on a unix socket?) -> a new address
Env = tuple[tuple[str, str], ...]


def serves_unix(kind: str, spec: AppSpec) -> bool:
    """Whether ``kind``'s slots serve on unix sockets: wsgi and asgi do, unless the app sets
    PIKU_UPSTREAM=tcp or a fixed PORT. ``web`` binds $PORT itself (piku's contract)."""
    return (kind in SERVED_KINDS and spec.settings.upstream == "unix"
            and "PORT" not in spec.env)


def unix_kinds(spec: AppSpec) -> list[str]:
    """The app's kinds that serve on unix sockets when the front can reach them."""
    return [kind for kind in supervised_kinds(spec.procfile) if serves_unix(kind, spec)]


_pairs: dict[str, tuple[str, str]] = {}     # variable -> the last (name, value) pair made
MAX_PAIRS = 4096                            # names kept; past that the table starts again
MAX_SHARED_VALUE = 256                      # longer values (a key, a certificate) are not kept


def env_pairs(env: Mapping[str, str]) -> Env:
    """``env`` as a sorted tuple of (name, value) pairs, each taken from a table of pairs
    when an equal one was made before.

    Most of every app's environment is the daemon's own, so apps share those
    pairs instead of a copy each (56 bytes a pair, 2.5 KiB per app). The table
    keeps one pair per variable name, so it does not grow with changing values,
    and only short values, so a destroyed app's long ones are not kept alive.
    """
    pairs = []
    for item in sorted(env.items()):
        if len(item[1]) > MAX_SHARED_VALUE:     # the table would hold it after the app is gone
            pairs.append(item)
            continue
        pair = _pairs.get(item[0])
        if pair != item:
            if len(_pairs) >= MAX_PAIRS:
                _pairs.clear()
            pair = _pairs[item[0]] = item
        pairs.append(pair)
    return tuple(pairs)


def slot_env(shared: Env, own: Mapping[str, str]) -> Env:
    """``shared`` (the app's or a kind's environment) with the ``own`` entries of a kind
    (PROC_TYPE) or a slot (its address), which win.

    The daemon holds every running slot's spec, and an app's environment is
    often 50 entries (the daemon's own included): the slots of a kind share one
    tuple, and all of an app's share its pairs, instead of a copy each (3 KiB
    per process).
    """
    if not own:
        return shared
    return tuple(sorted([*(pair for pair in shared if pair[0] not in own), *own.items()]))


def process_specs(app: str, spec: AppSpec, env: Mapping[str, str], source: Path, paths: Paths,
                  addresses: Mapping[str, Address], allocate: Allocate, unix: bool = True,
                  ) -> tuple[dict[str, ProcessSpec], dict[str, Address]]:
    """The ProcessSpec of every slot (``app:kind.N``), and the web slots' addresses.

    A web slot keeps its address from ``addresses`` when it is of the kind it
    needs, else takes one from ``allocate``; PORT set in ENV serves every web
    slot. The addresses returned are ``addresses`` with the new ones added (a
    slot scaled away keeps its entry). A slot on a unix socket finds its path
    in $PIKU_SOCKET; one on a port, in $PORT. ``unix`` False: the front cannot
    reach the sockets folder yet, and every slot serves on a port.
    """
    s = spec.settings
    policy = RestartPolicy(s.start_secs, s.backoff_base, s.backoff_max,
                           s.start_retries, s.fatal_cooloff)
    addresses = dict(addresses)
    specs: dict[str, ProcessSpec] = {}
    app_env = env_pairs(dict(env, PIKU_ROOT=str(paths.root)))
    for kind in supervised_kinds(spec.procfile):
        command = spec.procfile.entries[kind]
        unix_slot = unix and serves_unix(kind, spec)
        inherits, backlog = kind == "web" and s.listen_fds, 128
        if kind in SERVED_KINDS:
            server = server_command(kind, command, spec.env, bool(s.idle_timeout), unix_slot)
            command, inherits, backlog = server.command, server.inherits, server.backlog
        kind_env = slot_env(app_env, {"PROC_TYPE": kind})
        limits = s.limits.for_kind(kind)
        for index in range(1, spec.scaling[kind] + 1):
            name = f"{app}:{kind}.{index}"
            own: dict[str, str] = {}
            address: Address | None = None
            if kind in WEB_KINDS:
                address = addresses.get(name)
                if "PORT" in spec.env:
                    address = int(spec.env["PORT"])
                elif address is None or isinstance(address, str) != unix_slot:
                    address = addresses[name] = allocate(name, unix_slot)
                if isinstance(address, str):
                    own["PIKU_SOCKET"] = address
                else:
                    own["PORT"] = str(address)
            specs[name] = ProcessSpec(
                name=name, kind=kind, index=index, command=command,
                env=slot_env(kind_env, own), cwd=source,
                log_path=paths.log_dir(app) / f"{kind}.{index}.log",
                stop_timeout=s.stop_timeout, policy=policy,
                log_max_bytes=s.log_max_bytes, log_backups=s.log_backups,
                port=address if isinstance(address, int) else None,
                socket=address if isinstance(address, str) else None,
                inherits=inherits, listen_backlog=backlog, limits=limits)
    return specs, addresses


def cron_jobs(app: str, spec: AppSpec, env: Mapping[str, str], source: Path,
              paths: Paths) -> list[JobSpec]:
    """The app's cron entries as jobs; raises CronError on a bad schedule or TZ.

    An app with no cron entry and none of the keys jobs read has none, and cron's
    modules stay unimported (the daemon stays light: see README)."""
    if not any(map(is_cron, spec.procfile.entries)) and not JOB_KEYS & spec.env.keys():
        return []
    from pikud.cron.jobs import JobSpec, cron_entries, job_settings
    tz, overlap, timeout = job_settings(spec.env)
    entries = cron_entries(spec.procfile, tz=tz)
    job_env = env_pairs(dict(env, PIKU_ROOT=str(paths.root)))
    s = spec.settings
    return [JobSpec(app=app, kind=kind, entry=entry, env=job_env, cwd=source,
                    log_path=paths.log_dir(app) / f"{kind}.log",
                    tz=tz, overlap=overlap, timeout=timeout, stop_timeout=s.stop_timeout,
                    log_max_bytes=s.log_max_bytes, log_backups=s.log_backups,
                    limits=s.limits.for_kind(kind))
            for kind, entry in entries.items()]
