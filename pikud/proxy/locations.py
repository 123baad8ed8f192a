"""Static locations: clean URL prefixes, and the folders inside the release they map to. Pure.

Shared by the nginx site (``site.py``) and the router, which both serve the
folders checked here; ``unsafe_char`` is the one test of what may reach an
nginx config unquoted.
"""

# Design notes:
# - A static location and its alias both end in "/": piku's "/static" +
#   "…/static/" lets "/static../x" escape the folder (the classic alias bug).
# - Static folders (and the catch-all file) must resolve inside the app's
#   release, and the site is given their real path. Below it, nginx follows no
#   symlink (`disable_symlinks on from=FOLDER`): a committed `public/x ->
#   /etc/passwd` is a 403. `if_not_owner` would not do: every file of every
#   app, ENV included, has the same owner. The router checks the same way.

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pikud.errors import ProcfileError, SpecError

_SEGMENT = re.compile(r"[A-Za-z0-9._~!+=@-]+")
_META = frozenset(";{}\"'\\$#`")        # nginx syntax, variables, comments


@dataclass(frozen=True)
class StaticPath:
    """``location URL { alias PATH; }``; both end in "/"."""

    url: str
    path: str



def unsafe_char(text: str) -> str | None:
    """The first character of ``text`` that must not reach an nginx config, if any."""
    for char in text:
        if char in _META or char.isspace() or not char.isprintable():
            return char
    return None


def url_prefix(fail: Callable[[str], SpecError], url: str) -> str:
    """A clean absolute URL path without a trailing "/" ("/" itself stays)."""
    if not url.startswith("/"):
        raise fail(f"URL {url!r} must start with '/'")
    if url == "/":
        return url
    segments = url.strip("/").split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise fail(f"URL {url!r} must be a clean path of letters, digits and ._~!+=@-")
    return "/" + "/".join(segments)


def local_path(fail: Callable[[str], SpecError], text: str, base: Path, *,
               absolute: bool) -> str:
    """``text`` relative to ``base`` (or absolute if allowed), as a real path inside ``base``.

    Symlinks are followed: a folder committed as ``ln -s /etc public`` is
    refused like ``../../etc``. The result is the resolved path, so what nginx
    and the router are given is exactly what was checked.
    """
    bad = unsafe_char(text)
    if bad is not None or not text:
        raise fail(f"path {text!r} contains {bad!r}, which nginx would read as syntax"
                   if bad else "empty path")
    if text.startswith("/") and not absolute:
        raise fail(f"{text!r} must be a path inside {base}, not absolute")
    lexical = posixpath.normpath(posixpath.join(str(base), text))
    if not Path(lexical).is_relative_to(posixpath.normpath(str(base))):
        raise fail(f"{text!r} is outside {base}")
    try:
        real, real_base = Path(lexical).resolve(), base.resolve()
    except (OSError, RuntimeError) as exc:          # a loop of symlinks
        raise fail(f"{text!r} cannot be resolved ({exc})") from None
    if not real.is_relative_to(real_base):
        raise fail(f"{text!r} resolves to {real}, outside {real_base}")
    if unsafe_char(str(real)) is not None:
        raise fail(f"{text!r} resolves to {str(real)!r}, which nginx would read as syntax")
    return str(real)


def static_paths(fail: Callable[[str], SpecError], value: str,
                 app_dir: Path) -> tuple[StaticPath, ...]:
    """``/url:path,...``: folders in the app's release, relative to it or absolute."""
    found: dict[str, StaticPath] = {}
    for item in (part.strip(" ") for part in value.split(",")):
        url, colon, path = item.partition(":")
        if not item or not colon:
            raise fail(f"expected /url:path[,/url:path...], got item {item!r}")
        url = url_prefix(fail, url)
        location = url if url == "/" else url + "/"
        if location in found:
            raise fail(f"URL {url!r} is mapped twice")
        folder = local_path(fail, path, app_dir, absolute=True)
        found[location] = StaticPath(location, folder.rstrip("/") + "/")
    return tuple(found.values())


def procfile_static(value: str, app_dir: Path) -> tuple[StaticPath, ...]:
    """The Procfile's ``static:`` entry: ``dir`` (served at /) or ``/url:dir,...``."""
    def fail(reason: str) -> ProcfileError:
        return ProcfileError(f"static: {reason}", file="Procfile")
    value = value.strip()
    return static_paths(fail, value if ":" in value else f"/:{value}", app_dir)
