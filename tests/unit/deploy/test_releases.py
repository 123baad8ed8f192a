from __future__ import annotations

from pathlib import Path

from pikud.deploy.releases import Release, ReleaseStore
from pikud.paths import Paths


def test_an_environment_on_a_release_path_is_in_use(tmp_path: Path) -> None:
    """A node nodeenv installed is named only by PATH entries: pruning must keep it."""
    paths = Paths(tmp_path)
    store = ReleaseStore(paths, "app")
    envs = paths.env_dir("app")
    store.releases = [
        Release(1, "a" * 40, env_path=str(envs / "node-1"),
                path_prefix=(str(envs / "node-1/node_modules/.bin"),
                             str(envs / "nodeenv-20.1.0-k/bin"))),
        Release(2, "b" * 40, path_prefix=(str(tmp_path / "releases/app/2/target"),
                                          str(envs), "/usr/local/bin")),
    ]
    assert store.env_paths_in_use() == {str(envs / "node-1"), str(envs / "nodeenv-20.1.0-k")}
