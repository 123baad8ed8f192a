"""Real certificates from acme.sh: issued through the webroot, installed, renewed by acme.sh.

Once a site is live, ``Acme.request(site, server)`` asks acme.sh, in the
background, for a certificate for the site's public names
(``acme.sh --issue -d NAME... -w acme/APP``), then has it install the
certificate into ``nginx/APP.crt`` and ``nginx/APP.key`` and reload nginx
(``acme.sh --install-cert … --reloadcmd``), which acme.sh remembers for its
renewals. A failure is logged with acme.sh's output and never fails a deploy:
the self-signed certificate made by ``tls.ensure_certificate`` keeps serving.
Without acme.sh the self-signed certificate stays, as before, and the log says
once how to get real ones.

This module decides when to ask (one issuance per app at a time) and records
what was installed (``nginx/APP.acme``); ``acme_sh.py`` runs the commands.
``root_ca()`` checks the app's ACME_ROOT_CA with its other settings, and
``issuable()`` picks the names a CA can validate over HTTP; both are pure.
"""

# Design notes:
# - In the background, not inside the deploy: the CA validates over the
#   network and may take a minute or more (or time out), while the app is
#   already served over HTTPS with the self-signed certificate. A push waits for
#   nothing; the outcome goes to the app's pikud.log (`piku logs`) and events.
#   One issuance per app at a time; a request arriving meanwhile runs after it,
#   unless it asks the same as one that just failed (a deploy publishes its site
#   twice, and the CA would fail it again): that waits for the next deploy or boot.
# - A renamed site keeps its old certificate renewed until the new one is
#   installed; a failed issuance for the new names changes nothing. Then the
#   old first name is "retired" in the record until `--remove` succeeds (it is
#   retried at every later request): acme.sh would otherwise renew the old
#   certificate into the same files, over the new one.
# - Renewal is acme.sh's: its installer adds a daily `acme.sh --cron`, which
#   renews what is due and re-installs it with the saved --reloadcmd. pikud
#   does not run renewals too: two renewers of one acme.sh home would race.
# - Which certificate is in place: after an install, nginx/APP.acme records
#   the names, the CA and the SHA-256 of the installed certificate. A deploy
#   asks acme.sh again only when one of them differs: new names, another
#   ACME_ROOT_CA, or a certificate that changed under it (renewed by acme.sh's
#   cron, or replaced by the self-signed one). For a certificate that is still
#   valid, `--issue` exits 2 at once without asking the CA ("skipped"), and the
#   install re-installs it.
# - ACME_ROOT_CA is one of acme.sh's CA names or a plain http(s) URL, nothing
#   else: acme.sh saves it in a config file it later reads as shell code, so a
#   quote or `$` in it would run at every renewal.

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pikud.atomic import write_atomic
from pikud.digest import sha256
from pikud.errors import EnvError
from pikud.proxy.acme_sh import AcmeSh, Note, find_acme_sh
from pikud.proxy.nginx import Nginx
from pikud.proxy.site import NginxSite

log = logging.getLogger(__name__)

KEY = "ACME_ROOT_CA"
ISSUE_TIMEOUT = 300.0       # the CA's validation, with acme.sh's own retries
COMMAND_TIMEOUT = 60.0      # install (with the reload) and remove
_CA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,62}")
_URL = re.compile(r"https?://[A-Za-z0-9._~:/%+-]+")
_NOT_PUBLIC = ("localhost", "local", "test", "invalid", "example", "internal", "home.arpa")


# --- pure parts -----------------------------------------------------------------------
def root_ca(env: Mapping[str, str]) -> str | None:
    """The app's ACME_ROOT_CA for ``--server``, None when unset; EnvError when unsafe.

    One of acme.sh's CA names (``letsencrypt``, ``letsencrypt_test``,
    ``zerossl``, ``buypass``, ``google``, ``LetsEncrypt.org``, …) or the
    http(s) URL of an ACME directory. The design notes say why nothing else.
    """
    value = env.get(KEY, "").strip()
    if not value:
        return None
    if _CA_NAME.fullmatch(value) or (_URL.fullmatch(value) and urlsplit(value).hostname):
        return value
    raise EnvError(f"{KEY}: expected an acme.sh CA name (letsencrypt, zerossl, …) or an "
                   f"https:// ACME directory URL: {value!r}", key=KEY)


