"""Watching files the way the uWSGI emperor watched its vassals, through inotify.

Each app's ``envs/APP/ENV`` and ``SCALING`` are watched, and so are the files
named in ``PIKU_TOUCH_RELOAD``. A change is reported once per app after a short
quiet time (an editor's save or a ``touch`` is several inotify events).

The inotify instance (pikud/inotify.py) is made at the first watch, and the loop
reads it from then on; a daemon with no apps has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from pikud import inotify

log = logging.getLogger(__name__)

SETTLE = 0.2            # seconds of quiet before a change is acted on
# What an inotify error means on a server, and which limit to raise.
LIMITS = {errno.EMFILE: "no inotify instance or descriptor left: raise "
                        "fs.inotify.max_user_instances or pikud's LimitNOFILE",
          errno.ENOSPC: "no inotify watch left: raise fs.inotify.max_user_watches"}
MASK = inotify.CLOSE_WRITE | inotify.MOVED_TO | inotify.CREATE | inotify.ATTRIB | inotify.DELETE

Reaction = Callable[[str, str], None]       # (app, "config" | "touch")


class FileWatcher:
    def __init__(self, react: Reaction) -> None:
        self._react = react
        self._inotify: inotify.Inotify | None = None
        self._dirs: dict[Path, int] = {}                    # dir -> its watch descriptor
        self._watched: dict[int, Path] = {}                 # and back
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
                wd = self._dirs.pop(directory)
                del self._watched[wd]
                with contextlib.suppress(OSError):  # the folder is gone, and its watch with it
                    assert self._inotify is not None
                    self._inotify.rm_watch(wd)

    def _add_watch(self, directory: Path) -> int:
        """Watch ``directory``; the inotify instance is made, and read by the loop, at the
        first watch (an app's commit, on the loop)."""
        if self._inotify is None:
            made = inotify.Inotify()
            try:
                asyncio.get_running_loop().add_reader(made.fd, self._read)
            except BaseException:
                made.close()
                raise
            self._inotify = made
        wd = self._inotify.add_watch(directory, MASK)
        self._watched[wd] = directory
        return wd

    def _read(self) -> None:
        assert self._inotify is not None
        for event in self._inotify.read():
            if event.mask & inotify.Q_OVERFLOW:
                log.warning("file watch: inotify's queue overflowed and changes were lost "
                            "(raise fs.inotify.max_queued_events); a lost change to ENV, "
                            "SCALING or a touch-reload file is acted on at the app's next "
                            "deploy or restart")
                continue
            directory = self._watched.get(event.wd)
            target = self._targets.get(directory, {}).get(event.name) if directory else None
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
        detached = self._detach()
        if detached is not None:
            detached.close()

    async def aclose(self) -> None:
        """``close``, with the descriptor closed on a worker thread: closing an inotify
        descriptor waits for the kernel's grace period (about 20 ms here), which a
        shutdown need not wait for while it stops the apps."""
        detached = self._detach()
        if detached is not None:
            await asyncio.to_thread(detached.close)

    def _detach(self) -> inotify.Inotify | None:
        """No more reactions: pending ones cancelled, the descriptor no longer read, the
        maps emptied. Returns the descriptor's owner, to close."""
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        detached, self._inotify = self._inotify, None
        if detached is not None:
            with contextlib.suppress(RuntimeError):     # the loop is already closed
                asyncio.get_running_loop().remove_reader(detached.fd)
        self._dirs.clear()
        self._watched.clear()
        self._targets.clear()
        return detached
