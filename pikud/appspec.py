"""An app as its user wrote it: name, Procfile, ENV and SCALING, parsed strictly.

Everything here is parsed at the edge into frozen dataclasses. An error names
the file and line (or the key), and nothing is returned half-read, so a typo
can never quietly change what runs. The value converters are in
pikud.convert, the PIKU_* supervision settings in pikud.appsettings. Stdlib only.
"""

# Design notes (where pikud is stricter than piku, and why):
# - piku silently skips Procfile lines its regex misses and ignores a whole ENV
#   file over one bad line. Here every malformed line is an error with file and line.
# - ENV expansion is our own, not os.path.expandvars: undefined -> "" (the shell's
#   rule; expandvars leaves "$X"), `\$` is a literal dollar, single quotes turn it
#   off, and a malformed `${...}` is an error rather than text passed through.
# - Expansion sees the variables piku gives every worker (APP, DATA_ROOT, PATH, ...),
#   as piku's does, so `DATABASE_URL=sqlite:///$DATA_ROOT/db` keeps working.

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pikud import identity
from pikud.appsettings import AppSettings, app_settings, idle_setting
from pikud.convert import UNWRITABLE, whole_number
from pikud.errors import AppNameError, EnvError, ProcfileError, ScalingError, SpecError
from pikud.paths import Paths

WEB_KINDS = ("web", "wsgi", "asgi")
RELEASE_KINDS = ("preflight", "release")
STATIC_KIND = "static"
UWSGI_PLUGIN_KINDS = {"jwsgi": "Java", "rwsgi": "Ruby", "php": "PHP"}
"""piku's kinds that exist only as uWSGI plugins; pikud has no uWSGI to run them."""
MAX_SCALE = 1000
# Set by systemd for the daemon itself; a child that saw them could notify or
# claim sockets in the daemon's name (FACTS.md), so they never reach an app.
SYSTEMD_VARS = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                          "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"})

_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT = re.compile(r"export\s+")
_REF = re.compile(r"\\\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)|\$\{")
_QUOTE_IF = frozenset("'\"$#\\")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lines(text: str, file: str, error: type[SpecError]) -> Iterable[tuple[int, str]]:
    """Numbered, stripped lines that are neither blank nor comments.

    Splits on "\\n" only: str.splitlines() also splits on form feeds and U+2028.
    """
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if "\x00" in line:
            raise error("line contains a NUL byte", file=file, line=number)
        if line and not line.startswith("#"):
            yield number, line


def validate_app_name(name: str) -> str:
    """Return ``name`` unchanged if it is safe as a path part and in nginx/unit names."""
    if not name:
        raise AppNameError("app name is empty")
    if len(name) > 64:
        raise AppNameError(f"app name {name!r} is longer than 64 characters")
    if ".." in name:
        raise AppNameError(f"app name {name!r} contains '..'")
    if not _APP_NAME.fullmatch(name):
        if not _APP_NAME.fullmatch(name[0]):
            raise AppNameError(f"app name {name!r} must start with a letter or digit")
        bad = next(c for c in name if not _APP_NAME.fullmatch("a" + c))
        raise AppNameError(f"app name {name!r} contains {bad!r}; "
                           "use letters, digits, '.', '_' and '-'")
    return name


# --- Procfile -------------------------------------------------------------
@dataclass(frozen=True, slots=True)      # slots: one per app
class Procfile:
    """Kind -> command in file order (read-only by convention); warnings go to the deploy log."""

    entries: dict[str, str]
    warnings: tuple[str, ...] = ()


def is_cron(kind: str) -> bool:
    """piku's rule: any kind whose name starts with ``cron`` is a scheduled job."""
    return kind.startswith("cron")


def process_kinds(procfile: Procfile) -> list[str]:
    """The kinds whose processes an app's limits apply to: supervised and cron ones."""
    return [kind for kind in procfile.entries
            if kind not in RELEASE_KINDS and kind != STATIC_KIND]


def supervised_kinds(procfile: Procfile) -> list[str]:
    """The kinds that run as long-lived processes, in file order."""
    return [kind for kind in procfile.entries
            if kind not in RELEASE_KINDS and kind != STATIC_KIND and not is_cron(kind)]


