"""Properties of pikud.appspec under arbitrary input (hypothesis).

Every parser either returns a value or raises its own SpecError, and the
error names its input: the file and the first bad line (every line before it
parses, the line alone does not), the key, or the offending text. What the
formatters write reads back as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pikud.appspec import (
    MAX_SCALE,
    format_env,
    format_scaling,
    load_spec,
    parse_env,
    parse_procfile,
    parse_scale_args,
    parse_scaling,
    validate_app_name,
)
from pikud.convert import boolean, nonneg_int, positive_int, relative_paths, seconds, size, url_path
from pikud.errors import AppNameError, EnvError, ProcfileError, ScalingError, SpecError
from pikud.paths import Paths
from tests.conftest import examples
from tests.strategies import ANY_CHAR, FILE_CHAR, HUGE, spliced

KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def names_its_line(error: SpecError, text: str, file: str, parse: Callable[[str], object],
                   tail: str = "") -> str | None:
    """Check that ``error`` points at the first bad line of ``text``; return that line.

    Every line before it parses (with ``tail`` appended, for parsers that need
    an entry) and the line on its own fails the same way. None when the error
    is about the whole file rather than a line.
    """
    assert error.file == file and str(error).startswith(f"{file}"), error
    if error.line is None:
        return None
    lines = text.split("\n")
    assert 1 <= error.line <= len(lines)
    parse("\n".join([*lines[:error.line - 1], tail]))
    with pytest.raises(type(error)):
        parse(lines[error.line - 1])
    return lines[error.line - 1].strip()


def names(error: SpecError, text: str) -> bool:
    """Whether the message holds ``text`` as it is or quoted."""
    return text in str(error) or repr(text) in str(error)


# --- app names ------------------------------------------------------------

@given(name=st.one_of(st.text(ANY_CHAR), spliced(["a", "Z", "0", ".", "..", "-", "_", "/",
                                                  " ", "\n", "\x00", "é"], 70)))
@settings(max_examples=examples(200))
def test_app_name_is_accepted_whole_or_named(name: str) -> None:
    try:
        assert validate_app_name(name) == name
    except AppNameError as error:
        assert repr(name) in str(error) or (name == "" and "empty" in str(error))
    else:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) and ".." not in name


# --- Procfile -------------------------------------------------------------

PROCFILE_TOKENS = ["web", "wsgi", "worker", "cron1", "static", "release", "w_1-a", "k" * 63,
                   "k" * 64, ": ", ":", " ", "\t", "\n", "\n", "\r\n", "#", "\x00", "\ufeff",
                   "\x0c", "\u2028", "=", "python app.py", "*/5 * * * * ./job", "$PORT"]


@given(text=st.one_of(st.text(FILE_CHAR), spliced(PROCFILE_TOKENS, 60)))
@settings(max_examples=examples(300))
def test_procfile_parses_or_names_the_line(text: str) -> None:
    try:
        procfile = parse_procfile(text, "apps/a/Procfile")
    except ProcfileError as error:
        line = names_its_line(error, text, "apps/a/Procfile",
                              lambda part: parse_procfile(part, "apps/a/Procfile"), "zz: ok")
        if line is None:
            assert "no process kinds" in str(error)
        else:
            kind = line.partition(":")[0].strip()
            assert repr(line) in str(error) or repr(kind) in str(error) or "NUL" in str(error)
    else:
        assert procfile.entries and not {"web", "wsgi"} <= set(procfile.entries)
        for kind, command in procfile.entries.items():
            assert KIND.fullmatch(kind) and command and command == command.strip()
            assert "\n" not in command and "\x00" not in command and command in text


COMMAND = st.text(st.characters(codec="utf-8", exclude_characters="\n\x00")).map(
    str.strip).filter(bool)


@given(entries=st.dictionaries(st.from_regex(KIND, fullmatch=True), COMMAND, min_size=1))
@settings(max_examples=examples(100))
def test_procfile_reads_what_was_written(entries: dict[str, str]) -> None:
    text = "".join(f"{kind}: {command}\n" for kind, command in entries.items())
    expected = dict(entries)
    if "wsgi" in expected:
        expected.pop("web", None)
    assert parse_procfile(text, "Procfile").entries == expected


# --- ENV ------------------------------------------------------------------

ENV_TOKENS = ["A", "KEY_1", "export ", "export", "=", "==", "'", '"', "$", "${", "}", "$A",
              "${A}", "${1}", "\\$", "#", " ", "\t", "\n", "\n", "\r", "\x00", "\ufeff", "é"]
BASE = {"A": "base-a", "HOME": "/home/piku"}


@given(text=st.one_of(st.text(FILE_CHAR), spliced(ENV_TOKENS, 60)))
@settings(max_examples=examples(300))
def test_env_parses_or_names_the_line(text: str) -> None:
    try:
        values = parse_env(text, "envs/a/ENV", BASE)
    except EnvError as error:
        line = names_its_line(error, text, "envs/a/ENV",
                              lambda part: parse_env(part, "envs/a/ENV", BASE))
        assert line is not None
        if error.key is not None:
            assert names(error, error.key) and error.key in line
        else:
            unexported = re.sub(r"^export\s+", "", line)
            assert repr(unexported) in str(error) or "NUL" in str(error)
    else:
        assert all(KEY.fullmatch(key) for key in values)


ENV_VALUE = st.text(ANY_CHAR) | spliced(ENV_TOKENS, 20)


@given(values=st.dictionaries(st.from_regex(KEY, fullmatch=True) | st.text(ANY_CHAR), ENV_VALUE),
       base=st.dictionaries(st.from_regex(KEY, fullmatch=True), st.text(FILE_CHAR), max_size=3))
@example(values={"A": "\ud800"}, base={})       # a lone surrogate cannot be written to a file
@settings(max_examples=examples(100))
def test_env_reads_what_was_written(values: dict[str, str], base: dict[str, str]) -> None:
    try:
        text = format_env(values)
    except EnvError as error:
        assert error.key in values and names(error, error.key)
    else:
        text.encode("utf-8")            # what format_env returns is written to envs/APP/ENV
        assert parse_env(text, "envs/a/ENV", base) == values


# --- SCALING --------------------------------------------------------------

SCALING_TOKENS = ["web", "worker", "w_1", ":", "=", " ", "\n", "\n", "#", "0", "1", "1000",
                  "1001", "-1", "+1", "٣", HUGE, "\x00", "\ufeff"]
KNOWN = ["web", "worker", "w_1"]


@given(text=st.one_of(st.text(FILE_CHAR), spliced(SCALING_TOKENS, 40)),
       kinds=st.none() | st.just(KNOWN))
@example(text=f"web: {HUGE}", kinds=None)
@settings(max_examples=examples(200))
def test_scaling_parses_or_names_the_line(text: str, kinds: list[str] | None) -> None:
    try:
        counts = parse_scaling(text, "envs/a/SCALING", kinds)
    except ScalingError as error:
        line = names_its_line(error, text, "envs/a/SCALING",
                              lambda part: parse_scaling(part, "envs/a/SCALING", kinds))
        assert line is not None
        assert repr(line) in str(error) or repr(error.key) in str(error) or "NUL" in str(error)
    else:
        assert all(KIND.fullmatch(kind) and 0 <= count <= MAX_SCALE
                   for kind, count in counts.items())
        assert kinds is None or set(counts) <= set(kinds)


@given(args=st.lists(st.one_of(spliced(SCALING_TOKENS, 8), st.text(ANY_CHAR)), max_size=4))
@example(args=[f"web={HUGE}"])
@settings(max_examples=examples(200))
def test_scale_args_parse_or_name_the_argument(args: list[str]) -> None:
    try:
        counts = parse_scale_args(args, KNOWN)
    except ScalingError as error:
        named = {repr(arg) for arg in args} | {repr(arg.partition("=")[0].strip()) for arg in args}
        assert any(text in str(error) for text in named), error
    else:
        assert set(counts) <= set(KNOWN) and all(0 <= n <= MAX_SCALE for n in counts.values())


@given(scaling=st.dictionaries(st.from_regex(KIND, fullmatch=True) | st.text(ANY_CHAR),
                               st.integers(-5, MAX_SCALE + 5) | st.integers()))
@settings(max_examples=examples(100))
def test_scaling_reads_what_was_written(scaling: dict[str, int]) -> None:
    try:
        text = format_scaling(scaling)
    except ScalingError as error:
        assert error.key in scaling and names(error, error.key)
    else:
        assert parse_scaling(text, "envs/a/SCALING") == scaling


# --- converters -----------------------------------------------------------

CONVERTERS = [boolean, positive_int, nonneg_int, seconds, size, url_path, relative_paths]
VALUE_TOKENS = ["0", "1", "1.5", ".", "ms", "s", "m", "K", "MiB", "g", "b", " ", "/", "..",
                ",", "true", "no", "\n", "-", "e", HUGE, "٣"]


@pytest.mark.parametrize("convert", CONVERTERS, ids=lambda convert: convert.__name__)
@given(value=st.one_of(st.text(ANY_CHAR), spliced(VALUE_TOKENS, 10)))
@example(value=HUGE)
@settings(max_examples=examples(100))
def test_converters_return_or_name_the_key(convert: Callable[[str, str], object],
                                           value: str) -> None:
    try:
        convert("PIKU_X", value)
    except EnvError as error:
        assert error.key == "PIKU_X" and str(error).startswith("PIKU_X: ")


# --- an app's files, as bytes on disk -------------------------------------

FILE_TOKENS = [*PROCFILE_TOKENS, *ENV_TOKENS, *SCALING_TOKENS, "PIKU_STOP_TIMEOUT=",
               "PIKU_LOG_MAXSIZE=", "PIKU_BACKOFF_MAX=", "PIKU_IDLE_TIMEOUT=", "2", "10ms"]
FILE_BYTES = st.none() | st.binary(max_size=60) | spliced(FILE_TOKENS, 30).map(str.encode)
LABELS = ("apps/a/Procfile", "apps/a/ENV", "envs/a/ENV", "envs/a/SCALING")


@given(procfile=FILE_BYTES, env=FILE_BYTES, override=FILE_BYTES, scaling=FILE_BYTES)
@settings(max_examples=examples(100))
def test_app_files_load_or_name_the_file_or_key(tmp_path_factory: pytest.TempPathFactory,
                                                procfile: bytes | None, env: bytes | None,
                                                override: bytes | None,
                                                scaling: bytes | None) -> None:
    paths = Paths(tmp_path_factory.mktemp("root"))
    for label, data in zip(LABELS, (procfile, env, override, scaling), strict=True):
        if data is not None:
            (paths.root / label).parent.mkdir(parents=True, exist_ok=True)
            (paths.root / label).write_bytes(data)
    paths.app("a").mkdir(parents=True, exist_ok=True)
    try:
        spec = load_spec(paths, "a", {"HOME": "/home/piku", "USER": "piku", "PATH": "/bin"})
    except SpecError as error:
        assert str(error).startswith(LABELS) or str(error) == "no Procfile in apps/a" or (
            error.key is not None and str(error).startswith(f"{error.key}: ")), error
    else:
        assert spec.procfile.entries and set(spec.scaling) <= set(spec.procfile.entries)
