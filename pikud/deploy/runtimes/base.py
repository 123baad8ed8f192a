"""What every runtime module provides, and what a build is given.

A runtime detects its manifest in a checked-out release and builds into an
environment kept under ``envs/APP`` (keyed by a hash of the dependency files,
so an unchanged redeploy reuses it). Output is streamed line by line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pikud.appspec import Procfile

Progress = Callable[[str], None]


class Runner(Protocol):
    """Runs one build command, streaming its output; raises BuildError on failure.

    ``on_line`` is also handed each output line, for a caller that quotes the
    output in its own error (nodeenv's download errors).
    """

    def __call__(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
                 on_line: Callable[[str], None] | None = None) -> Awaitable[None]: ...


@dataclass(frozen=True)
class BuildContext:
    app: str
    source: Path                    # the release directory (checked-out code)
    env: Mapping[str, str]          # the app's environment for the build (ENV applied)
    envs_dir: Path                  # envs/APP: runtime environments live below it
    progress: Progress              # a line for the pusher ("-----> " is added by the caller)
    run: Runner
    servers: tuple[str, ...] = ()   # app servers (granian, ...) the environment must provide
    owner: tuple[int, int] | None = None    # (uid, gid) the build runs as, if not pikud's


@dataclass(frozen=True)
class BuildResult:
    runtime: str
    env_path: Path | None = None    # the environment the release uses; kept while referred to
    env_vars: dict[str, str] = field(default_factory=dict)    # e.g. VIRTUAL_ENV
    path_prefix: tuple[str, ...] = ()                         # prepended to PATH
    reused: bool = False            # True when the dependencies were not installed again


class Runtime(Protocol):
    name: str

    def detect(self, source: Path, procfile: Procfile) -> bool: ...

    async def build(self, ctx: BuildContext) -> BuildResult: ...
