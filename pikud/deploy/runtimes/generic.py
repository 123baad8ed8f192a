"""Generic: no manifest, but the Procfile has something to run; nothing to build.

piku deploys such an app only when it has both ``release`` and ``web`` and
otherwise starts nothing. pikud runs any Procfile with a long-running or cron
entry as it is: a shell script, a binary committed to the repository, or a
program from the server's own packages.
"""

from __future__ import annotations

from pathlib import Path

from pikud.appspec import Procfile, is_cron, supervised_kinds
from pikud.deploy.runtimes.base import BuildContext, BuildResult


class Generic:
    name = "generic"

    def detect(self, source: Path, procfile: Procfile) -> bool:
        return bool(supervised_kinds(procfile)) or any(map(is_cron, procfile.entries))

    async def build(self, ctx: BuildContext) -> BuildResult:
        ctx.progress("No runtime manifest: running the Procfile as it is")
        return BuildResult(runtime=self.name)


GENERIC = Generic()
