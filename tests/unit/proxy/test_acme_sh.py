"""acme.sh with app users: found in the deploy user's home and run as that user (as root).

acme.sh and its ~/.acme.sh are the deploy user's to write, so pikud as root
must not run it as root. A stand-in acme.sh records who ran it; skipped
when the tests do not run as root.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from pikud.identity import Account
from pikud.paths import Paths
from pikud.proxy.acme_sh import AcmeSh, find_acme_sh
from pikud.proxy.nginx import Nginx
from pikud.proxy.tls import ensure_certificate

RECORDER = '#!/bin/sh\nprintf "%s %s %s" "$(id -u)" "$HOME" "$*" >"$HOME/ran"\n'


async def test_acme_sh_is_the_deploy_users_and_runs_as_it(app_users: Account,
                                                          tmp_path: Path) -> None:
    program = Path(app_users.home) / ".acme.sh" / "acme.sh"
    program.parent.mkdir()
    program.write_text(RECORDER)
    program.chmod(0o755)
    assert shutil.which("acme.sh") is None
    assert find_acme_sh() == program            # not root's ~/.acme.sh

    notes: list[tuple[str, str, int]] = []
    acme_sh = AcmeSh(program, Nginx(Paths(tmp_path)), lambda *note: notes.append(note),
                     issue_timeout=10, timeout=10)
    assert await acme_sh.remove("app", "app.test"), notes
    ran = (Path(app_users.home) / "ran").read_text()
    assert ran == f"{app_users.uid} {app_users.home} --remove -d app.test --ecc"
    assert os.geteuid() == 0
    assert [level for _, _, level in notes] == [logging.INFO]


async def test_the_self_signed_pair_is_the_deploy_users_for_acme_sh_to_replace(
        app_users: Account, tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    assert await ensure_certificate(paths, "app", ["app.test"])
    for name, mode in (("app.key", 0o600), ("app.crt", 0o644)):
        st = (paths.nginx() / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (app_users.uid, app_users.gid, mode)
