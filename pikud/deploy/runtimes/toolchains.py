"""Ruby, Rust, Java and Clojure: piku's build steps, when the toolchain is on the server.

Each is detected by its manifest alone, and its tools are required when it
builds: a missing one fails the deploy with "... needs X: install X on the
server (e.g. apt-get install Y)". piku instead skips to the next runtime.

=============  ===========================================  ===================
manifest       the build runs (in the release directory)    PATH gets
=============  ===========================================  ===================
Gemfile        ``bundle install`` with BUNDLE_PATH in        (bundle exec)
               ``envs/APP/ruby-<ver>-<key>``, reused while
               Gemfile and Gemfile.lock are unchanged
pom.xml        ``mvn --batch-mode package``                 target/
build.gradle   ``./gradlew build`` if the app has a wrapper  build/libs/
(.kts)         script, else ``gradle build``
deps.edn       ``clojure -T:build release`` (as piku: a      target/
               ``release`` function in build.clj)
project.clj    ``lein uberjar``                             target/
Cargo.toml     ``cargo build --release``                    target/release/
=============  ===========================================  ===================

The toolchains' own caches (~/.m2, ~/.gradle, ~/.cargo, ~/.lein) are kept
between builds, so a rebuild does not download again.
"""

# Design notes (where pikud departs from piku's steps):
# - piku runs `mvn clean package`/`gradle clean build`/`lein clean` when an
#   older build exists; a release directory is always fresh, so no clean.
# - piku builds Rust only with a rust-toolchain.toml beside Cargo.toml and in
#   debug mode; here Cargo.toml is enough and the build is --release. A
#   rust-toolchain(.toml) is honoured by rustup's cargo on its own; with any other
#   cargo the push says it is ignored.
# - Maven runs with --batch-mode and Gradle with --console=plain: no terminal
#   is attached and their progress bars would fill the push output.

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pikud.appspec import Procfile
from pikud.deploy.runtimes.base import BuildContext, BuildResult
from pikud.deploy.runtimes.envcache import build_once, content_key, shown
from pikud.deploy.runtimes.tools import probe, require, which

Commands = Callable[[Path], Sequence[Sequence[str]]]


@dataclass
class Toolchain:
    """A runtime whose build is a fixed list of commands in the release directory.

    Not frozen: the Runtime protocol's ``name`` is a plain attribute.
    """

    name: str
    label: str                          # "Rust (Cargo.toml)", for messages
    manifests: tuple[str, ...]
    commands: Commands                  # source -> argv lists; argv[0] is looked up on PATH
    also_needs: tuple[str, ...] = ()    # tools the commands call in turn (java)
    outputs: tuple[str, ...] = ()       # release-relative dirs put first on PATH
    caveat: Callable[[Path, Mapping[str, str]], str | None] = lambda source, env: None

    def detect(self, source: Path, procfile: Procfile) -> bool:
        return any((source / name).is_file() for name in self.manifests)

    async def build(self, ctx: BuildContext) -> BuildResult:
        commands = [list(argv) for argv in self.commands(ctx.source)]
        looked_up = [argv[0] for argv in commands if "/" not in argv[0]]
        tools = require(dict.fromkeys([*self.also_needs, *looked_up]), ctx.env,
                        needed_by=self.label)
        warning = self.caveat(ctx.source, ctx.env)
        if warning:
            ctx.progress(f"Warning: {warning}")
        for argv in commands:
            argv[0] = tools.get(argv[0], argv[0])
            ctx.progress(f"Running {' '.join([Path(argv[0]).name, *argv[1:]])}")
            await ctx.run(argv, cwd=ctx.source, env=dict(ctx.env))
        return BuildResult(runtime=self.name,
                           path_prefix=tuple(str(ctx.source / out) for out in self.outputs))


def _gradle(source: Path) -> list[list[str]]:
    if (source / "gradlew").is_file():
        return [["sh", str(source / "gradlew"), "build", "--console=plain"]]
    return [["gradle", "build", "--console=plain"]]


MAVEN = Toolchain("maven", "Java (pom.xml)", ("pom.xml",),
                  lambda source: [["mvn", "--batch-mode", "package"]],
                  also_needs=("java",), outputs=("target",))
GRADLE = Toolchain("gradle", "Java (build.gradle)", ("build.gradle", "build.gradle.kts"),
                   _gradle, also_needs=("java",), outputs=("build/libs",))
CLOJURE = Toolchain("clojure", "Clojure (deps.edn)", ("deps.edn",),
                    lambda source: [["clojure", "-T:build", "release"]],
                    also_needs=("java",), outputs=("target",))
LEININGEN = Toolchain("leiningen", "Clojure (project.clj)", ("project.clj",),
                      lambda source: [["lein", "uberjar"]],
                      also_needs=("java",), outputs=("target",))
def _rust_toolchain_ignored(source: Path, env: Mapping[str, str]) -> str | None:
    """rustup's cargo switches to the toolchain a rust-toolchain file names; no other does."""
    pinned = next((name for name in ("rust-toolchain.toml", "rust-toolchain")
                   if (source / name).is_file()), None)
    if pinned is None or which("rustup", env) is not None:
        return None
    return (f"{pinned} is ignored: there is no rustup on this server to install the toolchain "
            "it names, so the build uses the cargo on PATH")


RUST = Toolchain("rust", "Rust (Cargo.toml)", ("Cargo.toml",),
                 lambda source: [["cargo", "build", "--release"]],
                 outputs=("target/release",), caveat=_rust_toolchain_ignored)


class Ruby:
    """Gemfile: ``bundle install`` into a gem directory shared while the Gemfile is unchanged."""

    name = "ruby"
    label = "Ruby (Gemfile)"

    def detect(self, source: Path, procfile: Procfile) -> bool:
        return (source / "Gemfile").is_file()

    async def build(self, ctx: BuildContext) -> BuildResult:
        tools = require(["ruby", "bundle"], ctx.env, needed_by=self.label)
        version = (await probe([tools["ruby"], "-e", "print RUBY_VERSION"], ctx.env,
                                ctx.app) or "").strip()
        key = content_key(["ruby", version], [ctx.source / "Gemfile", ctx.source / "Gemfile.lock"])
        gems = ctx.envs_dir / f"ruby-{version or 'unknown'}-{key}"
        env = {**ctx.env, "BUNDLE_PATH": str(gems)}

        async def fill(directory: Path) -> None:
            ctx.progress(f"Ruby {version}: bundle install into {shown(ctx, directory)}")
            directory.mkdir(exist_ok=True)      # made already for an app's own user
            await ctx.run([tools["bundle"], "install"], cwd=ctx.source, env=env)

        ctx.progress(f"Ruby {version} from {tools['ruby']}")
        reused = await build_once(gems, fill, ctx.owner)
        if reused:
            ctx.progress(f"Ruby gems unchanged: reusing {shown(ctx, gems)}")
        return BuildResult(runtime=self.name, env_path=gems, env_vars={"BUNDLE_PATH": str(gems)},
                           reused=reused)


RUBY = Ruby()
