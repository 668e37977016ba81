"""Pushing and fetching chunks for git: the pre-push hook's work and the explicit commands."""

from __future__ import annotations

import sys

from .. import checkpoint
from ..remote import ReadThrough, TransferStats, open_remote, push_objects
from .remotes import for_git_remote, manifests_in_range, require, resolve
from .repo import GitError, Repo


def pre_push(repo: Repo, remote_name: str, lines: list[str]) -> TransferStats | None:
    """Upload what the pushed commits need; git passes ``<lref> <lsha> <rref> <rsha>`` lines."""
    include, exclude = [], [f"--remotes={remote_name}"]
    for line in lines:
        parts = line.split()
        if len(parts) != 4:
            continue
        _, local_sha, _, remote_sha = parts
        if local_sha.strip("0"):
            include.append(local_sha)
        # the remote's current commit, when we have it, bounds the range
        if remote_sha.strip("0") and _is_commit(repo, remote_sha):
            exclude.append(remote_sha)
    manifests = manifests_in_range(repo, include, exclude)
    if not manifests:
        return None
    spec = for_git_remote(repo, remote_name) or require(repo, remote_name)
    return push_manifests(repo, spec, manifests)


def _is_commit(repo: Repo, sha: str) -> bool:
    try:
        repo.git("cat-file", "-e", f"{sha}^{{commit}}")
    except GitError:
        return False
    return True


def push_manifests(repo: Repo, spec, manifests) -> TransferStats:
    settings = repo.settings()
    cache = checkpoint.open_cache(settings)
    remote = open_remote(spec, settings.concurrency)
    digests = set().union(*(m.digests() for m in manifests))
    stats = push_objects(cache, remote, digests)
    print(f"theta-zarr: {stats.summary('uploaded', 'to ' + remote.url)}", file=sys.stderr)
    return stats


def read_through(repo: Repo, name: str | None = None, cache=None) -> ReadThrough:
    """The cache backed by the default (or named) remote, for smudge and the API."""
    settings = repo.settings()
    cache = cache or checkpoint.open_cache(settings)
    spec = resolve(repo, name)
    if spec is None:
        return ReadThrough(cache, None)
    return ReadThrough(cache, lambda: open_remote(spec, settings.concurrency))
