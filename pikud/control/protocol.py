"""The wire contract between pikud and its clients (stdlib only).

Transport: HTTP/1.1 over the unix socket ``$PIKU_ROOT/pikud.sock`` (mode
0600; the peer's uid must be the daemon's or root). Bodies are JSON objects.

Every non-streaming answer is one envelope::

    {"ok": true,  "data": {...}}
    {"ok": false, "error": {"code": "app_not_found", "message": "app 'x' not found"}}

Streaming answers (``?follow=1`` on logs and events, ``?progress=1`` on deploy
and rollback) are NDJSON: ``Content-Type: application/x-ndjson``, one JSON
object per line. Progress lines are ``{"progress": "-----> ..."}``; the stream
ends with ``{"end": true, "data": ...}`` or, on failure, ``{"ok": false,
"error": {...}}``.

Routes (APP is a validated app name, KIND a Procfile kind):

    GET    /status                     daemon: version, pid, uptime, image_uptime, started (boot,
                                       re-exec, adoption), loop, root, apps, processes,
                                       apps_by_state, processes_by_state, errors (last events)
    GET    /apps                       {"apps": [app summary, ...], "problems": [str, ...]}
                                       (daemon-wide problems: a state file set aside, a
                                       failing save)
    GET    /apps/APP                   app detail: summary + "processes": [process, ...];
                                       its "problems" include the daemon-wide ones
    POST   /apps/APP/start             start (desired state: running) -> app detail
    POST   /apps/APP/stop              stop  (desired state: stopped) -> app detail
    POST   /apps/APP/restart           restart (web: new generation) -> app detail
    POST   /apps/APP/deploy[?progress=1]  body {"revision", "ref", "pusher", "fingerprint",
                                       "git_env"} builds and switches to a new release; without
                                       a revision the current release is rebuilt (an app with
                                       no release: apps/APP is re-read) -> app detail
    GET    /apps/APP/releases          {"releases": [release, ...]} newest first
    GET    /apps/APP/cron              {"jobs": [job, ...]}
    POST   /apps/APP/cron/KIND/run     run one now -> {"kind", "started", "queued"}
    POST   /apps/APP/rollback[?progress=1]  body {"release": N} (default: the previous one)
    POST   /apps/APP/scale             body {"scaling": {"KIND": N, ...}} -> app detail
    GET    /apps/APP/config            {"config": {K: V}}  (the overrides in envs/APP/ENV)
    POST   /apps/APP/config            body {"set": {K: V}, "unset": [K]} -> {"config": {...}}
    GET    /apps/APP/config/live       {"env": {K: V}, "cwd": path}  (what processes get)
    GET    /apps/APP/logs?lines=N&kind=KIND[&follow=1]
                                       {"lines": [log line, ...]} or NDJSON of log lines
    DELETE /apps/APP                   destroy -> {"removed": [paths], "kept": [paths]}
    GET    /events?lines=N[&follow=1]  {"events": [event, ...]} or NDJSON of events
    POST   /cloudflare/refresh         download Cloudflare's lists (cloudflare_urls); when the
                                       ranges changed, write pikud/cloudflare_ips.txt and
                                       re-publish the running NGINX_CLOUDFLARE_ACL sites -> refresh

Requests other than GET on /apps/APP... wait while boot stops the processes a
killed pikud left running; after 20 s they get ``starting`` (503).

Shapes:
    app summary  {"name", "state": "running"|"stopped", "formation": {KIND: N},
                  "processes": {"RUNNING": n, ...}, "release": N|null,
                  "problems": [str, ...]}    (state counts in /apps)
    process      {"name": "app:kind.N", "kind", "index", "pid", "state",
                  "uptime": seconds|null, "restarts", "last_exit": str|null, "rss": bytes|null,
                  "port": the PORT a web process was given, else null}
    log line     {"source": "web.1", "line": "2026-... text"}
    event        {"time": epoch seconds, "app", "process": name|null, "event", "message"}
    job          {"kind", "schedule", "command", "tz", "next_run": ISO|null, "last_run":
                  {"started", "status", "duration"}|null, "running", "queued", "overlap",
                  "timeout"}
    refresh      {"changed": bool, "file", "ranges", "ipv4", "ipv6", "sources": [{"url",
                  "ranges"}], "nginx": bool, "apps": [{"name", "site": "updated"|"failed"|
                  "not running", "error": str|null}]}   (a bad list: cloudflare_failed, 502)
    release      {"number", "revision", "ref", "time", "pusher", "fingerprint", "runtime",
                  "env_path", "env_vars", "path_prefix", "config", "current": bool}
"""

from __future__ import annotations

import json
from typing import Any

NDJSON = "application/x-ndjson"
MAX_BODY = 64 * 1024


def ok(data: Any) -> dict[str, Any]:
    return {"ok": True, "data": data}


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def ndjson_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
