"""The wire contract between pikud and its clients (stdlib only).

Transport: HTTP/1.1 over the unix socket ``$PIKU_ROOT/pikud.sock`` (mode
0600; the peer's uid must be the daemon's or root, and the peer no process
pikud started: ``app_process``, 403). Bodies are JSON objects.

Who asks: ``X-Piku-Key: NAME`` and ``X-Piku-Fingerprint: SHA256:...`` name the
ssh key a request is made for (the forced command's NAME and FINGERPRINT);
without them the caller is the console, admin. Each route needs a role on an
app (access/table.py): too low a role is ``forbidden`` (403), an app the key
has no grant on is ``app_not_found`` (404) as if it did not exist.

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
    POST   /apps/APP/push              {"ticket"}: one push ticket for the hook of the git
                                       receive-pack that asks (access/tickets.py)
    GET    /access                     {"mode": "open"|"rules", "grants": [{"key", "app",
                                       "role"}], "problem": str|null}
    PUT    /access/KEY/APP             body {"role": "read"|"deploy"|"admin"} -> as GET /access
                                       (APP may be *)
    DELETE /access/KEY/APP             -> as GET /access
    POST   /access/check               body {"command", "app"}: may the caller run a CLI-only
                                       command (run, scp, sftp, setup, setup:ssh,
                                       git-upload-pack) -> {"command", "app"}
    GET    /audit?lines=N[&app=APP]    {"lines": [audit entry, ...]} oldest first
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
                  "port": the PORT a web process was given, else null,
                  "socket": the unix socket a wsgi/asgi process serves on, else null}
    log line     {"source": "web.1", "line": "2026-... text"}
    event        {"time": epoch seconds, "app", "process": name|null, "event", "message"}
    job          {"kind", "schedule", "command", "tz", "next_run": ISO|null, "last_run":
                  {"started", "status", "duration"}|null, "running", "queued", "overlap",
                  "timeout"}
    refresh      {"changed": bool, "file", "ranges", "ipv4", "ipv6", "sources": [{"url",
                  "ranges"}], "nginx": bool, "apps": [{"name", "site": "updated"|"failed"|
                  "not running", "error": str|null}]}   (a bad list: cloudflare_failed, 502)
    audit entry  {"time": ISO, "key": name|null, "fingerprint", "pid", "command", "app",
                  "outcome": "ok"|error code, "message"?: str, ...}
    release      {"number", "revision", "ref", "time", "pusher", "fingerprint", "runtime",
                  "env_path", "env_vars", "path_prefix", "config", "current": bool}
"""

from __future__ import annotations

import json
from typing import Any

NDJSON = "application/x-ndjson"
KEY_HEADER = "X-Piku-Key"
FINGERPRINT_HEADER = "X-Piku-Fingerprint"
MAX_BODY = 64 * 1024


def ok(data: Any) -> dict[str, Any]:
    return {"ok": True, "data": data}


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def ndjson_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
