"""Is a new web process ready for traffic? Checked directly, before any is sent.

Ready means: it accepts a connection on its address (a loopback port or a
unix socket) and, when the app sets PIKU_HEALTHCHECK (an HTTP path), answers
that path with a status below 500. Both are retried until ``timeout``: a
process is RUNNING before its server has necessarily bound its address.
"""

from __future__ import annotations

import asyncio

from pikud.procman.sockets import Address

RETRY = 0.05        # seconds between attempts while a process boots
HOST = "127.0.0.1"


async def connect(address: Address, timeout: float,
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to a unix socket's path or a loopback port."""
    if isinstance(address, str):
        return await asyncio.wait_for(asyncio.open_unix_connection(address), timeout)
    return await asyncio.wait_for(asyncio.open_connection(HOST, address), timeout)


def where(address: Address) -> str:
    """How a check's failure names the address."""
    return f"socket {address}" if isinstance(address, str) else f"port {address}"


async def http_status(address: Address, path: str, timeout: float) -> int:
    """The status line's code of ``GET path`` (HTTP/1.0, so the answer ends the connection)."""
    reader, writer = await connect(address, timeout)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\nUser-Agent: pikud-healthcheck\r\n"
                     "\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {line[:60]!r}")
    return int(parts[1])


async def wait_ready(address: Address, path: str | None, timeout: float) -> str:
    """Wait until the process at ``address`` is ready; returns "" or why it is not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    problem = "no answer"
    while loop.time() < deadline:
        left = max(0.1, deadline - loop.time())
        try:
            if path is None:
                _, writer = await connect(address, left)
                writer.close()
                return ""
            status = await http_status(address, path, left)
            if status < 500:
                return ""
            problem = f"GET {path} answered {status}"
        except (TimeoutError, OSError, ConnectionError) as exc:
            problem = f"{where(address)}: {exc.__class__.__name__}: {exc}"
        await asyncio.sleep(RETRY)
    return f"not ready within {timeout:g}s ({problem})"
