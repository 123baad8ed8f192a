"""Go: ``go build`` into the release's ``bin/``, which is put first on PATH.

Detected, as in piku, by ``go.mod`` or a ``*.go`` file at the top of the
app. With go.mod every main package is built (``go build -o bin/ ./...``, one
binary per package, named after its directory). Loose ``*.go`` files without
go.mod are built in GOPATH mode into ``bin/APP``. Modules are downloaded to
go's own cache (``~/go``), shared by every build. piku's ``Godeps`` (godep)
is not supported: convert the app to Go modules (``go mod init``).
"""

from __future__ import annotations

from pathlib import Path

from pikud.appspec import Procfile
from pikud.deploy.runtimes.base import BuildContext, BuildResult
from pikud.deploy.runtimes.tools import require


class Go:
    name = "go"

    def detect(self, source: Path, procfile: Procfile) -> bool:
        return (source / "go.mod").is_file() or any(
            path.is_file() for path in source.glob("*.go"))

    async def build(self, ctx: BuildContext) -> BuildResult:
        go = require(["go"], ctx.env, needed_by="Go (go.mod)")["go"]
        bin_dir = ctx.source / "bin"
        env = dict(ctx.env)
        if (ctx.source / "go.mod").is_file():
            ctx.progress("Building every main package into bin/")
            argv = [go, "build", "-o", f"{bin_dir}/", "./..."]
        else:
            ctx.progress(f"No go.mod: building the *.go files into bin/{ctx.app}")
            argv = [go, "build", "-o", str(bin_dir / ctx.app), "."]
            env["GO111MODULE"] = "off"
        await ctx.run(argv, cwd=ctx.source, env=env)
        return BuildResult(runtime=self.name, path_prefix=(str(bin_dir),))


GO = Go()
