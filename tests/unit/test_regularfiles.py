"""open_regular: only a regular file is opened; a FIFO, a folder or a link is refused at once."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pikud.regularfiles import open_regular


def test_a_regular_file_is_opened_with_its_status(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    fd, info = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"line\n")
        assert info.st_ino == path.stat().st_ino and (info.st_mode & 0o777) == 0o600
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    assert path.read_bytes() == b"line\n"


@pytest.mark.parametrize(("make", "code", "says"), [
    (lambda p: os.mkfifo(p), errno.EINVAL, "not a regular file (mode prw"),   # never waits
    (lambda p: p.mkdir(), errno.EISDIR, "Is a directory"),
    (lambda p: p.symlink_to("/etc/passwd"), errno.ELOOP, "which pikud does not follow"),
])
def test_anything_else_is_refused_and_named(tmp_path: Path, make: Callable[[Path], object],
                                            code: int, says: str) -> None:
    path = tmp_path / "planted"
    make(path)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError) as refused:
        open_regular(path, os.O_RDONLY)
    assert refused.value.errno == code and says in str(refused.value)
    assert len(os.listdir("/proc/self/fd")) == before         # nothing left open


def test_a_caller_that_follows_links_reaches_the_file(tmp_path: Path) -> None:
    target = tmp_path / "pikud.toml"
    target.write_text("log_level = 'info'\n")
    (tmp_path / "link.toml").symlink_to(target)
    fd, info = open_regular(tmp_path / "link.toml", os.O_RDONLY, follow=True)
    os.close(fd)
    assert info.st_ino == target.stat().st_ino
