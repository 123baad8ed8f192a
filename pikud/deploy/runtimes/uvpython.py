"""A Python the app asks for and the server lacks, installed by uv when the app allows it.

``PIKU_UV_PYTHON_INSTALL=true`` in the app's ENV (off by default) lets a build
whose ``PYTHON_VERSION`` or ``.python-version`` no python3 on PATH meets run
``uv python install VERSION``, then build with the interpreter uv reports.
Off by default: uv downloads the interpreter (a python-build-standalone build,
from GitHub) into its own folder in pikud's user's home, outside the server's
package manager.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pikud.convert import boolean
from pikud.deploy import buildkeys
from pikud.deploy.runtimes.base import Runner
from pikud.deploy.runtimes.interpreters import (
    Interpreter,
    choose_python,
    find_pythons,
    parse_request,
)
from pikud.deploy.runtimes.tools import probe, with_system_certs
from pikud.errors import BuildError

KEY = buildkeys.UV_PYTHON_INSTALL


def allowed(env: Mapping[str, str]) -> bool:
    """``PIKU_UV_PYTHON_INSTALL``, false when unset; a bad value is an EnvError naming it."""
    return boolean(KEY, env[KEY]) if env.get(KEY, "").strip() else False


async def uv_install(request: tuple[str, str], env: Mapping[str, str], run: Runner, cwd: Path,
                     uv: str, app: str) -> Interpreter:
    """``uv python install`` the requested version; the interpreter it installed."""
    wanted = ".".join(map(str, parse_request(*request)))
    uv_env = {**with_system_certs(env), "UV_PYTHON_DOWNLOADS": "manual"}
    try:
        await run([uv, "python", "install", wanted], cwd=cwd, env=uv_env)
    except BuildError as exc:
        raise BuildError(f"{KEY}: uv could not install Python {wanted}: {exc}") from exc
    found = await probe([uv, "python", "find", "--managed-python", wanted], uv_env, app)
    if not found or not os.path.isabs(found.strip()):
        raise BuildError(f"{KEY}: uv installed Python {wanted}, but `uv python find` "
                         "does not report it")
    folder = os.path.dirname(found.strip())
    return choose_python(request, await find_pythons({**env, "PATH": folder}, app))
