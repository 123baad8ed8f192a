"""Runtimes: detect what an app is written in, and build it into its release.

``RUNTIMES`` is piku's detection order and the first match wins:

1. python      requirements.txt, or a pyproject.toml describing a Python project
2. ruby        Gemfile
3. node        package.json
4. maven       pom.xml
5. gradle      build.gradle / build.gradle.kts
6. go          go.mod or *.go
7. clojure     deps.edn
8. leiningen   project.clj
9. rust        Cargo.toml
10. generic    no manifest, but a long-running or cron entry in the Procfile
11. static     only ``static`` (beside release/preflight)

Detection looks at files only; a runtime's tools are required when it builds.
"""

from __future__ import annotations

from pathlib import Path

from pikud.appspec import Procfile
from pikud.deploy.runtimes.base import BuildContext, BuildResult, Runner, Runtime
from pikud.deploy.runtimes.generic import GENERIC
from pikud.deploy.runtimes.go import GO
from pikud.deploy.runtimes.node import NODE
from pikud.deploy.runtimes.python import PYTHON
from pikud.deploy.runtimes.static import STATIC
from pikud.deploy.runtimes.toolchains import CLOJURE, GRADLE, LEININGEN, MAVEN, RUBY, RUST
from pikud.errors import BuildError

__all__ = ["RUNTIMES", "BuildContext", "BuildResult", "Runner", "Runtime", "detect"]

RUNTIMES: tuple[Runtime, ...] = (PYTHON, RUBY, NODE, MAVEN, GRADLE, GO, CLOJURE, LEININGEN,
                                 RUST, GENERIC, STATIC)


def detect(source: Path, procfile: Procfile) -> Runtime:
    """The first runtime in ``RUNTIMES`` that recognizes the app in ``source``."""
    for runtime in RUNTIMES:
        if runtime.detect(source, procfile):
            return runtime
    raise BuildError("nothing to run: no runtime detected and no process kinds")
