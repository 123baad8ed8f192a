"""What a built release runs with, read without the build: its environment and the
warnings its spec gives.

The app layer needs these at every start and change, a build only at a push; they live
apart from pipeline.py so that a daemon that starts its apps (and never builds) does
not import the runtimes (README, "Decisions": imported on first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pikud.appspec import AppSpec, live_env
from pikud.deploy.releases import Release
from pikud.deploy.servers import ignored_settings
from pikud.paths import Paths
from pikud.proxy.site import unknown_key_warnings

if TYPE_CHECKING:
    from pikud.deploy.runtimes.base import BuildResult


def spec_warnings(spec: AppSpec) -> tuple[str, ...]:
    """What is wrong but used anyway, for the push's output and (once) the app's log:
    the parsers' warnings, uWSGI settings the chosen servers ignore, unknown NGINX_* keys."""
    return (*spec.warnings,
            *ignored_settings(spec.procfile.entries, spec.env, bool(spec.settings.idle_timeout)),
            *unknown_key_warnings(spec.env),
            *spec.settings.limits.stray(spec.procfile.entries))


def release_env(spec: AppSpec, paths: Paths, base_env: Mapping[str, str], source: Path,
                build: BuildResult | Release | None) -> dict[str, str]:
    """The environment of the release's processes and steps: live env + the build's."""
    env = live_env(spec, paths, base_env)
    env["PWD"] = str(source)
    if build is not None:
        env.update(build.env_vars)
        if build.path_prefix:
            env["PATH"] = ":".join([*build.path_prefix, env.get("PATH", "")])
    return env
