"""Building a release: checkout -> preflight -> runtime build -> release command.

With app users (identity.py) the checkout is the deploy user's (git), the
release is then the app user's while its preflight, build and release step
write it, and the deploy user's again once built: the app's running code
cannot change the Procfile and ENV that pikud reads from it.

Every step runs in the new release directory with the app's environment and
streams its output to ``progress``; the first failure raises and the new
directory is removed, so nothing that is live has changed. Starting the new
processes and switching to them is the App's part.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pikud import identity
from pikud.appsettings import AppSettings
from pikud.appspec import AppSpec, load_spec, process_kinds
from pikud.appusers import give_tree
from pikud.cron.jobs import cron_entries, job_settings
from pikud.deploy.checkout import checkout
from pikud.deploy.releases import Release, ReleaseStore
from pikud.deploy.runtimes import detect
from pikud.deploy.runtimes.base import BuildContext, Runner
from pikud.deploy.servers import servers_to_install
from pikud.deploy.spec import release_env, spec_warnings
from pikud.errors import BuildError, DeployError, ReleaseError
from pikud.paths import Paths
from pikud.procman.children import MARKER
from pikud.procman.enforce import current
from pikud.procman.oneshot import run_once

Progress = Callable[[str], None]
INDENT = "       "


@dataclass(frozen=True)
class PushInfo:
    revision: str
    ref: str = ""
    old: str = ""                   # what the pusher saw ``ref`` at (zeros: a new ref)
    pusher: str = ""
    fingerprint: str = ""
    git_env: dict[str, str] = field(default_factory=dict)


def runner(progress: Progress, error: type[DeployError] = BuildError,
           app: str | None = None) -> Runner:
    """A Runner that streams a command's output, indented, and raises ``error`` on failure.

    Its commands run as ``app``'s user (the build, the preflight and release
    steps: code from the push or from package indexes) or, without ``app``, as
    the deploy user (git): never as root (identity.py)."""
    async def run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
                  on_line: Callable[[str], None] | None = None) -> None:
        def line(text: str) -> None:
            progress(INDENT + text)
            if on_line is not None:
                on_line(text)

        who = identity.current()
        if app is None:
            argv, env = who.as_deploy(argv), {**env, **who.deploy_env()}
        else:
            argv = who.as_app(app, argv)
        info = await run_once(argv, env=env, cwd=cwd, on_line=line)
        if info.code != 0:
            raise error(f"`{shlex.join(argv)}` failed ({info})")
    return run


def limit_lines(spec: AppSpec) -> list[str]:
    """One line per limit in force: which kinds, and how it is enforced here (or why not)."""
    return current().lines({kind: spec.settings.limits.for_kind(kind)
                            for kind in process_kinds(spec.procfile)})


async def run_step(kind: str, spec: AppSpec, env: dict[str, str], source: Path,
                   progress: Progress, error: type[DeployError]) -> None:
    """Run the Procfile's ``preflight`` or ``release`` command, if it has one."""
    command = spec.procfile.entries.get(kind)
    if command is None:
        return
    progress(f"-----> Running {kind}: {command}")
    step_env = dict(env, PROC_TYPE=kind, **{MARKER: f"{spec.name}:{kind}"})
    await runner(progress, error, spec.name)(["/bin/sh", "-c", command], cwd=source,
                                             env=step_env)


async def build_release(paths: Paths, store: ReleaseStore, push: PushInfo | None,
                        base: Release | None, base_env: Mapping[str, str],
                        defaults: AppSettings, overrides: Mapping[str, str],
                        progress: Progress, admit: Callable[[AppSpec], object] = lambda spec: None,
                        ) -> tuple[Release, AppSpec]:
    """Check out ``push`` (or rebuild ``base``'s revision) into a new release and build it.

    ``admit`` refuses (raises) the spec before anything is built: too many processes.
    """
    app = store.app
    revision = push.revision if push else (base.revision if base else "")
    if not revision:
        raise DeployError(f"{app} has no release to rebuild: push to it first")
    number = store.next_number()
    source = store.directory(number)
    started = time.monotonic()
    try:
        progress(f"-----> Checking out {revision[:12]} as release {number}")
        who = identity.current()
        who.give(source, who.deploy_owner(), 0o755)     # git runs as the deploy user
        await checkout(paths.repo(app), revision, source, push.git_env if push else {},
                       base_env, runner(progress))
        await give_tree(source, who.app_owner(app))     # its build and steps write it
        spec = load_spec(paths, app, base_env, defaults, source=source)
        cron_entries(spec.procfile, tz=job_settings(spec.env)[0])   # a bad schedule rejects it
        admit(spec)                                 # so does a formation over the ceilings
        on_demand = bool(spec.settings.idle_timeout)
        for warning in spec_warnings(spec):
            progress(f"-----> Warning: {warning}")
        for line in limit_lines(spec):
            progress(f"-----> {line}")
        env = release_env(spec, paths, base_env, source, None)
        await run_step("preflight", spec, env, source, progress, BuildError)
        runtime = detect(source, spec.procfile)
        servers = servers_to_install(spec.procfile.entries, spec.env, on_demand)
        if servers and runtime.name != "python":
            raise BuildError("wsgi and asgi entries need a Python app (a requirements.txt or "
                             f"pyproject.toml), but this one was detected as {runtime.name}")
        progress(f"-----> Building with the {runtime.name} runtime")
        who.give(paths.env_dir(app), who.deploy_owner(), 0o711 if who.separate else 0o700)
        result = await runtime.build(BuildContext(
            app, source, {**env, **who.build_env(app, paths)}, paths.env_dir(app), progress,
            runner(progress, BuildError, app), servers, who.app_owner(app)))
        env = release_env(spec, paths, base_env, source, result)
        await run_step("release", spec, env, source, progress, ReleaseError)
        await give_tree(source, who.deploy_owner(), seal=True)   # read-only to its code
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, source, True)
        raise
    progress(f"-----> Release {number} built in {time.monotonic() - started:.1f}s")
    release = Release(
        number=number, revision=revision, ref=push.ref if push else (base.ref if base else ""),
        time=time.time(), pusher=push.pusher if push else "",
        fingerprint=push.fingerprint if push else "", runtime=result.runtime,
        env_path=str(result.env_path) if result.env_path else None,
        env_vars=dict(result.env_vars), path_prefix=tuple(result.path_prefix),
        config=dict(overrides))
    return release, spec
