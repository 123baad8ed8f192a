"""Cloudflare's published address ranges, for NGINX_CLOUDFLARE_ACL: download, check, write.

``download(urls)`` fetches each list with aiohttp (bounded in time and size)
and ``parse_list()`` checks it strictly: every line one IP network, no list
empty. Anything wrong is a ``CloudflareError`` naming the URL (and the line),
raised before anything is written. ``format_file()`` is the text of
``$PIKU_ROOT/pikud/cloudflare_ips.txt``, with a header saying where and when
it came from; ``site.cloudflare_ranges()`` reads it back.
"""

# Design notes:
# - Strict means ipaddress.ip_network(line, strict=True): "104.16.0.1/13" (host
#   bits set) is refused like "<html>", since a list that is not exactly
#   networks is not the list Cloudflare publishes, and the ACL fails closed:
#   a wrong list would turn visitors away, not let others in.
# - Blank lines are allowed (a trailing newline, or none, are both seen in the
#   wild); comments are not, since Cloudflare's lists have none.
# - aiohttp is imported by the functions that download, not by the module:
#   pikud.toml's defaults (DEFAULT_URLS) come from here, and a daemon that
#   never refreshes must not carry aiohttp's client (about 15 MiB of RSS).

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pikud.errors import CloudflareError

if TYPE_CHECKING:
    from datetime import datetime

    import aiohttp

DEFAULT_URLS = ("https://www.cloudflare.com/ips-v4", "https://www.cloudflare.com/ips-v6")
TIMEOUT = 10.0              # seconds for each list, connect to last byte
MAX_BYTES = 64 * 1024       # Cloudflare's lists are a few hundred bytes
_SHOWN = 80                 # characters of a bad line quoted in an error


@dataclass(frozen=True)
class RangeList:
    """One downloaded list: where it came from and its networks, in its order."""

    url: str
    ranges: tuple[str, ...]


def _refuse(where: str, reason: str) -> CloudflareError:
    return CloudflareError(f"{where}: {reason}; nothing changed")


def parse_list(url: str, text: str) -> RangeList:
    """The networks in ``text``, one a line, or CloudflareError naming the URL and line."""
    ranges: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            network = ipaddress.ip_network(line, strict=True)
        except ValueError as exc:
            shown = line if len(line) <= _SHOWN else line[:_SHOWN] + "..."
            raise _refuse(f"{url}, line {number}", f"{shown!r} is not an IP network ({exc})"
                          ) from None
        ranges.append(str(network))
    if not ranges:
        raise _refuse(url, "the list is empty")
    return RangeList(url, tuple(ranges))


def merged(lists: Sequence[RangeList]) -> tuple[str, ...]:
    """Every network of every list, in order, each once."""
    return tuple(dict.fromkeys(r for item in lists for r in item.ranges))


def format_file(lists: Sequence[RangeList], when: datetime) -> str:
    """The text of cloudflare_ips.txt: a header naming the sources and time, then the networks."""
    stamp = when.astimezone().isoformat(timespec="seconds")
    header = ["# Cloudflare's address ranges for NGINX_CLOUDFLARE_ACL, downloaded by pikud",
              f"# on {stamp} from:"]
    header += [f"#   {item.url} ({len(item.ranges)} ranges)" for item in lists]
    header += ["# `piku cloudflare:refresh` replaces this file; without it, pikud uses the",
               "# list bundled with it."]
    return "".join(line + "\n" for line in [*header, *merged(lists)])


async def _fetch(session: aiohttp.ClientSession, url: str, timeout: float,
                 max_bytes: int) -> str:
    import aiohttp

    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise _refuse(url, f"HTTP {response.status} {response.reason or ''}".rstrip())
            data = b""
            async for chunk in response.content.iter_chunked(16 * 1024):
                data += chunk
                if len(data) > max_bytes:
                    raise _refuse(url, f"larger than {max_bytes // 1024} KiB")
    except TimeoutError:
        raise _refuse(url, f"no complete answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise _refuse(url, f"cannot download it ({exc.__class__.__name__}: {exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(url, "not UTF-8 text") from None


async def download(urls: Sequence[str], *, timeout: float = TIMEOUT,
                   max_bytes: int = MAX_BYTES) -> list[RangeList]:
    """Each URL's list, checked; CloudflareError on the first that fails, before any write."""
    import aiohttp

    lists = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        for url in urls:
            lists.append(parse_list(url, await _fetch(session, url, timeout, max_bytes)))
    return lists
