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
# - NODE_VERSION (20, 20.11 or 20.11.1, matched by prefix) picks the node on
#   PATH when it matches; otherwise nodeenv installs it (nodeenv.py) and its
#   bin/ comes first on PATH for the install and for the app's processes.
# - A node_modules checked into the repository is installed into in place and
#   not shared.

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from pikud.appspec import Procfile
from pikud.deploy import buildkeys
from pikud.deploy.runtimes.base import BuildContext, BuildResult
from pikud.deploy.runtimes.envcache import build_once, content_key, shown
from pikud.deploy.runtimes.nodeenv import install_node
from pikud.deploy.runtimes.tools import parse_version, probe, require, version_matches, which
from pikud.errors import BuildError

MANAGER_KEY = buildkeys.NODE_PACKAGE_MANAGER
VERSION_KEY = buildkeys.NODE_VERSION
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


def node_request(wanted: str | None) -> tuple[int, ...] | None:
    """``NODE_VERSION`` as a version tuple; None when unset, BuildError when malformed."""
    if wanted is None or not wanted.strip():
        return None
    request = parse_version(wanted)
    if request is None:
        raise BuildError(f"{VERSION_KEY}={wanted}: expected a version such as 20, 20.11 "
                         "or 20.11.1")
    return request


async def node_version(node: str, env: Mapping[str, str], app: str) -> tuple[int, ...]:
    """What ``node --version`` says, as a version tuple; BuildError if it says no version."""
    reported = await probe([node, "--version"], env, app) or ""
    actual = parse_version(reported)
    if actual is None:
        raise BuildError(f"{node} --version said {reported.strip()!r}, not a version")
    return actual


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


async def choose_node(ctx: BuildContext, env: dict[str, str]) -> tuple[str, str | None]:
    """The node version the build uses, and the bin/ folder of a node nodeenv installed.

    The node on PATH is used unless ``NODE_VERSION`` asks for another one; then
    nodeenv installs that one (and ``env``'s PATH gets its bin/ first), or the
    push is refused. ("", None) when there is no node and none is asked for.
    """
    wanted = ctx.env.get(VERSION_KEY, "")
    request = node_request(wanted)
    node = which("node", env)
    actual = await node_version(node, env, ctx.app) if node else None
    if request is None or (actual is not None and version_matches(request, actual)):
        return (dotted(actual) if actual else ""), None
    setting = f"{VERSION_KEY}={wanted}"
    found = (f"node on this server is {dotted(actual)}" if actual
             else "there is no node on this server's PATH")
    nodeenv = which("nodeenv", env)
    if nodeenv is None:
        raise BuildError(f"{setting}: {found}; install nodeenv (pip install nodeenv) to let "
                         "pikud install it")
    ctx.progress(f"{setting}: {found}; installing it with nodeenv")
    folder = await install_node(ctx, nodeenv, dotted(request), setting)
    env["PATH"] = f"{folder}:{env.get('PATH', os.defpath)}"
    installed = await node_version(str(folder / "node"), env, ctx.app)
    if not version_matches(request, installed):
        raise BuildError(f"{setting}: nodeenv installed node {dotted(installed)}")
    return dotted(installed), str(folder)


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
        env = {**ctx.env, "npm_config_update_notifier": "false"}
        version, node_bin = await choose_node(ctx, env)
        tools = require(dict.fromkeys(["node", manager]), env,
                        needed_by=f"Node (package.json, {manager})")
        node_path = (node_bin,) if node_bin else ()
        lock = next((name for name in LOCKS[manager] if (ctx.source / name).is_file()), None)
        argv = install_argv(manager, tools[manager], lock)
        ctx.progress(f"Node {version}, {manager}" + (f" with {lock}" if lock else ""))
        link = ctx.source / MODULES
        if link.exists() or link.is_symlink():
            ctx.progress(f"{MODULES} is in the repository: installing into it, not shared")
            await ctx.run(argv, cwd=ctx.source, env=env)
            return BuildResult(runtime=self.name, path_prefix=(str(link / ".bin"), *node_path))

        key = content_key(["node", manager, version.split(".")[0]],
                          [ctx.source / "package.json", *(ctx.source / n for n in LOCKS[manager])])
        shared = ctx.envs_dir / f"node-{key}"

        async def fill(directory: Path) -> None:
            ctx.progress(f"Installing Node dependencies with {manager} "
                         f"into {shown(ctx, directory)}")
            await ctx.run(argv, cwd=ctx.source, env=env)
            directory.mkdir(exist_ok=True)      # made already for an app's own user
            if link.is_dir() and not link.is_symlink():
                await asyncio.to_thread(shutil.move, link, directory / MODULES)
            else:
                (directory / MODULES).mkdir()

        reused = await build_once(shared, fill, ctx.owner)
        if reused:
            ctx.progress(f"Node dependencies unchanged: reusing {shown(ctx, shared)}")
        link.symlink_to(shared / MODULES, target_is_directory=True)
        return BuildResult(runtime=self.name, env_path=shared,
                           path_prefix=(str(shared / MODULES / ".bin"), *node_path),
                           reused=reused)


NODE = Node()