def issuable(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names a public CA can validate through the webroot, why each other one cannot)."""
    chosen: list[str] = []
    skipped: list[str] = []
    for name in names:
        lower = name.lower().rstrip(".")
        try:
            ipaddress.ip_address(name)
            skipped.append(f"{name}: an IP address")
            continue
        except ValueError:
            pass
        if name == "_":
            skipped.append("_: the catch-all name")
        elif name.startswith("*."):
            skipped.append(f"{name}: a wildcard needs acme.sh's DNS challenge, which pikud "
                           "does not run")
        elif "." not in lower or any(lower == tld or lower.endswith("." + tld)
                                     for tld in _NOT_PUBLIC):
            skipped.append(f"{name}: not a public name")
        elif "_" in name:
            skipped.append(f"{name}: public CAs refuse '_' in names")
        elif lower not in chosen:
            chosen.append(lower)
    return tuple(chosen), tuple(skipped)


def fingerprint(crt: Path) -> str | None:
    """SHA-256 of the first certificate in the PEM file ``crt``; None if there is none."""
    try:
        text = crt.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return None
    try:
        der = binascii.a2b_base64(text[start + len(begin):stop])  # what ssl's would do
    except ValueError:
        return None
    return sha256(der).hex()


@dataclass(frozen=True)
class Issued:
    """nginx/APP.acme: what acme.sh last installed for the app.

    ``retired``: first names of the app's earlier certificates that acme.sh may
    still renew, and install into the same files, until ``--remove`` succeeds.
    """

    names: tuple[str, ...]
    server: str | None
    fingerprint: str
    retired: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: Path) -> Issued | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(tuple(data["names"]), data["server"], data["fingerprint"],
                       tuple(data.get("retired", ())))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def write(self, path: Path) -> None:
        write_atomic(path, json.dumps({"names": list(self.names), "server": self.server,
                                       "fingerprint": self.fingerprint,
                                       "retired": list(self.retired)}) + "\n", 0o644)


def record_path(nginx: Nginx, app: str) -> Path:
    return nginx.paths.nginx() / f"{app}.acme"


# --- effects --------------------------------------------------------------------------
class Acme:
    """acme.sh beside ``nginx``: ``request`` a certificate for a live site, ``forget`` an app."""

    def __init__(self, nginx: Nginx, program: str | None = None, *, note: Note | None = None,
                 issue_timeout: float = ISSUE_TIMEOUT,
                 timeout: float = COMMAND_TIMEOUT) -> None:
        self.nginx = nginx
        self.program = program          # pikud.toml's acme_sh; None: look in the usual places
        self.note = note or (lambda app, message, level: log.log(level, "%s", message))
        self.issue_timeout, self.timeout = issue_timeout, timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._next: dict[str, tuple[NginxSite, str | None]] = {}
        self._said: set[tuple[str, str]] = set()    # (app or "", message) said once

    # -- scheduling --------------------------------------------------------------------
    def request(self, site: NginxSite, server: str | None) -> None:
        """Make sure ``site`` gets its certificate, in the background (design notes)."""
        app = site.app
        if app in self._tasks:
            self._next[app] = (site, server)
            return
        self._tasks[app] = asyncio.get_running_loop().create_task(
            self._serve(site, server), name=f"acme {app}")

    async def _serve(self, site: NginxSite, server: str | None) -> None:
        app = site.app
        try:
            while True:
                try:
                    done = await self.certify(site, server)
                except Exception:       # a bug: logged, the self-signed certificate stays
                    log.exception("certificate: %s: unexpected error", app)
                    done = False
                if app not in self._next:
                    break
                asked, (site, server) = (site, server), self._next.pop(app)
                if not done and _same_ask(asked, (site, server)):
                    break       # it just failed: asking the CA again now would fail again
        finally:
            self._tasks.pop(app, None)
            self._next.pop(app, None)

    async def wait(self, app: str) -> None:
        """Until no certificate work for ``app`` is pending."""
        while (task := self._tasks.get(app)) is not None:
            await asyncio.wait({task})

    async def close(self) -> None:
        """Shutdown: stop every issuance (acme.sh's children too) and wait for them."""
        tasks = list(self._tasks.values())
        self._next.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the work ----------------------------------------------------------------------
    async def certify(self, site: NginxSite, server: str | None) -> bool:
        """Issue and install the certificate unless it is in place; True if it is now.

        Every outcome is a note for the app; nothing is raised for acme.sh's
        failures, and the certificate in place keeps serving.
        """
        app = site.app
        acme_sh = self._acme_sh()
        if acme_sh is None:
            self._missing(app)
            return False
        names, skipped = issuable(site.server_names)
        for reason in skipped:
            self._once(app, f"certificate: {app}: no certificate for {reason}", logging.WARNING)
        if not names:
            self._once(app, f"certificate: {app}: no public name; the self-signed certificate "
                            "stays", logging.INFO)
            return False
        record_file = record_path(self.nginx, app)
        crt = Path(site.certificate)
        issued = Issued.read(record_file)
        if issued is not None and issued.retired:
            issued = await self._retire(acme_sh, app, issued, record_file, names[0])
        if issued is not None and (issued.names, issued.server, issued.fingerprint) == (
                names, server, fingerprint(crt)):
            return True
        label = ", ".join(names) + (f" from {server}" if server else "")
        self.note(app, f"certificate: {app}: asking acme.sh for {label}", logging.INFO)
        # --force: a valid certificate from the other CA would be kept
        force = issued is not None and issued.names[0] == names[0] and issued.server != server
        if not await acme_sh.issue(site, names, server, force=force):
            return False
        installed = fingerprint(crt) if await acme_sh.install(site, names[0]) else None
        if installed is None:
            return False
        # The old first name is retired only now: until the new one is in, it is served.
        retired = () if issued is None else tuple(
            name for name in dict.fromkeys((*issued.retired, issued.names[0])) if name != names[0])
        record = Issued(names, server, installed, retired)
        record.write(record_file)
        self.note(app, f"certificate: {app}: acme.sh installed a certificate for {label}; "
                       "acme.sh renews it", logging.INFO)
        if retired:
            await self._retire(acme_sh, app, record, record_file, names[0])
        return True

    async def _retire(self, acme_sh: AcmeSh, app: str, issued: Issued, record_file: Path,
                      wanted: str) -> Issued:
        """Have acme.sh stop renewing the retired names but ``wanted`` (the app's first name
        again, kept until it is installed); those it would not stop renewing stay too."""
        left = tuple([name for name in issued.retired
                      if name == wanted or not await acme_sh.remove(app, name)])
        kept = Issued(issued.names, issued.server, issued.fingerprint, left)
        kept.write(record_file)
        return kept

    def _acme_sh(self) -> AcmeSh | None:
        program = find_acme_sh(self.program)
        if program is None:
            return None
        return AcmeSh(program, self.nginx, self.note, issue_timeout=self.issue_timeout,
                      timeout=self.timeout)

    def _missing(self, app: str) -> None:
        if self.program:
            self._once(app, f"certificate: acme_sh in pikud.toml is {self.program}, which is "
                            f"not an executable; {app} keeps its self-signed certificate",
                       logging.WARNING)
        else:
            self._once("", "certificate: self-signed; install acme.sh (https://get.acme.sh) "
                           "for real certificates, issued and renewed automatically",
                       logging.INFO, app)

    def _once(self, key: str, message: str, level: int, app: str | None = None) -> None:
        """Note ``message`` the first time only: sites are published at every deploy and boot."""
        if (key, message) not in self._said:
            self._said.add((key, message))
            self.note(app or key, message, level)

    async def forget(self, app: str) -> None:
        """Destroy: stop any issuance, and tell acme.sh to stop renewing the app's certificate.

        Best effort: a failure is logged. The record is removed either way.
        """
        task = self._tasks.get(app)
        self._next.pop(app, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        record_file = record_path(self.nginx, app)
        issued = Issued.read(record_file)
        acme_sh = self._acme_sh()
        if issued is not None and acme_sh is not None:
            for name in (*issued.names[:1], *issued.retired):
                await acme_sh.remove(app, name)
        record_file.unlink(missing_ok=True)
        self._said = {said for said in self._said if said[0] != app}
        webroot = self.nginx.paths.root / "acme" / app
        if webroot.is_dir() and not webroot.is_symlink():
            import shutil  # imported on first use (it brings bz2 and lzma): see README
            await asyncio.to_thread(shutil.rmtree, webroot, True)


def _same_ask(one: tuple[NginxSite, str | None], other: tuple[NginxSite, str | None]) -> bool:
    """Whether two requests ask a CA for the same names from the same CA."""
    return (issuable(one[0].server_names)[0], one[1]) == (issuable(other[0].server_names)[0],
                                                         other[1])
