"""The re-exec bridge serves the router's port while the new image of pikud starts."""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Pikud, wait_for
from tests.integration.test_reexec import Load, deploy, pids

# Holds the new image (the only process started with $PIKUD_HANDOVER) at its start, before
# its router accepts, until the test opens the gate: the bridge alone serves meanwhile.
GATED_START = """\
import os, time
if "PIKUD_HANDOVER" in os.environ:
    deadline = time.monotonic() + 30
    while not os.path.exists({gate!r}) and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def request(port: int, host: str, path: str = "/") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def bridges(daemon_pid: int) -> list[int]:
    """The daemon's children that run the bridge."""
    found = []
    for pid in Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children").read_text().split():
        try:
            if b"pikud.bridge" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_the_bridge_answers_while_the_new_image_starts_and_then_exits(
        pikud_factory: Callable[..., Pikud], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(GATED_START.format(gate=str(gate)))
    daemon = pikud_factory(extra_env={"PYTHONPATH": str(tmp_path / "site")})
    deploy(daemon)
    before = pids(daemon, "web")
    port = daemon.http_port
    assert daemon.proc is not None
    with Load(port, "web.localhost").running() as load:
        wait_for(lambda: load.answered() > 20, 15, "the load to start")
        daemon.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: "re-exec bridge: serving 1 apps" in daemon.output(), 30, "the bridge")
        wait_for(lambda: "re-exec: pikud" in daemon.output(), 30, "the exec")
        answered = load.answered()
        wait_for(lambda: load.answered() > answered + 20, 15, "answers from the bridge")
        assert "routing HTTP" not in daemon.output().partition("re-exec: pikud")[2]
        by_prefix = request(port, "nobody.example", "/_/web/")
        unknown = request(port, "nobody.example")
        gate.touch()
        wait_for(lambda: "re-exec bridge: stopped after" in daemon.output(), 30,
                 "the bridge to stop")
    assert load.failed == 0, load.errors[:5]
    assert load.pids == {str(before["web:web.1"])}
    assert by_prefix.status == 200
    assert (unknown.status, unknown.getheader("Retry-After")) == (503, "1")
    assert pids(daemon, "web") == before
    wait_for(lambda: not bridges(daemon.proc.pid), 10, "the bridge to exit")       # reaped
    assert daemon.get("web")[0] == 200


def test_a_refused_reexec_stops_the_bridge(pikud_factory: Callable[..., Pikud],
                                           tmp_path: Path) -> None:
    """The preflight fails: the bridge, already started, never serves, and exits."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(   # only the preflight's python -c
        "import os, sys\nif '-c' in sys.orig_argv and 'pikud.handover' in sys.orig_argv[2]:\n"
        "    os._exit(3)\n")
    daemon = pikud_factory(extra_env={"PYTHONPATH": str(tmp_path / "site")})
    deploy(daemon)
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGUSR2)
    wait_for(lambda: "re-exec refused: " in daemon.output(), 30, "the refusal")
    wait_for(lambda: not bridges(daemon.proc.pid), 10, "the bridge to exit")
    assert "re-exec bridge: serving" not in daemon.output()
    assert daemon.get("web")[0] == 200
