"""Python: a virtualenv per set of dependency files, installed by uv, pip or poetry.

Detected by ``requirements.txt``, or by a ``pyproject.toml`` that describes a
Python project. What installs the dependencies (``plan_python``, pure):

====================================  =========================================
the app has                           the build runs
====================================  =========================================
requirements.txt                      ``uv venv`` + ``uv pip install -r``; with
                                      PIKU_PYTHON_INSTALLER=pip: ``python -m
                                      venv`` + ``pip install -r``
pyproject.toml + uv.lock/[tool.uv]    ``uv sync --frozen``
pyproject.toml + poetry.lock/         venv + ``poetry install --no-root``
[tool.poetry]                         (poetry is required)
pyproject.toml, nothing else          ``uv sync``; with PIKU_PYTHON_INSTALLER=pip:
                                      venv + ``pip install`` of
                                      ``[project].dependencies``
====================================  =========================================

uv is a dependency of pikud, so it is always there (``uv_binary``). The app
servers the Procfile needs (granian, gunicorn, uvicorn) go into the same
install as requirements.txt or ``[project].dependencies``: one resolve, one
run. A lock file (uv sync, poetry) is installed as it is, and the servers are
added after it.

The project's own code is never installed into the environment: it runs from
the release directory (uv ``--no-install-project``, poetry ``--no-root``).
An installed copy would pin the environment to one release's code, and the
environment is shared by every release with the same dependency files.
"""

# Design notes:
# - The interpreter is chosen before anything else (interpreters.py), and its
#   exact version is part of the environment's key, with the method and the
#   dependency files' content: a new patch release of Python gives a fresh
#   venv rather than one whose symlinks point at a replaced binary.
# - uv.lock is honoured with --frozen and never deleted (piku deletes it).
# - dev dependencies are left out (uv --no-dev, poetry --only main): this is
#   a production environment.
# - uv by default: ``python -m venv`` bootstraps pip through ensurepip (about
#   3 s) and pip resolves again on every build, cache or not; ``uv venv`` takes
#   milliseconds and ``uv pip install`` links from its cache. pip stays one
#   setting away (PIKU_PYTHON_INSTALLER=pip) for an index or a package only
#   pip handles.
# - uv compiles the bytecode at install (--compile-bytecode), as pip does: the
#   app's processes then never compile it at each start (granian + Flask:
#   listening after 0.12-0.25 s against 0.31-0.52 s where PYTHONDONTWRITEBYTECODE
#   is set or the venv is read-only), which every restart and respawn pays.

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pikud.appspec import Procfile
from pikud.convert import bad_value
from pikud.deploy import buildkeys
from pikud.deploy.runtimes.base import BuildContext, BuildResult
from pikud.deploy.runtimes.envcache import build_once, content_key, shown
from pikud.deploy.runtimes.interpreters import (
    VERSION_FILE,
    Interpreter,
    find_interpreter,
    requested_version,
)
from pikud.deploy.runtimes.tools import require, uv_binary, with_system_certs
from pikud.deploy.runtimes.uvpython import KEY as UV_INSTALL_KEY
from pikud.deploy.runtimes.uvpython import allowed, uv_install
from pikud.errors import BuildError

REQUIREMENTS = "requirements.txt"
PYPROJECT = "pyproject.toml"
UV_LOCK = "uv.lock"
POETRY_LOCK = "poetry.lock"
_PROJECT_TABLES = ("project", "build-system")
INSTALLER_KEY = buildkeys.PYTHON_INSTALLER
INSTALLERS = ("uv", "pip")
_PIP = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--progress-bar", "off")


@dataclass(frozen=True)
class PythonPlan:
    method: str                     # requirements | uv-sync | poetry | project
    files: tuple[str, ...]          # the dependency files that key the environment
    uv: bool = False                # requirements/project: uv venv + uv pip instead of pip

    @property
    def tool(self) -> str:
        if self.method in ("uv-sync", "poetry"):
            return self.method.split("-")[0]
        return "uv" if self.uv else "pip"


def read_pyproject(source: Path) -> dict[str, Any] | None:
    """The parsed pyproject.toml, None if there is none; malformed TOML is a BuildError."""
    try:
        with open(source / PYPROJECT, "rb") as file:
            return tomllib.load(file)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{PYPROJECT}: invalid TOML: {exc}") from exc


def _tool(pyproject: Mapping[str, Any], name: str) -> bool:
    tools = pyproject.get("tool")
    return isinstance(tools, dict) and name in tools


