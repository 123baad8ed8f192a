"""A node that ``NODE_VERSION`` asks for and the server's PATH lacks, installed by nodeenv.

When ``nodeenv`` is on the build's PATH, ``nodeenv --prebuilt`` downloads
that node (with its npm) into ``envs/APP/nodeenv-<version>-<key>``, reused by
every build while ``NODE_VERSION`` is unchanged. Without nodeenv the push is
refused, saying what to install. ``NODEENV_MIRROR`` (the app's ENV or pikud's
own environment) is handed to nodeenv's ``--mirror``: the base URL holding
``vX.Y.Z/node-vX.Y.Z-linux-x64.tar.gz`` (and ``index.json``, which nodeenv
reads to resolve a partial version such as 20) instead of nodejs.org.
"""

# Design notes:
# - nodeenv runs in envs/APP, not in the release: it reads a [nodeenv]
#   section from ./tox.ini and ./setup.cfg and a ./.node-version, and the
#   app's copies of those must not steer a server-side install. The pikud
#   user's ~/.nodeenvrc still applies (a server-wide mirror, certifi, ...).
# - The key is the requested version: "20" stays whatever 20.x nodeenv
#   resolved it to at the first install, as a python venv keeps its patch
#   release, until NODE_VERSION changes.
# - The environment is kept while a release has its bin/ on PATH
#   (ReleaseStore.env_paths_in_use).

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

from pikud.deploy.runtimes.base import BuildContext
from pikud.deploy.runtimes.envcache import build_once, content_key, shown
from pikud.errors import BuildError

MIRROR_KEY = "NODEENV_MIRROR"
ERROR_LINES = 3         # how many of nodeenv's last error lines a failed install quotes
_ERROR = re.compile(r"(?<![A-Za-z])Error: .*")     # also after its " * Install ... ." dots


def nodeenv_argv(nodeenv: str, version: str, directory: Path, mirror: str,
                 made: bool = False) -> list[str]:
    """``nodeenv --prebuilt --node=VERSION [--mirror=URL] [--force] DIR``; ``--force`` when
    the (empty) ``directory`` is ``made`` already: nodeenv refuses one that exists."""
    mirror = mirror.strip().rstrip("/")
    return [nodeenv, "--prebuilt", f"--node={version}",
            *([f"--mirror={mirror}"] if mirror else []), *(["--force"] if made else []),
            str(directory)]


def error_lines(output: list[str]) -> str:
    """nodeenv's last ``Error: ...`` lines (its last line when it printed none)."""
    found = (_ERROR.search(line) for line in output)
    errors = [match.group().strip() for match in found if match]
    quoted = errors[-ERROR_LINES:] or [line.strip() for line in output if line.strip()][-1:]
    return "; ".join(quoted) or "no output"


async def install_node(ctx: BuildContext, nodeenv: str, version: str, setting: str) -> Path:
    """The bin/ folder of node ``version`` installed by nodeenv (reused when already there).

    ``setting`` (``NODE_VERSION=20``) starts the BuildError of a failed install,
    which quotes nodeenv's last error lines.
    """
    home = ctx.envs_dir / f"nodeenv-{version}-{content_key(['nodeenv', version], [])}"

    async def fill(directory: Path) -> None:
        ctx.progress(f"Installing node {version} with nodeenv into {shown(ctx, directory)}")
        output: deque[str] = deque(maxlen=50)
        try:
            await ctx.run(nodeenv_argv(nodeenv, version, directory, ctx.env.get(MIRROR_KEY, ""),
                                       directory.is_dir()),
                          cwd=ctx.envs_dir, env=ctx.env, on_line=output.append)
        except BuildError as exc:
            raise BuildError(f"{setting}: nodeenv could not install node {version}: "
                             f"{error_lines(list(output))}") from exc

    if await build_once(home, fill, ctx.owner):
        ctx.progress(f"Node {version} from nodeenv: reusing {shown(ctx, home)}")
    return home / "bin"
