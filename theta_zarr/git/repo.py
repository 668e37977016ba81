"""A git repository as theta-zarr sees it: its dirs and its ``theta-zarr.*`` config."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from ..cache import default_cache_dir
from ..settings import Settings, parse_size

CONFIG_PREFIX = "theta-zarr."


class GitError(RuntimeError):
    """A git command failed; the message is git's own first line."""


def git(*args: str, cwd: str | None = None, input: bytes | None = None,
        check: bool = True, env: dict[str, str] | None = None) -> bytes:
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                          env=full_env)
    if check and proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(msg[-1] if msg else f"git {' '.join(args)} failed")
    return proc.stdout


def _true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Repo:
    top: str  # working tree root
    git_dir: str
    common_dir: str

    @classmethod
    def discover(cls, cwd: str | None = None) -> Repo:
        try:
            out = git("rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-common-dir",
                      cwd=cwd).decode().splitlines()
        except GitError:
            raise GitError("not inside a git repository (run this from a git work tree)"
                           ) from None
        top, git_dir, common = out[0], out[1], out[2]
        if not os.path.isabs(common):
            common = os.path.normpath(os.path.join(cwd or os.getcwd(), common))
        return cls(top, git_dir, common)

    def git(self, *args: str, input: bytes | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> bytes:
        return git(*args, cwd=self.top, input=input, check=check, env=env)

    def config(self) -> dict[str, str]:
        """Every ``theta-zarr.*`` key in effect (all scopes), last value wins."""
        out = self.git("config", "-z", "--get-regexp", r"^theta-zarr\.", check=False)
        values: dict[str, str] = {}
        for record in out.decode("utf-8", "replace").split("\0"):
            if record:
                key, _, value = record.partition("\n")
                values[key.lower()] = value
        return values

    def settings(self) -> Settings:
        cfg = self.config()
        cache = cfg.get("theta-zarr.cache")
        if cache:
            cache = os.path.expanduser(cache)
            if not os.path.isabs(cache):
                cache = os.path.join(self.top, cache)
        kwargs: dict = {"cache_dir": cache or default_cache_dir(self.common_dir)}
        if "theta-zarr.chunk-size" in cfg:
            kwargs["chunk_bytes"] = parse_size(cfg["theta-zarr.chunk-size"])
        if "theta-zarr.cache-compression" in cfg:
            kwargs["cache_codec"] = cfg["theta-zarr.cache-compression"].strip() or "raw"
        if "theta-zarr.concurrency" in cfg:
            kwargs["concurrency"] = int(cfg["theta-zarr.concurrency"])
        if "theta-zarr.delta" in cfg:
            kwargs["delta"] = _true(cfg["theta-zarr.delta"])
        if "theta-zarr.delta-ratio" in cfg:
            kwargs["delta_ratio"] = float(cfg["theta-zarr.delta-ratio"])
        if "theta-zarr.delta-depth" in cfg:
            kwargs["delta_depth"] = int(cfg["theta-zarr.delta-depth"])
        if "theta-zarr.opaque" in cfg:
            kwargs["opaque"] = _true(cfg["theta-zarr.opaque"])
        lazy_env = os.environ.get("GIT_THETA_ZARR_SKIP_SMUDGE")
        kwargs["lazy"] = _true(lazy_env) if lazy_env else _true(cfg.get("theta-zarr.lazy", ""))
        return Settings(**kwargs)
