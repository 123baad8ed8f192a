"""Cloudflare's published address ranges, for NGINX_CLOUDFLARE_ACL: download, check, write.

``fetch(urls)`` has a child (``python -m pikud.proxy.cloudflare URL...``)
download each list with aiohttp (bounded in time and size) and check it with
``parse_list()``: every line one IP network, no list empty. Anything wrong is a
``CloudflareError`` naming the URL (and the line), raised before anything is
written. ``format_file()`` is the text of ``$PIKU_ROOT/pikud/cloudflare_ips.txt``,
with a header saying where and when it came from; ``site.cloudflare_ranges()``
reads it back.
"""

# Design notes:
# - Strict means ipaddress.ip_network(line, strict=True): "104.16.0.1/13" (host
#   bits set) is refused like "<html>", since a list that is not exactly
#   networks is not the list Cloudflare publishes, and the ACL fails closed:
#   a wrong list would turn visitors away, not let others in.
# - Blank lines are allowed (a trailing newline, or none, are both seen in the
#   wild); comments are not, since Cloudflare's lists have none.
# - The download runs in a child, which answers with the checked lists in JSON
#   (one range a line, so no line nears the pipe reader's 64 KiB cut) or with
#   the error (which quotes at most _SHOWN characters of a bad line, for the same
#   reason: a page on one line would otherwise be cut into invalid JSON). The
#   daemon thus never carries aiohttp's client (about 15 MiB of RSS) nor ssl
#   (launch.py), not even after a refresh, and the lists are parsed outside it.
#   pikud.toml's defaults (DEFAULT_URLS) come from here, so the module itself
#   imports neither.

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pikud.errors import CloudflareError, NginxError
from pikud.proxy.commands import run

if TYPE_CHECKING:
    from datetime import datetime

    import aiohttp

DEFAULT_URLS = ("https://www.cloudflare.com/ips-v4", "https://www.cloudflare.com/ips-v6")
TIMEOUT = 10.0              # seconds for each list, connect to last byte
MAX_BYTES = 64 * 1024       # Cloudflare's lists are a few hundred bytes
CHILD_START = 10.0          # seconds for the child's interpreter and aiohttp to start
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
        except ValueError as exc:       # whose text quotes the whole line: not a long one
            why = f" ({exc})" if len(line) <= _SHOWN else ""
            shown = line if len(line) <= _SHOWN else line[:_SHOWN] + "..."
            raise _refuse(f"{url}, line {number}", f"{shown!r} is not an IP network{why}"
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


async def download(urls: Sequence[str], timeout: float, max_bytes: int) -> list[RangeList]:
    """Each URL's list, checked; CloudflareError on the first that fails. Run by the child."""
    import aiohttp

    lists = []
    async with aiohttp.ClientSession(trust_env=False) as session:
        for url in urls:
            lists.append(parse_list(url, await _fetch(session, url, timeout, max_bytes)))
    return lists


async def fetch(urls: Sequence[str], *, timeout: float = TIMEOUT,
                max_bytes: int = MAX_BYTES) -> list[RangeList]:
    """Each URL's list, downloaded and checked by a child; CloudflareError on the first
    that fails, before any write."""
    argv = [sys.executable, "-m", "pikud.proxy.cloudflare", repr(timeout), str(max_bytes),
            *urls]
    try:
        code, output = await run(argv, timeout=timeout * len(urls) + CHILD_START,
                                 stderr=False)
    except NginxError as exc:
        raise _refuse("the download of Cloudflare's lists", str(exc)) from None
    try:
        answer = json.loads(output)
        if code == 1:
            raise CloudflareError(answer["error"])
        if code == 0:
            return [RangeList(item["url"], tuple(item["ranges"])) for item in answer["lists"]]
    except (ValueError, KeyError, TypeError):
        pass
    raise _refuse("the download of Cloudflare's lists", f"its process failed (exit status "
                  f"{code}) and gave no answer")


def main(argv: list[str]) -> int:
    """The child: ``TIMEOUT MAX_BYTES URL...`` -> the checked lists, or the error, in JSON."""
    import asyncio

    timeout, max_bytes, urls = float(argv[0]), int(argv[1]), argv[2:]
    try:
        lists = asyncio.run(download(urls, timeout, max_bytes))
    except CloudflareError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    except Exception as exc:        # the daemon drops this process's error output
        print(json.dumps({"error": f"the download failed: {exc.__class__.__name__}: {exc}"}))
        return 1
    print(json.dumps({"lists": [{"url": item.url, "ranges": item.ranges} for item in lists]},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
