"""Log rotation and tail on real files; the daemon's settings file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pikud.access.audit import AuditLog
from pikud.errors import SpecError
from pikud.procman.logs import LogFile, PipeReader, log_files, tail
from pikud.settings import ConnectionLimits, Settings, load_settings


def test_log_file_rotates_into_numbered_backups(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    log = LogFile(tmp_path / "web.1.log", "web.1", max_bytes=200, backups=2,
                  followers={lambda source, line: seen.append((source, line))})
    for i in range(30):
        log.write_line(f"line {i:02d}")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["web.1.log", "web.1.log.1", "web.1.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    assert tail(tmp_path / "web.1.log", 1)[0].endswith("line 29")
    assert len(seen) == 30 and seen[0][0] == "web.1" and seen[-1][1].endswith("line 29")


def test_tail_reaches_into_the_previous_file(tmp_path: Path) -> None:
    (tmp_path / "w.1.log.1").write_text("".join(f"old {i}\n" for i in range(5)))
    (tmp_path / "w.1.log").write_text("new 0\nnew 1\n")
    assert tail(tmp_path / "w.1.log", 4) == ["old 3", "old 4", "new 0", "new 1"]
    assert tail(tmp_path / "w.1.log", 0) == []
    assert tail(tmp_path / "missing.log", 3) == []


def test_a_log_planted_as_a_link_a_fifo_or_a_hard_link_is_neither_written_nor_read(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Log folders are the deploy user's, and pikud may write them as root: a link there
    must not make it append to (or show) another file, and a FIFO must not block it."""
    target = tmp_path / "target"
    target.write_text("secret\n")
    target.chmod(0o644)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "web.1.log").symlink_to(target)
    os.mkfifo(logs / "web.2.log")
    os.link(target, logs / "web.3.log")
    audit = AuditLog(logs / "audit.log", max_bytes=1 << 20, backups=1)
    (logs / "audit.log").symlink_to(target)
    for name in ("web.1", "web.2", "web.3"):
        log = LogFile(logs / f"{name}.log", name, max_bytes=1 << 20, backups=1, followers=set())
        log.write_line("planted")             # returns: a FIFO without a reader never blocks
        log.close()
        assert tail(logs / f"{name}.log", 5) == []
    audit.write({"event": "planted"})
    assert target.read_text() == "secret\n"
    messages = caplog.text
    assert "a symbolic link, which pikud does not follow" in messages
    assert "not a regular file with one link (mode -rw-r--r--, 2 links)" in messages
    assert "audit line lost" in messages


async def test_a_pipe_reader_hands_over_its_lines_and_says_when_the_pipe_closed() -> None:
    """Its ``closed`` future is made only when asked for: most readers never are, and a
    future is the largest part of one."""
    read, write = os.pipe()
    lines: list[str] = []
    reader = PipeReader(read, lines.append)
    waiting = reader.closed
    os.write(write, b"one\r\ntwo\nthree")
    os.close(write)
    async with asyncio.timeout(5):
        await waiting
    assert lines == ["one", "two", "three"]
    read, write = os.pipe()
    later = PipeReader(read, lines.append)
    os.close(write)
    assert later._closed is None            # nothing made for a reader nobody asked about
    async with asyncio.timeout(5):
        await later.closed


def test_log_files_filters_by_kind(tmp_path: Path) -> None:
    for name in ("web.1.log", "web.2.log", "worker.1.log", "pikud.log", "web.1.log.1"):
        (tmp_path / name).write_text("")
    assert [s for s, _ in log_files(tmp_path)] == ["pikud", "web.1", "web.2", "worker.1"]
    assert [s for s, _ in log_files(tmp_path, "web")] == ["web.1", "web.2"]
    assert [s for s, _ in log_files(tmp_path, "web.2")] == ["web.2"]


def test_settings_defaults_when_absent(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "pikud.toml") == Settings()


def test_settings_are_read(tmp_path: Path) -> None:
    path = tmp_path / "pikud.toml"
    path.write_text('log_level = "debug"\nshutdown_timeout = 5\n[defaults]\n'
                    'PIKU_STOP_TIMEOUT = "3s"\nPIKU_START_RETRIES = 2\n')
    settings = load_settings(path)
    assert settings.log_level == "debug" and settings.shutdown_timeout == 5.0
    assert settings.app_defaults.stop_timeout == 3.0
    assert settings.app_defaults.start_retries == 2


