"""acme.sh as a program: where it is, and the three commands pikud runs (issue, install, remove).

Every command's failure is a note for the app with the tail of acme.sh's
output, never an exception: the certificate in place keeps serving. Apart
from ``acme.py``, which decides when to run them and records what was
installed.
"""

# Design notes:
# - The install runs under the Nginx lock, so no `nginx -t` of another app reads
#   a half-copied pair. The pair is then loaded like a TLS server would (in a
#   child: keypair.py); a failed or mismatched install puts the previous pair
#   back and reloads.
#   acme.sh's own renewals write without the lock: for those few milliseconds,
#   every 60 days or so, another app's `nginx -t` could fail; its deploy says
#   why and can simply be pushed again.
#   acme.sh overwrites the key file in place, so it keeps its mode (0600) and
#   owner: pikud's user, who runs `nginx -t`.
# - As root (app users, identity.py), acme.sh runs as the deploy user, with its
#   HOME (~/.acme.sh): the program and its folder are that user's to write, so
#   running it as root would hand root to that user. The files it writes (the
#   webroot's tokens, nginx/APP.crt and .key) are then that user's too
#   (tls.py makes the self-signed pair so); nginx's master reads them as root.
# - --keylength ec-256 and --ecc: EC P-256 like the self-signed certificate,
#   and the same key type whichever acme.sh version or default is installed.

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from pikud import identity
from pikud.atomic import write_atomic
from pikud.errors import NginxError
from pikud.programs import which
from pikud.proxy.commands import run
from pikud.proxy.keypair import pair_problem
from pikud.proxy.nginx import Nginx
from pikud.proxy.site import NginxSite

log = logging.getLogger(__name__)

SKIPPED = 2                 # acme.sh --issue: the certificate is valid, nothing to renew
OUTPUT_LINES = 40           # of acme.sh's output in a failure message

Note = Callable[[str, str, int], None]
"""(app, message, level): where messages about an app's certificate go."""


def find_acme_sh(configured: str | None = None) -> Path | None:
    """``configured`` (pikud.toml's acme_sh), else acme.sh on PATH, else ~/.acme.sh/acme.sh
    (the deploy user's home with app users)."""
    if configured:
        return Path(configured) if os.access(configured, os.X_OK) else None
    found = which("acme.sh")
    if found is not None:
        return Path(found)
    standard = identity.current().home() / ".acme.sh" / "acme.sh"
    return standard if os.access(standard, os.X_OK) else None


class AcmeSh:
    """The acme.sh at ``program``, installing into ``nginx``'s files; failures go to ``note``."""

    def __init__(self, program: Path, nginx: Nginx, note: Note, *, issue_timeout: float,
                 timeout: float) -> None:
        self.program, self.nginx, self.note = program, nginx, note
        self.issue_timeout, self.timeout = issue_timeout, timeout

    async def issue(self, site: NginxSite, names: Sequence[str], server: str | None, *,
                    force: bool) -> bool:
        """acme.sh --issue through the site's webroot; True when a valid certificate is there."""
        argv = [str(self.program), "--issue", *(arg for name in names for arg in ("-d", name)),
                "-w", site.acme_root, "--keylength", "ec-256"]
        if server is not None:
            argv += ["--server", server]
        if force:
            argv.append("--force")
        webroot, who = Path(site.acme_root), identity.current()
        if who.separate:                # acme.sh writes its tokens as the deploy user
            who.give(webroot, who.deploy_owner(), 0o755)
        else:
            webroot.mkdir(parents=True, exist_ok=True)
        return await self._step(site.app, argv, self.issue_timeout, "could not issue",
                                ok=(0, SKIPPED))

    async def install(self, site: NginxSite, name: str) -> bool:
        """acme.sh --install-cert into the site's files; True when nginx can serve the pair.

        Otherwise the previous pair is put back and nginx reloaded (design notes).
        """
        app, crt, key = site.app, Path(site.certificate), Path(site.certificate_key)
        argv = [str(self.program), "--install-cert", "-d", name, "--ecc",
                "--fullchain-file", str(crt), "--key-file", str(key),
                "--reloadcmd", shlex.join(self.nginx.reload_command)]
        async with self.nginx.lock:
            previous = (crt.read_bytes(), key.read_bytes()) if crt.exists() and key.exists() \
                else None
            try:
                done = await self._step(app, argv, self.timeout,
                                        "could not install the certificate")
                problem = None if not done else await pair_problem(crt, key)
            except BaseException:       # cancelled (shutdown, destroy) while acme.sh copied
                if previous is not None:        # or while the pair was being checked
                    _put_back(crt, key, previous)
                raise
            if done and problem is None:
                if key.stat().st_mode & 0o777 != 0o600:
                    key.chmod(0o600)
                return True
            if problem is not None:
                self.note(app, f"certificate: {app}: acme.sh installed an unusable pair "
                               f"({problem}); the previous one is back", logging.ERROR)
            if previous is not None:
                _put_back(crt, key, previous)
            code, output = await run(self.nginx.reload_command, timeout=self.timeout)
            if code != 0:
                self.note(app, f"certificate: {app}: reloading nginx failed (exit status "
                               f"{code}):\n{_tail(output)}", logging.ERROR)
            return False

    async def remove(self, app: str, name: str) -> bool:
        """acme.sh --remove: it stops renewing ``name``'s certificate."""
        if not await self._step(app, [str(self.program), "--remove", "-d", name, "--ecc"],
                                self.timeout, f"could not stop renewing {name}"):
            return False
        self.note(app, f"certificate: {app}: acme.sh no longer renews {name}", logging.INFO)
        return True

    async def _step(self, app: str, argv: list[str], timeout: float, failed: str,
                    ok: tuple[int, ...] = (0,)) -> bool:
        """Run one acme.sh command (as the deploy user: design notes); a failure is a note
        with its output."""
        who = identity.current()
        try:
            code, output = await run(who.as_deploy(argv), timeout=timeout,
                                     env={**os.environ, **who.deploy_env()})
        except NginxError as exc:       # could not start, or timed out and was stopped
            code, output = -1, str(exc)
        if code in ok:
            log.debug("%s: exit status %d\n%s", " ".join(argv), code, output)
            return True
        self.note(app, f"certificate: {app}: acme.sh {failed} (exit status {code}); the "
                       f"certificate in place stays:\n{_tail(output)}", logging.ERROR)
        return False


def _tail(output: str) -> str:
    lines = output.strip().splitlines()
    return "\n".join(lines[-OUTPUT_LINES:])


def _put_back(crt: Path, key: Path, previous: tuple[bytes, bytes]) -> None:
    """Restore the pair in place: key first, 0600, as tls.ensure_certificate leaves it."""
    owner = identity.current().deploy_owner()          # acme.sh's next renewal writes them
    for path, data, mode in ((key, previous[1], 0o600), (crt, previous[0], 0o644)):
        write_atomic(path, data.decode("ascii", errors="replace"), mode, owner)
