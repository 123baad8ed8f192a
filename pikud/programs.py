"""Finding a program on a PATH, as `shutil.which` does.

The daemon looks for nginx, setpriv, prlimit and crontab at its start; shutil would stay
in its memory for that (it imports zlib, bz2 and lzma for its archives: about 500 KiB of
RSS), so the search is done here with os alone.
"""

from __future__ import annotations

import os


def which(name: str, path: str | None = None) -> str | None:
    """The executable file ``name`` would run as, searched on ``path`` (default: $PATH,
    else the system's default path); a name with a slash is taken as it is. None if
    there is no such file. An empty PATH names no folder, as for shutil.which: not the
    current one (an empty entry among others does)."""
    if os.sep in name:
        folders = [""]
    else:
        path = os.environ.get("PATH", os.defpath) if path is None else path
        if not path:
            return None
        folders = path.split(os.pathsep)
    for folder in folders:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
