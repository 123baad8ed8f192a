"""An app's static folders as the router serves them, without nginx.

The longest URL prefix wins (``routing.match_static``), and nothing outside
the folder is ever served: no "..", no symlink below the folder (as nginx's ``disable_symlinks on
from=FOLDER``, which the nginx site uses). Apart from the router's proxying
because it answers from the disk, not from an upstream.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web


def safe_join(folder: Path, rest: str) -> Path | None:
    """``folder``/``rest``, or None if ".." or a symlink would take it anywhere else.

    ``folder`` is the real path the app's settings were checked for (the site
    validation resolved it inside the release) and is not resolved again, so
    a folder since replaced by a symlink serves nothing. Below it no symlink
    is followed, as with nginx's ``disable_symlinks on from=FOLDER``: the
    joined path must be its own real path.
    """
    parts = rest.split("/")
    if any(p == ".." or "\x00" in p for p in parts):
        return None
    path = folder.joinpath(*(p for p in parts if p not in ("", ".")))
    try:
        return path if path.resolve() == path else None
    except (OSError, RuntimeError):         # a name too long, a loop of symlinks
        return None



def serve_static(request: web.Request, folder: Path, rest: str) -> web.StreamResponse | None:
    """``rest`` from ``folder`` (an index.html for a folder); None when there is no such file.

    Only GET and HEAD; a folder asked for without its trailing "/" is redirected to it.
    """
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    path = safe_join(folder, rest)
    try:
        if path is not None and path.is_dir():
            if not request.path.endswith("/"):
                raw, q, query = request.raw_path.partition("?")
                raise web.HTTPMovedPermanently(f"{raw}/{q}{query}")
            path = safe_join(path, "index.html")
        found = path is not None and path.is_file()
    except OSError:                      # a name too long, a loop of symlinks
        found = False
    if path is None or not found:
        return None
    return web.FileResponse(path)
