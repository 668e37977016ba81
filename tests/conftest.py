"""Shared fixtures: real git repositories in temporary folders, with theta-zarr installed;
a chunk store that counts reads.  The plain helpers they use are in ``helpers``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers import GitRepo, isolated_git_env, make_store

from theta_zarr.remote import ReadThrough

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

pytest_plugins = ["servers"]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker more than there are cores.  A test here spends much of its
    time waiting on the git, filter and server processes it starts (and on retry timers),
    so one worker per core left a core idle; on two cores a third worker ran the git and
    remote tests about 5% faster."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) + 1


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = isolated_git_env()
    home = tmp_path / "home"
    home.mkdir()
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    for key in ("HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_NOSYSTEM", "PATH"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.fixture(scope="session")
def repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository ``repo`` hands out, made once per test process: ``git init``,
    ``git theta-zarr install`` (filter, drivers and hooks in .git), ``track`` and a commit
    of .gitattributes.  Nothing in it names its own folder, so a copy is the same
    repository elsewhere; the four commands cost 0.7 s of process start-ups per test."""
    root = tmp_path_factory.mktemp("template")
    env = isolated_git_env()
    home = root / "home"
    home.mkdir()
    env["HOME"], env["XDG_CONFIG_HOME"] = str(home), str(home / ".config")
    path = root / "repo"
    path.mkdir()
    r = GitRepo(path, env)
    r.git("init", "-q", "-b", "main")
    r.tz("install")
    r.tz("track", "*.safetensors", "*.pt", "*.npz")
    r.git("add", ".gitattributes")
    r.git("commit", "-q", "-m", "track checkpoints")
    return path


@pytest.fixture
def repo(tmp_path: Path, git_env: dict[str, str], repo_template: Path) -> GitRepo:
    """An initialised repository with theta-zarr installed and *.safetensors/*.pt/*.npz
    tracked (a copy of ``repo_template``)."""
    path = tmp_path / "repo"
    shutil.copytree(repo_template, path, symlinks=True)
    return GitRepo(path, git_env)


@pytest.fixture
def make_repo(tmp_path: Path, git_env: dict[str, str]):
    def make(name: str) -> GitRepo:
        path = tmp_path / name
        path.mkdir()
        return GitRepo(path, git_env)

    return make


@pytest.fixture
def store(tmp_path: Path) -> ReadThrough:
    """A ReadThrough over a CountingCache in ``tmp_path`` (no remote): the merge and diff
    tests' chunk store.  (test_objects has a ``store`` of its own, an ObjectStore.)"""
    return make_store(tmp_path)
