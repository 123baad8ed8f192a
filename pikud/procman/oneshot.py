"""Commands that run once to the end: cron jobs, release and preflight steps.

Like a supervised process they run in their own session with their output
captured line by line, and they are stopped the same way (SIGTERM to the
tree, SIGKILL after ``stop_timeout``) on a timeout or a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from pikud.procman.children import Child, ExitInfo, spawn, stop_child
from pikud.procman.logs import LineSink, PipeReader

DRAIN_GRACE = 1.0       # seconds to wait for the last output once the command ended


class OneShotTimeout(Exception):
    """The command ran past its timeout and was stopped; ``info`` is how it ended."""

    def __init__(self, info: ExitInfo) -> None:
        super().__init__(f"timed out ({info})")
        self.info = info


async def run_once(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
                   on_line: LineSink, timeout: float | None = None,
                   stop_timeout: float = 10.0, stderr: bool = True) -> ExitInfo:
    """Run ``argv`` to its end, handing each output line to ``on_line``.

    Raises OneShotTimeout after stopping it when ``timeout`` passes; when the
    caller is cancelled, the command is stopped before the cancellation goes on.
    ``stderr=False`` drops the error output instead of mixing it in. Every
    command of the daemon runs through here (or ``spawn``), never through
    asyncio's subprocesses: under uvloop those take over SIGCHLD.
    """
    child, reader = start_once(argv, env=env, cwd=cwd, on_line=on_line, stderr=stderr)
    return await finish_once(child, reader, timeout=timeout, stop_timeout=stop_timeout)


def start_once(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path,
               on_line: LineSink, stderr: bool = True) -> tuple[Child, PipeReader]:
    """The first half of ``run_once``: the command spawned, its output read."""
    read_end, write_end = os.pipe()
    try:
        child = spawn(argv, env=env, cwd=cwd, output=write_end,
                      errors=subprocess.STDOUT if stderr else subprocess.DEVNULL)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return child, PipeReader(read_end, on_line)


async def finish_once(child: Child, reader: PipeReader | None, *, timeout: float | None,
                      stop_timeout: float = 10.0) -> ExitInfo:
    """The second half of ``run_once``: wait for the end of ``child`` (spawned here, or
    adopted after a re-exec) within ``timeout``, and for its last output."""
    try:
        async with asyncio.timeout(timeout):
            info = await child.wait()
    except TimeoutError:
        raise OneShotTimeout((await stop_child(child, stop_timeout))[0]) from None
    except asyncio.CancelledError:
        await stop_child(child, stop_timeout)
        raise
    finally:
        # A descendant may hold the pipe open: take what is there, do not wait for it.
        if reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader.closed), DRAIN_GRACE)
    return info
