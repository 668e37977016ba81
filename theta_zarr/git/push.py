"""Pushing and fetching chunks for git: the pre-push hook's work and the explicit commands."""

from __future__ import annotations

import sys

from .. import checkpoint, delta
from ..manifest import Manifest, ManifestError, looks_like_manifest
from ..remote import (
    ReadThrough,
    RemoteError,
    RemoteSpec,
    TransferStats,
    open_remote,
    push_objects,
)
from ..settings import Settings
from ..wording import counted
from .files import object_info, read_blobs, revision_range, small_blobs
from .install import DRIVER
from .reachability import mark_repository
from .remotes import configured, for_git_remote, manifests_in_range, require, resolve
from .repo import GitError, Repo


def pre_push(repo: Repo, remote_name: str, lines: list[str], url: str | None = None,
             dry_run: bool = False) -> TransferStats | None:
    """Upload what the pushed commits need; git passes ``<lref> <lsha> <rref> <rsha>`` lines,
    and the remote's name (its URL for an unnamed remote) and ``url``.  ``dry_run`` (the
    hook's ``git push`` was given ``-n``/``--dry-run``): say what would be uploaded, upload
    nothing."""
    include, exclude, theirs = [], [f"--remotes={remote_name}"], []
    for line in lines:
        parts = line.split()
        if len(parts) != 4:
            continue
        _, local_sha, _, remote_sha = parts
        if local_sha.strip("0"):
            include.append(local_sha)
        if remote_sha.strip("0"):
            theirs.append(remote_sha)
    # the remote's current commits, those we have, bound the range: one cat-file asks
    # about them all (a push of thousands of tags started a process per tag)
    theirs = list(dict.fromkeys(theirs))
    exclude += [sha for sha, (kind, _) in zip(theirs, object_info(
        repo, [f"{sha}^{{commit}}" for sha in theirs]), strict=True) if kind == "commit"]
    manifests = manifests_in_range(repo, include, exclude)
    if not manifests:
        return None
    found = for_git_remote(repo, remote_name, url)
    if found is None and remote_name == url:  # githooks(5): an unnamed remote's name is its URL
        raise RemoteError(f"git push to {url or remote_name}: no theta-zarr remote takes its "
                          "chunks: run 'git theta-zarr remote add NAME URL' and push to a git "
                          "remote of that NAME, or set theta-zarr.default-remote")
    spec, why = found if found is not None else (require(repo, remote_name), "")
    return push_manifests(repo, spec, manifests, (include, exclude),
                          f"git remote {remote_name!r} -> {why}" if why else "", dry_run)


def push_manifests(repo: Repo, spec: RemoteSpec, manifests: list[Manifest],
                   commits: tuple[list[str], list[str]] | None = None, why: str = "",
                   dry_run: bool = False) -> TransferStats | None:
    """Upload the chunks of ``manifests``; ``commits`` (include, exclude) names the commit
    range they came from, whose first-parent changes give the delta bases.  The summary
    line names the remote (and ``why`` it was chosen) on every push.  ``dry_run``: check the
    remote as a push does, ask it which chunks it lacks and say so; returns None then.

    Raises MissingObjectError when a chunk to upload is in neither the cache nor the
    remote (a dry run says so in its line instead)."""
    settings = repo.settings()
    cache = checkpoint.open_cache(settings)
    remote = open_remote(spec, settings.concurrency, need="write")
    digests = set().union(*(m.digests() for m in manifests))
    where = f"to {spec.name} ({remote.url}{'; ' + why if why else ''})"
    if dry_run:
        print(f"theta-zarr: {_dry_run_line(cache, remote, manifests, digests, where)}",
              file=sys.stderr)
        return None
    elems: dict[str, int] = {}
    for m in manifests:
        elems.update(m.itemsizes())
    policy = settings.delta_policy
    bases = parent_bases(repo, *commits) if commits and policy.enabled else None
    # a clone's cache holds the chunks of what it checked out: a first push to another
    # remote (or push --all) also needs the older commits' chunks, from the remote it
    # cloned from, as `git lfs fetch --all` gets git-lfs's
    def fix() -> str:  # asked only when chunks are missing: it reads the remotes' config
        others = sorted(n for n in configured(repo) if n != spec.name)
        return (f"fetch them from a remote that has them ('git theta-zarr fetch --all "
                f"{others[0]}') or check out the version that made them" if others else
                "fetch them ('git theta-zarr fetch --all REMOTE') or check out the version "
                "that made them")

    stats = push_objects(cache, remote, digests, bases, policy, elems, fix=fix)
    # A gc --remote elsewhere may have taken an old, unreachable object this push found
    # there (it sees the commits only once git moves the branch, after this hook): check
    # once more, as late as the hook can, and put back from the cache what is gone.  The
    # objects this push sent are new, inside gc's grace period: only the others are asked.
    vanished = remote.missing(stats.present | (stats.bases_used - digests))
    if vanished:
        push_objects(cache, remote, vanished, elems=elems, checked=True)
    if commits:  # which histories this remote holds chunks of: gc --remote asks
        mark_repository(repo, remote.blobs, commits[0])
    print(f"theta-zarr: {stats.summary('uploaded', where)}", file=sys.stderr)
    return stats