def is_python_project(pyproject: Mapping[str, Any] | None, names: frozenset[str]) -> bool:
    """A pyproject.toml that only configures tools (ruff, black) does not make a Python app."""
    if pyproject is None:
        return False
    return (any(table in pyproject for table in _PROJECT_TABLES)
            or _tool(pyproject, "uv") or _tool(pyproject, "poetry")
            or UV_LOCK in names or POETRY_LOCK in names)


def installer(env: Mapping[str, str]) -> str:
    """``PIKU_PYTHON_INSTALLER``: uv (the default) or pip; anything else is an EnvError."""
    value = env.get(INSTALLER_KEY, "").strip().lower() or INSTALLERS[0]
    if value not in INSTALLERS:
        raise bad_value(INSTALLER_KEY, " or ".join(INSTALLERS), env[INSTALLER_KEY])
    return value


def plan_python(names: frozenset[str], pyproject: Mapping[str, Any] | None, *,
                uv: bool) -> PythonPlan | None:
    """How to install an app's dependencies, from its file names and pyproject; pure.

    ``uv``: uv installs a requirements.txt or a plain pyproject (else pip does).
    """
    if REQUIREMENTS in names:
        return PythonPlan("requirements", (REQUIREMENTS,), uv=uv)
    if pyproject is None or not is_python_project(pyproject, names):
        return None
    if UV_LOCK in names or (_tool(pyproject, "uv") and POETRY_LOCK not in names):
        return PythonPlan("uv-sync", (PYPROJECT, UV_LOCK))
    if POETRY_LOCK in names or _tool(pyproject, "poetry"):
        return PythonPlan("poetry", (PYPROJECT, POETRY_LOCK))
    if uv:
        return PythonPlan("uv-sync", (PYPROJECT, UV_LOCK))
    return PythonPlan("project", (PYPROJECT,))


def project_dependencies(pyproject: Mapping[str, Any]) -> list[str]:
    """``[project].dependencies``, checked to be a list of strings."""
    project = pyproject.get("project", {})
    deps = project.get("dependencies", []) if isinstance(project, dict) else None
    if not isinstance(deps, list) or not all(isinstance(dep, str) for dep in deps):
        raise BuildError(f"{PYPROJECT}: [project].dependencies must be a list of strings")
    return deps


def _plan(source: Path, *, uv: bool) -> tuple[PythonPlan | None, dict[str, Any]]:
    """The plan for the app in ``source`` and its pyproject (read only when it matters)."""
    names = frozenset(name for name in (REQUIREMENTS, PYPROJECT, UV_LOCK, POETRY_LOCK)
                      if (source / name).is_file())
    pyproject = None if REQUIREMENTS in names else read_pyproject(source)
    return plan_python(names, pyproject, uv=uv), pyproject or {}


def build_env(ctx: BuildContext, venv: Path) -> dict[str, str]:
    """The build's environment: the app's, with the venv active, output unbuffered, and
    uv trusting the system's certificates."""
    env = with_system_certs({key: value for key, value in ctx.env.items()
                             if key != "PYTHONHOME"})
    env.update(PYTHONUNBUFFERED="1", VIRTUAL_ENV=str(venv),
               PATH=f"{venv / 'bin'}:{ctx.env.get('PATH', '')}", UV_PYTHON_DOWNLOADS="never")
    return env


