"""Real builds: pip, npm and cargo really run, offline, in temporary release directories.

Each build gets a fresh release directory holding the app's files, as a push
does, and one ``envs/APP`` directory shared by the builds of a test. The
Python dependency is a wheel written here by hand and referenced by a
relative path, so pip installs it without the network.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT

import pytest

from pikud.appspec import parse_procfile
from pikud.deploy.runtimes import BuildContext, BuildResult, Runner, detect
from pikud.deploy.runtimes.envcache import MARKER, build_once
from pikud.errors import BuildError, EnvError
from tests.net import free_port
from tests.node_mirror import NodeMirror, node_mirror, nodeenv_alone

RUN_DEADLINE = 120.0
WHEEL = "wheels/tinypkg-1.0-py3-none-any.whl"
REQUIREMENTS = f"./{WHEEL}\n"
IMPORT = "import tinypkg; print(tinypkg.VALUE)"


def make_wheel(path: Path, value: int = 42, name: str = "tinypkg",
               script: bool = False) -> Path:
    """A pure-Python wheel of ``name`` 1.0 whose ``VALUE`` is ``value``; with ``script``,
    it installs a console script ``bin/NAME``, as an app server's wheel does."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\ndef main():\n    print(VALUE)\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": ("Wheel-Version: 1.0\nGenerator: pikud-tests\n"
                          "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    if script:
        files[f"{dist}/entry_points.txt"] = f"[console_scripts]\n{name} = {name}:main\n"
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def runner(lines: list[str]) -> Runner:
    """A real Runner: streams the command's output lines into ``lines``, BuildError on failure."""
    async def run(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
                  on_line: Callable[[str], None] | None = None) -> None:
        command = shlex.join(argv)
        lines.append(f"$ {command}")
        try:
            proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=dict(env),
                                                        stdin=DEVNULL, stdout=PIPE, stderr=STDOUT)
        except OSError as exc:
            raise BuildError(f"`{command}` could not start: {exc.strerror}") from exc
        try:
            async with asyncio.timeout(RUN_DEADLINE):
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    lines.append(raw.decode(errors="replace").rstrip("\n"))
                    if on_line is not None:
                        on_line(lines[-1])
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            raise BuildError(f"`{command}` failed (exit status {code})")
    return run


@dataclass
class Builds:
    """Releases of one app: each build copies ``files`` into a new release directory."""

    root: Path
    files: dict[str, str | bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    progress: list[str] = field(default_factory=list)
    count: int = 0

    @property
    def envs_dir(self) -> Path:
        return self.root / "envs" / "app"

    def release(self) -> Path:
        self.count += 1
        source = self.root / "apps" / f"release-{self.count}"
        for name, content in self.files.items():
            path = source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        return source

    def context(self, source: Path, **env: str) -> BuildContext:
        self.output.clear()
        self.progress.clear()
        return BuildContext("app", source, {**base_env(), **self.env, **env}, self.envs_dir,
                            self.progress.append, runner(self.output))

    async def build(self, procfile: str = "web: ./serve\n", **env: str) -> BuildResult:
        source = self.release()
        runtime = detect(source, parse_procfile(procfile))
        async with asyncio.timeout(RUN_DEADLINE):
            return await runtime.build(self.context(source, **env))

    def env_dirs(self) -> set[str]:
        return {path.name for path in self.envs_dir.iterdir()} if self.envs_dir.exists() else set()


# uv and poetry come with the test tools (pyproject's test extra), beside the test's python.
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
assert UV is not None, "uv is a test dependency: pip install -e '.[test]'"
POETRY = shutil.which("poetry", path=str(Path(sys.executable).parent)) or shutil.which("poetry")
assert POETRY is not None, "poetry is a test dependency: pip install -e '.[test]'"


def tool_alone(tmp_path: Path, name: str, program: str) -> str:
    """A PATH with ``program`` as ``name`` and no uv: a server with that tool installed."""
    folder = tmp_path / f"{name}-bin"
    folder.mkdir()
    (folder / name).symlink_to(program)
    return f"{folder}:{path_without_uv()}"


def path_without(*tools: str) -> str:
    """The test's PATH minus any folder holding one of ``tools``."""
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return os.pathsep.join(folder for folder in folders
                           if not any((Path(folder) / tool).exists() for tool in tools))


def path_without_uv() -> str:
    """The test's PATH minus any folder with uv in it: a server where pip builds."""
    return path_without("uv")


def base_env() -> dict[str, str]:
    """The test's environment, as the app's build environment starts from."""
    return {key: value for key, value in os.environ.items()
            if key not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHON_VERSION", "NODE_VERSION",
                           "NODE_PACKAGE_MANAGER", "NODEENV_MIRROR", "CARGO_TARGET_DIR")}