def parse_procfile(text: str, file: str = "Procfile") -> Procfile:
    """Parse ``kind: command`` lines; a later duplicate wins with a warning, as in piku."""
    found: dict[str, tuple[int, str]] = {}
    warnings: list[str] = []
    for number, line in _lines(text, file, ProcfileError):
        kind, colon, command = line.partition(":")
        kind, command = kind.strip(), command.strip()
        if not colon:
            raise ProcfileError(f"expected 'kind: command', got {line!r}", file=file, line=number)
        if not _KIND.fullmatch(kind):
            raise ProcfileError(f"invalid kind {kind!r} in {line!r} (up to 63 letters, digits, "
                                "'_' or '-', starting with a letter or digit)",
                                file=file, line=number)
        if not command:
            raise ProcfileError(f"empty command for kind {kind!r}", file=file, line=number)
        if kind in UWSGI_PLUGIN_KINDS:
            raise ProcfileError(f"kind {kind!r} (piku's uWSGI {UWSGI_PLUGIN_KINDS[kind]} plugin) "
                                "is not supported by pikud: run the app's own server as a "
                                "'web' kind on $PORT", file=file, line=number)
        if kind in found:
            warnings.append(f"{file}, line {number}: duplicate kind {kind!r} "
                            f"(line {found[kind][0]} is ignored)")
            del found[kind]  # the entry that is used keeps its own position
        found[kind] = (number, command)
    if "wsgi" in found and "web" in found:
        warnings.append(f"{file}, line {found['web'][0]}: 'web' is ignored because "
                        f"'wsgi' is defined (line {found['wsgi'][0]})")
        del found["web"]
    if not found:
        raise ProcfileError("no process kinds", file=file)
    return Procfile({kind: command for kind, (_, command) in found.items()}, tuple(warnings))


# --- ENV ------------------------------------------------------------------
def _expand(value: str, lookup: Callable[[str], str], fail: Callable[[str], EnvError]) -> str:
    """Replace ``$VAR``/``${VAR}`` (undefined -> ""), ``\\$`` -> ``$``; a lone ``$`` stays."""
    def replace(match: re.Match[str]) -> str:
        braced, plain = match.group(1), match.group(2)
        if match.group(0) == "\\$":
            return "$"
        if plain is not None:
            return lookup(plain)
        if braced is not None and _KEY.fullmatch(braced):
            return lookup(braced)
        if braced is None:
            raise fail("unterminated '${'")
        raise fail(f"bad substitution '${{{braced}}}'")
    return _REF.sub(replace, value)


def parse_env(text: str, file: str, base: Mapping[str, str]) -> dict[str, str]:
    """Parse ``[export ]KEY=VALUE`` lines into this file's keys only.

    A value wrapped in matching quotes loses them; single quotes keep it
    verbatim, double quotes and bare values are expanded. ``$VAR`` and
    ``${VAR}`` look in this file's earlier keys, then in ``base``; an
    undefined variable expands to "" as in the shell. ``\\$`` is a literal
    ``$``, ``$$`` is not special, other backslashes and a ``#`` inside a value
    are kept. A later duplicate key wins.
    """
    values: dict[str, str] = {}

    def lookup(name: str) -> str:
        return values[name] if name in values else base.get(name, "")

    for number, line in _lines(text, file, EnvError):
        match = _EXPORT.match(line)
        if match:
            line = line[match.end():]
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise EnvError(f"expected KEY=VALUE, got {line!r}", file=file, line=number)
        if not key:
            raise EnvError(f"missing key before '=' in {line!r}", file=file, line=number)
        if not _KEY.fullmatch(key):
            raise EnvError(f"invalid key {key!r} (letters, digits and '_', not starting "
                           "with a digit)", file=file, line=number, key=key)

        def fail(reason: str, key: str = key, number: int = number) -> EnvError:
            return EnvError(f"{key}: {reason}", file=file, line=number, key=key)

        quote = value[:1]
        if quote in ("'", '"'):
            if len(value) < 2 or value[-1] != quote:
                raise fail(f"unterminated {quote} quote in {value!r}")
            value = value[1:-1]
        values[key] = value if quote == "'" else _expand(value, lookup, fail)
    return values


def merge_env(layers: Iterable[tuple[str, str | None]], base: Mapping[str, str]) -> dict[str, str]:
    """Parse (label, text) layers in order; each sees ``base`` plus all earlier layers.

    A layer whose text is None (its file does not exist) is skipped. Later
    layers override earlier ones; ``base`` itself is not in the result.
    """
    merged: dict[str, str] = {}
    for file, text in layers:
        if text is not None:
            merged.update(parse_env(text, file, {**base, **merged}))
    return merged


