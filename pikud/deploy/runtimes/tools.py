"""Finding a runtime's tools on the build's PATH, and asking them their version.

A runtime is detected by its manifest alone; its tools are looked up when it
builds, so a Gemfile on a server without Ruby fails the deploy with a message
naming what to install, instead of falling through to another runtime as in
piku. Lookups use the PATH of the build environment (the app's ENV may change
it), never the daemon's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pikud import identity, programs
from pikud.errors import BuildError
from pikud.procman.oneshot import OneShotTimeout, run_once

# How to get each tool on a Debian-like server. An "apt-get install X" hint is
# merged with the others when several tools are missing.
HINTS = {
    "bundle": "apt-get install ruby-bundler",
    "cargo": "apt-get install cargo",
    "clojure": "apt-get install clojure",
    "go": "apt-get install golang-go",
    "gradle": "apt-get install gradle",
    "java": "apt-get install default-jdk-headless",
    "lein": "apt-get install leiningen",
    "mvn": "apt-get install maven",
    "node": "apt-get install nodejs",
    "npm": "apt-get install npm",
    "pnpm": "npm install -g pnpm",
    "poetry": "apt-get install python3-poetry",
    "ruby": "apt-get install ruby",
    "uv": "pip install uv",
    "yarn": "npm install -g yarn",
}
_APT = "apt-get install "
_VERSION = re.compile(r"v?([0-9]+(?:\.[0-9]+)*)")
PROBE_TIMEOUT = 20.0


def which(tool: str, env: Mapping[str, str]) -> str | None:
    """The tool's path on ``env``'s PATH, or None."""
    return programs.which(tool, path=env.get("PATH", os.defpath))


def uv_binary(env: Mapping[str, str]) -> str | None:
    """pikud's own uv (a dependency of pikud, so always installed beside it), else one on
    ``env``'s PATH; None when neither exists.

    pikud's own comes first: every app builds with the uv pikud was released with.
    """
    try:
        from uv import find_uv_bin  # imported here: only a Python build needs it
        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return which("uv", env)


UV_CERTS_KEYS = ("UV_SYSTEM_CERTS", "UV_NATIVE_TLS")     # uv >= 0.9's name, and the older one


def with_system_certs(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for uv, which trusts the platform's certificate store as pip does (pip uses
    it through truststore): uv's own bundled roots refuse a server behind a company's
    TLS proxy whose CA is installed system-wide. Left alone if the app or pikud set it."""
    if any(key in env for key in UV_CERTS_KEYS):
        return dict(env)
    return {**env, **dict.fromkeys(UV_CERTS_KEYS, "1")}


def missing_message(needed_by: str, missing: Sequence[str]) -> str:
    """``"Rust (Cargo.toml) needs cargo: install cargo on the server (e.g. ...)"``."""
    names = ", ".join(missing)
    apt = [HINTS[tool][len(_APT):] for tool in missing if HINTS.get(tool, "").startswith(_APT)]
    other = [HINTS[tool] for tool in missing
             if tool in HINTS and not HINTS[tool].startswith(_APT)]
    hints = ([_APT + " ".join(apt)] if apt else []) + other
    example = f" (e.g. {'; '.join(hints)})" if hints else ""
    return f"{needed_by} needs {names}: install {names} on the server{example}"


def require(tools: Iterable[str], env: Mapping[str, str], *, needed_by: str) -> dict[str, str]:
    """Tool -> path for each of ``tools``; one BuildError naming every missing tool."""
    found = {tool: which(tool, env) for tool in tools}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise BuildError(missing_message(needed_by, missing))
    return {tool: path for tool, path in found.items() if path is not None}


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"v20.11.1"`` -> (20, 11, 1); None when ``text`` is not a dotted version."""
    match = _VERSION.fullmatch(text.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def version_matches(wanted: Sequence[int], actual: Sequence[int]) -> bool:
    """A request matches by prefix: 3 matches 3.11.2, 3.11 matches 3.11.2, 3.1 does not."""
    return tuple(actual[:len(wanted)]) == tuple(wanted)


async def probe(argv: Sequence[str], env: Mapping[str, str], app: str,
                timeout: float = PROBE_TIMEOUT) -> str | None:
    """The stdout of a short query such as ``node --version``; None if it cannot run or fails.

    This is a question to a tool, not a build step, so its output is not
    streamed to the pusher; a probe that hangs is stopped after ``timeout``. It
    runs as ``app``'s user, as its build does: the tool may come from the app's
    own environment, which that user writes (identity.py).
    """
    lines: list[str] = []
    try:
        info = await run_once(identity.current().as_app(app, argv), env=env,
                              cwd=Path("/"), on_line=lines.append,
                              timeout=timeout, stop_timeout=1.0, stderr=False)
    except (OSError, OneShotTimeout):
        return None
    return "".join(line + "\n" for line in lines) if info.code == 0 else None
