"""A stand-in for acme.sh in tests: the slice of its CLI that pikud uses, with a local CA.

acme.sh cannot be installed here (no package, no network), so this plays
both acme.sh and the CA, for real where it matters: ``--issue`` writes a
token under ``-w DIR/.well-known/acme-challenge/`` and fetches it back
through the real nginx under test (``127.0.0.1:--http-port``, Host set to
each name), as a CA would; a wrong or missing answer fails with exit 1.
Then it signs a certificate for the names with its own CA (subject and
issuer ``O=pikud-test-CA``) and keeps it in its home, like acme.sh's
``~/.acme.sh/NAME_ecc/``. ``--install-cert`` copies it into the given files
the way acme.sh does (in place, so an existing key keeps its mode) and runs
the reload command. Every call's argv is appended to ``HOME/calls.jsonl``.

    acme_stand_in.py --home DIR --http-port PORT  ACME.SH-ARGS...
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def domains(args: list[str]) -> list[str]:
    return [args[i + 1] for i, word in enumerate(args) if word == "-d"]


def openssl(*argv: str) -> None:
    done = subprocess.run(["openssl", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"openssl failed: {done.stderr}")


def challenge(webroot: Path, name: str, port: int) -> str | None:
    """Serve a token for ``name`` and fetch it as the CA would; why it failed, or None."""
    folder = webroot / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(16)
    content = f"{token}.thumbprint"
    (folder / token).write_text(content)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", f"/.well-known/acme-challenge/{token}",
                           headers={"Host": name})
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        connection.close()
    except OSError as exc:
        return f"{name}: cannot connect: {exc}"
    finally:
        (folder / token).unlink(missing_ok=True)
    if response.status != 200 or body != content:
        return f"{name}: Invalid status, {response.status}, body {body[:80]!r}"
    return None


def issue(home: Path, args: list[str], port: int) -> int:
    names = domains(args)
    webroot = option(args, "-w")
    if not names or webroot is None:
        print("Usage: --issue -d NAME -w DIR", file=sys.stderr)
        return 1
    folder = home / f"{names[0]}_ecc"
    saved = folder / "domains.json"
    if saved.exists() and json.loads(saved.read_text()) == names and "--force" not in args:
        print("Domains not changed. Skipping. Next renewal time is: 2027-01-30")
        return 2
    for name in names:
        print(f"Verifying: {name}")
        problem = challenge(Path(webroot), name, port)
        if problem is not None:
            print(f"{name}:Verify error:{problem}")
            return 1
        print("Success")
    ca_key, ca_crt = home / "ca.key", home / "ca.crt"
    if not ca_crt.exists():
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "30", "-subj", "/O=pikud-test-CA/CN=pikud test CA",
                "-keyout", str(ca_key), "-out", str(ca_crt))
    folder.mkdir(parents=True, exist_ok=True)
    key, crt = folder / f"{names[0]}.key", folder / f"{names[0]}.cer"
    openssl("req", "-x509", "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "90", "-subj", f"/O=pikud-test-CA/CN={names[0]}",
            "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in names),
            "-keyout", str(key), "-out", str(crt))
    (folder / "fullchain.cer").write_text(crt.read_text() + ca_crt.read_text())
    saved.write_text(json.dumps(names))
    print(f"Cert success. Your cert is in: {crt}")
    return 0


def issued(home: Path, args: list[str]) -> tuple[str, Path | None]:
    """The first -d name, and its certificate folder if one was issued."""
    names = domains(args)
    first = names[0] if names else ""
    folder = home / f"{first}_ecc"
    return first, folder if first and folder.is_dir() else None


def install(home: Path, args: list[str]) -> int:
    first, folder = issued(home, args)
    if folder is None:
        print(f"The domain '{first}' seems to be not issued yet")
        return 1
    key = folder / f"{first}.key"
    if (home / "install-wrong-key").exists():       # a test's broken install: the CA's key
        key = home / "ca.key"
    for source, target in ((key, option(args, "--key-file")),
                           (folder / "fullchain.cer", option(args, "--fullchain-file"))):
        if target is None:
            continue
        path = Path(target)
        if (home / "install-key-fifo").exists() and source == key:    # a test's key whose
            path.unlink()               # load blocks until it is written: a slow pair check
            os.mkfifo(path, 0o600)
            continue
        if not path.exists():           # acme.sh: a new key file is made 0600 first
            path.touch(0o600)
        with open(path, "w") as out:    # in place: an existing file keeps its mode
            out.write(source.read_text())
        print(f"Installing to: {path}")
    command = option(args, "--reloadcmd")
    if command:
        print("Run reload cmd: " + command)
        if subprocess.run(["sh", "-c", command]).returncode != 0:
            print("Reload error")
            return 1
        print("Reload success")
    return 0


def remove(home: Path, args: list[str]) -> int:
    first, folder = issued(home, args)
    if folder is None:
        print(f"{first} is not an issued domain, skipping.")
        return 1
    shutil.rmtree(folder)
    print(f"{first} has been removed.")
    return 0


def main(argv: list[str]) -> int:
    home = Path(argv[argv.index("--home") + 1])
    port = int(argv[argv.index("--http-port") + 1])
    args = argv[4:]
    with open(home / "calls.jsonl", "a") as calls:
        calls.write(json.dumps(args) + "\n")
    if "--issue" in args:
        return issue(home, args, port)
    if "--install-cert" in args:
        return install(home, args)
    if "--remove" in args:
        return remove(home, args)
    print(f"stand-in: unsupported: {args}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
