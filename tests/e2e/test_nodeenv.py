"""A push whose NODE_VERSION the server's PATH lacks: nodeenv installs it, the app runs on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import Pikud, wait_for
from tests.e2e.apps import committed, get, local_remote, push
from tests.node_mirror import node_mirror, nodeenv_alone

SERVER_JS = """\
require("http").createServer((request, response) => {
  response.end(process.execPath + " " + process.version);
}).listen(Number(process.env.PORT), "127.0.0.1");
"""


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                    reason="node and npm are not installed")
def test_a_push_runs_on_the_node_nodeenv_installed(pikud: Pikud, tmp_path: Path) -> None:
    with node_mirror() as mirror:
        major = mirror.version.split(".")[0]
        work = committed(tmp_path / "nodeapp", {
            "package.json": '{"name": "nodeapp", "version": "1.0.0"}\n',
            "server.js": SERVER_JS,
            "Procfile": "web: node server.js\n",
            # PATH: a server with nodeenv and no node, for the build and the processes
            "ENV": (f"PIKU_START_SECS=0.3\nNODE_VERSION={major}\nNODEENV_MIRROR={mirror.url}\n"
                    f"PATH={nodeenv_alone(tmp_path / 'server-bin')}\n"),
        }, "node app")
        local_remote(work, "nodeapp")
        out = push(work, pikud.env).stderr
    assert "there is no node on this server's PATH; installing it with nodeenv" in out, out
    assert "nodeapp is live: release 1" in out, out
    web = wait_for(lambda: next((p for p in pikud.processes("nodeapp")
                                 if p["kind"] == "web" and p["state"] == "RUNNING"), None),
                   15, "nodeapp web")
    installed = next((pikud.root / "envs/nodeapp").glob(f"nodeenv-{major}-*"))
    assert get(web["port"]) == f"{installed / 'bin/node'} v{mirror.version}"
