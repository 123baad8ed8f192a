"""Which Python builds an app's environment: ``PYTHON_VERSION``, else ``.python-version``.

A request is ``3``, ``3.X`` or ``3.X.Y`` and matches an interpreter by prefix.
The candidates are every ``python3`` and ``python3.X`` on the build's PATH,
asked their exact version, and lastly the daemon's own interpreter. The
choice (``choose_python``) is a pure function of the request and the
candidates; only ``find_pythons`` runs anything.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pikud.deploy import buildkeys
from pikud.deploy.runtimes.tools import parse_version, probe, version_matches
from pikud.errors import BuildError

KEY = buildkeys.PYTHON_VERSION
VERSION_FILE = ".python-version"
_NAME = re.compile(r"python3(?:\.[0-9]+)?")
_REQUEST = re.compile(r"(?:cpython-|python)?(3(?:\.[0-9]+){0,2})")
_PROBE = ("import sys, importlib.util as u; "
          "print(*sys.version_info[:3], int(u.find_spec('ensurepip') is not None))")


@dataclass(frozen=True)
class Interpreter:
    name: str                       # the command found: python3 or python3.12
    path: str
    version: tuple[int, int, int]
    has_venv: bool = True           # ensurepip is importable, so ``-m venv`` gives pip

    @property
    def short(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    @property
    def full(self) -> str:
        return ".".join(map(str, self.version))


def requested_version(env: Mapping[str, str], source: Path) -> tuple[str, str] | None:
    """(where, request) from ``PYTHON_VERSION`` or the app's ``.python-version``, or None."""
    if env.get(KEY, "").strip():
        return KEY, env[KEY].strip()
    try:
        text = (source / VERSION_FILE).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    lines = [line.strip() for line in text.splitlines()]
    request = next((line for line in lines if line and not line.startswith("#")), "")
    return (VERSION_FILE, request) if request else None


def parse_request(where: str, request: str) -> tuple[int, ...]:
    """``"3.12"`` -> (3, 12); ``.python-version`` may also say ``cpython-3.12``."""
    match = _REQUEST.fullmatch(request.strip())
    version = parse_version(match.group(1)) if match else None
    if version is None:
        raise BuildError(f"{where}={request}: expected a Python 3 version "
                         "such as 3, 3.12 or 3.12.1")
    return version


def choose_python(request: tuple[str, str] | None,
                  candidates: Sequence[Interpreter]) -> Interpreter:
    """The interpreter for ``request`` (where, version text); None means plain ``python3``.

    Among the matching candidates, one whose command name is the request's
    (``python3.12`` for 3.12, ``python3`` for 3 or none) comes first, then
    the order of ``candidates`` (PATH order, the daemon's own last).
    """
    where, text = request if request is not None else (KEY, "3")
    wanted = parse_request(where, text)
    preferred = "python3" if len(wanted) < 2 else f"python{wanted[0]}.{wanted[1]}"
    matching = [c for c in candidates if version_matches(wanted, c.version)]
    if not matching:
        parts = max(2, len(wanted))
        found = sorted({c.version[:parts] for c in candidates})
        listed = ", ".join(".".join(map(str, v)) for v in found) or "none"
        wanted_text = ".".join(map(str, wanted))
        raise BuildError(f"{where}={text}: no python{wanted_text} on this server "
                         f"(found: {listed})")
    return sorted(matching, key=lambda c: c.name != preferred)[0]


def _commands_on_path(path_env: str) -> list[tuple[str, str]]:
    """(name, path) of python3 and python3.X executables, in PATH order."""
    found = []
    for directory in path_env.split(os.pathsep):
        try:
            names = sorted((entry.name for entry in os.scandir(directory or ".")
                            if _NAME.fullmatch(entry.name)), key=lambda n: (n != "python3", n))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if os.access(path, os.X_OK) and not os.path.isdir(path):
                found.append((name, path))
    return found


def _own_interpreter() -> Interpreter:
    major, minor, micro = sys.version_info[:3]
    return Interpreter(os.path.basename(sys.executable) or "python3", sys.executable,
                       (major, minor, micro), importlib.util.find_spec("ensurepip") is not None)


async def find_pythons(env: Mapping[str, str], app: str,
                       names: Collection[str] | None = None) -> list[Interpreter]:
    """Every Python 3 on ``env``'s PATH that answers ``app``'s user (only ``names`` if
    given), then ours.

    Each distinct path is asked once, all at the same time; a command that
    fails (a pyenv shim for a version that is not installed) is skipped.
    """
    commands = [(name, path) for name, path in _commands_on_path(env.get("PATH", os.defpath))
                if names is None or name in names]
    paths = list(dict.fromkeys(path for _, path in commands))
    answers = await asyncio.gather(*(probe([path, "-c", _PROBE], env, app) for path in paths))
    versions: dict[str, tuple[tuple[int, int, int], bool]] = {}
    for path, answer in zip(paths, answers, strict=True):
        fields = answer.split() if answer else []
        if len(fields) == 4 and all(field.isdigit() for field in fields):
            major, minor, micro, venv = map(int, fields)
            versions[path] = ((major, minor, micro), bool(venv))
    found = [Interpreter(name, path, *versions[path]) for name, path in commands
             if path in versions]
    own = _own_interpreter()
    if all(c.path != own.path for c in found):
        found.append(own)
    return found


async def find_interpreter(env: Mapping[str, str], request: tuple[str, str] | None,
                           app: str) -> Interpreter:
    """The interpreter for ``request``; only the commands that could match are asked first.

    A pyenv shim costs a shell start per question, so asking every python3.X
    on PATH would slow down each deploy; they are all asked only to list what
    exists when nothing matched.
    """
    wanted = parse_request(*(request or (KEY, "3")))
    names = {"python3"} | ({f"python{wanted[0]}.{wanted[1]}"} if len(wanted) > 1 else set())
    try:
        return choose_python(request, await find_pythons(env, app, names))
    except BuildError:
        return choose_python(request, await find_pythons(env, app))
