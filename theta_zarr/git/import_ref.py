"""``git theta-zarr import``: stage a remote ref's checkpoint as a tracked file.

No re-hashing: the manifest the ref names goes into git as it is.
"""

from __future__ import annotations

import os

from .. import checkpoint
from ..manifest import Manifest, ManifestError
from ..remote import fetch_objects
from ..settings import Settings
from ..sync import FileEntry, SyncError, SyncRemote, file_in_the_way
from .repo import GitError, Repo


def _would_overwrite(repo: Repo, dests: list[str]) -> list[str]:
    """Paths among ``dests`` (or their folders) whose working-tree content git does not
    have: an untracked file, a tracked file with changes, a file where a folder must go."""
    lose: list[str] = []
    present: list[str] = []
    for dest in dests:
        blocking = file_in_the_way(repo.top, dest)
        if blocking is not None:
            lose.append(blocking)
        if os.path.lexists(os.path.join(repo.top, *dest.split("/"))):
            present.append(dest)
    if present:
        tracked = set(os.fsdecode(repo.git("ls-files", "-z", "--", *present)).split("\0"))
        lose += [d for d in present if d not in tracked]
        known = [d for d in present if d in tracked]
        if known:
            try:
                changed = os.fsdecode(repo.git("diff", "--name-only", "-z", "--", *known))
                lose += [d for d in changed.split("\0") if d]
            except GitError:  # the filter cannot read one: one by one
                lose += [d for d in known if _modified(repo, d)]
    return sorted(set(lose))


def _modified(repo: Repo, path: str) -> bool:
    """The tracked ``path`` differs from what git has; a file the clean filter cannot read
    (a damaged checkpoint) is not what git has either."""
    try:
        return bool(repo.git("diff", "--name-only", "-z", "--", path))
    except GitError:
        return True


def import_ref(repo: Repo, remote: SyncRemote, ref: str, path: str,
               settings: Settings, force: bool = False) -> list[str]:
    """Stage the checkpoint a ref names as the tracked file ``path``, without re-hashing it.

    The manifest goes into git as it is (hash-object + update-index --cacheinfo);
    git itself then writes the working-tree file through the filter (checkout-index),
    so the index records its stat data and ``git status`` is clean: the real file
    from the cache (chunks fetched first), or the manifest on a lazy checkout.
    A set becomes a directory: manifests for checkpoints; the other files as ``git add``
    would store them at their paths (through the filters their attributes name).
    Refuses (SyncError), before anything is fetched or staged, to overwrite a file whose
    content git does not have (untracked, or modified) unless ``force``, as
    ``git checkout`` refuses to lose local changes.
    """
    from .install import DRIVER

    _, target = remote.resolve(ref)
    rel = repo.relative(path).replace(os.sep, "/")
    if rel.startswith("../"):
        raise SyncError(f"{path} is outside the repository {repo.top}")
    cache = checkpoint.open_cache(settings)
    entries: list[tuple[str, bytes | FileEntry]] = []
    if isinstance(target, Manifest):
        entries.append((rel, target.to_bytes()))
    else:
        loaded = remote.members(target)
        for name, entry in sorted(target.files.items()):
            dest = f"{rel}/{name}" if rel != "." else name
            if entry.manifest is not None:
                member = loaded[name]
                if not isinstance(member, Manifest):
                    raise ManifestError(f"{ref}: {name} names a set inside a set")
                entries.append((dest, member.to_bytes()))
            else:
                entries.append((dest, entry))
    inside_git = [d for d, _ in entries if ".git" in d.lower().split("/")]
    if inside_git:
        raise SyncError(f"{inside_git[0]}: a path inside a .git folder, where git stores no "
                        "file; give a path in the work tree")
    lose = [] if force else _would_overwrite(repo, [d for d, _ in entries])
    if lose:
        more = f" (and {len(lose) - 1} more)" if len(lose) > 1 else ""
        raise SyncError(f"{lose[0]}{more}: local content git does not have (untracked or "
                        "modified) would be overwritten; commit or move it, or --force")
    manifest_paths = [p for p, item in entries if isinstance(item, bytes)]
    untracked = [p for p, value in repo.attribute(manifest_paths, "filter").items()
                 if value != DRIVER]
    if untracked:
        raise SyncError(f"{untracked[0]} is not tracked by theta-zarr; run "
                        f"'git theta-zarr track' for it first")
    sizes: dict[str, int] = {}
    for _, item in entries:
        if isinstance(item, FileEntry):
            sizes.update(item.chunk_sizes())
        elif not settings.lazy:
            sizes.update(Manifest.from_bytes(item).chunk_sizes())
    fetch_objects(remote.objects, cache, cache.missing(sizes), sizes)
    for dest, item in entries:
        if isinstance(item, FileEntry):
            # a plain member is stored as ``git add`` would store it: through the filters
            # its path has (theta-zarr's opaque manifest for a tracked pickle, a git-lfs
            # pointer, or the bytes), so the file cleans back to the same blob
            data = b"".join(bytes(cache.get(d)) for d in item.chunks)
            sha = repo.git("hash-object", "-w", "--stdin", "--path", dest, input=data)
        else:
            sha = repo.git("hash-object", "-w", "--stdin", input=item)
        repo.git("update-index", "--add", "--cacheinfo", f"100644,{sha.decode().strip()},{dest}")
    for dest, _ in entries:
        full = os.path.join(repo.top, *dest.split("/"))
        if os.path.isfile(full):
            os.unlink(full)  # checkout-index skips a file it thinks is up to date
    repo.git("checkout-index", "-u", "--force", "--", *[d for d, _ in entries])
    return [d for d, _ in entries]
