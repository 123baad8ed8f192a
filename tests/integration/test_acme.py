"""Certificates from acme.sh, with a real nginx and a stand-in for acme.sh and its CA.

The stand-in (acme_stand_in.py) validates each name the way a CA does over
HTTP: it writes a token into the app's webroot and fetches it through the
nginx under test, so these tests prove that the site's challenge location
serves what acme.sh writes, that the issued certificate is what nginx then
serves over TLS, and that every failure leaves the self-signed one serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pikud.proxy.acme import Acme, Issued, fingerprint, record_path
from pikud.proxy.site import NginxSite
from tests.integration.nginx_server import Backend, NginxServer
from tests.net import free_port
from tests.nginx_master import DEADLINE

STAND_IN = Path(__file__).with_name("acme_stand_in.py")


@dataclass
class StandIn:
    program: Path
    home: Path

    def calls(self) -> list[list[str]]:
        path = self.home / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def acme_sh(server: NginxServer) -> Callable[..., StandIn]:
    """Write an `acme.sh` that runs the stand-in against ``server`` (or another port)."""
    made = 0

    def make(http_port: int | None = None) -> StandIn:
        nonlocal made
        made += 1
        home = server.base / f"acme-home-{made}"
        home.mkdir()
        program = home / "acme.sh"
        program.write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} --home {home} "
                           f"--http-port {http_port or server.http_port} \"$@\"\n")
        program.chmod(0o755)
        return StandIn(program, home)
    return make


@dataclass
class Notes:
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    def __call__(self, app: str, message: str, level: int) -> None:
        self.seen.append((app, message, level))

    def text(self, level: int = logging.DEBUG) -> str:
        return "\n".join(message for _, message, at in self.seen if at >= level)


def served_certificate(server: NginxServer, name: str) -> bytes:
    """The DER certificate nginx serves over TLS for ``name`` (SNI)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (socket.create_connection(("127.0.0.1", server.https_port), timeout=DEADLINE) as raw,
          context.wrap_socket(raw, server_hostname=name) as tls):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def subject_and_issuer(der: bytes) -> str:
    return subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-issuer"],
                          input=der, capture_output=True, check=True).stdout.decode()


async def wait_served(server: NginxServer, name: str, crt: Path) -> bytes:
    """A reload is asynchronous: wait until nginx serves the certificate now in ``crt``."""
    expected = fingerprint(crt)
    async with asyncio.timeout(DEADLINE):
        while True:
            der = served_certificate(server, name)
            if hashlib.sha256(der).hexdigest() == expected:
                return der
            await asyncio.sleep(0.05)


async def live_site(server: NginxServer, web: Backend, names: str) -> NginxSite:
    site = server.site("shop", {"NGINX_SERVER_NAME": names, "NGINX_HTTPS_ONLY": "yes"},
                       (web.upstream,))
    await server.nginx().apply(site)
    server.wait_for(site.server_names[0], "/", lambda r: r.status == 301)
    return site


