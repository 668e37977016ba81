"""Which files git tracks through theta-zarr, and their manifests at a revision or the index."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..manifest import MAX_MANIFEST_BLOB, Manifest, ManifestError, looks_like_manifest
from .install import DRIVER
from .repo import GitError, GitInputError, Repo


@dataclass
class TrackedFile:
    path: str
    blob: str
    manifest: Manifest | None  # None: the blob is not a manifest (committed before tracking)
    size: int = 0  # the blob's size in bytes


def _entries(repo: Repo, rev: str | None) -> list[tuple[str, str]]:
    """(path, blob id) for every file in the index (rev None) or a revision's tree."""
    if rev is None:
        raw = repo.git("ls-files", "-z", "-s")
        items = []
        for rec in raw.split(b"\0"):
            if rec:
                meta, _, path = rec.decode().partition("\t")
                mode, blob, stage = meta.split()
                if stage in ("0", "2"):
                    items.append((path, blob))
        return items
    raw = repo.git("ls-tree", "-r", "-z", "--full-tree", repo.commit(rev))
    items = []
    for rec in raw.split(b"\0"):
        if rec:
            meta, _, path = rec.decode().partition("\t")
            mode, kind, blob = meta.split()
            if kind == "blob":
                items.append((path, blob))
    return items


def objects_with_paths(repo: Repo, *rev_list_args: str) -> dict[str, str]:
    """{object id: path} from ``git rev-list --objects ARGS`` (trees and blobs with a path)."""
    out = repo.git("rev-list", "--objects", *rev_list_args)
    found: dict[str, str] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, path = line.partition(" ")
        if path:
            found.setdefault(sha, path)
    return found


def blob_sizes(repo: Repo, blobs: list[str]) -> list[int]:
    """Each blob's size in bytes, through one ``git cat-file --batch-check``."""
    if not blobs:
        return []
    out = repo.git("cat-file", "--batch-check=%(objectsize)",
                   input="".join(b + "\n" for b in blobs).encode()).split()
    if len(out) != len(blobs) or not all(v.isdigit() for v in out):
        raise GitError(f"cannot read the size of {len(blobs)} blob(s)")
    return [int(v) for v in out]


def read_blobs(repo: Repo, blobs: list[str], limit: int | None = None
               ) -> list[bytes | None]:
    """Blob contents through one ``git cat-file --batch``.

    With ``limit``, a blob of more than ``limit`` bytes is not read (None in its place):
    memory stays flat when a tracked path holds a checkpoint committed before it was
    tracked, and no manifest is that large (``MAX_MANIFEST_BLOB``).
    """
    if not blobs:
        return []
    wanted = blobs if limit is None else [
        b for b, n in zip(blobs, blob_sizes(repo, blobs), strict=True) if n <= limit]
    found: dict[str, bytes] = {}
    if wanted:
        out = repo.git("cat-file", "--batch", input="".join(b + "\n" for b in wanted).encode())
        pos = 0
        for blob in wanted:
            nl = out.index(b"\n", pos)
            header = out[pos:nl].split()
            if len(header) < 3:
                raise GitError(f"cannot read blob {header[0].decode() if header else '?'}")
            size = int(header[2])
            found[blob] = out[nl + 1:nl + 1 + size]
            pos = nl + 1 + size + 1
    return [found.get(b) for b in blobs]


def tracked_files(repo: Repo, rev: str | None = None, paths: list[str] | None = None
                  ) -> list[TrackedFile]:
    entries = _entries(repo, rev)
    if paths:
        wanted = set(paths)
        entries = [e for e in entries if e[0] in wanted]
    attrs = repo.attribute([p for p, _ in entries], "filter")
    ours = [(p, b) for p, b in entries if attrs.get(p) == DRIVER]
    shas = [b for _, b in ours]
    sizes = blob_sizes(repo, shas)
    blobs = read_blobs(repo, shas, limit=MAX_MANIFEST_BLOB)
    files = []
    for (path, blob), data, size in zip(ours, blobs, sizes, strict=True):
        manifest = Manifest.from_bytes(data, path) \
            if data is not None and looks_like_manifest(data[:64]) else None
        files.append(TrackedFile(path, blob, manifest, size))
    return files


def worktree_state(repo: Repo, path: str) -> str:
    """``lazy`` (a manifest is checked out), ``materialized`` or ``missing``."""
    full = os.path.join(repo.top, path)
    if not os.path.exists(full):
        return "missing"
    with open(full, "rb") as f:
        return "lazy" if looks_like_manifest(f.read(64)) else "materialized"


def manifest_at(repo: Repo, path: str, rev: str | None = "HEAD") -> Manifest:
    """The manifest of ``path`` at ``rev`` (None: the index)."""
    spec = f":{path}" if rev is None else f"{rev}:{path}"
    commit = repo.commit(rev) if rev is not None else None
    try:
        data = repo.git("cat-file", "blob", spec if commit is None else f"{commit}:{path}")
    except GitError:
        where = "the index (not a tracked file)" if rev is None else f"revision {rev}"
        raise GitInputError(f"{path}: no such file in {where}") from None
    if not looks_like_manifest(data[:64]):
        raise ManifestError(f"{spec}: not tracked by theta-zarr (no manifest in git)")
    return Manifest.from_bytes(data, spec)
