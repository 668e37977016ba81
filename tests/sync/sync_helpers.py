"""Shared pieces of the cluster-sync tests: remotes on a folder, S3 and GCS; model files."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from theta_zarr.demo import ModelShape, write_model
from theta_zarr.remote import RemoteSpec
from theta_zarr.sync import SyncRemote

SHAPE = ModelShape(hidden=32, layers=2, vocab=64)
CHUNK = "16KiB"


@dataclass
class Case:
    kind: str
    url: str
    env: dict[str, str]
    options: list[str]

    def opts(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.options)

    def remote(self) -> SyncRemote:
        return SyncRemote.open(RemoteSpec("t", self.url, self.opts()))

    def cli_options(self) -> list[str]:
        return [a for o in self.options for a in ("--option", o)]


def local_case(tmp_path: Path) -> Case:
    """A folder remote at ``tmp_path/bucket``."""
    return Case("local", str(tmp_path / "bucket"), {}, [])


def make_case(kind: str, request, tmp_path: Path, monkeypatch) -> Case:
    if kind == "local":
        case = local_case(tmp_path)
    else:
        backend = request.getfixturevalue(f"{kind}_server")
        case = Case(kind, backend.new_bucket() + "/team", dict(backend.env),
                    [f"endpoint-url={backend.endpoint}"])
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    return case


@pytest.fixture(params=["local", "s3", "gcs"])
def case(request, tmp_path, monkeypatch) -> Case:
    return make_case(request.param, request, tmp_path, monkeypatch)


def env_for(case: Case, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(case.env)
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.path.dirname(sys.executable) \
        + os.pathsep + env.get("PATH", "")
    env["THETA_ZARR_CACHE"] = str(tmp_path / "job-cache")
    env.update(extra)
    return env


def tz(args: list[str], env: dict[str, str], check: bool = True, cwd: Path | None = None
       ) -> subprocess.CompletedProcess:
    proc = subprocess.run(["theta-zarr", *args], env=env, capture_output=True, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"theta-zarr {' '.join(args)} exited {proc.returncode}\n"
                             f"{proc.stderr.decode()}")
    return proc


def model(path: Path, seed: int = 0, tuned: list[str] | None = None) -> Path:
    write_model(str(path), SHAPE, seed=seed, tuned=tuned or [])
    return path


