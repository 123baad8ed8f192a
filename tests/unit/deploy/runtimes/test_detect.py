"""Runtime detection and the pure decisions of the runtimes, as tables."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pikud.appspec import parse_procfile
from pikud.deploy.runtimes import RUNTIMES, detect
from pikud.deploy.runtimes.envcache import content_key
from pikud.deploy.runtimes.interpreters import (
    Interpreter,
    choose_python,
    parse_request,
    requested_version,
)
from pikud.deploy.runtimes.node import install_argv, node_request, package_manager
from pikud.deploy.runtimes.python import INSTALLER_KEY, PythonPlan, installer, plan_python
from pikud.deploy.runtimes.tools import (
    missing_message,
    parse_version,
    version_matches,
    with_system_certs,
)
from pikud.errors import BuildError, DeployError, EnvError

WEB = "web: ./serve\n"
PROJECT = "[project]\nname = 'app'\nversion = '1'\n"
TOOL_ONLY = "[tool.ruff]\nline-length = 100\n"

# (files in the app, Procfile, expected runtime name)
LAYOUTS = [
    # every manifest on its own
    ({"requirements.txt": "flask\n"}, WEB, "python"),
    ({"pyproject.toml": PROJECT}, WEB, "python"),
    ({"pyproject.toml": "[build-system]\nrequires = ['setuptools']\n"}, WEB, "python"),
    ({"pyproject.toml": "[tool.poetry]\nname = 'app'\n"}, WEB, "python"),
    ({"pyproject.toml": "[tool.uv]\n"}, WEB, "python"),
    ({"pyproject.toml": TOOL_ONLY, "uv.lock": ""}, WEB, "python"),
    ({"pyproject.toml": TOOL_ONLY, "poetry.lock": ""}, WEB, "python"),
    ({"Gemfile": "source 'https://rubygems.org'\n"}, WEB, "ruby"),
    ({"package.json": "{}"}, WEB, "node"),
    ({"pom.xml": "<project/>"}, WEB, "maven"),
    ({"build.gradle": ""}, WEB, "gradle"),
    ({"build.gradle.kts": ""}, WEB, "gradle"),
    ({"go.mod": "module app\n"}, WEB, "go"),
    ({"main.go": "package main\n"}, WEB, "go"),
    ({"deps.edn": "{}"}, WEB, "clojure"),
    ({"project.clj": "(defproject app)"}, WEB, "leiningen"),
    ({"Cargo.toml": "[package]\n"}, WEB, "rust"),
    # piku's precedence: each pair goes to the earlier runtime
    ({"requirements.txt": "", "pyproject.toml": PROJECT, "Gemfile": ""}, WEB, "python"),
    ({"requirements.txt": "", "pyproject.toml": "not toml ["}, WEB, "python"),
    ({"Gemfile": "", "package.json": "{}"}, WEB, "ruby"),
    ({"package.json": "{}", "pom.xml": ""}, WEB, "node"),
    ({"pom.xml": "", "build.gradle": ""}, WEB, "maven"),
    ({"build.gradle": "", "go.mod": ""}, WEB, "gradle"),
    ({"go.mod": "", "deps.edn": ""}, WEB, "go"),
    ({"deps.edn": "", "project.clj": ""}, WEB, "clojure"),
    ({"project.clj": "", "Cargo.toml": ""}, WEB, "leiningen"),
    ({"Cargo.toml": ""}, "static: public\n", "rust"),
    ({"package.json": "{}"}, "static: public\n", "node"),
    # a pyproject.toml that only configures tools is not a Python app
    ({"pyproject.toml": TOOL_ONLY, "package.json": "{}"}, WEB, "node"),
    ({"pyproject.toml": TOOL_ONLY}, WEB, "generic"),
    # a manifest in a subdirectory does not count
    ({"sub/requirements.txt": "", "sub/main.go": ""}, WEB, "generic"),
    # no manifest: generic when something runs, static when only static
    ({}, WEB, "generic"),
    ({}, "worker: ./work\n", "generic"),
    ({}, "cron1: */5 * * * * ./tick\n", "generic"),
    ({}, "static: public\nweb: ./serve\n", "generic"),
    ({}, "static: public\n", "static"),
    ({}, "static: public\nrelease: ./migrate\npreflight: ./check\n", "static"),
]


def make_app(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(("files", "procfile", "expected"), LAYOUTS)
def test_detect(tmp_path: Path, files: dict[str, str], procfile: str, expected: str) -> None:
    runtime = detect(make_app(tmp_path, files), parse_procfile(procfile))
    assert runtime.name == expected


def test_runtimes_are_in_pikus_order() -> None:
    assert [runtime.name for runtime in RUNTIMES] == [
        "python", "ruby", "node", "maven", "gradle", "go", "clojure", "leiningen", "rust",
        "generic", "static"]


@pytest.mark.parametrize("procfile", ["release: ./migrate\n",
                                      "preflight: ./check\nrelease: ./migrate\n"])
def test_nothing_to_run(tmp_path: Path, procfile: str) -> None:
    with pytest.raises(BuildError, match="nothing to run: no runtime detected") as info:
        detect(tmp_path, parse_procfile(procfile))
    assert isinstance(info.value, DeployError)
    assert (info.value.code, info.value.status) == ("build_failed", 409)


def test_malformed_pyproject_is_an_error(tmp_path: Path) -> None:
    make_app(tmp_path, {"pyproject.toml": "[project\n"})
    with pytest.raises(BuildError, match="pyproject.toml: invalid TOML"):
        detect(tmp_path, parse_procfile(WEB))


# --- how Python dependencies are installed ---------------------------------
REQ, PYP, UVL, POL = "requirements.txt", "pyproject.toml", "uv.lock", "poetry.lock"
PLANS = [
    # (files, pyproject text, uv installs plain requirements/pyproject, expected)
    ({REQ}, None, False, ("requirements", "pip")),
    ({REQ}, None, True, ("requirements", "uv")),
    ({REQ, PYP}, "[tool.poetry]\n", False, ("requirements", "pip")),
    ({PYP, UVL}, PROJECT, False, ("uv-sync", "uv")),
    ({PYP}, "[tool.uv]\n", False, ("uv-sync", "uv")),
    ({PYP, UVL, POL}, PROJECT, False, ("uv-sync", "uv")),
    ({PYP, POL}, "[tool.uv]\n", True, ("poetry", "poetry")),
    ({PYP, POL}, PROJECT, True, ("poetry", "poetry")),
    ({PYP}, "[tool.poetry]\nname = 'app'\n", True, ("poetry", "poetry")),
    ({PYP}, PROJECT, True, ("uv-sync", "uv")),
    ({PYP}, PROJECT, False, ("project", "pip")),
    ({PYP}, TOOL_ONLY, True, None),
    (set(), None, True, None),
]


@pytest.mark.parametrize(("names", "text", "uv", "expected"), PLANS)
def test_plan_python(names: set[str], text: str | None, uv: bool,
                     expected: tuple[str, str] | None) -> None:
    pyproject = tomllib.loads(text) if text is not None else None
    plan = plan_python(frozenset(names), pyproject, uv=uv)
    assert ((plan.method, plan.tool) if plan else None) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (None, "uv"), ("", "uv"), ("uv", "uv"), ("pip", "pip"), (" PIP ", "pip")])
def test_python_installer(value: str | None, expected: str) -> None:
    assert installer({} if value is None else {INSTALLER_KEY: value}) == expected


def test_a_bad_python_installer_names_the_key() -> None:
    with pytest.raises(EnvError, match="PIKU_PYTHON_INSTALLER: expected uv or pip, got 'poetry'"):
        installer({INSTALLER_KEY: "poetry"})


def test_plan_files_key_the_environment() -> None:
    assert PythonPlan("uv-sync", (PYP, UVL)).files == ("pyproject.toml", "uv.lock")
    plan = plan_python(frozenset({PYP, POL}), {"tool": {"poetry": {}}}, uv=False)
    assert plan is not None and plan.files == (PYP, POL)


# --- which Python ------------------------------------------------------------
def py(name: str, version: str, path: str | None = None) -> Interpreter:
    major, minor, micro = map(int, version.split("."))
    return Interpreter(name, path or f"/usr/bin/{name}", (major, minor, micro))


CANDIDATES = [py("python3", "3.11.2"), py("python3.11", "3.11.2"),
              py("python3.12", "3.12.1", "/opt/bin/python3.12"),
              py("python3", "3.13.0", "/opt/py313/bin/python3")]

CHOICES = [
    # (request, expected path)
    (None, "/usr/bin/python3"),
    ("3", "/usr/bin/python3"),
    ("3.11", "/usr/bin/python3.11"),
    ("3.11.2", "/usr/bin/python3.11"),
    ("3.12", "/opt/bin/python3.12"),
    ("3.12.1", "/opt/bin/python3.12"),
    ("3.13", "/opt/py313/bin/python3"),        # no python3.13 command, but a python3 is 3.13
]


@pytest.mark.parametrize(("request_", "expected"), CHOICES)
def test_choose_python(request_: str | None, expected: str) -> None:
    request = ("PYTHON_VERSION", request_) if request_ is not None else None
    assert choose_python(request, CANDIDATES).path == expected


@pytest.mark.parametrize(("request_", "message"), [
    ("3.99", "PYTHON_VERSION=3.99: no python3.99 on this server (found: 3.11, 3.12, 3.13)"),
    ("3.12.7", "PYTHON_VERSION=3.12.7: no python3.12.7 on this server "
               "(found: 3.11.2, 3.12.1, 3.13.0)"),
    ("3.1", "PYTHON_VERSION=3.1: no python3.1 on this server"),
    ("2.7", "PYTHON_VERSION=2.7: expected a Python 3 version such as 3, 3.12 or 3.12.1"),
    ("latest", "PYTHON_VERSION=latest: expected a Python 3 version"),
    ("3.", "PYTHON_VERSION=3.: expected"),
])
def test_choose_python_fails_clearly(request_: str, message: str) -> None:
    with pytest.raises(BuildError) as info:
        choose_python(("PYTHON_VERSION", request_), CANDIDATES)
    assert str(info.value).startswith(message)


def test_choose_python_with_no_candidates() -> None:
    with pytest.raises(BuildError, match=r"no python3 on this server \(found: none\)"):
        choose_python(None, [])


@pytest.mark.parametrize(("text", "expected"), [
    ("3", (3,)), ("3.12", (3, 12)), ("3.12.1", (3, 12, 1)), (" 3.11 ", (3, 11)),
    ("cpython-3.12", (3, 12)), ("python3.12", (3, 12))])
def test_parse_request(text: str, expected: tuple[int, ...]) -> None:
    assert parse_request(".python-version", text) == expected


@pytest.mark.parametrize(("env", "file", "expected"), [
    ({}, None, None),
    ({"PYTHON_VERSION": "3.12"}, "3.11\n", ("PYTHON_VERSION", "3.12")),
    ({"PYTHON_VERSION": " "}, "# pinned\n\n3.11\n", (".python-version", "3.11")),
    ({}, "\n", None),
])
def test_requested_version(tmp_path: Path, env: dict[str, str], file: str | None,
                           expected: tuple[str, str] | None) -> None:
    if file is not None:
        (tmp_path / ".python-version").write_text(file)
    assert requested_version(env, tmp_path) == expected


# --- tools, versions, node -----------------------------------------------------
@pytest.mark.parametrize(("missing", "message"), [
    (["cargo"], "Rust needs cargo: install cargo on the server (e.g. apt-get install cargo)"),
    (["ruby", "bundle"], "Rust needs ruby, bundle: install ruby, bundle on the server "
                         "(e.g. apt-get install ruby ruby-bundler)"),
    (["node", "pnpm"], "Rust needs node, pnpm: install node, pnpm on the server "
                       "(e.g. apt-get install nodejs; npm install -g pnpm)"),
    (["frob"], "Rust needs frob: install frob on the server"),
])
def test_missing_message(missing: list[str], message: str) -> None:
    assert missing_message("Rust", missing) == message


@pytest.mark.parametrize(("text", "expected"), [
    ("v20.11.1\n", (20, 11, 1)), ("3", (3,)), ("20.x", None), ("", None), ("v", None)])
def test_parse_version(text: str, expected: tuple[int, ...] | None) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize(("wanted", "actual", "ok"), [
    ((3,), (3, 11, 2), True), ((3, 11), (3, 11, 2), True), ((3, 1), (3, 11, 2), False),
    ((3, 11, 2), (3, 11, 2), True), ((3, 11, 2, 0), (3, 11, 2), False)])
def test_version_matches(wanted: tuple[int, ...], actual: tuple[int, ...], ok: bool) -> None:
    assert version_matches(wanted, actual) is ok


@pytest.mark.parametrize(("wanted", "result"), [
    (None, None), ("", None), (" ", None), ("20", (20,)), ("v20.11", (20, 11)),
    ("20.11.1", (20, 11, 1)), ("lts", "NODE_VERSION=lts: expected a version"),
    ("^20", "NODE_VERSION=\\^20: expected a version"),
])
def test_node_request(wanted: str | None, result: tuple[int, ...] | str | None) -> None:
    if isinstance(result, str):
        with pytest.raises(BuildError, match=result):
            node_request(wanted)
    else:
        assert node_request(wanted) == result


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "npm"), ({"NODE_PACKAGE_MANAGER": ""}, "npm"), ({"NODE_PACKAGE_MANAGER": "yarn"}, "yarn"),
    ({"NODE_PACKAGE_MANAGER": " pnpm "}, "pnpm")])
def test_package_manager(env: dict[str, str], expected: str) -> None:
    assert package_manager(env) == expected


def test_unknown_package_manager_names_the_key() -> None:
    with pytest.raises(BuildError, match="NODE_PACKAGE_MANAGER=bun: expected npm, yarn or pnpm"):
        package_manager({"NODE_PACKAGE_MANAGER": "bun"})


@pytest.mark.parametrize(("manager", "lock", "argv"), [
    ("npm", "package-lock.json", ["npm", "ci", "--no-audit", "--no-fund"]),
    ("npm", None, ["npm", "install", "--no-audit", "--no-fund"]),
    ("yarn", "yarn.lock", ["yarn", "install", "--frozen-lockfile"]),
    ("pnpm", None, ["pnpm", "install"])])
def test_install_argv(manager: str, lock: str | None, argv: list[str]) -> None:
    assert install_argv(manager, manager, lock) == argv


# --- environment keys ------------------------------------------------------------
def test_content_key(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("flask\n")
    first = content_key(["python", "3.11.2"], [req])
    assert len(first) == 12 and int(first, 16) >= 0
    assert content_key(["python", "3.11.2"], [req]) == first
    assert content_key(["python", "3.12.1"], [req]) != first
    req.write_text("flask==3.0\n")
    assert content_key(["python", "3.11.2"], [req]) != first
    req.write_text("")
    empty = content_key([], [req])
    req.unlink()
    assert content_key([], [req]) != empty
    assert content_key(["ab", "c"], []) != content_key(["a", "bc"], [])


def test_uv_trusts_the_system_certificates_unless_told_otherwise() -> None:
    assert with_system_certs({"PATH": "/bin"}) == {
        "PATH": "/bin", "UV_SYSTEM_CERTS": "1", "UV_NATIVE_TLS": "1"}
    assert with_system_certs({"UV_NATIVE_TLS": "0"}) == {"UV_NATIVE_TLS": "0"}
    assert with_system_certs({"UV_SYSTEM_CERTS": "false"}) == {"UV_SYSTEM_CERTS": "false"}
