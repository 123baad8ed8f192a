"""The control API's handlers: each parses its request, calls the app and returns plain data.

Each handler's docstring gives its request and response (control/protocol.py
lists the routes); server.py wraps the result in the envelope and turns a
``PikudError`` into its named code. Long actions (deploy, rollback) run in a
task of their own and stream their progress as NDJSON (``run_action``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pikud.access.rules import EVERY_APP, Role
from pikud.control.guard import caller_of, note, redeem
from pikud.control.protocol import NDJSON, error, ndjson_line
from pikud.control.request import Request, Stream
from pikud.convert import whole_number
from pikud.deploy.checkout import validate_ref, validate_revision
from pikud.errors import BadRequest, PikudError
from pikud.refresh import CloudflareRefresh
from pikud.registry import AppRegistry

if TYPE_CHECKING:
    from pikud.deploy.pipeline import PushInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
Progress = Callable[[str], None]


async def body(request: Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from exc
    except RecursionError:
        raise BadRequest("malformed JSON body: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def int_query(request: Request, key: str, default: int, maximum: int = 100_000) -> int:
    raw = request.query.get(key, str(default))
    number = whole_number(raw, maximum)     # not int(): "²" is a digit, 4,301 digits too many
    if number is None:
        raise BadRequest(f"{key} must be an integer from 0 to {maximum}, got {raw!r}")
    return number


def flag(request: Request, key: str) -> bool:
    return request.query.get(key, "0").lower() in ("1", "true", "yes")


class Routes:
    """One method per route; each returns data or a stream."""

    def __init__(self, registry: AppRegistry, status: Callable[[], dict[str, Any]],
                 cloudflare: CloudflareRefresh) -> None:
        self.registry = registry
        self.status_of_daemon = status
        self.cloudflare = cloudflare

    def app(self, request: Request):  # type: ignore[no-untyped-def]
        return self.registry.get(request.match_info["app"])

    async def status(self, request: Request) -> Any:
        """GET /status -> version, pid, uptime, image_uptime, started, loop, root, http, apps,
        processes, apps_by_state, processes_by_state, errors (control/protocol.py)."""
        return self.status_of_daemon()

    async def list_apps(self, request: Request) -> Any:
        """GET /apps -> {"apps": [summary, ...], "problems": [daemon-wide problem, ...]}:
        the apps the caller has a grant on; the problems for a grant on `*`."""
        caller = caller_of(request)
        return {"apps": [self.registry.get(name).summary() for name in self.registry.names()
                         if caller.may(name, Role.READ)],
                "problems": self.registry.problems() if caller.may(EVERY_APP, Role.READ)
                else []}

    async def show(self, request: Request) -> Any:
        """GET /apps/APP -> detail with live processes."""
        return self.app(request).detail()

    async def start(self, request: Request) -> Any:
        app = self.app(request)
        await finish(app.start())
        return app.detail()

    async def stop(self, request: Request) -> Any:
        app = self.app(request)
        await finish(app.stop())
        return app.detail()

    async def restart(self, request: Request) -> Any:
        app = self.app(request)
        await finish(app.restart())
        return app.detail()

    async def deploy(self, request: Request) -> Any:
        """POST /apps/APP/deploy[?progress=1] {"revision", "ref", "old", "pusher",
        "fingerprint", "git_env", "ticket"} (all optional: without a revision the current
        release is rebuilt; a key deploys a revision only with its push ticket)."""
        data = await body(request)
        ticket = data.pop("ticket", None)
        push = push_info(data) if data else None
        if push is not None:
            redeem(request, ticket, request.match_info["app"])
            note(request, revision=push.revision, ref=push.ref)
            caller = caller_of(request)
            if caller.key is not None:          # "pushed by" is the key pikud knows
                push = dataclasses.replace(push, pusher=caller.key,
                                           fingerprint=caller.fingerprint)
        app = self.registry.get(request.match_info["app"], pushed=push is not None)
        admin = caller_of(request).may(app.name, Role.ADMIN)

        async def action(progress: Progress) -> Any:
            await app.deploy(push, progress, admin=admin)
            return app.detail()
        return await run_action(request, action)

    async def cron(self, request: Request) -> Any:
        """GET /apps/APP/cron -> {"jobs": [job, ...]}"""
        return {"jobs": self.app(request).cron()}

    async def cron_run(self, request: Request) -> Any:
        """POST /apps/APP/cron/KIND/run -> {"kind", "started", "queued"}"""
        return await finish(self.app(request).cron_run(request.match_info["kind"]))

    async def releases(self, request: Request) -> Any:
        """GET /apps/APP/releases -> {"releases": [newest first]}"""
        return {"releases": self.app(request).releases_list()}

    async def rollback(self, request: Request) -> Any:
        """POST /apps/APP/rollback[?progress=1] {"release": N} (default: the previous one)"""
        app = self.app(request)
        number = (await body(request)).get("release")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)
                                   or number < 1):
            raise BadRequest(f'"release" must be a release number, got {number!r}')
        admin = caller_of(request).may(app.name, Role.ADMIN)

        async def action(progress: Progress) -> Any:
            await app.rollback(number, progress, admin=admin)
            return app.detail()
        return await run_action(request, action)

    async def scale(self, request: Request) -> Any:
        """POST /apps/APP/scale {"scaling": {"KIND": N}}"""
        app = self.app(request)
        scaling = (await body(request)).get("scaling")
        if not isinstance(scaling, dict) or not scaling:
            raise BadRequest('expected {"scaling": {"KIND": N, ...}}')
        await finish(app.scale(scaling))
        return app.detail()

    async def config(self, request: Request) -> Any:
        """GET /apps/APP/config -> {"config": {K: V}}"""
        return {"config": self.app(request).config()}

    async def configure(self, request: Request) -> Any:
        """POST /apps/APP/config {"set": {K: V}, "unset": [K]} -> {"config": {...}}"""
        app = self.app(request)
        data = await body(request)
        updates, removals = data.get("set", {}), data.get("unset", [])
        if not isinstance(updates, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in updates.items()):
            raise BadRequest('"set" must be an object of string values')
        if not isinstance(removals, list) or not all(isinstance(k, str) for k in removals):
            raise BadRequest('"unset" must be a list of strings')
        if not updates and not removals:
            raise BadRequest('nothing to change: give "set" or "unset"')
        admin = caller_of(request).may(app.name, Role.ADMIN)
        return {"config": await finish(app.configure(updates, removals, admin=admin))}

    async def live(self, request: Request) -> Any:
        """GET /apps/APP/config/live -> {"env": {...}, "cwd": path}"""
        return self.app(request).live()

    async def logs(self, request: Request) -> Any:
        """GET /apps/APP/logs?lines=N&kind=K[&follow=1]"""
        app = self.app(request)
        kind = request.query.get("kind") or None
        lines = app.logs(int_query(request, "lines", 20), kind)
        if not flag(request, "follow"):
            return {"lines": lines}
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue(maxsize=10_000)

        def follower(source: str, line: str) -> None:
            if (kind is None or source == kind or source.startswith(kind + ".")) \
                    and not queue.full():
                queue.put_nowait({"source": source, "line": line})

        app.followers.add(follower)
        try:
            return await stream(request, lines, queue)
        finally:
            app.followers.discard(follower)

    async def destroy(self, request: Request) -> Any:
        """DELETE /apps/APP -> {"removed": [...], "kept": [...]}"""
        return await finish(self.app(request).destroy())

    async def cloudflare_refresh(self, request: Request) -> Any:
        """POST /cloudflare/refresh -> {"changed", "file", "ranges", "ipv4", "ipv6",
        "sources": [{"url", "ranges"}], "nginx", "apps": [{"name", "site", "error"}]}

        Downloads the lists of ``cloudflare_urls``; a bad list is cloudflare_failed
        and changes nothing. The sites of running apps with NGINX_CLOUDFLARE_ACL
        are re-published when the ranges changed.
        """
        return await finish(self.cloudflare.refresh())

    async def events(self, request: Request) -> Any:
        """GET /events?lines=N[&app=APP][&follow=1]"""
        app = request.query.get("app") or None
        recent = self.registry.events.last(int_query(request, "lines", 100), app)
        if not flag(request, "follow"):
            return {"events": recent}
        queue = self.registry.events.subscribe()
        try:
            return await stream(request, recent, queue)
        finally:
            self.registry.events.unsubscribe(queue)


async def stream(request: Request, first: list[Any], queue: asyncio.Queue[Any]
                 ) -> Stream:
    """Send ``first`` then whatever arrives on ``queue`` as NDJSON until the client leaves."""
    response = Stream(NDJSON)
    await response.prepare(request)
    try:
        for item in first:
            await response.write(ndjson_line(item))
        while True:
            await response.write(ndjson_line(await queue.get()))
    except ConnectionResetError:
        pass        # the client left; one that leaves while all is quiet cancels us (http.py)
    return response


async def finish(action: Awaitable[T]) -> T:
    """Await an action that changes processes in a task of its own.

    A client that leaves (Ctrl-C on `piku restart`) cancels its handler; the
    action itself goes on to its end, so no switch is ever cut in half.
    """
    return await asyncio.shield(asyncio.ensure_future(action))


def push_info(data: dict[str, Any]) -> PushInfo:
    # imported on first use (a push): the resting daemon stays light; see README
    from pikud.deploy.pipeline import PushInfo
    fields = {"revision", "ref", "old", "pusher", "fingerprint", "git_env"}
    unknown = set(data) - fields
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    texts = {key: data.get(key, "") for key in fields - {"git_env"}}
    git_env = data.get("git_env", {})
    if not all(isinstance(v, str) for v in texts.values()) or not isinstance(git_env, dict) \
            or not all(isinstance(v, str) for v in git_env.values()):
        raise BadRequest("revision, ref, old, pusher and fingerprint must be strings, "
                         "git_env an object of strings")
    old = texts["old"] and validate_revision(texts["old"])
    return PushInfo(validate_revision(texts["revision"]), validate_ref(texts["ref"]), old,
                    texts["pusher"], texts["fingerprint"], git_env)


async def run_action(request: Request, action: Callable[[Progress], Awaitable[Any]]) -> Any:
    """Run a long action; with ``?progress=1`` stream its progress lines as NDJSON.

    The action runs in a task of its own: a client that leaves (an interrupted
    push) does not cut a deploy in half.
    """
    if not flag(request, "progress"):
        return await finish(action(lambda line: None))
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(action(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))    # after the action's last line
    response = Stream(NDJSON)
    await response.prepare(request)
    try:
        while (line := await queue.get()) is not None:
            await response.write(ndjson_line({"progress": line}))
        try:
            result = {"end": True, "data": task.result()}
        except PikudError as exc:
            result = error(exc.code, str(exc))
            note(request, outcome=exc.code, message=str(exc))
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            result = error("internal_error", f"pikud failed: {exc.__class__.__name__}: {exc}")
            note(request, outcome="internal_error", message=str(exc))
        await response.write(ndjson_line(result))
    except ConnectionResetError:
        pass        # the client left; the action goes on to its end
    return response