class Python:
    name = "python"

    def detect(self, source: Path, procfile: Procfile) -> bool:
        return _plan(source, uv=False)[0] is not None

    async def build(self, ctx: BuildContext) -> BuildResult:
        source = ctx.source
        plan, pyproject = _plan(source, uv=installer(ctx.env) == "uv")
        if plan is None:
            raise BuildError(f"no {REQUIREMENTS} and no Python {PYPROJECT}")
        uv = uv_binary(ctx.env)
        found = {"uv": uv} if uv is not None else {}
        tools = found | require([plan.tool] if plan.tool not in ("pip", *found) else [],
                                ctx.env, needed_by=f"Python ({plan.files[0]}, {plan.tool})")
        deps = project_dependencies(pyproject) if plan.method == "project" else []
        request = requested_version(ctx.env, source)
        try:
            interpreter = await find_interpreter(ctx.env, request, ctx.app)
        except BuildError as exc:
            interpreter = await self._missing(ctx, plan, request, exc)
        if plan.tool in ("pip", "poetry") and not interpreter.has_venv:
            raise BuildError(f"{interpreter.path} ({interpreter.full}) cannot create a venv "
                             "with pip: install it on the server (e.g. apt-get install "
                             f"python{interpreter.short}-venv)")
        key = content_key(["python", plan.method, plan.tool, interpreter.full, *ctx.servers],
                          [source / name for name in plan.files])
        venv = ctx.envs_dir / f"python-{interpreter.short}-{key}"
        label = shown(ctx, venv)
        env = build_env(ctx, venv)

        async def fill(venv: Path) -> None:
            ctx.progress(f"Python {interpreter.full} virtualenv: {label}")
            servers = f" and the app servers ({', '.join(ctx.servers)})" if ctx.servers else ""
            ctx.progress(f"Installing Python dependencies from {plan.files[0]}{servers} "
                         f"with {plan.tool}")
            await self._install(ctx, plan, interpreter, venv, tools.get(plan.tool, plan.tool),
                                env, deps)
            missing = [name for name in ctx.servers if not (venv / "bin" / name).exists()]
            if missing:
                ctx.progress(f"Adding the app servers for the Procfile: {', '.join(missing)}")
                await self._add(ctx, plan, venv, tools.get(plan.tool, plan.tool), env, missing)

        ctx.progress(f"Python {interpreter.full} from {interpreter.path}")
        reused = await build_once(venv, fill, ctx.owner)
        if reused:
            ctx.progress(f"Python dependencies unchanged: reusing {label}")
        return BuildResult(runtime=self.name, env_path=venv, env_vars={"VIRTUAL_ENV": str(venv)},
                           path_prefix=(str(venv / "bin"),), reused=reused)

    async def _missing(self, ctx: BuildContext, plan: PythonPlan,
                       request: tuple[str, str] | None, exc: BuildError) -> Interpreter:
        """No interpreter meets ``request``: uv installs one if the app allows it; else a
        .python-version of a pip app is a hint, as piku has it, and PYTHON_VERSION fails."""
        uv = uv_binary(ctx.env)
        if request is not None and uv is not None and allowed(ctx.env):
            ctx.progress(f"{exc}: installing it with uv ({UV_INSTALL_KEY} is set)")
            return await uv_install(request, ctx.env, ctx.run, ctx.source, uv, ctx.app)
        if request is None or request[0] != VERSION_FILE or plan.method != "requirements":
            hint = f"; set {UV_INSTALL_KEY}=true to let uv install it" if request and uv else ""
            raise BuildError(f"{exc}{hint}") from exc
        ctx.progress(f"Warning: {exc}; {VERSION_FILE} is a hint for a {REQUIREMENTS} "
                     "app: building with the default python3 (set PYTHON_VERSION to insist)")
        return await find_interpreter(ctx.env, None, ctx.app)

    async def _install(self, ctx: BuildContext, plan: PythonPlan, interpreter: Interpreter,
                       venv: Path, tool: str, env: dict[str, str], deps: list[str]) -> None:
        """Create the venv at ``venv`` and install into it; ``tool`` is uv's or poetry's path."""
        run, source = ctx.run, ctx.source
        if plan.method == "uv-sync":
            frozen = ["--frozen"] if (source / UV_LOCK).is_file() else []
            await run([tool, "sync", "--python", interpreter.path, "--python-preference",
                       "only-system", "--no-dev", "--no-install-project", "--compile-bytecode",
                       *frozen],
                      cwd=source, env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)})
            return
        if plan.uv:
            await run([tool, "venv", "--python", interpreter.path, "--python-preference",
                       "only-system", str(venv)], cwd=source, env=env)
        else:
            await run([interpreter.path, "-m", "venv", str(venv)], cwd=source, env=env)
        if plan.method == "poetry":
            await run([tool, "install", "--no-root", "--only", "main", "--no-interaction",
                       "--no-ansi"], cwd=source, env={**env, "POETRY_VIRTUALENVS_CREATE": "false"})
            return
        # The app servers in the same resolve as the app's own dependencies.
        args = [*(["-r", REQUIREMENTS] if plan.method == "requirements" else deps),
                *ctx.servers]
        if not args:
            ctx.progress(f"{PYPROJECT} lists no dependencies")
            return
        await self._add(ctx, plan, venv, tool, env, args)

    async def _add(self, ctx: BuildContext, plan: PythonPlan, venv: Path, tool: str,
                   env: dict[str, str], args: list[str]) -> None:
        """pip-install ``args`` into the venv (with uv when the plan uses uv)."""
        python = str(venv / "bin" / "python")
        if plan.uv or plan.method == "uv-sync":
            await ctx.run([tool, "pip", "install", "--python", python, "--compile-bytecode",
                           *args], cwd=ctx.source, env=env)
        else:
            await ctx.run([python, *_PIP, *args], cwd=ctx.source, env=env)


PYTHON = Python()
