"""What an app should run: its AppSpec and release -> ProcessSpecs and cron JobSpecs.

Pure: the environment (``release_env``, computed once per change by the
caller) and the ports are given, and a port a new web slot needs comes from
``allocate``, so a table of specs can be checked with no daemon and no
processes (tests/unit/app/test_formation.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from pikud.appspec import WEB_KINDS, AppSpec, supervised_kinds
from pikud.cron import JobSpec, cron_entries, job_settings
from pikud.deploy.servers import server_command
from pikud.paths import Paths
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ProcessSpec

SERVED_KINDS = ("wsgi", "asgi")      # entries that name a Python object, served by an app server


def process_specs(app: str, spec: AppSpec, env: Mapping[str, str], source: Path, paths: Paths,
                  ports: Mapping[str, int], allocate: Callable[[], int],
                  ) -> tuple[dict[str, ProcessSpec], dict[str, int]]:
    """The ProcessSpec of every slot (``app:kind.N``), and the web slots' ports.

    A web slot keeps its port from ``ports``, or takes one from ``allocate``;
    PORT set in ENV serves every web slot. The ports returned are ``ports``
    with the new ones added (a slot scaled away keeps its entry).
    """
    s = spec.settings
    policy = RestartPolicy(s.start_secs, s.backoff_base, s.backoff_max,
                           s.start_retries, s.fatal_cooloff)
    ports = dict(ports)
    specs: dict[str, ProcessSpec] = {}
    for kind in supervised_kinds(spec.procfile):
        command = spec.procfile.entries[kind]
        inherits, backlog = kind == "web" and s.listen_fds, 128
        if kind in SERVED_KINDS:
            server = server_command(kind, command, spec.env, bool(s.idle_timeout))
            command, inherits, backlog = server.command, server.inherits, server.backlog
        for index in range(1, spec.scaling[kind] + 1):
            name = f"{app}:{kind}.{index}"
            process_env = dict(env, PROC_TYPE=kind, PIKU_ROOT=str(paths.root))
            if kind in WEB_KINDS:
                if "PORT" not in spec.env and name not in ports:
                    ports[name] = allocate()
                process_env["PORT"] = spec.env.get("PORT") or str(ports[name])
            specs[name] = ProcessSpec(
                name=name, kind=kind, index=index, command=command,
                env=tuple(sorted(process_env.items())), cwd=source,
                log_path=paths.log_dir(app) / f"{kind}.{index}.log",
                stop_timeout=s.stop_timeout, policy=policy,
                log_max_bytes=s.log_max_bytes, log_backups=s.log_backups,
                port=int(process_env["PORT"]) if kind in WEB_KINDS else None,
                inherits=inherits, listen_backlog=backlog, limits=s.limits.for_kind(kind))
    return specs, ports


def cron_jobs(app: str, spec: AppSpec, env: Mapping[str, str], source: Path,
              paths: Paths) -> list[JobSpec]:
    """The app's cron entries as jobs; raises CronError on a bad schedule or TZ."""
    tz, overlap, timeout = job_settings(spec.env)
    entries = cron_entries(spec.procfile, tz=tz)
    job_env = tuple(sorted(dict(env, PIKU_ROOT=str(paths.root)).items()))
    s = spec.settings
    return [JobSpec(app=app, kind=kind, entry=entry, env=job_env, cwd=source,
                    log_path=paths.log_dir(app) / f"{kind}.log",
                    tz=tz, overlap=overlap, timeout=timeout, stop_timeout=s.stop_timeout,
                    log_max_bytes=s.log_max_bytes, log_backups=s.log_backups,
                    limits=s.limits.for_kind(kind))
            for kind, entry in entries.items()]