def wheel_bytes(tmp: Path, value: int = 42) -> bytes:
    return make_wheel(tmp / f"tinypkg-{value}.whl", value).read_bytes()


def env_python(result: BuildResult, code: str, cwd: Path) -> str:
    assert result.env_path is not None
    out = subprocess.run([str(result.env_path / "bin" / "python"), "-c", code], cwd=cwd,
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


# --- Python: requirements.txt with pip ---------------------------------------------
PIP = {"PIKU_PYTHON_INSTALLER": "pip"}       # uv is the default
@dataclass
class Built:
    builds: Builds
    result: BuildResult
    progress: list[str]
    output: list[str]
    changed: BuildResult            # the same app with requirements.txt changed
    failed: BuildResult | BaseException     # ... and with a requirement that does not exist
    env_dirs: set[str]              # envs/app after those three builds
    project: Builds                 # another app: pyproject.toml, no uv or poetry
    project_result: BuildResult | BaseException


@pytest.fixture(scope="module")
def python_app(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """An app built with its requirements, changed ones and failing ones; a pyproject app.

    The four builds run at the same time (creating a venv takes seconds);
    the tests below redeploy the first app.
    """
    root = tmp_path_factory.mktemp("python")
    files: dict[str, str | bytes] = {"requirements.txt": REQUIREMENTS,
                                     WHEEL: wheel_bytes(root), "Procfile": "web: ./serve\n"}
    builds = Builds(root, dict(files), env=dict(PIP))
    changed = Builds(root, {**files, "requirements.txt": f"# pinned\n{REQUIREMENTS}"},
                     env=dict(PIP), count=100)
    failing = Builds(root, {**files, "requirements.txt": "./wheels/missing-1.0-py3-none-any.whl\n"},
                     env=dict(PIP), count=200)
    wheel = make_wheel(root / "dist" / "tinypkg-1.0-py3-none-any.whl", value=7)
    project = Builds(root / "project", {"pyproject.toml": (
        "[project]\nname = 'app'\nversion = '1.0'\n"
        f"dependencies = ['tinypkg @ {wheel.as_uri()}']\n")}, env=dict(PIP))

    async def build_all() -> list[BuildResult | BaseException]:
        return list(await asyncio.gather(builds.build(), changed.build(), failing.build(),
                                         project.build(), return_exceptions=True))

    first, second, failed, third = asyncio.run(build_all())
    assert isinstance(first, BuildResult) and isinstance(second, BuildResult), (first, second)
    return Built(builds, first, list(builds.progress), list(builds.output), second, failed,
                 builds.env_dirs(), project, third)


def test_requirements_are_installed_with_pip(python_app: Built, tmp_path: Path) -> None:
    result = python_app.result
    assert result.runtime == "python" and not result.reused
    assert result.env_path is not None and result.env_path.parent == python_app.builds.envs_dir
    assert result.env_path.name.startswith("python-3.")
    assert len(result.env_path.name.rsplit("-", 1)[1]) == 12
    assert (result.env_path / MARKER).is_file()
    assert result.env_vars == {"VIRTUAL_ENV": str(result.env_path)}
    assert result.path_prefix == (str(result.env_path / "bin"),)
    assert env_python(result, IMPORT, tmp_path) == "42"
    assert any(line.startswith("Python 3.") and "virtualenv: envs/app/python-3." in line
               for line in python_app.progress), python_app.progress
    commands = [line for line in python_app.output if line.startswith("$ ")]
    assert any(" -m venv " in line for line in commands), commands
    assert any("-m pip install" in line and "--progress-bar off" in line
               and "-r requirements.txt" in line for line in commands), commands


async def test_unchanged_redeploy_reuses_the_environment(python_app: Built) -> None:
    builds = python_app.builds
    started = time.monotonic()
    result = await builds.build()
    assert time.monotonic() - started < 5.0
    assert result.reused and result.env_path == python_app.result.env_path
    assert not [line for line in builds.output if line.startswith("$ ")]
    label = f"envs/app/{result.env_path.name}" if result.env_path else ""
    assert f"Python dependencies unchanged: reusing {label}" in builds.progress


async def test_python_version_3_works(python_app: Built) -> None:
    result = await python_app.builds.build(PYTHON_VERSION="3")
    assert result.runtime == "python" and result.env_path is not None
    assert (result.env_path / MARKER).is_file()


async def test_a_python_version_file_is_a_hint_for_a_requirements_app(python_app: Built) -> None:
    """piku's examples ship .python-version = 3.6.6: the push goes on with the default."""
    builds = python_app.builds
    builds.files[".python-version"] = "3.6.6\n"
    try:
        result = await builds.build()
    finally:
        del builds.files[".python-version"]
    assert result.reused and result.env_path == python_app.result.env_path
    assert any(line.startswith("Warning: .python-version=3.6.6: no python3.6.6 on this server")
               and "building with the default python3" in line for line in builds.progress)


async def test_unknown_python_version_fails_clearly(python_app: Built) -> None:
    before = python_app.builds.env_dirs()
    with pytest.raises(BuildError) as info:
        await python_app.builds.build(PYTHON_VERSION="3.99")
    assert str(info.value).startswith(
        "PYTHON_VERSION=3.99: no python3.99 on this server (found: 3.")
    assert python_app.builds.env_dirs() == before


async def test_uv_installs_a_missing_python_only_when_the_app_allows_it(tmp_path: Path) -> None:
    """PIKU_UV_PYTHON_INSTALL (off by default) runs `uv python install`. uv's downloads come
    from GitHub, out of this machine's reach: 3.99, which uv has no build of, fails at once."""
    builds = Builds(tmp_path, {"requirements.txt": REQUIREMENTS, WHEEL: wheel_bytes(tmp_path)},
                    env={"PATH": tool_alone(tmp_path, "uv", UV),
                         "UV_PYTHON_INSTALL_DIR": str(tmp_path / "pythons")})
    with pytest.raises(BuildError) as off:
        await builds.build(PYTHON_VERSION="3.99")
    assert str(off.value).endswith("; set PIKU_UV_PYTHON_INSTALL=true to let uv install it")
    assert not any(" python install " in line for line in builds.output)
    with pytest.raises(EnvError, match="PIKU_UV_PYTHON_INSTALL"):
        await builds.build(PYTHON_VERSION="3.99", PIKU_UV_PYTHON_INSTALL="maybe")
    with pytest.raises(BuildError) as on:
        await builds.build(PYTHON_VERSION="3.99", PIKU_UV_PYTHON_INSTALL="yes")
    assert str(on.value).startswith("PIKU_UV_PYTHON_INSTALL: uv could not install Python 3.99")
    assert any(line.startswith("$ ") and line.endswith(" python install 3.99")
               for line in builds.output), builds.output
    assert builds.env_dirs() == set()


def test_changed_requirements_get_a_new_environment(python_app: Built, tmp_path: Path) -> None:
    result = python_app.changed
    assert not result.reused and result.env_path != python_app.result.env_path
    assert result.env_path is not None and (result.env_path / MARKER).is_file()
    assert python_app.result.env_path is not None and python_app.result.env_path.is_dir()
    assert env_python(result, IMPORT, tmp_path) == "42"


def test_failing_requirement_leaves_no_environment(python_app: Built) -> None:
    error = python_app.failed
    assert isinstance(error, BuildError), error
    assert "pip install" in str(error) and "-r requirements.txt" in str(error)
    envs = [python_app.result.env_path, python_app.changed.env_path]
    assert python_app.env_dirs == {path.name for path in envs if path is not None}


# --- Python: pyproject.toml ----------------------------------------------------------
def test_pyproject_dependencies_are_installed_with_pip(python_app: Built, tmp_path: Path) -> None:
    result = python_app.project_result
    assert isinstance(result, BuildResult), result
    assert result.runtime == "python" and not result.reused
    assert env_python(result, IMPORT, tmp_path) == "7"
    assert any("-m pip install" in line and "tinypkg @ file://" in line
               for line in python_app.project.output), python_app.project.output


@pytest.mark.parametrize("installer", ["uv", "pip"])
async def test_requirements_and_the_app_servers_install_in_one_resolve(
        tmp_path: Path, installer: str) -> None:
    """uv by default, with no uv on PATH (pikud's own); pip when PIKU_PYTHON_INSTALLER
    says so. The Procfile's servers go into the same install command as requirements.txt."""
    links = tmp_path / "links"
    make_wheel(links / "tinyserver-1.0-py3-none-any.whl", 5, "tinyserver", script=True)
    offline = {"UV_FIND_LINKS": str(links), "UV_OFFLINE": "1", "PIP_FIND_LINKS": str(links),
               "PIP_NO_INDEX": "1"}
    env = {"PATH": path_without_uv(), **offline, "PIKU_PYTHON_INSTALLER": installer}
    builds = Builds(tmp_path, {"requirements.txt": REQUIREMENTS, WHEEL: wheel_bytes(tmp_path)},
                    env=env)
    source = builds.release()
    context = replace(builds.context(source), servers=("tinyserver",))
    async with asyncio.timeout(RUN_DEADLINE):
        result = await detect(source, parse_procfile("web: ./serve\n")).build(context)
    assert env_python(result, IMPORT, tmp_path) == "42"
    assert result.env_path is not None and (result.env_path / "bin" / "tinyserver").exists()
    installs = [line for line in builds.output if line.startswith("$ ") and " install" in line]
    assert len(installs) == 1 and installs[0].endswith(" -r requirements.txt tinyserver"), \
        builds.output
    assert (" pip install --python " in installs[0]) is (installer == "uv")
    created = [line for line in builds.output if " venv " in line]
    assert len(created) == 1 and (" -m venv " in created[0]) is (installer == "pip")
    assert ("Installing Python dependencies from requirements.txt and the app servers "
            f"(tinyserver) with {installer}") in builds.progress


async def test_a_bad_python_installer_is_named(tmp_path: Path) -> None:
    builds = Builds(tmp_path, {"requirements.txt": REQUIREMENTS}, env={
        "PIKU_PYTHON_INSTALLER": "conda"})
    with pytest.raises(EnvError, match="PIKU_PYTHON_INSTALLER: expected uv or pip, got 'conda'"):
        await builds.build()
    assert builds.env_dirs() == set()


async def test_poetry_installs_the_main_dependencies(tmp_path: Path) -> None:
    """A [tool.poetry] app with its lock: `poetry install --no-root --only main` into the venv."""
    pyproject = ("[tool.poetry]\nname = 'app'\nversion = '1.0'\ndescription = ''\n"
                 "authors = ['t <t@example.invalid>']\npackage-mode = false\n"
                 "[tool.poetry.dependencies]\npython = '>=3.11'\n"
                 f"tinypkg = {{path = '{WHEEL}'}}\n")
    files: dict[str, str | bytes] = {"pyproject.toml": pyproject,
                                     WHEEL: wheel_bytes(tmp_path)}
    path = tool_alone(tmp_path, "poetry", POETRY)
    locking = Builds(tmp_path / "lock", files).release()        # the app's own `poetry lock`
    await runner([])([POETRY, "lock", "--no-interaction"], cwd=locking,
                     env={**base_env(), "PATH": path})
    files["poetry.lock"] = (locking / "poetry.lock").read_text()
    builds = Builds(tmp_path, files, env={"PATH": path})
    result = await builds.build()
    assert env_python(result, IMPORT, tmp_path) == "42"
    assert any(line.startswith("$ ") and " install --no-root --only main" in line
               for line in builds.output), builds.output


# --- missing toolchains ---------------------------------------------------------------
@pytest.mark.parametrize(("files", "message"), [
    ({"Cargo.toml": "[package]\nname = 'app'\n"}, "Rust (Cargo.toml) needs cargo: install cargo"),
    ({"go.mod": "module app\n"}, "Go (go.mod) needs go: install go on the server "
                                 "(e.g. apt-get install golang-go)"),
    ({"Gemfile": ""}, "Ruby (Gemfile) needs ruby, bundle: install ruby, bundle"),
    ({"pom.xml": "<project/>"}, "Java (pom.xml) needs java, mvn: install java, mvn"),
    ({"build.gradle": ""}, "Java (build.gradle) needs java, gradle"),
    ({"deps.edn": "{}"}, "Clojure (deps.edn) needs java, clojure"),
    ({"project.clj": ""}, "Clojure (project.clj) needs java, lein"),
    ({"package.json": "{}"}, "Node (package.json, npm) needs node, npm"),
    ({"pyproject.toml": "[tool.poetry]\nname = 'app'\n"},
     "Python (pyproject.toml, poetry) needs poetry: install poetry on the server "
     "(e.g. apt-get install python3-poetry)"),
])
async def test_missing_toolchain_names_the_tool(tmp_path: Path, files: dict[str, str],
                                                message: str) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    builds = Builds(tmp_path, dict(files), env={"PATH": str(empty)})
    with pytest.raises(BuildError) as info:
        await builds.build()
    assert str(info.value).startswith(message)
    assert builds.env_dirs() == set()


async def test_cargo_outside_the_path_is_missing(tmp_path: Path) -> None:
    path = "/usr/bin:/bin"
    if shutil.which("cargo", path=path):
        pytest.skip("cargo is in /usr/bin here")
    builds = Builds(tmp_path, {"Cargo.toml": "[package]\nname = 'app'\n"}, env={"PATH": path})
    with pytest.raises(BuildError, match="needs cargo: install cargo on the server"):
        await builds.build()


# --- other runtimes, for real -----------------------------------------------------------
needs_npm = pytest.mark.skipif(shutil.which("npm") is None or shutil.which("node") is None,
                               reason="node and npm are not installed")


@needs_npm
async def test_node_installs_then_reuses_node_modules(tmp_path: Path) -> None:
    builds = Builds(tmp_path, {"package.json": '{"name": "app", "version": "1.0.0"}\n'})
    first = await builds.build()
    assert first.runtime == "node" and not first.reused and first.env_path is not None
    assert any(line.startswith("$ ") and " install --no-audit" in line for line in builds.output)
    modules = builds.root / "apps" / "release-1" / "node_modules"
    assert modules.is_symlink() and modules.resolve() == first.env_path / "node_modules"
    second = await builds.build()
    assert second.reused and second.env_path == first.env_path
    assert not [line for line in builds.output if line.startswith("$ ")]
    assert (builds.root / "apps" / "release-2" / "node_modules").resolve() == modules.resolve()


@needs_npm
@pytest.mark.parametrize(("env", "message"), [
    ({"NODE_VERSION": "1.2"}, "NODE_VERSION=1.2: node on this server is [0-9.]+; install "
                              "nodeenv \\(pip install nodeenv\\) to let pikud install it"),
    ({"NODE_VERSION": "lts"}, "NODE_VERSION=lts: expected a version such as 20"),
    ({"NODE_PACKAGE_MANAGER": "bun"}, "NODE_PACKAGE_MANAGER=bun: expected npm, yarn or pnpm"),
])
async def test_node_settings_fail_clearly(tmp_path: Path, env: dict[str, str],
                                          message: str) -> None:
    builds = Builds(tmp_path, {"package.json": "{}"}, env={"PATH": path_without("nodeenv")})
    with pytest.raises(BuildError, match=message):
        await builds.build(**env)
    assert builds.env_dirs() == set()


@pytest.fixture
def mirror() -> Iterator[NodeMirror]:
    with node_mirror() as served:
        yield served


@needs_npm
async def test_nodeenv_installs_the_node_version_asked_for(tmp_path: Path,
                                                           mirror: NodeMirror) -> None:
    major = mirror.version.split(".")[0]
    builds = Builds(tmp_path, {"package.json": '{"name": "app", "version": "1.0.0"}\n'},
                    env={"PATH": nodeenv_alone(tmp_path / "server-bin"), "NODE_VERSION": major,
                         "NODEENV_MIRROR": mirror.url + "/"})
    first = await builds.build()
    assert f"NODE_VERSION={major}: there is no node on this server's PATH; installing it " \
           "with nodeenv" in builds.progress
    assert mirror.requests == ["/index.json",        # the newest 20.x: nodeenv resolves it
                               f"/v{mirror.version}/node-v{mirror.version}-linux-x64.tar.gz"]
    node_bin = next(Path(entry) for entry in first.path_prefix
                    if Path(entry).parent.name.startswith(f"nodeenv-{major}-"))
    assert node_bin.parent.parent == builds.envs_dir and node_bin.name == "bin"
    install = [line for line in builds.output if line.startswith("$ ") and " install " in line]
    assert install == [f"$ {node_bin}/npm install --no-audit --no-fund"]

    # The app's processes get the PATH prefix before the server's own PATH, node included.
    which_node = (await asyncio.to_thread(
        subprocess.run, ["node", "-p", "process.execPath + ' ' + process.version"],
        env={"PATH": ":".join([*first.path_prefix, os.environ["PATH"]])},
        capture_output=True, text=True, check=True, timeout=30)).stdout.split()
    assert which_node == [str(node_bin / "node"), f"v{mirror.version}"]

    second = await builds.build()
    assert second.path_prefix == first.path_prefix and second.reused
    assert f"Node {major} from nodeenv: reusing envs/app/{node_bin.parent.name}" \
        in builds.progress
    assert len(mirror.requests) == 2 and not any(
        line.startswith("$ ") for line in builds.output)


async def test_nodeenv_that_cannot_download_refuses_the_push(tmp_path: Path) -> None:
    mirror = f"http://127.0.0.1:{free_port()}"          # nothing listens there
    builds = Builds(tmp_path, {"package.json": "{}"},
                    env={"PATH": nodeenv_alone(tmp_path / "server-bin"), "NODEENV_MIRROR": mirror})
    with pytest.raises(BuildError) as info:
        await builds.build(NODE_VERSION="20.1.0")
    assert str(info.value) == (
        "NODE_VERSION=20.1.0: nodeenv could not install node 20.1.0: Error: cannot download "
        f"{mirror}/v20.1.0/node-v20.1.0-linux-x64.tar.gz: [Errno 111] Connection refused")
    assert builds.env_dirs() == set()


async def test_without_nodeenv_a_node_version_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    builds = Builds(tmp_path, {"package.json": "{}"}, env={"PATH": str(empty)})
    with pytest.raises(BuildError, match="^NODE_VERSION=20: there is no node on this server's "
                       "PATH; install nodeenv \\(pip install nodeenv\\) to let pikud "
                       "install it$"):
        await builds.build(NODE_VERSION="20")


@pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo is not installed")
async def test_rust_builds_a_release_binary(tmp_path: Path) -> None:
    builds = Builds(tmp_path, {
        "Cargo.toml": "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        "src/main.rs": 'fn main() { println!("hello from rust"); }\n'})
    result = await builds.build()
    binary = Path(result.path_prefix[0]) / "hello"
    assert result.runtime == "rust" and binary.parent.parent.parent.name == "release-1"
    ran = await asyncio.to_thread(subprocess.run, [binary], capture_output=True, text=True,
                                  timeout=10, check=True)
    assert ran.stdout == "hello from rust\n"


@pytest.mark.skipif(shutil.which("rustup") is None, reason="cargo is not rustup's here")
async def test_a_rust_toolchain_file_is_said_to_be_ignored_without_rustup(tmp_path: Path) -> None:
    shown = await asyncio.to_thread(subprocess.run, ["rustup", "show", "active-toolchain"],
                                    capture_output=True, text=True, timeout=30, check=True)
    active = shown.stdout.split()[0]
    builds = Builds(tmp_path, {
        "Cargo.toml": "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        "src/main.rs": "fn main() {}\n",
        "rust-toolchain.toml": f"[toolchain]\nchannel = \"{active}\"\n"})
    await builds.build()                           # rustup on PATH: its cargo honours the file
    assert not [line for line in builds.progress if "rust-toolchain" in line], builds.progress
    cargo, alone = shutil.which("cargo"), tmp_path / "cargo-alone"
    assert cargo is not None
    alone.mkdir()
    (alone / "cargo").symlink_to(cargo)           # a cargo with no rustup beside it
    await builds.build(PATH=f"{alone}:/usr/bin:/bin")
    assert ("Warning: rust-toolchain.toml is ignored: there is no rustup on this server to "
            "install the toolchain it names, so the build uses the cargo on PATH"
            in builds.progress), builds.progress


@pytest.mark.parametrize(("procfile", "name"), [("web: ./serve\n", "generic"),
                                                ("static: public\n", "static")])
async def test_nothing_to_build(tmp_path: Path, procfile: str, name: str) -> None:
    builds = Builds(tmp_path, {"serve": "#!/bin/sh\n"})
    result = await builds.build(procfile)
    assert result == BuildResult(runtime=name)
    assert builds.output == [] and len(builds.progress) == 1


# --- the environment cache itself -------------------------------------------------------
async def test_build_once_cleans_up(tmp_path: Path) -> None:
    env = tmp_path / "envs" / "app" / "thing-abc"
    env.mkdir(parents=True)
    (env / "half-written").write_text("left by a crash")

    async def fail(path: Path) -> None:
        path.mkdir()
        (path / "partial").write_text("")
        raise BuildError("boom")

    with pytest.raises(BuildError, match="boom"):
        await build_once(env, fail)
    assert not env.exists()

    async def hang(path: Path) -> None:
        path.mkdir()
        await asyncio.sleep(60)

    task = asyncio.create_task(build_once(env, hang))
    async with asyncio.timeout(5):
        # The folder the hanging build makes has no event of its own: a bounded poll.
        while not env.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not env.exists()

    async def ok(path: Path) -> None:
        path.mkdir()
        (path / "done").write_text("")

    assert await build_once(env, ok) is False
    assert await build_once(env, fail) is True
    assert sorted(p.name for p in env.iterdir()) == [MARKER, "done"]