def format_env(values: Mapping[str, str]) -> str:
    """Render ``KEY=VALUE`` lines that parse_env reads back exactly.

    A value is put in single quotes (which parse_env keeps verbatim) when it is
    empty, has outer whitespace, or holds a quote, ``$``, ``#`` or backslash.
    Newlines, carriage returns and NUL bytes cannot be written and raise.
    """
    out = []
    for key, value in values.items():
        if not _KEY.fullmatch(key):
            raise EnvError(f"invalid key {key!r}", key=key)
        for char, what in UNWRITABLE.items():
            if char in value:
                raise EnvError(f"{key}: value contains {what}", key=key)
        surrogate = _SURROGATE.search(value)
        if surrogate:     # JSON can carry one; no UTF-8 file can hold it
            raise EnvError(f"{key}: value contains {surrogate.group()!r}, which is not a "
                           "character (a lone UTF-16 surrogate)", key=key)
        if not value or value != value.strip() or not _QUOTE_IF.isdisjoint(value):
            value = f"'{value}'"
        out.append(f"{key}={value}\n")
    return "".join(out)


# --- SCALING --------------------------------------------------------------
def _scale_entry(kind: str, count: str, known: list[str] | None, *, what: str,
                 file: str, line: int | None) -> tuple[str, int]:
    """Validate one kind/count pair; ``what`` is the text the error quotes."""
    if not _KIND.fullmatch(kind):
        raise ScalingError(f"invalid kind {kind!r} in {what!r}", file=file, line=line, key=kind)
    if known is not None and kind not in known:
        raise ScalingError(f"unknown kind {kind!r} (known: {', '.join(known) or 'none'})",
                           file=file, line=line, key=kind)
    number = whole_number(count, MAX_SCALE)
    if number is None:
        raise ScalingError(f"count in {what!r} must be a whole number from 0 to {MAX_SCALE}",
                           file=file, line=line, key=kind)
    return kind, number


def parse_scaling(text: str, file: str, kinds: Iterable[str] | None = None) -> dict[str, int]:
    """Parse ``kind: N`` (or ``kind=N``) lines; with ``kinds``, any other kind is an error."""
    known = None if kinds is None else list(kinds)
    counts: dict[str, int] = {}
    for number, line in _lines(text, file, ScalingError):
        match = re.fullmatch(r"([^:=]*)[:=](.*)", line)
        if match is None:
            raise ScalingError(f"expected 'kind: N', got {line!r}", file=file, line=number)
        kind, count = _scale_entry(match.group(1).strip(), match.group(2).strip(), known,
                                   what=line, file=file, line=number)
        counts[kind] = count
    return counts


def parse_scale_args(args: Iterable[str], kinds: Iterable[str]) -> dict[str, int]:
    """Parse ``ps:scale`` arguments such as ``web=3``; a kind given twice is an error."""
    known = list(kinds)
    counts: dict[str, int] = {}
    for arg in args:
        kind, equals, count = arg.partition("=")
        if not equals:
            raise ScalingError(f"expected KIND=N, got {arg!r}", file="ps:scale")
        kind, number = _scale_entry(kind.strip(), count.strip(), known, what=arg,
                                    file="ps:scale", line=None)
        if kind in counts:
            raise ScalingError(f"kind {kind!r} is given more than once", file="ps:scale", key=kind)
        counts[kind] = number
    return counts


def format_scaling(scaling: Mapping[str, int]) -> str:
    """Render ``kind: N`` lines that parse_scaling reads back exactly."""
    for kind, count in scaling.items():
        _scale_entry(kind, str(count), None, what=f"{kind}: {count}", file="SCALING", line=None)
    return "".join(f"{kind}: {count}\n" for kind, count in scaling.items())


# --- the whole app --------------------------------------------------------
@dataclass(frozen=True, slots=True)      # slots: one per app
class AppSpec:
    """One app's parsed and validated files; the dicts are read-only by convention."""

    name: str
    procfile: Procfile
    env: dict[str, str]
    scaling: dict[str, int]
    settings: AppSettings
    warnings: tuple[str, ...] = ()


def _label(paths: Paths, path: Path) -> str:
    """The short name errors use, e.g. ``envs/myapp/ENV``."""
    try:
        return path.relative_to(paths.root).as_posix()
    except ValueError:
        return str(path)


