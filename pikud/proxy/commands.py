"""Run one short external command (nginx -t, a reload, openssl) with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pikud.errors import NginxError


async def run(argv: Sequence[str], *, timeout: float) -> tuple[int, str]:
    """Exit status and combined output of ``argv``; NginxError if it cannot start or hangs.

    A command still running at the deadline is killed and reaped before the error.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise NginxError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NginxError(f"{' '.join(argv)} did not finish within {timeout:g}s") from None
    return proc.returncode if proc.returncode is not None else -1, output.decode(errors="replace")
