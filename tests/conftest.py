"""Shared fixtures: real git repositories in temporary folders, with theta-zarr installed;
and the helpers the git tests share (file digests, committing a demo model)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

pytest_plugins = ["servers"]

MODEL = "model.safetensors"


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker more than there are cores.  A test here spends much of its
    time waiting on the git, filter and server processes it starts (and on retry timers),
    so one worker per core left a core idle; on two cores a third worker ran the git and
    remote tests about 5% faster."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) + 1


def file_sha(path) -> str:
    """sha256 (hex) of a file's bytes: checked-out checkpoints are compared bit for bit."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def commit_checkpoint(repo: GitRepo, message: str, *, shape, name: str = MODEL, **kw) -> str:
    """Write the demo model of ``shape`` (``theta_zarr.demo.write_model``; ``kw`` such as
    ``tuned``/``seed`` go to it) to ``name`` in ``repo``, add and commit it; returns the
    file's sha256."""
    from theta_zarr.demo import write_model

    write_model(str(repo.path / name), shape, **kw)
    repo.git("add", name)
    repo.git("commit", "-q", "-m", message)
    return file_sha(repo.path / name)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = scripts + os.pathsep + os.path.dirname(sys.executable) + os.pathsep + \
        env.get("PATH", "")
    # isolate from the user's and the machine's git config
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "Test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@theta-zarr.invalid"
    env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = "2026-01-01T00:00:00Z"
    env.pop("GIT_THETA_ZARR_SKIP_SMUDGE", None)
    return env


class GitRepo:
    """A real git repository in a temporary folder, driven through the real CLI."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path = path
        self.env = env

    def run(self, *args: str, check: bool = True, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=self.path, env={**self.env, **(env or {})},
                              input=input, capture_output=True)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout.decode()}\n"
                f"stderr: {proc.stderr.decode()}")
        return proc

    def git(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("git", *args, **kw)

    def tz(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("git", "theta-zarr", *args, **kw)

    def out(self, *args: str) -> str:
        return self.git(*args).stdout.decode()

    @property
    def objects_dir(self) -> Path:
        return self.path / ".git" / "theta-zarr" / "objects"

    def object_files(self) -> set[str]:
        if not self.objects_dir.exists():
            return set()
        return {str(p.relative_to(self.objects_dir)) for p in self.objects_dir.rglob("*")
                if p.is_file() and not p.name.startswith(".tmp-")}


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = _env()
    home = tmp_path / "home"
    home.mkdir()
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    for key in ("HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_NOSYSTEM", "PATH"):
        monkeypatch.setenv(key, env[key])
    return env


@pytest.fixture
def repo(tmp_path: Path, git_env: dict[str, str]) -> GitRepo:
    """An initialised repository with theta-zarr installed and *.safetensors/*.pt/*.npz tracked."""
    path = tmp_path / "repo"
    path.mkdir()
    r = GitRepo(path, git_env)
    r.git("init", "-q", "-b", "main")
    r.tz("install")
    r.tz("track", "*.safetensors", "*.pt", "*.npz")
    r.git("add", ".gitattributes")
    r.git("commit", "-q", "-m", "track checkpoints")
    return r


@pytest.fixture
def make_repo(tmp_path: Path, git_env: dict[str, str]):
    def make(name: str) -> GitRepo:
        path = tmp_path / name
        path.mkdir()
        return GitRepo(path, git_env)

    return make
