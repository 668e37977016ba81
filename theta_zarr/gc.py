"""Reachability, fsck and garbage collection of chunk objects, with a grace period.

Roots: every manifest blob reachable in git from any ref, the reflog (stashes
included: ``refs/stash`` and its reflog) and the index; with a remote, also its
refs, the shards staged for a ref, and every manifest younger than the grace
period (a push in flight has written its manifest but not yet its ref).  Digests
are taken from manifest blobs by pattern, so even a manifest that no longer
parses (a hand-edited or conflicted one) keeps its chunks alive.

Why a concurrent push is safe:

* gc records its start time T0 and never deletes an object or manifest whose
  mtime (local) or LastModified/updated time (bucket) is after T0 - grace: an
  object uploaded after gc started is never deleted, nor is one uploaded during
  the grace period before it.
* A push may instead *reuse* an old, unreachable object that is already there.
  gc lists the remote's refs and manifests again just before it deletes and keeps
  whatever they now name; and a push checks, after its manifest is written and
  before its ref moves, that every object it reused still exists, uploading any
  that vanished from its cache.  A ref therefore never names a manifest with
  missing objects unless a deletion lands in the moment between the push's
  re-check and its ref write while gc is also past its re-listing; ``fsck``
  reports that case and re-running the push repairs it.

Delta objects (``xor-delta``, ``int-delta``) need their base (and its base...).
Every store's keep-set is closed over delta bases: the headers of the kept
objects present in that store are read (a ranged read of a few bytes each) and
each base they name is kept too, transitively.  fsck reads every root object
through its chain, so a corrupt delta, a corrupt base or a missing base is
reported with the digests involved.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .cache import Cache
from .manifest import Manifest
from .objects import (
    MissingBaseError,
    MissingObjectError,
    ObjectError,
    ObjectStore,
    bounded_map,
    object_key,
)
from .storage import StorageError
from .sync import FileSet, SyncRemote

_DIGEST_BYTES = re.compile(rb"blake3:[0-9a-f]{64}")
MAX_MANIFEST_BLOB = 256 << 20


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '45s', '2w' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 0)")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * scale


@dataclass
class Roots:
    """What must be kept: chunk digests, remote manifest digests, and who needs each."""

    chunks: dict[str, str] = field(default_factory=dict)  # digest -> first user (for fsck)
    manifests: set[str] = field(default_factory=set)

    def add_chunks(self, digests: Iterable[str], where: str) -> None:
        for d in digests:
            self.chunks.setdefault(d, where)


# -- remote side ----------------------------------------------------------------------------------
def remote_roots(remote: SyncRemote, roots: Roots, young_after: float,
                 strict: bool = False) -> list[str]:
    """Refs, staged shards and young manifests of a remote; returns problems found.

    ``strict`` (fsck) reports a ref whose manifest is missing or corrupt instead of
    skipping it.
    """
    problems: list[str] = []
    todo: dict[str, str] = {}
    for name, _ in remote.refs.list():
        value = remote.refs.read(name)
        if value is not None:
            todo.setdefault(value.digest, f"ref {name}")
    for key, entry in remote.all_staged():
        if entry.manifest is not None:
            todo.setdefault(entry.manifest, f"staged {key}")
        roots.add_chunks(entry.chunks, f"staged {key}")
    for digest, info in remote.iter_manifests():
        if info.mtime is None or info.mtime >= young_after:
            todo.setdefault(digest, f"recent manifest {digest[:19]}")
    seen: set[str] = set()
    while todo:
        digest, where = todo.popitem()
        if digest in seen:
            continue
        seen.add(digest)
        roots.manifests.add(digest)
        try:
            target = remote.load(digest)
        except (StorageError, ValueError) as e:
            problems.append(f"{where}: {e}")
            continue
        if isinstance(target, FileSet):
            for name, entry in target.files.items():
                if entry.manifest is not None:
                    todo.setdefault(entry.manifest, f"{where}: {name}")
                roots.add_chunks(entry.chunks, f"{where}: {name}")
        elif isinstance(target, Manifest):
            roots.add_chunks(target.digests(), where)
    return problems if strict else []


# -- delta chains ------------------------------------------------------------------------------
def with_bases(store: ObjectStore, digests: Iterable[str],
               present: set[str] | None = None) -> set[str]:
    """``digests`` plus every delta base their objects in ``store`` need, transitively.

    ``present`` (the store's listing, when the caller has it) limits header reads
    to objects that exist; an unreadable header keeps nothing more (fsck reports it).
    """
    keep = set(digests)
    todo = [d for d in keep if present is None or d in present]

    def base_of(digest: str) -> str | None:
        try:
            header = store.delta_header(digest)
        except ObjectError:
            return None
        return header.base if header is not None else None

    while todo:
        found = [b for _, b in bounded_map(base_of, todo, store.concurrency) if b]
        todo = [b for b in set(found) if b not in keep and (present is None or b in present)]
        keep.update(found)
    return keep


# -- fsck -----------------------------------------------------------------------------------------
def check_objects(store: ObjectStore, roots: Roots, fallback: ObjectStore | None = None
                  ) -> list[str]:
    """Read and verify every root object in ``store``; one line per missing or corrupt one.

    With ``fallback`` (the remote behind a cache), an object the store lacks is
    only reported if the fallback lacks it too.
    """
    def check(digest: str) -> str | None:
        try:
            store.get(digest)
        except MissingObjectError:
            if fallback is not None and fallback.has(digest):
                return None
            where = f"{store.url} or {fallback.url}" if fallback else store.url
            return f"missing object {digest} ({object_key(digest)}) in {where}, " \
                   f"needed by {roots.chunks[digest]}"
        except MissingBaseError as e:
            return f"broken delta chain: {e}; needed by {roots.chunks[digest]}"
        except ObjectError as e:
            return f"corrupt object {digest} ({object_key(digest)}) in {store.url}, " \
                   f"needed by {roots.chunks[digest]}: {e}"
        return None

    found = [msg for _, msg in bounded_map(check, sorted(roots.chunks), store.concurrency)
             if msg]
    return sorted(found)


def check_stored(store: ObjectStore, skip: set[str]) -> list[str]:
    """Verify every object present in a store (the cache) that ``skip`` has not covered."""
    def check(digest: str) -> str | None:
        try:
            store.get(digest)
        except ObjectError as e:
            return f"corrupt object {digest} ({object_key(digest)}) in {store.url}: {e}"
        return None

    digests = [d for d, _, _ in store.iter_digests() if d not in skip]
    return sorted(m for _, m in bounded_map(check, digests, store.concurrency) if m)


# -- gc -------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    where: str
    keys: list[tuple[str, int]] = field(default_factory=list)  # (key, stored bytes)

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.keys)


def plan_objects(store: ObjectStore, keep: set[str], cutoff: float) -> Sweep:
    """Objects not in ``keep`` (closed over delta bases) and last written before
    ``cutoff`` (None mtime: kept)."""
    sweep = Sweep(store.url)
    listed = list(store.iter_digests())
    keep = with_bases(store, keep, {d for d, _, _ in listed})
    for digest, size, mtime in listed:
        if digest not in keep and mtime is not None and mtime < cutoff:
            sweep.keys.append((object_key(digest), size))
    return sweep


def plan_manifests(remote: SyncRemote, keep: set[str], cutoff: float) -> Sweep:
    sweep = Sweep(remote.url)
    for digest, info in remote.iter_manifests():
        if digest not in keep and info.mtime is not None and info.mtime < cutoff:
            sweep.keys.append((remote.manifest_key(digest), info.size))
    return sweep


def delete(store: ObjectStore, sweep: Sweep) -> None:
    blobs = store.blobs
    for _ in bounded_map(lambda kv: store._retry(lambda: blobs.delete(kv[0])), sweep.keys,
                         store.concurrency):
        pass


@dataclass
class GcResult:
    sweeps: list[Sweep]
    start: float


def collect(cache: Cache, roots_of: Callable[[], Roots], grace: float,
            remote: SyncRemote | None = None, dry_run: bool = False,
            now: float | None = None) -> GcResult:
    """Delete unreachable objects older than ``grace`` from the cache (and the remote).

    ``roots_of`` gathers the git roots; the remote's roots are added here, and
    listed again right before deleting (see the module docstring).
    """
    start = time.time() if now is None else now
    cutoff = start - grace
    roots = roots_of()
    if remote is not None:
        remote_roots(remote, roots, cutoff)
    sweeps = [plan_objects(cache, set(roots.chunks), cutoff)]
    if remote is not None:
        sweeps.append(plan_manifests(remote, roots.manifests, cutoff))
        sweeps.append(plan_objects(remote.objects, set(roots.chunks), cutoff))
    if dry_run:
        return GcResult(sweeps, start)
    if remote is not None:
        again = Roots()
        remote_roots(remote, again, cutoff)
        sweeps[1].keys = [(k, n) for k, n in sweeps[1].keys
                          if "blake3:" + k.split("/")[-1].removesuffix(".json")
                          not in again.manifests]
        kept = with_bases(remote.objects, again.chunks)
        sweeps[2].keys = [(k, n) for k, n in sweeps[2].keys
                          if "blake3:" + k.split("/")[1] + k.split("/")[2] not in kept]
        delete(remote.objects, sweeps[1])  # manifests before the objects they name
        delete(remote.objects, sweeps[2])
    delete(cache, sweeps[0])
    return GcResult(sweeps, start)


# -- repack ---------------------------------------------------------------------------------------
@dataclass
class Repack:
    objects: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def repack(store: ObjectStore, max_depth: int, dry_run: bool = False) -> Repack:
    """Rewrite delta objects whose chain is deeper than ``max_depth`` as full objects.

    Invariant 3 allows exactly this: the same raw bytes in another storage form, one
    atomic write under the same name, so readers at any moment see a valid object.
    ``max_depth`` 0 rewrites every delta.  A delta over a repacked base keeps the
    depth recorded when it was written, which only overstates its chain.
    """
    result = Repack()

    def visit(item: tuple[str, int, float | None]) -> tuple[int, int] | None:
        digest, size, _ = item
        header = store.delta_header(digest)
        if header is None or header.depth <= max_depth:
            return None
        if dry_run:
            return size, 0
        # the delta's element size is its dtype's item size: the store's auto codec uses it
        return size, store.put(digest, store.get(digest), header.elem)

    for _, done in bounded_map(visit, list(store.iter_digests()), store.concurrency):
        if done is not None:
            result.objects += 1
            result.bytes_before += done[0]
            result.bytes_after += done[1]
    return result
