"""Is a new web process ready for traffic? Checked directly, before any is sent.

Ready means: it accepts a TCP connection on its port and, when the app sets
PIKU_HEALTHCHECK (an HTTP path), answers that path with a status below 500.
Both are retried until ``timeout``: a process is RUNNING before its server
has necessarily bound the port.
"""

from __future__ import annotations

import asyncio

RETRY = 0.05        # seconds between attempts while a process boots


async def http_status(host: str, port: int, path: str, timeout: float) -> int:
    """The status line's code of ``GET path`` (HTTP/1.0, so the answer ends the connection)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: pikud-healthcheck\r\n"
                     "\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {line[:60]!r}")
    return int(parts[1])


async def wait_ready(port: int, path: str | None, timeout: float, host: str = "127.0.0.1") -> str:
    """Wait until the process on ``port`` is ready; returns "" or why it is not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    problem = "no answer"
    while loop.time() < deadline:
        left = max(0.1, deadline - loop.time())
        try:
            if path is None:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), left)
                writer.close()
                return ""
            status = await http_status(host, port, path, left)
            if status < 500:
                return ""
            problem = f"GET {path} answered {status}"
        except (TimeoutError, OSError, ConnectionError) as exc:
            problem = f"port {port}: {exc.__class__.__name__}: {exc}"
        await asyncio.sleep(RETRY)
    return f"not ready within {timeout:g}s ({problem})"
