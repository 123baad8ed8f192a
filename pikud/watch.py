"""Watching files the way the uWSGI emperor watched its vassals, through inotify.

Each app's ``envs/APP/ENV`` and ``SCALING`` are watched, and so are the files
named in ``PIKU_TOUCH_RELOAD``. A change is reported once per app after a short
quiet time (an editor's save or a ``touch`` is several inotify events).

The inotify instance is made at the first watch: asyncinotify loads libc through
ctypes.util.find_library, which runs ldconfig and maps about 1.2 MiB into the
daemon; a daemon with no apps needs none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncinotify import Inotify, Watch

log = logging.getLogger(__name__)

SETTLE = 0.2            # seconds of quiet before a change is acted on
# What an inotify error means on a server, and which limit to raise.
LIMITS = {errno.EMFILE: "no inotify instance or descriptor left: raise "
                        "fs.inotify.max_user_instances or pikud's LimitNOFILE",
          errno.ENOSPC: "no inotify watch left: raise fs.inotify.max_user_watches"}

Reaction = Callable[[str, str], None]       # (app, "config" | "touch")


class FileWatcher:
    def __init__(self, react: Reaction) -> None:
        self._react = react
        self._inotify: Inotify | None = None
        self._made = asyncio.Event()        # set once there is an inotify instance to read
        self._dirs: dict[Path, Watch] = {}
        self._targets: dict[Path, dict[str, tuple[str, str]]] = {}   # dir -> name -> (app, why)
        self._pending: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def watch(self, app: str, config_dir: Path, touch_files: Iterable[Path]) -> None:
        """(Re)set what is watched for ``app``."""
        self.unwatch(app)
        wanted = [(config_dir / "ENV", "config"), (config_dir / "SCALING", "config")]
        wanted += [(path, "touch") for path in touch_files]
        for path, why in wanted:
            directory = path.parent
            if not directory.is_dir():
                log.warning("%s: cannot watch %s: its folder does not exist", app, path)
                continue
            if directory not in self._dirs:
                try:
                    self._dirs[directory] = self._add_watch(directory)
                except OSError as exc:
                    # Watching is a convenience, and this runs inside an app's commit, after
                    # its switch: a failure is said and the rest goes on.
                    reason = LIMITS.get(exc.errno or 0, exc.strerror or str(exc))
                    log.warning("%s: cannot watch %s (%s): a change to it is acted on at the "
                                "app's next deploy or restart", app, path, reason)
                    continue
            self._targets.setdefault(directory, {})[path.name] = (app, why)

    def unwatch(self, app: str) -> None:
        for directory, names in list(self._targets.items()):
            for name, (owner, _) in list(names.items()):
                if owner == app:
                    del names[name]
            if not names:
                del self._targets[directory]
                watch = self._dirs.pop(directory)
                with contextlib.suppress(OSError):  # the folder is gone, and its watch with it
                    assert self._inotify is not None
                    self._inotify.rm_watch(watch)

    def _add_watch(self, directory: Path) -> Watch:
        try:    # imported on first use: the resting daemon stays light; see README
            from asyncinotify import Inotify, Mask
        except (ImportError, RuntimeError) as exc:  # RuntimeError: no inotify in this libc
            raise OSError(errno.ENOSYS, f"asyncinotify cannot load: {exc}") from None
        if self._inotify is None:
            self._inotify = Inotify()
            self._made.set()
        mask = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.ATTRIB | Mask.DELETE
        return self._inotify.add_watch(directory, mask)

    async def run(self) -> None:
        await self._made.wait()
        assert self._inotify is not None
        async for event in self._inotify:
            if event.path is None or event.name is None:
                continue
            target = self._targets.get(event.path.parent, {}).get(event.name.name)
            if target is not None:
                self._schedule(*target)

    def _schedule(self, app: str, why: str) -> None:
        handle = self._pending.pop((app, why), None)
        if handle is not None:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._pending[(app, why)] = loop.call_later(SETTLE, self._fire, app, why)

    def _fire(self, app: str, why: str) -> None:
        self._pending.pop((app, why), None)
        self._react(app, why)

    def close(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        if self._inotify is not None:
            self._inotify.close()
