"""Run one short external command (nginx -t, a reload, openssl) with a deadline."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pikud.errors import NginxError
from pikud.procman.oneshot import OneShotTimeout, run_once


async def run(argv: Sequence[str], *, timeout: float,
              env: Mapping[str, str] | None = None, stderr: bool = True) -> tuple[int, str]:
    """Exit status and combined output of ``argv`` (in pikud's environment unless ``env``;
    without its error output when not ``stderr``); NginxError if it cannot start or hangs.

    A command still running at the deadline is stopped before the error.
    """
    lines: list[str] = []
    try:
        info = await run_once(argv, env=os.environ if env is None else env, cwd=Path("/"),
                              on_line=lines.append, timeout=timeout, stop_timeout=1.0,
                              stderr=stderr)
    except OSError as exc:
        raise NginxError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    except OneShotTimeout:
        raise NginxError(f"{' '.join(argv)} did not finish within {timeout:g}s") from None
    return info.code if info.code is not None else -1, "".join(line + "\n" for line in lines)