def test_router_and_control_settings_are_read(tmp_path: Path) -> None:
    path = tmp_path / "pikud.toml"
    path.write_text("router_header_timeout = 2.5\nrouter_keepalive_timeout = 30\n"
                    "router_max_connections = 100\nrouter_fd_reserve = 512\n"
                    "control_idle_timeout = 5\n")
    settings = load_settings(path)
    assert settings.router == ConnectionLimits(header_timeout=2.5, keepalive_timeout=30.0,
                                               max_connections=100, fd_reserve=512)
    assert settings.control_idle_timeout == 5.0


@pytest.mark.parametrize("text, names", [
    ("log_level = ", "not valid TOML"),
    ("colour = 'red'\n", "unknown setting(s): colour"),
    ("log_level = 'loud'\n", "log_level"),
    ("shutdown_timeout = -1\n", "shutdown_timeout"),
    ("events_kept = 0\n", "events_kept"),
    ("defaults = 3\n", "[defaults] must be a table"),
    ("[defaults]\nPIKU_STOP_TIMEOUT = 'soon'\n", "PIKU_STOP_TIMEOUT"),
    ("cloudflare_urls = []\n", "cloudflare_urls must be a list of 1 to 10 URLs"),
    ('cloudflare_urls = "https://x/ips"\n', "cloudflare_urls must be a list"),
    ('cloudflare_urls = ["ftp://x/ips"]\n', "'ftp://x/ips' is not an http:// or https:// URL"),
    ('cloudflare_urls = ["https:///ips"]\n', "'https:///ips' is not"),
    ('cloudflare_urls = ["https://x/a b"]\n', "'https://x/a b' is not"),
    ("cloudflare_urls = [1]\n", "1 is not"),
    ("cloudflare_refresh_days = -1\n", "cloudflare_refresh_days must be a number of days"),
    ("cloudflare_refresh_days = true\n", "cloudflare_refresh_days must be"),
    ('cloudflare_refresh_days = "7"\n', "cloudflare_refresh_days must be"),
    ("router_header_timeout = 0\n",
     "router_header_timeout must be a number of seconds from 0.1 to 3600, got 0"),
    ('router_keepalive_timeout = "75"\n', "router_keepalive_timeout must be a number of "
     "seconds from 0.1 to 3600, got '75'"),
    ("router_max_connections = 2.5\n",
     "router_max_connections must be a whole number from 1 to 1000000, got 2.5"),
    ("router_fd_reserve = 10\n", "router_fd_reserve must be a whole number from 64 to 1000000, "
     "got 10"),
    ("control_idle_timeout = true\n", "control_idle_timeout must be a number of seconds"),
])
def test_bad_settings_name_the_problem(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "pikud.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_settings(path)
    assert names in str(info.value) and str(path) in str(info.value)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_settings_file_that_cannot_be_read_names_the_reason_and_leaks_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "pikud.toml"
    before = open_fds()
    path.mkdir()
    with pytest.raises(SpecError, match=f"^{path}: cannot read it: Is a directory$"):
        load_settings(path)
    path.rmdir()
    os.mkfifo(path)                     # never read: it would block the daemon's loop
    with pytest.raises(SpecError, match=r"cannot read it: not a regular file \(mode prw"):
        load_settings(path)
    path.unlink()
    path.write_text("events_kept = 5\n")
    path.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(SpecError, match=f"^{path}: cannot read it: Permission denied$"):
            load_settings(path)
    else:                               # root reads it: root owns it, nobody else may write
        assert load_settings(path).events_kept == 5
        os.chown(path, 65534, 65534)
        with pytest.raises(SpecError, match="owned by .* only root may write it"):
            load_settings(path)
    path.unlink()
    path.write_text("# " + "x" * (64 * 1024) + "\n")    # a comment: valid TOML, but too big
    with pytest.raises(SpecError, match=f"^{path}: more than 64 KiB: a settings file is"):
        load_settings(path)
    assert open_fds() == before
