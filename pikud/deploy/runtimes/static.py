"""Static: a Procfile whose only long-running entry is ``static``; nothing to build.

The files are served by nginx from the release directory. ``release``,
``preflight`` and cron entries may sit beside it; a manifest found by an
earlier runtime (package.json to build assets, say) takes precedence.
"""

from __future__ import annotations

from pathlib import Path

from pikud.appspec import STATIC_KIND, Procfile, is_cron, supervised_kinds
from pikud.deploy.runtimes.base import BuildContext, BuildResult


class Static:
    name = "static"

    def detect(self, source: Path, procfile: Procfile) -> bool:
        return (STATIC_KIND in procfile.entries and not supervised_kinds(procfile)
                and not any(is_cron(kind) for kind in procfile.entries))

    async def build(self, ctx: BuildContext) -> BuildResult:
        ctx.progress("Static files: nothing to build")
        return BuildResult(runtime=self.name)


STATIC = Static()
