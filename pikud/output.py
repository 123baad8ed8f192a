"""Pure formatters for the `piku` CLI (stdlib only: every ssh command imports it).

Each ``format_*`` takes the API's data (shapes in ``pikud.control.protocol``)
and returns text; nothing here prints. Colour is ANSI and only when the caller
asks for it, so the same function serves a tty, a pipe and the tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_RESET = "\x1b[0m"
_CODES = {
    "bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33",
    "blue": "34", "magenta": "35", "cyan": "36",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Process states (procman) and app states (apps) share one palette.
STATE_STYLES = {
    "RUNNING": "green",
    "STARTING": "yellow", "BACKOFF": "yellow", "STOPPING": "yellow",
    "FATAL": "red", "EXITED": "red",
    "STOPPED": "dim", "IDLE": "cyan",
    "running": "green", "stopped": "dim",
}
# Log sources get a colour each, picked by name so it is stable across runs.
_SOURCE_STYLES = ("cyan", "magenta", "blue", "yellow", "green")


def style(text: str, name: str | None, color: bool) -> str:
    """Wrap ``text`` in the ANSI style ``name``; unchanged when colour is off."""
    if not color or name is None:
        return text
    return f"\x1b[{_CODES[name]}m{text}{_RESET}"


def visible_len(text: str) -> int:
    """Width on screen: ANSI sequences take no columns."""
    return len(_ANSI.sub("", text))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """Columns separated by two spaces, each as wide as its widest cell.

    ``align`` has one character per column, ``<`` (the default) or ``>``;
    cells may carry colour, which does not count towards the width.
    """
    table = [list(headers), *(list(row) for row in rows)]
    for row in table:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(headers)}")
    widths = [max(visible_len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for row in table:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - visible_len(cell))
            cells.append(pad + cell if align[i:i + 1] == ">" else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """Two units at most, like ``ps``: 3s, 4m12s, 2h03m, 3d04h."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_bytes(n: int) -> str:
    """Binary units with one decimal (24.1M), as ``ls -lh`` reads."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in "KMGTP":
        value /= 1024
        if round(value, 1) < 1024 or unit == "P":
            break
    return f"{value:.1f}{unit}"


def format_formation(formation: Mapping[str, int]) -> str:
    """``web=2 worker=1`` (sorted by kind), or ``none``."""
    return " ".join(f"{kind}={n}" for kind, n in sorted(formation.items())) or "none"


def format_problems(problems: Iterable[str], color: bool) -> list[str]:
    """``! problem`` lines (a state file set aside, a save failing), in red on a tty."""
    return [style(f"! {problem}", "red", color) for problem in problems]


def format_apps(apps: Sequence[Mapping[str, Any]], color: bool,
                problems: Sequence[str] = ()) -> str:
    """One app a line, sorted; ``*`` marks a running app, as piku does.

    Then the daemon-wide ``problems`` and each app's own, one a line.
    """
    lines = [] if apps else ["There are no applications deployed."]
    ordered = sorted(apps, key=lambda a: str(a["name"]))
    for app in ordered:
        running = app["state"] == "running"
        name = style(app["name"], "green" if running else None, color)
        lines.append(("* " if running else "  ") + name)
    own = [f"{app['name']}: {problem}" for app in ordered for problem in app.get("problems", ())]
    return "\n".join(lines + format_problems([*problems, *own], color))


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


_LIMITS = (("PIKU_MEMORY_MAX", "mem", "memory"), ("PIKU_CPU_MAX", "cpu", ""),
           ("PIKU_TASKS_MAX", "tasks", "tasks"), ("PIKU_NOFILE_MAX", "files", "nofile"))


def format_limits(limits: Mapping[str, str], usage: Mapping[str, int]) -> str:
    """``mem 256M cpu 50% tasks 3/64 files 12/1024``: each limit, after what is used of it
    where that is known (memory: only under a cgroup; RSS has its own column)."""
    cells = []
    for prefix, label, used in _LIMITS:
        value = next((v for key, v in limits.items() if key.startswith(prefix)), None)
        if value is None:
            continue
        amount = usage.get(used) if used else None
        if amount is None:
            cells.append(f"{label} {value}")
        else:
            cells.append(f"{label} {format_bytes(amount) if used == 'memory' else amount}/{value}")
    return " ".join(cells) or "-"


def format_ps(detail: Mapping[str, Any], color: bool) -> str:
    """A header (app state and formation) over the live process table."""
    state = detail["state"]
    header = (f"{style(detail['name'], 'bold', color)}: "
              f"{style(state, STATE_STYLES.get(state), color)}"
              f"  formation: {format_formation(detail.get('formation') or {})}")
    processes = detail.get("processes") or []
    problems = format_problems(detail.get("problems") or (), color)
    if not processes:
        return "\n".join([header, "(no processes)", *problems])
    rows = []
    for proc in sorted(processes, key=lambda p: (str(p["kind"]), int(p["index"]))):
        uptime, rss = proc.get("uptime"), proc.get("rss")
        rows.append([
            f"{proc['kind']}.{proc['index']}",
            style(proc["state"], STATE_STYLES.get(proc["state"]), color),
            _dash(proc.get("pid")),
            "-" if uptime is None else format_duration(uptime),
            _dash(proc.get("restarts")),
            _dash(proc.get("last_exit")),
            "-" if rss is None else format_bytes(rss),
            format_limits(proc.get("limits") or {}, proc.get("usage") or {}),
        ])
    headers = ["PROCESS", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "RSS", "LIMITS"]
    if all(row[-1] == "-" for row in rows):         # no limits set: no column for them
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    table = format_table(headers, rows, align="<<>>><><")
    return "\n".join([header, table, *problems])


def format_log_line(line: Mapping[str, Any], color: bool, width: int = 0) -> str:
    """``web.1 | text``, the source padded to ``width`` so the bars line up."""
    source = str(line["source"])
    tint = _SOURCE_STYLES[sum(source.encode()) % len(_SOURCE_STYLES)]
    return f"{style(source.ljust(width), tint, color)} | {line['line']}"


def format_env(env: Mapping[str, str]) -> str:
    """``KEY=VALUE`` lines sorted by key, the form of an ENV file."""
    return "\n".join(f"{key}={value}" for key, value in sorted(env.items()))


_SITE_STYLES = {"updated": "green", "failed": "red", "not running": "dim"}


def format_cloudflare(data: Mapping[str, Any], color: bool) -> str:
    """What `piku cloudflare:refresh` did: the ranges, then each app's nginx site."""
    count = f"{data['ranges']} ({data['ipv4']} IPv4, {data['ipv6']} IPv6)"
    if not data["changed"]:
        return f"-----> Cloudflare's ranges are unchanged: {count}; nothing was touched"
    lines = [f"-----> Cloudflare's ranges changed: {count} written to {data['file']}"]
    apps = data.get("apps") or []
    if not data.get("nginx"):
        lines.append("-----> No nginx in front of the apps: the list applies once there is")
    elif not apps:
        lines.append("-----> No app uses NGINX_CLOUDFLARE_ACL; apps that set it get the new "
                     "ranges when they start")
    else:
        rows = [[entry["name"], style(entry["site"], _SITE_STYLES.get(entry["site"]), color)]
                for entry in apps]
        lines.append(format_table(["APP", "NGINX SITE"], rows))
        lines += [f"-----> {entry['name']}: {entry['error']}" for entry in apps
                  if entry.get("error")]
    return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none"


