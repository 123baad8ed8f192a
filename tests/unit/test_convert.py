"""Tables for pikud.convert: every converter, its values and its errors."""

from __future__ import annotations

import pytest

from pikud.convert import (
    boolean,
    cpus,
    nonneg_int,
    positive_int,
    relative_paths,
    seconds,
    size,
)
from pikud.errors import EnvError


@pytest.mark.parametrize(("convert", "value", "expected"), [
    (boolean, "true", True), (boolean, "YES", True), (boolean, "On", True), (boolean, "1", True),
    (boolean, "false", False), (boolean, "no", False), (boolean, "OFF", False),
    (boolean, " 0 ", False),
    (positive_int, "1", 1), (positive_int, " 42 ", 42),
    (nonneg_int, "0", 0), (nonneg_int, "7", 7),
    (seconds, "0", 0.0), (seconds, "2", 2.0), (seconds, "1.5", 1.5), (seconds, ".5", 0.5),
    (seconds, "3.", 3.0), (seconds, "2s", 2.0), (seconds, "250ms", 0.25), (seconds, "2m", 120.0),
    (seconds, "1.5 M", 90.0), (seconds, "10S", 10.0), (seconds, "10080m", 604800.0),
    (size, "0", 0), (size, "1024", 1024), (size, "1K", 1024), (size, "1M", 1048576),
    (size, "2G", 2 * 1024 ** 3), (size, "3kb", 3072), (size, "1MiB", 1048576),
    (size, "5 k", 5120), (size, "10b", 10),
    (relative_paths, "", ()), (relative_paths, "  ", ()), (relative_paths, "app.py", ("app.py",)),
    (relative_paths, "a.py, conf/b.ini ,./c", ("a.py", "conf/b.ini", "c")),
    (relative_paths, "dir//x/", ("dir/x",)), (relative_paths, "a..b", ("a..b",)),
    (cpus, "50%", 0.5), (cpus, "200%", 2.0), (cpus, "1%", 0.01), (cpus, "0.5", 0.5),
    (cpus, " 2 ", 2.0), (cpus, "12.5 %", 0.125), (cpus, "4096", 4096.0),
])
def test_converter_ok(convert: object, value: str, expected: object) -> None:
    assert callable(convert)
    result = convert("KEY", value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("convert", "value", "expected"), [
    (boolean, "maybe", "true/false"), (boolean, "", "true/false"), (boolean, "2", "true/false"),
    (positive_int, "0", "1 or more"), (positive_int, "-1", "1 or more"),
    (positive_int, "1.0", "1 or more"), (positive_int, "abc", "1 or more"),
    (nonneg_int, "-1", "0 or more"), (nonneg_int, "", "0 or more"), (nonneg_int, "+1", "0 or more"),
    (seconds, "abc", "a number of seconds"), (seconds, "-1", "a number of seconds"),
    (seconds, "1h", "a number of seconds"), (seconds, "nan", "a number of seconds"),
    (seconds, "inf", "a number of seconds"), (seconds, "1e3", "a number of seconds"),
    (seconds, "", "a number of seconds"),
    (seconds, "604801", "up to 7 days"), (seconds, "10081m", "up to 7 days"),
    (seconds, "9" * 400, "up to 7 days"),
    (size, "1T", "a size in bytes"), (size, "1.5M", "a size in bytes"), (size, "M", "a size"),
    (size, "-1", "a size in bytes"),
    (relative_paths, "a,,b", "without empty items"), (relative_paths, "a,", "without empty"),
    (relative_paths, "a\nb", "one line"), (relative_paths, "a\x00", "one line"),
    (cpus, "0", "a percentage of one CPU"), (cpus, "0.5%", "from 1%"), (cpus, "4097", "4096 CPUs"),
    (cpus, "-1", "a percentage"), (cpus, "50%%", "a percentage"), (cpus, "1e3", "a percentage"),
    (cpus, "", "a percentage"), (cpus, "half", "a percentage"),
])
def test_converter_bad(convert: object, value: str, expected: str) -> None:
    assert callable(convert)
    with pytest.raises(EnvError) as info:
        convert("PIKU_X", value)
    assert str(info.value).startswith("PIKU_X: expected ")
    assert expected in str(info.value)
    assert str(info.value).endswith(f", got {value!r}")
    assert info.value.key == "PIKU_X"


def test_seconds_message() -> None:
    with pytest.raises(EnvError) as info:
        seconds("PIKU_STOP_TIMEOUT", "abc")
    assert str(info.value) == ("PIKU_STOP_TIMEOUT: expected a number of seconds "
                               "(optionally with s, ms or m), got 'abc'")


@pytest.mark.parametrize("value", ["/etc/passwd", "a,/abs", "../x", "a/../../b", "a/.."])
def test_relative_paths_outside(value: str) -> None:
    with pytest.raises(EnvError, match=r"^PIKU_TOUCH_RELOAD: '.*' must be a path inside"):
        relative_paths("PIKU_TOUCH_RELOAD", value)