# --- tests ------------------------------------------------------------------------
async def test_issued_certificate_is_served(server: NginxServer, acme_sh: Callable[..., StandIn],
                                            backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    nginx = server.nginx()
    site = await live_site(server, web, "shop.example.com,www.example.com,*.example.com")
    crt, key = Path(site.certificate), Path(site.certificate_key)
    self_signed = fingerprint(crt)
    stand_in, notes = acme_sh(), Notes()
    acme = Acme(nginx, str(stand_in.program), note=notes)

    assert await acme.certify(site, "https://ca.test:14000/dir")
    der = await wait_served(server, "www.example.com", crt)
    assert fingerprint(crt) != self_signed
    assert "O = pikud-test-CA, CN = pikud test CA" in subject_and_issuer(der)     # the issuer
    assert key.stat().st_mode & 0o777 == 0o600
    issue, install = stand_in.calls()
    assert issue == ["--issue", "-d", "shop.example.com", "-d", "www.example.com",
                     "-w", site.acme_root, "--keylength", "ec-256",
                     "--server", "https://ca.test:14000/dir"]
    assert install[:4] == ["--install-cert", "-d", "shop.example.com", "--ecc"]
    assert install[install.index("--reloadcmd") + 1].startswith(nginx.reload_command[0])
    assert "*.example.com: a wildcard needs acme.sh's DNS challenge" in notes.text(logging.WARNING)
    assert "acme.sh installed a certificate for shop.example.com, www.example.com" in notes.text()
    assert Issued.read(record_path(nginx, "shop")) == Issued(
        ("shop.example.com", "www.example.com"), "https://ca.test:14000/dir", fingerprint(crt))

    # A redeploy with the same names and CA asks acme.sh nothing.
    await nginx.apply(site)
    assert await acme.certify(site, "https://ca.test:14000/dir")
    assert len(stand_in.calls()) == 2

    # Another CA for the same names: issued again, forced past the still valid certificate.
    assert await acme.certify(site, "letsencrypt_test")
    assert stand_in.calls()[2][-3:] == ["--server", "letsencrypt_test", "--force"]
    assert await acme.certify(site, None)           # back to acme.sh's default CA
    assert stand_in.calls()[4][-3:] == ["--keylength", "ec-256", "--force"]
    assert notes.text().count("a wildcard needs") == 1      # said once, not at every deploy

    # Destroy: acme.sh stops renewing it; the record and the webroot go.
    await acme.forget("shop")
    assert stand_in.calls()[-1] == ["--remove", "-d", "shop.example.com", "--ecc"]
    assert not record_path(nginx, "shop").exists()
    assert not (server.root / "acme" / "shop").exists()
    await nginx.remove("shop")
    assert [p for p in server.paths.nginx().iterdir() if p.is_file()] == []


async def test_background_request_and_renamed_site(
        server: NginxServer, acme_sh: Callable[..., StandIn],
        backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = await live_site(server, web, "old.example.org")
    stand_in = acme_sh()
    acme = Acme(server.nginx(), str(stand_in.program), note=Notes())
    acme.request(site, None)
    async with asyncio.timeout(DEADLINE):
        await acme.wait("shop")
    await wait_served(server, "old.example.org", Path(site.certificate))

    # The first name changes: the old certificate is no longer renewed into this app's files.
    renamed = await live_site(server, web, "new.example.org")
    acme.request(renamed, None)
    acme.request(renamed, None)          # queued behind the first; finds it done
    async with asyncio.timeout(DEADLINE):
        await acme.wait("shop")
    calls = [call[:3] for call in stand_in.calls()]
    assert calls == [["--issue", "-d", "old.example.org"],
                     ["--install-cert", "-d", "old.example.org"],
                     ["--issue", "-d", "new.example.org"],
                     ["--install-cert", "-d", "new.example.org"],
                     ["--remove", "-d", "old.example.org"]]
    der = await wait_served(server, "new.example.org", Path(site.certificate))
    assert "CN = new.example.org" in subject_and_issuer(der)
    await acme.close()


async def test_a_rename_whose_issuance_fails_keeps_the_old_certificate_renewed(
        server: NginxServer, acme_sh: Callable[..., StandIn],
        backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = await live_site(server, web, "old.example.org")
    working = acme_sh()
    assert await Acme(server.nginx(), str(working.program), note=Notes()).certify(site, None)
    crt = Path(site.certificate)
    installed = fingerprint(crt)

    renamed = await live_site(server, web, "new.example.org")
    failing, notes = acme_sh(http_port=free_port()), Notes()       # the "CA" cannot reach nginx
    assert not await Acme(server.nginx(), str(failing.program), note=notes).certify(renamed, None)
    # No --remove of old.example.org.
    assert [call[0] for call in failing.calls()] == ["--issue"]
    assert "could not issue" in notes.text(logging.ERROR)
    assert fingerprint(crt) == installed
    assert Issued.read(record_path(server.nginx(), "shop")) == Issued(
        ("old.example.org",), None, installed)


async def test_a_retired_name_acme_sh_would_not_forget_is_removed_later(
        server: NginxServer, acme_sh: Callable[..., StandIn],
        backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = await live_site(server, web, "old.example.org")
    working = acme_sh()
    stubborn = working.home / "stubborn.sh"           # the same acme.sh, whose --remove fails
    stubborn.write_text(f'#!/bin/sh\n[ "$1" = --remove ] && {{ echo locked; exit 1; }}\n'
                        f'exec {working.program} "$@"\n')
    stubborn.chmod(0o755)
    assert await Acme(server.nginx(), str(working.program), note=Notes()).certify(site, None)

    renamed = await live_site(server, web, "new.example.org")
    notes = Notes()
    assert await Acme(server.nginx(), str(stubborn), note=notes).certify(renamed, None)
    assert "could not stop renewing old.example.org" in notes.text(logging.ERROR)
    record = Issued.read(record_path(server.nginx(), "shop"))
    assert record is not None and record.retired == ("old.example.org",)

    # Renamed back, but that issuance fails: the old name stays retired, to be removed.
    unreachable = acme_sh(http_port=free_port())
    back = await live_site(server, web, "old.example.org")
    assert not await Acme(server.nginx(), str(unreachable.program), note=Notes()).certify(back,
                                                                                          None)
    record = Issued.read(record_path(server.nginx(), "shop"))
    assert record is not None and record.retired == ("old.example.org",)

    await server.nginx().apply(renamed)
    assert await Acme(server.nginx(), str(working.program), note=Notes()).certify(renamed, None)
    assert working.calls()[-1] == ["--remove", "-d", "old.example.org", "--ecc"]
    record = Issued.read(record_path(server.nginx(), "shop"))
    assert record is not None and record.names == ("new.example.org",) and record.retired == ()


async def test_a_failed_issuance_is_not_asked_again_at_once(
        server: NginxServer, acme_sh: Callable[..., StandIn],
        backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = await live_site(server, web, "shop.example.com")
    failing, notes = acme_sh(http_port=free_port()), Notes()
    acme = Acme(server.nginx(), str(failing.program), note=notes)
    acme.request(site, None)
    acme.request(site, None)             # a deploy publishes its site twice
    async with asyncio.timeout(DEADLINE):
        await acme.wait("shop")
    assert [call[0] for call in failing.calls()] == ["--issue"]
    acme.request(site, "letsencrypt_test")          # something else to ask: asked
    async with asyncio.timeout(DEADLINE):
        await acme.wait("shop")
    assert [call[0] for call in failing.calls()] == ["--issue", "--issue"]


async def test_failed_challenge_keeps_self_signed(
        server: NginxServer, acme_sh: Callable[..., StandIn],
        backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = await live_site(server, web, "shop.example.com")
    crt = Path(site.certificate)
    self_signed = fingerprint(crt)
    stand_in, notes = acme_sh(http_port=free_port()), Notes()   # the "CA" cannot reach nginx
    acme = Acme(server.nginx(), str(stand_in.program), note=notes)
    assert not await acme.certify(site, None)
    errors = notes.text(logging.ERROR)
    assert "acme.sh could not issue (exit status 1); the certificate in place stays" in errors
    assert "shop.example.com:Verify error:shop.example.com: cannot connect" in errors
    assert [call[0] for call in stand_in.calls()] == ["--issue"]
    assert fingerprint(crt) == self_signed and not record_path(server.nginx(), "shop").exists()
    der = await wait_served(server, "shop.example.com", crt)
    assert "pikud-test-CA" not in subject_and_issuer(der)
    assert server.request("shop.example.com", "/", https=True).status == 200


async def test_an_install_that_fails_or_is_cancelled_puts_the_pair_back(
        server: NginxServer, acme_sh: Callable[..., StandIn],
        backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = await live_site(server, web, "shop.example.com")
    crt, key = Path(site.certificate), Path(site.certificate_key)
    before = crt.read_bytes(), key.read_bytes()

    def pair_is_back() -> None:
        assert (crt.read_bytes(), key.read_bytes()) == before
        assert key.stat().st_mode & 0o777 == 0o600
        assert not record_path(server.nginx(), "shop").exists()

    notes = Notes()
    failing = server.nginx(reload_command=["sh", "-c", "echo no sudo rule; exit 3"])
    acme = Acme(failing, str(acme_sh().program), note=notes)
    assert not await acme.certify(site, None)
    assert "could not install the certificate (exit status 1)" in notes.text(logging.ERROR)
    assert "Reload error" in notes.text(logging.ERROR)
    pair_is_back()

    # A key that is not the certificate's, and a reload that does not check (`nginx -s
    # reload` exits 0 when the master then refuses the files): caught by loading the pair.
    mismatched, notes = acme_sh(), Notes()
    (mismatched.home / "install-wrong-key").touch()
    unchecked = server.nginx(reload_command=["true"])
    assert not await Acme(unchecked, str(mismatched.program), note=notes).certify(site, None)
    assert "acme.sh installed an unusable pair (" in notes.text(logging.ERROR)
    assert "KEY_VALUES_MISMATCH" in notes.text(logging.ERROR)      # what ssl said, in a child
    pair_is_back()

    # A shutdown while the child checks the pair (here a key whose load blocks: a FIFO that
    # the test holds open without writing) puts the pair back too.
    slow = acme_sh()
    (slow.home / "install-key-fifo").touch()
    task = asyncio.create_task(Acme(unchecked, str(slow.program), note=Notes())
                               .certify(site, None))
    writer = -1
    try:
        async with asyncio.timeout(DEADLINE):
            while writer < 0:   # the check's open of the key is the event; nothing to await
                with contextlib.suppress(OSError):      # ENXIO: no reader yet (or no FIFO)
                    if stat.S_ISFIFO(key.lstat().st_mode):
                        writer = os.open(key, os.O_WRONLY | os.O_NONBLOCK)
                await asyncio.sleep(0.02)
    finally:
        task.cancel()                    # a shutdown or destroy
        await asyncio.gather(task, return_exceptions=True)
        if writer >= 0:
            os.close(writer)
    assert task.cancelled() and not key.is_fifo()
    pair_is_back()

    hanging = server.nginx(reload_command=["sleep", "30"])     # acme.sh copies, then reloads
    task = asyncio.create_task(Acme(hanging, str(acme_sh().program), note=Notes())
                               .certify(site, None))
    async with asyncio.timeout(DEADLINE):
        # acme.sh's copy of the file has no event to wait on: a bounded poll.
        while crt.read_bytes() == before[0]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    task.cancel()                        # a shutdown or destroy
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    pair_is_back()


async def test_without_acme_sh_the_self_signed_stays(
        server: NginxServer, backend: Callable[..., Backend],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(server.base))        # no ~/.acme.sh there
    web = backend("web-1")
    site = await live_site(server, web, "shop.example.com")
    before = fingerprint(Path(site.certificate))
    notes = Notes()
    acme = Acme(server.nginx(), note=notes)
    assert not await acme.certify(site, None)
    assert not await acme.certify(site, None)
    assert [message for _, message, _ in notes.seen] == [
        "certificate: self-signed; install acme.sh (https://get.acme.sh) for real certificates, "
        "issued and renewed automatically"]
    missing = Acme(server.nginx(), str(server.base / "nowhere/acme.sh"), note=notes)
    assert not await missing.certify(site, None)
    assert not await missing.certify(site, None)
    assert notes.text(logging.WARNING).count("nowhere/acme.sh, which is not an executable") == 1
    assert fingerprint(Path(site.certificate)) == before
    assert sorted(p.name for p in server.paths.nginx().iterdir() if p.is_file()) == [
        "shop.conf", "shop.crt", "shop.key"]


async def test_no_public_name_asks_nothing(server: NginxServer, acme_sh: Callable[..., StandIn],
                                           backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = await live_site(server, web, "shop.test,localhost,127.0.0.1")
    stand_in, notes = acme_sh(), Notes()
    acme = Acme(server.nginx(), str(stand_in.program), note=notes)
    assert not await acme.certify(site, None)
    said = list(notes.seen)
    assert not await acme.certify(site, None)
    assert stand_in.calls() == [] and notes.seen == said
    assert "no public name; the self-signed certificate stays" in notes.text()
    assert "127.0.0.1: an IP address" in notes.text(logging.WARNING)
