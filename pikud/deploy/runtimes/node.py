"""Node: package.json, installed by npm (or yarn/pnpm via ``NODE_PACKAGE_MANAGER``).

The install runs in the release directory, as the app's own install scripts
expect. Its ``node_modules`` is then moved to ``envs/APP/node-<key>`` and
linked back into the release, so the next release with the same package.json
and lock file links the same directory instead of installing again.
"""

# Design notes:
# - The key covers package.json, the manager's lock file, the manager and node's
#   major version (native modules are built for one ABI).
# - npm ci when a lock file exists (package-lock.json or npm-shrinkwrap.json),
#   else npm install; yarn and pnpm with --frozen-lockfile when their lock exists.
# - On reuse the app's own install scripts (postinstall, prepare) do not run
#   again: their output belongs in the release step (`release: npm run build`).
# - NODE_VERSION is checked against the node on PATH; pikud does not install
#   other node versions (piku's nodeenv support is out of scope).
# - A node_modules checked into the repository is installed into in place and
#   not shared.

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path

from pikud.appspec import Procfile
from pikud.deploy.runtimes.base import BuildContext, BuildResult
from pikud.deploy.runtimes.envcache import build_once, content_key, shown
from pikud.deploy.runtimes.tools import parse_version, probe, require, version_matches
from pikud.errors import BuildError

MANAGER_KEY = "NODE_PACKAGE_MANAGER"
VERSION_KEY = "NODE_VERSION"
MANAGERS = ("npm", "yarn", "pnpm")
LOCKS = {"npm": ("package-lock.json", "npm-shrinkwrap.json"),
         "yarn": ("yarn.lock",), "pnpm": ("pnpm-lock.yaml",)}
MODULES = "node_modules"


def package_manager(env: Mapping[str, str]) -> str:
    """``NODE_PACKAGE_MANAGER``: npm (the default), yarn or pnpm."""
    manager = env.get(MANAGER_KEY, "").strip() or "npm"
    if manager not in MANAGERS:
        raise BuildError(f"{MANAGER_KEY}={manager}: expected npm, yarn or pnpm")
    return manager


def check_node_version(wanted: str | None, reported: str) -> str:
    """The node version (``20.11.1``) if it satisfies ``NODE_VERSION``; else BuildError."""
    actual = parse_version(reported)
    if actual is None:
        raise BuildError(f"node --version said {reported.strip()!r}, not a version")
    shown_version = ".".join(map(str, actual))
    if wanted is None or not wanted.strip():
        return shown_version
    request = parse_version(wanted)
    if request is None:
        raise BuildError(f"{VERSION_KEY}={wanted}: expected a version such as 20, 20.11 "
                         "or 20.11.1")
    if not version_matches(request, actual):
        raise BuildError(f"{VERSION_KEY}={wanted}: node on this server is {shown_version} "
                         "(pikud uses the node on PATH and does not install other versions)")
    return shown_version


def install_argv(manager: str, tool: str, lock: str | None) -> list[str]:
    """The install command for ``manager`` (at path ``tool``), given the lock file found."""
    if manager == "npm":
        return [tool, "ci" if lock else "install", "--no-audit", "--no-fund"]
    return [tool, "install", *(["--frozen-lockfile"] if lock else [])]


class Node:
    name = "node"

    def detect(self, source: Path, procfile: Procfile) -> bool:
        return (source / "package.json").is_file()

    async def build(self, ctx: BuildContext) -> BuildResult:
        manager = package_manager(ctx.env)
        tools = require(dict.fromkeys(["node", manager]), ctx.env,
                        needed_by=f"Node (package.json, {manager})")
        reported = await probe([tools["node"], "--version"], ctx.env)
        version = check_node_version(ctx.env.get(VERSION_KEY), reported or "")
        lock = next((name for name in LOCKS[manager] if (ctx.source / name).is_file()), None)
        argv = install_argv(manager, tools[manager], lock)
        env = {**ctx.env, "npm_config_update_notifier": "false"}
        ctx.progress(f"Node {version}, {manager}" + (f" with {lock}" if lock else ""))
        link = ctx.source / MODULES
        if link.exists() or link.is_symlink():
            ctx.progress(f"{MODULES} is in the repository: installing into it, not shared")
            await ctx.run(argv, cwd=ctx.source, env=env)
            return BuildResult(runtime=self.name, path_prefix=(str(link / ".bin"),))

        key = content_key(["node", manager, version.split(".")[0]],
                          [ctx.source / "package.json", *(ctx.source / n for n in LOCKS[manager])])
        shared = ctx.envs_dir / f"node-{key}"

        async def fill(directory: Path) -> None:
            ctx.progress(f"Installing Node dependencies with {manager} "
                         f"into {shown(ctx, directory)}")
            await ctx.run(argv, cwd=ctx.source, env=env)
            directory.mkdir()
            if link.is_dir() and not link.is_symlink():
                await asyncio.to_thread(shutil.move, link, directory / MODULES)
            else:
                (directory / MODULES).mkdir()

        reused = await build_once(shared, fill)
        if reused:
            ctx.progress(f"Node dependencies unchanged: reusing {shown(ctx, shared)}")
        link.symlink_to(shared / MODULES, target_is_directory=True)
        return BuildResult(runtime=self.name, env_path=shared,
                           path_prefix=(str(shared / MODULES / ".bin"),), reused=reused)


NODE = Node()