def _dry_run_line(cache, remote, manifests: list[Manifest], digests: set[str],
                  where: str) -> str:
    """What a push would upload: objects the remote lacks and their raw size."""
    lacking = remote.missing(digests)
    sizes = {d: m.params[name].chunk_nbytes(i)
             for m in manifests for name, i, d in m.iter_chunks() if d in lacking}
    absent = cache.missing(lacking)
    line = (f"dry run: would upload {counted(len(lacking), 'object')} {where}: "
            f"{sum(sizes.values()) / 1e6:.1f} MB raw; {len(digests) - len(lacking)} "
            "already there; nothing uploaded")
    if absent:
        line += (f"; {len(absent)} of them are in neither the cache nor the remote (first: "
                 f"{sorted(absent)[0]}), so the push would fail")
    return line


def read_through(repo: Repo, name: str | None = None, cache=None,
                 settings: Settings | None = None) -> ReadThrough:
    """The cache backed by the default (or named) remote, for smudge and the API.

    ``settings``: the repository's, when the caller has read them already (each read is
    a ``git config`` process, and the filter starts in every git command)."""
    settings = settings or repo.settings()
    cache = cache or checkpoint.open_cache(settings)
    spec = resolve(repo, name)
    if spec is None:
        return ReadThrough(cache, None)
    return ReadThrough(cache, lambda: open_remote(spec, settings.concurrency))


def parent_bases(repo: Repo, include: list[str], exclude: list[str]) -> dict[str, delta.Base]:
    """Delta bases for a push: each tracked manifest a commit in the range changed,
    against the manifest of the same path in the commit's first parent."""
    if not include:
        return {}
    args, stdin = revision_range(include, exclude)
    try:
        out = repo.git("log", "--raw", "-r", "--no-renames", "--no-abbrev", "--format=",
                       "--diff-merges=first-parent", *args, input=stdin)
    except GitError:
        return {}  # deltas are an optimisation: without the range, push plain objects
    pairs: list[tuple[str, str, str]] = []
    for line in out.decode("utf-8", "replace").splitlines():
        meta, _, path = line.partition("\t")
        fields = meta.split()
        if len(fields) == 5 and fields[4] == "M" and fields[2].strip("0") and path:
            pairs.append((fields[2], fields[3], path))
    if not pairs:
        return {}
    attrs = repo.attribute(sorted({p for _, _, p in pairs}), "filter")
    pairs = [p for p in pairs if attrs.get(p[2]) == DRIVER]
    shas = small_blobs(repo, sorted({sha for old, new, _ in pairs for sha in (old, new)}))
    manifests: dict[str, Manifest] = {}
    for sha, data in zip(shas, read_blobs(repo, shas), strict=True):
        if looks_like_manifest(data[:64]):
            try:
                manifests[sha] = Manifest.from_bytes(data, sha[:10])
            except ManifestError:
                pass  # an old, unreadable version is simply no base
    found: dict[str, delta.Base] = {}
    for old, new, _ in pairs:
        if old in manifests and new in manifests:
            for digest, base in delta.candidates(manifests[new], manifests[old]).items():
                found.setdefault(digest, base)
    return found
