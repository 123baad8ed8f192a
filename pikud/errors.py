"""The one exception tree of pikud.

Everything below the CLI and the control server raises a ``PikudError``; the
CLI turns it into ``Error: ...`` in one place and the server into one JSON
envelope with the error's ``code`` and HTTP ``status``::

    PikudError                      code            status
    +-- SpecError                   invalid_spec    400   bad Procfile/ENV/SCALING/app name
    |   +-- ProcfileError                                 (file, line)
    |   +-- EnvError                                      (file, line or key)
    |   +-- ScalingError                                  (file, line or kind)
    |   +-- AppNameError
    |   +-- CronError                                     (kind and field, or TZ/PIKU_CRON_* key)
    |   +-- TooManyProcesses        too_many_processes 400  over a pikud.toml ceiling (the key)
    +-- BadRequest                  bad_request     400   malformed API request
    |   +-- MethodNotAllowed        bad_request     405   a route's path with another method
    |   +-- BodyTooLarge            body_too_large  413   a request body over MAX_BODY
    +-- AppNotFound                 app_not_found   404
    +-- NotFound                    not_found       404   unknown API route
    +-- Forbidden                   forbidden       403   peer uid, or the key's role, not allowed
    |   +-- FromAppProcess          app_process     403   the peer is a process pikud started
    |   +-- PushRefused             push_refused    403   git-hook without a live push ticket
    +-- Starting                    starting        503   boot stops a killed pikud's processes
    +-- ShuttingDown                shutting_down   503   an action after the shutdown's stop
    +-- DeployError                 deploy_failed   409   nothing to run, new processes failed, ...
    |   +-- BuildError              build_failed    409   checkout, preflight or build step failed
    |   +-- ReleaseError            release_failed  409   the Procfile's release command failed
    |   +-- NginxError              nginx_failed    409   nginx -t refused a config, a reload failed
    +-- CloudflareError             cloudflare_failed 502  its IP lists unreachable or not networks
    +-- AppUserError                app_user        409   piku-APP not made by pikud; useradd failed
    +-- ControlError                control_error   502   client side of the socket
    |   +-- DaemonNotRunning        daemon_not_running
    |   +-- ProtocolError           protocol_error
    +-- InvalidTransition           invalid_transition 500  a bug in procman
    +-- sshkeys.InvalidKey          invalid_key     400   a malformed public key (setup:ssh)
        +-- sshkeys.NameTaken       key_name_taken 409    another key has that name (--replace)

Anything else that escapes a request is a bug: the server logs it with its
traceback and answers ``internal_error`` (500) in the same envelope.

This module is stdlib-only: the CLI imports it.
"""

from __future__ import annotations


class PikudError(Exception):
    """Base of every error pikud raises on purpose; its message is for users."""

    code = "error"
    status = 500


class SpecError(PikudError):
    """An app's Procfile, ENV, SCALING or name is malformed; nothing was applied."""

    code = "invalid_spec"
    status = 400

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}, line {line}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{message}")
        self.file, self.line, self.key = file, line, key


class ProcfileError(SpecError):
    pass


class EnvError(SpecError):
    pass


class ScalingError(SpecError):
    pass


class AppNameError(SpecError):
    pass


class CronError(SpecError):
    """A cron entry or setting is invalid; the message names the kind and field, or the key."""


class TooManyProcesses(SpecError):
    """The app asks for more processes than pikud.toml allows; nothing was applied."""

    code = "too_many_processes"


class BadRequest(PikudError):
    code = "bad_request"
    status = 400


class MethodNotAllowed(BadRequest):
    status = 405


class BodyTooLarge(BadRequest):
    code = "body_too_large"
    status = 413


class AppNotFound(PikudError):
    code = "app_not_found"
    status = 404

    def __init__(self, app: str) -> None:
        super().__init__(f"app {app!r} not found")
        self.app = app


class NotFound(PikudError):
    code = "not_found"
    status = 404


class Forbidden(PikudError):
    code = "forbidden"
    status = 403


class FromAppProcess(Forbidden):
    """The request came from a process pikud started (an app, cron job, build or release
    step, or one of their descendants): apps may not drive the daemon."""

    code = "app_process"

    def __init__(self, pid: int) -> None:
        super().__init__(f"pid {pid} is a process pikud started (an app, cron job, build or "
                         "release step, or a child of one): it may not use pikud.sock")


class PushRefused(Forbidden):
    """A deploy of a pushed revision without the ticket of a receive-pack pikud allowed."""

    code = "push_refused"


class Starting(PikudError):
    """An action came while boot still stopped what a killed pikud left, and waited too long."""

    code = "starting"
    status = 503

    def __init__(self, waited: float) -> None:
        super().__init__(f"pikud is starting: it is still stopping the processes a previous "
                         f"pikud left running (waited {waited:g}s); try again shortly")


class ShuttingDown(PikudError):
    """An action came after the daemon's shutdown had stopped the app: nothing starts."""

    code = "shutting_down"
    status = 503


class DeployError(PikudError):
    code = "deploy_failed"
    status = 409


class BuildError(DeployError):
    code = "build_failed"


class ReleaseError(DeployError):
    code = "release_failed"


class NginxError(DeployError):
    """nginx refused an app's new config (its own message attached) or could not be reloaded."""

    code = "nginx_failed"


class CloudflareError(PikudError):
    """Cloudflare's lists could not be downloaded, or a line is not a network; nothing changed."""

    code = "cloudflare_failed"
    status = 502


class AppUserError(PikudError):
    """An app's system user (appusers.py) cannot be used: it exists but pikud did not make
    it for this app, or useradd/userdel failed. Nothing of the app was started."""

    code = "app_user"
    status = 409


class ControlError(PikudError):
    code = "control_error"
    status = 502


class DaemonNotRunning(ControlError):
    code = "daemon_not_running"


class ProtocolError(ControlError):
    code = "protocol_error"


class InvalidTransition(PikudError):
    """A process was asked to take an edge that the state table forbids."""

    code = "invalid_transition"
    status = 500

    def __init__(self, name: str, old: object, new: object) -> None:
        super().__init__(f"{name}: invalid transition {old} -> {new}")
        self.old, self.new = old, new
