"""Public-key parsing, fingerprints and the authorized_keys write."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pikud.sshkeys import (
    RESTRICTIONS,
    InvalidKey,
    NameTaken,
    PublicKey,
    add_authorized_key,
    authorized_line,
    key_name,
    name_in,
    parse_public_key,
)

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")


def ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def ed25519_line(comment: str = "me@laptop", seed: bytes = b"\x07" * 32) -> str:
    """A well-formed ed25519 public key line: the type string, then 32 key bytes."""
    blob = ssh_string(b"ssh-ed25519") + ssh_string(seed)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}".rstrip()


def keygen(tmp_path: Path, kind: str, comment: str = "me@laptop") -> Path:
    """A real key pair made by ssh-keygen; returns the .pub path."""
    private = tmp_path / f"id_{kind}"
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(private)],
                   check=True, timeout=60)
    return private.with_suffix(".pub")


@needs_keygen
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path, kind: str) -> None:
    pub = keygen(tmp_path, kind)
    key = parse_public_key(pub.read_text())
    listed = subprocess.run([SSH_KEYGEN, "-lf", str(pub)], check=True, capture_output=True,
                            text=True, timeout=60).stdout.split()
    assert key.fingerprint == listed[1]
    assert key.comment == "me@laptop"
    assert f"{key.type} {key.base64} me@laptop" == pub.read_text().strip()


def test_parse_keeps_a_comment_with_spaces() -> None:
    key = parse_public_key(ed25519_line("Jane Doe's laptop") + "\n\n")
    assert (key.type, key.comment) == ("ssh-ed25519", "Jane Doe's laptop")
    assert parse_public_key(ed25519_line("")).comment == ""


WRONG_BLOB = base64.b64encode(ssh_string(b"ssh-rsa") + ssh_string(b"\x01\x00\x01")).decode()
TYPE_ONLY = base64.b64encode(ssh_string(b"ssh-ed25519")).decode()


@pytest.mark.parametrize(("text", "match"), [
    ("", "found 0"),
    (ed25519_line() + "\n" + ed25519_line(), "found 2"),
    ("ssh-ed25519", "TYPE BASE64"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP== me", "unknown key type 'ssh-dss'"),
    ('command="x" ' + ed25519_line(), "unknown key type"),
    ("ssh-ed25519 AAAA$$$$ me", "not valid base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE me", "not valid base64"),             # truncated
    (f"ssh-ed25519 {WRONG_BLOB} me", "not a ssh-ed25519 key"),
    (f"ssh-ed25519 {TYPE_ONLY} me", "not a ssh-ed25519 key"),
])
def test_malformed_keys_are_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidKey, match=match):
        parse_public_key(text)


@pytest.mark.parametrize(("name", "comment", "chosen"), [
    ("deploy-bot", "me@laptop", "deploy-bot"),
    (None, "me@laptop", "me@laptop"),
    (None, "", "key"),
    ("a.b_c-d@e", "", "a.b_c-d@e"),
])
def test_key_name(name: str | None, comment: str, chosen: str) -> None:
    assert key_name(name, parse_public_key(ed25519_line(comment))) == chosen


@pytest.mark.parametrize(("name", "comment"), [
    ("two words", ""), ("semi;colon", ""), ('quo"te', ""), (None, "Jane Doe"), ("x$(id)", ""),
])
def test_bad_key_names_are_refused(name: str | None, comment: str) -> None:
    with pytest.raises(InvalidKey, match="may only contain"):
        key_name(name, parse_public_key(ed25519_line(comment)))


def test_authorized_line() -> None:
    key = parse_public_key(ed25519_line("me@laptop"))
    assert authorized_line(key, "me", ["/usr/local/bin/piku"]) == (
        f'command="FINGERPRINT={key.fingerprint} NAME=me /usr/local/bin/piku --ssh-command",'
        "no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding "
        f"ssh-ed25519 {key.base64} me@laptop")
    bare = parse_public_key(ed25519_line(""))
    # A path with a space is quoted for the shell that runs the forced command.
    assert authorized_line(bare, "key", ["/opt/my piku/piku"]) == (
        f'command="FINGERPRINT={bare.fingerprint} NAME=key \'/opt/my piku/piku\' --ssh-command",'
        f"{RESTRICTIONS} ssh-ed25519 {bare.base64}")
    # A non-default root and an interpreter-run CLI.
    python_cli = ["/usr/bin/python3", "-m", "pikud.cli"]
    assert authorized_line(bare, "key", python_cli, Path("/srv/p")) == (
        f'command="FINGERPRINT={bare.fingerprint} NAME=key PIKU_ROOT=/srv/p /usr/bin/python3 -m '
        f'pikud.cli --ssh-command",{RESTRICTIONS} ssh-ed25519 {bare.base64}')


def _add(path: Path, key: PublicKey, name: str = "me", replace: bool = False) -> bool:
    return add_authorized_key(path, key, authorized_line(key, name, ["/bin/piku"]), name,
                              replace)


def test_add_creates_the_file_privately(tmp_path: Path) -> None:
    target = tmp_path / "home" / ".ssh" / "authorized_keys"
    key = parse_public_key(ed25519_line())
    assert _add(target, key)
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700 & ~_umask()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == authorized_line(key, "me", ["/bin/piku"]) + "\n"
    assert os.listdir(target.parent) == ["authorized_keys"]     # no temp file left


def test_add_keeps_existing_lines_and_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "authorized_keys"
    target.write_text("ssh-ed25519 AAAAexisting other@host")      # no trailing newline
    key = parse_public_key(ed25519_line())
    assert _add(target, key)
    first = target.read_bytes()
    assert first.startswith(b"ssh-ed25519 AAAAexisting other@host\n")
    assert _add(target, key) is False
    assert target.read_bytes() == first
    other = parse_public_key(ed25519_line(seed=b"\x08" * 32))
    assert _add(target, other, "other")
    assert len(target.read_text().splitlines()) == 3


def test_a_name_names_one_key_unless_replaced(tmp_path: Path) -> None:
    """So that "pushed by" and a grant cannot be taken over by adding a second key."""
    target = tmp_path / "authorized_keys"
    first = parse_public_key(ed25519_line())
    second = parse_public_key(ed25519_line("NAME=me", seed=b"\x08" * 32))
    assert _add(target, first)
    assert name_in(target.read_text().splitlines()[0]) == "me"
    with pytest.raises(NameTaken, match="a key named 'me' is already in"):
        _add(target, second)
    assert _add(target, second, "me2")          # a comment that says NAME= names nothing
    assert [name_in(line) for line in target.read_text().splitlines()] == ["me", "me2"]
    third = parse_public_key(ed25519_line(seed=b"\x09" * 32))
    assert _add(target, third, "me", replace=True)
    lines = target.read_text().splitlines()
    assert [name_in(line) for line in lines] == ["me2", "me"]
    assert third.base64 in lines[1] and first.base64 not in target.read_text()
    assert name_in("ssh-ed25519 AAAA plain@piku") is None
    # A key that is in already gets a new name (keys from piku are all "default").
    assert _add(target, third, "me3") is False
    assert _add(target, third, "me3", replace=True)
    assert [name_in(line) for line in target.read_text().splitlines()] == ["me2", "me3"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
