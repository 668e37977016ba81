"""Where each side of a comparison comes from: a revision, the index or the working tree.

A side is a manifest, or a :class:`~theta_zarr.foreign.Foreign` description of a blob that
is none (a git-lfs pointer, a file committed before it was tracked).  Kept apart from the
diff and merge drivers so that commands which only read checkpoints (``materialize``,
the API) do not load the diff and merge machinery.
"""

from __future__ import annotations

import logging
import os

from .. import checkpoint, lfs
from ..errors import one_line
from ..foreign import Foreign, Side
from ..formats.base import FormatError
from ..manifest import Manifest, looks_like_manifest
from .install import DRIVER
from .repo import GitError, Repo
from .statcache import StatCache

log = logging.getLogger(__name__)

WORKTREE = object()  # a side read from the working tree
INDEX = object()  # a side read from the index


def blob_of(repo: Repo, spec: str) -> bytes | None:
    """The blob ``spec`` names (``REV:PATH``, ``:PATH``, an id), or None when git has none."""
    try:
        return repo.git("cat-file", "blob", spec)
    except GitError:
        return None


def foreign_blob(data: bytes, size: int | None = None) -> Foreign:
    """A stored blob that is no manifest: a git-lfs pointer, or a file kept as it is.

    ``data`` is the blob, or its first bytes (at least ``lfs.MAX_POINTER`` of them)
    when ``size`` gives its full length.
    """
    size = len(data) if size is None else size
    pointer = lfs.parse(data) if size == len(data) else None
    if pointer is not None:
        return Foreign("git-lfs", pointer.describe(), pointer.to_json())
    if size == 0:  # clean keeps an empty file empty, as git-lfs does
        return Foreign("plain", "an empty file (kept as it is)", {"size": 0})
    return Foreign("plain", f"not stored by theta-zarr ({size} bytes, committed before "
                   "it was tracked)", {"size": size})


def manifest_from_file(repo: Repo, file: str, name: str, objects=None) -> Side:
    """A file as a manifest: a manifest as it is, a checkpoint cleaned into the cache.

    A git-lfs pointer, or a file no format plug-in reads, is described instead
    (a diff shows what it can, it never stops git's diff or log).  The working-tree file
    of ``name`` is answered from its stat record when it has one (what git's clean last
    answered for it, :mod:`.statcache`): the git command a diff runs first has just
    cleaned it, and the file is not read and hashed a second time.
    """
    if file == "/dev/null" or not os.path.isfile(file):  # a folder in its place: deleted,
        return None                                       # as git diff and status say
    settings = repo.settings()
    worktree = os.path.abspath(file) == os.path.abspath(os.path.join(repo.top, name))
    cache = objects.cache if objects is not None else checkpoint.open_cache(settings)
    if worktree:
        recorded = StatCache(repo.git_dir).get(name, os.stat(file))
        if recorded is not None and not checkpoint.freshen(cache, recorded[1]):
            log.debug("%s: answered from its stat record, not hashed again", name)
            return recorded[1]
    with open(file, "rb") as f:
        head = f.read(64)
        f.seek(0)
        if looks_like_manifest(head):
            return Manifest.from_bytes(f.read(), name)
        if not head:
            return None
        if lfs.looks_like_pointer(head):
            data = f.read(lfs.MAX_POINTER)
            if lfs.parse(data) is not None:
                return foreign_blob(data)
            f.seek(0)
        previous = None
        data = blob_of(repo, f":{name}")
        if data is not None and looks_like_manifest(data[:64]):
            previous = Manifest.from_bytes(data, f":{name}")
        source = checkpoint.open_source(f, cache, name=name, path=os.path.abspath(file))
        try:
            return checkpoint.clean(source, settings, cache, previous).manifest
        except FormatError as e:
            size = os.path.getsize(file)
            return Foreign("plain", f"not a checkpoint theta-zarr reads ({size} bytes: "
                           f"{one_line(e)})", {"size": size})


def manifest_of(repo: Repo, path: str, side: object, objects=None) -> Side:
    """``path`` (relative to the top) at a revision (str), the index, or the working tree."""
    if side is WORKTREE:
        return manifest_from_file(repo, os.path.join(repo.top, path), path, objects)
    spec = f":{path}" if side is INDEX else f"{side}:{path}"
    data = blob_of(repo, spec)
    if data is None or (not data and side is INDEX and intent_to_add(repo, path)):
        return None  # absent; or only announced by `git add -N`, a new file as git says
    if not looks_like_manifest(data[:64]):
        return foreign_blob(data)
    return Manifest.from_bytes(data, spec)


def intent_to_add(repo: Repo, path: str) -> bool:
    """Whether the index entry of ``path`` only records ``git add -N`` (an empty blob
    that git's diffs take as no file yet, the working-tree file as added)."""
    out = repo.git("diff", "--name-only", "-z", "--diff-filter=A", "--no-ext-diff",
                   "--no-textconv", "--", f":(literal){path}", check=False)
    return os.fsencode(path) in out.split(b"\0")


def tracked_by_us(repo: Repo, paths: list[str]) -> list[str]:
    """The paths whose ``diff`` attribute is theta-zarr."""
    return [p for p, value in repo.attribute(paths, "diff").items() if value == DRIVER]