def _read(paths: Paths, path: Path, error: type[SpecError]) -> str | None:
    """The file's text (a UTF-8 BOM dropped), None if it does not exist."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as exc:
        raise error(f"not valid UTF-8 (byte {exc.start})", file=_label(paths, path)) from exc
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", file=_label(paths, path)) from exc


def _worker_env(paths: Paths, app: str, base_env: Mapping[str, str]) -> dict[str, str]:
    """What piku gives every worker before the app's ENV (without PORT/PROC_TYPE)."""
    env = {key: value for key, value in base_env.items() if key not in SYSTEMD_VARS}
    venv = paths.virtualenv(app)
    env.update(
        APP=app,
        HOME=base_env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir,
        USER=base_env.get("USER") or pwd.getpwuid(os.getuid()).pw_name,
        LOG_ROOT=str(paths.log_dir(app)),
        DATA_ROOT=str(paths.data(app)),
        CACHE_ROOT=str(paths.cache(app)),
        PWD=str(paths.app(app)),
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv}/bin:{base_env.get('PATH', os.defpath)}",
        PYTHONUNBUFFERED="1",
    )
    env.update(identity.current().account_env(app, paths))     # app users: its own HOME, USER
    env.setdefault("BIND_ADDRESS", "127.0.0.1")
    return env


def _formation(procfile: Procfile, counts: Mapping[str, int], file: str,
               ) -> tuple[dict[str, int], list[str]]:
    """Counts for every supervised kind (default 1) and warnings for the rest.

    piku writes a count for every kind, static and cron included, so a count
    of 1 for those is normal; any other count for them is ignored loudly.
    """
    supervised = supervised_kinds(procfile)
    warnings = []
    for kind, count in counts.items():
        if kind not in procfile.entries:
            warnings.append(f"{file}: kind {kind!r} is not in the Procfile; "
                            f"its count ({count}) is dropped")
        elif kind not in supervised and count != 1:
            warnings.append(f"{file}: count {count} for {kind!r} is ignored; "
                            "only long-running kinds are scaled")
    return {kind: counts.get(kind, 1) for kind in supervised}, warnings


def load_spec(paths: Paths, app: str, base_env: Mapping[str, str],
              defaults: AppSettings = AppSettings(), *,
              overrides: str | None = None, scaling_text: str | None = None,
              source: Path | None = None) -> AppSpec:
    """Read and validate an app's Procfile, ENV layers and SCALING, or raise.

    ``overrides`` and ``scaling_text`` stand in for envs/APP/ENV and SCALING,
    so a change can be validated whole before it is written; ``source`` is a
    release directory to read the code's files from instead of apps/APP.
    """
    validate_app_name(app)
    app_dir = source or paths.app(app)
    procfile_path = app_dir / "Procfile"
    text = _read(paths, procfile_path, ProcfileError)
    if text is None:
        raise ProcfileError(f"no Procfile in {_label(paths, app_dir)}")
    procfile = parse_procfile(text, _label(paths, procfile_path))
    env_file = paths.env_file(app)
    layers = [(_label(paths, app_dir / "ENV"), _read(paths, app_dir / "ENV", EnvError)),
              (_label(paths, env_file),
               overrides if overrides is not None else _read(paths, env_file, EnvError))]
    env = merge_env(layers, _worker_env(paths, app, base_env))
    settings = app_settings(env, defaults)
    scaling_file = _label(paths, paths.scaling_file(app))
    if scaling_text is None:
        scaling_text = _read(paths, paths.scaling_file(app), ScalingError)
    counts = parse_scaling(scaling_text or "", scaling_file)
    scaling, warnings = _formation(procfile, counts, scaling_file)
    if settings.idle_timeout and "web" in procfile.entries and not settings.listen_fds:
        key = idle_setting(env)
        raise EnvError(f"{key}: a web process that binds $PORT itself cannot be started on "
                       "demand; serve the daemon's socket (PIKU_LISTEN_FDS=true) or unset "
                       f"{key}", key=key)
    return AppSpec(app, procfile, env, scaling, settings, procfile.warnings + tuple(warnings))


def live_env(spec: AppSpec, paths: Paths, base_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of every process of the app, before PORT and PROC_TYPE.

    The worker variables piku sets come first, then the app's ENV wins,
    except that the systemd variables are always removed.
    """
    env = _worker_env(paths, spec.name, base_env)
    env.update(spec.env)
    for key in SYSTEMD_VARS:
        env.pop(key, None)
    return env