def format_status(status: Mapping[str, Any], color: bool) -> str:
    """``piku status``: pikud itself, its apps and processes by state, its last errors."""
    image = status.get("image_uptime", status["uptime"])
    rows = [
        ("pikud", f"{status['version']} (pid {status['pid']}, loop {status['loop']})"),
        ("up", f"{format_duration(status['uptime'])}; this image {format_duration(image)}, "
               f"started by {status.get('started', 'boot')}"),
        ("root", str(status["root"])),
        ("http", _dash(status.get("http"))),
        ("apps", _counts(status.get("apps_by_state", {}))),
        ("processes", _counts(status.get("processes_by_state", {}))),
    ]
    lines = [format_table(("", ""), rows).split("\n", 1)[1]]
    errors = status.get("errors", [])
    if errors:
        lines.append("last errors:")
        lines += [style(f"  {_clock(event['time'])} {event['app'] or 'pikud'}: "
                        f"{event['message']}", "red", color) for event in errors]
    return "\n".join(lines)


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def format_access(data: dict[str, Any]) -> str:
    """``GET /access``: the grants, or that the server is open to every key."""
    lines = []
    if data.get("problem"):
        lines.append(f"-----> Warning: {data['problem']}; every key is locked out until "
                     "granted again")
    if data["mode"] == "open":
        lines.append("No access rules: every key is admin on every app (piku's way). "
                     "`piku access:grant NAME '*' admin` from the console locks the others out.")
    elif not data["grants"]:
        lines.append("No grants: no key may do anything (only the console can grant).")
    else:
        lines.append(format_table(["KEY", "APP", "ROLE"],
                                  [[g["key"], g["app"], g["role"]] for g in data["grants"]]))
    return "\n".join(lines)


def format_audit(entries: Sequence[dict[str, Any]]) -> str:
    """``GET /audit``: one row per entry, oldest first; a refusal shows its message."""
    if not entries:
        return "The audit log is empty"
    rows = [[str(e.get("time", "")), str(e.get("key") or "(console)"),
             str(e.get("command", "")), str(e.get("app") or "-"),
             str(e.get("outcome", "")) + (f": {e['message']}" if e.get("message") else "")]
            for e in entries]
    return format_table(["TIME", "KEY", "COMMAND", "APP", "OUTCOME"], rows)
