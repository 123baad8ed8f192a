"""contrib/'s files as the tools that read them see them: systemd's units through
`systemd-analyze verify` (it needs no systemd as PID 1), the sudoers rule through
`visudo -c`, the nginx file through `nginx -t`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.nginx_master import NGINX

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UNITS = sorted(p for p in CONTRIB.iterdir() if p.suffix in (".service", ".path", ".socket"))
INSTALLED_PIKUD = "/opt/pikud/bin/pikud"        # where scripts/install puts it


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    """Each unit verifies with no warning at all. verify also wants every ExecStart
    program to exist, so pikud's path points at a stand-in here."""
    stand_in = tmp_path / "pikud"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    assert len(UNITS) == 3
    for unit in UNITS:
        (tmp_path / unit.name).write_text(
            unit.read_text().replace(f"ExecStart={INSTALLED_PIKUD} ", f"ExecStart={stand_in} "))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             *(str(tmp_path / unit.name) for unit in UNITS)],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@pytest.mark.skipif(shutil.which("visudo") is None and not Path("/usr/sbin/visudo").exists(),
                    reason="sudo is not installed")
def test_visudo_accepts_the_sudoers_rule() -> None:
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    result = subprocess.run([visudo, "-cf", str(CONTRIB / "sudoers.d-pikud")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_default_server_and_include(tmp_path: Path) -> None:
    """The file scripts/install writes as /etc/nginx/conf.d/pikud.conf, in an http {}
    of its own (ssl_reject_handshake needs nginx 1.19.4: Debian 12 has 1.22)."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                    f"http {{\n    include {CONTRIB / 'nginx-pikud.conf'};\n}}\n")
    result = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
