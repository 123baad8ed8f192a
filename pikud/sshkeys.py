"""Public keys for `piku setup:ssh` (stdlib only: the CLI imports it).

A key is checked before it reaches ``authorized_keys``: a known type, base64
that decodes, and a blob that names the same type. That is what sshd itself
would reject later, silently, so we say it at once. The file is rewritten
atomically (temp file + fsync + rename); a key is never added twice, and a
name names one key only (access rules and the audit log go by name).
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from pikud.atomic import write_atomic
from pikud.digest import sha256
from pikud.errors import PikudError
from pikud.sshcommand import FLAG

KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa",
    "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
RESTRICTIONS = "no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding"
KEY_NAME = re.compile(r"[A-Za-z0-9@._-]{1,64}")
"""What a key name may be: it goes into the forced command unquoted, and into audit lines."""
_FORCED_COMMAND = re.compile(r'command="((?:[^"\\]|\\.)*)"')
_NAME_IN_COMMAND = re.compile(r"(?:^| )NAME=([A-Za-z0-9@._-]+)(?: |$)")


class InvalidKey(PikudError):
    """A public key or its name that sshd would not take as we would write it."""

    code = "invalid_key"
    status = 400


class NameTaken(InvalidKey):
    """Another key already has the name (names are unique: ``setup:ssh --replace``)."""

    code = "key_name_taken"
    status = 409


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: bytes
    comment: str

    @property
    def base64(self) -> str:
        return base64.b64encode(self.blob).decode()

    @property
    def fingerprint(self) -> str:
        """What ``ssh-keygen -lf`` prints: SHA256 of the blob, base64 without padding."""
        digest = base64.b64encode(sha256(self.blob)).decode()
        return "SHA256:" + digest.rstrip("=")


def parse_public_key(text: str) -> PublicKey:
    """Parse one ``TYPE BASE64 [COMMENT]`` line; raise InvalidKey naming the fault."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise InvalidKey(f"expected one public key line, found {len(lines)}")
    fields = lines[0].strip().split(None, 2)
    if len(fields) < 2:
        raise InvalidKey("expected 'TYPE BASE64 [COMMENT]'")
    key_type, b64 = fields[0], fields[1]
    if key_type not in KEY_TYPES:
        raise InvalidKey(f"unknown key type {key_type!r} "
                         f"(expected one of {', '.join(sorted(KEY_TYPES))})")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey(f"the key data is not valid base64 ({exc})") from None
    head = len(key_type).to_bytes(4, "big") + key_type.encode()
    if not blob.startswith(head) or len(blob) == len(head):
        raise InvalidKey(f"the key data is not a {key_type} key")
    return PublicKey(key_type, blob, fields[2].strip() if len(fields) == 3 else "")


def key_name(name: str | None, key: PublicKey) -> str:
    """``--name``, else the key's comment, else ``key``; only [A-Za-z0-9@._-]."""
    chosen = name or key.comment or "key"
    if not KEY_NAME.fullmatch(chosen):
        raise InvalidKey(f"key name {chosen!r} may only contain letters, digits "
                         "and @._-, at most 64 (use --name)")
    return chosen


def authorized_line(key: PublicKey, name: str, command: list[str], root: Path | None = None) -> str:
    """The ``authorized_keys`` line whose forced command runs ``command`` (piku's argv).

    The command takes its words from SSH_ORIGINAL_COMMAND itself (``FLAG``),
    so no shell expands them. ``root`` is set as PIKU_ROOT in the command when
    the server uses a non-default root.
    """
    program = shlex.join(command).replace('"', '\\"')
    where = f"PIKU_ROOT={shlex.quote(str(root))} " if root is not None else ""
    forced = f"FINGERPRINT={key.fingerprint} NAME={name} {where}{program} {FLAG}"
    line = f'command="{forced}",{RESTRICTIONS} {key.type} {key.base64}'
    return f"{line} {key.comment}" if key.comment else line


def name_in(entry: str) -> str | None:
    """The NAME an ``authorized_keys`` line's forced command passes, if it passes one."""
    command = _FORCED_COMMAND.match(entry.strip())
    found = _NAME_IN_COMMAND.search(command.group(1)) if command else None
    return found.group(1) if found else None


def add_authorized_key(path: Path, key: PublicKey, line: str, name: str,
                       replace: bool = False) -> bool:
    """Append ``line`` (the key ``name``) unless ``key`` is already in ``path``; False if
    it was. Another key under ``name`` is NameTaken. With ``replace``, ``line`` takes
    the place of the key's own line (a new name) and of the lines under ``name``.

    Names are unique, so the pusher a release records and the key a grant names
    cannot be taken by a second key. The directory is created 0700 and the file
    written 0600 with ``write_atomic``, so a crash never leaves sshd a half-written file.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        existing = path.read_text().splitlines()
    except FileNotFoundError:
        existing = []
    mine = [entry for entry in existing if key.base64 in entry.split()]
    if mine and not replace:
        return False
    taken = [entry for entry in existing if name_in(entry) == name and entry not in mine]
    if taken and not replace:
        raise NameTaken(f"a key named {name!r} is already in {path}: give this one another "
                        "--name, or --replace to put it in that key's place")
    kept = [entry for entry in existing if entry not in taken and entry not in mine]
    write_atomic(path, "".join(f"{entry}\n" for entry in [*kept, line]), 0o600)
    return True
