"""Reachability, fsck and garbage collection of chunk objects, with a grace period.

Roots: every manifest blob reachable in git from any ref, the reflog (stashes
included: ``refs/stash`` and its reflog) and the index; with a remote, also its
refs, the shards staged for a ref, and every manifest younger than the grace
period (a push in flight has written its manifest but not yet its ref).  Digests
are taken from manifest blobs by pattern, so even a manifest that no longer
parses (a hand-edited or conflicted one) keeps its chunks alive.

Why a concurrent push is safe (docs/reliability.md has the interleavings tested):

* gc never deletes an object or manifest whose mtime (local) or LastModified /
  updated time (bucket) is after T0 - grace, T0 being gc's start.
* gc does not delete the remote's garbage outright: it first *moves* it to
  ``trash/<gc id>/`` (a rename, or a server-side copy and delete), then lists the
  remote's refs, staged shards and young manifests again, moves back whatever they
  now name (closed over delta bases), and only then empties its trash.  A ref
  written before that second listing therefore gets its objects back.
* A push checks, *after* its ref moved, that every object and manifest the ref
  names is in place, and uploads again from its cache whatever is not.  A ref
  written after gc's second listing is written after gc's moves to the trash, so
  that check sees every object gc took and puts it back.
* A ``git push`` moves a git branch, which the remote's refs do not show: the git
  face passes ``moved``, which lists the git remotes' refs again after the second
  listing; when a push landed since gc planned, everything goes back from the trash.
* Between the two, once both have finished, no ref names a missing object; while
  they run, a reader may briefly miss an object that a push is putting back.  A
  gc killed with objects in its trash leaves them there: the next gc moves every
  leftover trash entry back before it plans.

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
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from . import progress
from .cache import QUARANTINE, Cache
from .manifest import Manifest
from .objects import (
    MissingBaseError,
    MissingObjectError,
    ObjectError,
    ObjectStore,
    bounded_map,
    digest_of_key,
    object_key,
)
from .refs import RefValue
from .storage import BlobNotFound, BlobStore, StorageError
from .sync import MANIFESTS_PREFIX, FileSet, SyncRemote, Target, parse_target

_DIGEST_BYTES = re.compile(rb"blake3:[0-9a-f]{64}")
T = TypeVar("T")
R = TypeVar("R")


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
    #: manifest digest -> who needs it, for manifests that could not be read or parsed
    unreadable: dict[str, str] = field(default_factory=dict)
    #: problems found while walking (a git manifest that does not parse, for fsck)
    problems: list[str] = field(default_factory=list)

    def add_chunks(self, digests: Iterable[str], where: str) -> None:
        for d in digests:
            self.chunks.setdefault(d, where)


# -- remote side ----------------------------------------------------------------------------------
def _names_in(remote: SyncRemote, digest: str) -> tuple[Target | None, set[str], str | None]:
    """(parsed target, digests named, problem) of a remote manifest or set.

    A manifest that does not parse still names the digests its bytes hold (gc keeps
    them); a missing or corrupt one names nothing and is the problem.
    """
    try:
        data = remote.get_bytes(digest)
    except StorageError as e:
        return None, set(), str(e)
    try:
        return parse_target(data, f"{remote.url} {digest[:19]}"), set(), None
    except ValueError as e:
        named = {d.decode() for d in _DIGEST_BYTES.findall(data)}
        return None, named, str(e)


def remote_roots(remote: SyncRemote, roots: Roots, young_after: float,
                 strict: bool = False) -> list[str]:
    """Refs, staged shards and young manifests of a remote; returns problems found.

    A ref or staged shard that cannot be read does not stop the walk: it is a
    problem, and since it could name anything, every manifest on the remote
    becomes a root (gc then deletes only what no manifest names; it never decides
    on a partial view).  ``strict`` (fsck) also reports a ref whose manifest is
    missing or corrupt; gc ignores those (nothing to keep), and keeps the digests
    a manifest that does not parse still holds.
    """
    problems: list[str] = []
    todo: dict[str, str] = {}
    unreadable = False
    workers = remote.objects.concurrency

    def read_ref(name: str) -> tuple[RefValue | None, Exception | None]:
        try:
            return remote.refs.read(name), None
        except (StorageError, ValueError) as e:
            return None, e

    # every ref, and then every manifest, is a request: read concurrently, not one after
    # another (2,000 refs of a long run took minutes); decided in listing order
    names = [name for name, _ in remote.refs.list()]
    values = dict(bounded_map(read_ref, names, workers))
    for name in names:
        value, error = values[name]
        if error is not None:
            problems.append(f"unreadable ref {name[:80]!r} in {remote.url}: {error}")
            unreadable = True
            continue
        if value is not None:
            todo.setdefault(value.digest, f"ref {name}")
    try:
        staged = list(remote.all_staged())
    except (StorageError, ValueError) as e:
        problems.append(f"unreadable staged shard in {remote.url}: {e}")
        unreadable, staged = True, []
    for key, entry in staged:
        if entry.manifest is not None:
            todo.setdefault(entry.manifest, f"staged {key}")
        roots.add_chunks(entry.chunks, f"staged {key}")
    for digest, info in remote.iter_manifests():
        if unreadable or info.mtime is None or info.mtime >= young_after:
            what = "manifest kept for an unreadable ref" if unreadable else "recent manifest"
            todo.setdefault(digest, f"{what} {digest[:19]}")
    seen: set[str] = set()
    while todo:  # a wave of manifests at a time: a set's members are the next wave
        wave = {d: where for d, where in todo.items() if d not in seen}
        todo = {}
        seen |= wave.keys()
        roots.manifests |= wave.keys()
        found = dict(bounded_map(lambda d: _names_in(remote, d), wave, workers))
        for digest, where in wave.items():
            target, named, problem = found[digest]
            if problem is not None:
                roots.unreadable[digest] = where
                if strict:
                    problems.append(f"{where}: {problem}")
                roots.add_chunks(named, where)
                continue
            if isinstance(target, FileSet):
                for name, entry in target.files.items():
                    if entry.manifest is not None:
                        todo.setdefault(entry.manifest, f"{where}: {name}")
                    roots.add_chunks(entry.chunks, f"{where}: {name}")
            elif isinstance(target, Manifest):
                roots.add_chunks(target.digests(), where)
    return problems


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

    With ``fallback`` (the remote behind a cache), an object the store lacks is read and
    verified there instead (not kept), and reported missing only if the fallback lacks it
    too: what a checkout would fetch is checked, not only listed.
    """
    def check(digest: str, where: ObjectStore = store) -> str | None:
        try:
            where.get(digest, store if where is not store else None)
        except MissingBaseError as e:
            return f"broken delta chain: {e}; needed by {roots.chunks[digest]}"
        except MissingObjectError:
            if where is store and fallback is not None:
                return check(digest, fallback)
            at = f"{store.url} or {fallback.url}" if fallback else store.url
            return f"missing object {digest} ({object_key(digest)}) in {at}, " \
                   f"needed by {roots.chunks[digest]}"
        except ObjectError as e:
            return f"corrupt object {digest} ({object_key(digest)}) in {where.url}, " \
                   f"needed by {roots.chunks[digest]}: {e}"
        return None

    return _checked(check, sorted(roots.chunks), store)


def check_stored(store: Cache, skip: set[str]) -> list[str]:
    """Verify every object present in the cache that ``skip`` has not covered; a pack
    whose index is malformed is a problem too."""
    def check(digest: str) -> str | None:
        try:
            store.get(digest)
        except ObjectError as e:
            return f"corrupt object {digest} ({object_key(digest)}) in {store.url}: {e}"
        return None

    digests = [d for d, _, _ in store.iter_digests() if d not in skip]
    return _checked(check, digests, store) + sorted(store.bad_packs.values())


def _checked(check: Callable[[str], str | None], digests: list[str], store: ObjectStore
             ) -> list[str]:
    """The sorted messages of ``check`` over ``digests``, concurrently, with a bar of
    objects on a terminal."""
    found = []
    with progress.bar(len(digests), f"check {store.url}", unit="obj") as bar:
        for _, msg in bounded_map(check, digests, store.concurrency):
            bar.update()
            if msg:
                found.append(msg)
    return sorted(found)


# -- gc -------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    """What gc removes (or, in a dry run, would remove) from one place: ``where`` names it
    for people (a URL and what is swept there), ``keys`` are the blob keys relative to the
    store's root with their stored (encoded) sizes in bytes."""

    where: str
    keys: list[tuple[str, int]] = field(default_factory=list)  # (key, stored bytes)

    @property
    def nbytes(self) -> int:
        """The stored bytes of all the keys."""
        return sum(n for _, n in self.keys)


def plan_objects(store: ObjectStore, keep: set[str], cutoff: float) -> Sweep:
    """Objects not in ``keep`` and last written before ``cutoff`` (None mtime: kept).

    The keep-set is closed over delta bases, counting young objects as kept too: a
    delta written during the grace period keeps the old base it was made against.
    """
    sweep = Sweep(f"{store.url} (objects)")
    listed = list(store.iter_digests())
    young = {d for d, _, mtime in listed if mtime is None or mtime >= cutoff}
    keep = with_bases(store, keep | young, {d for d, _, _ in listed})
    for digest, size, mtime in listed:
        if digest not in keep and mtime is not None and mtime < cutoff:
            sweep.keys.append((object_key(digest), size))
    return sweep


def plan_manifests(remote: SyncRemote, keep: set[str], cutoff: float) -> Sweep:
    """The remote's manifests (and sets) not in ``keep`` (digests) and last written before
    ``cutoff`` (seconds since the epoch; a manifest with no mtime is kept)."""
    sweep = Sweep(f"{remote.url} (manifests)")
    for digest, info in remote.iter_manifests():
        if digest not in keep and info.mtime is not None and info.mtime < cutoff:
            sweep.keys.append((remote.manifest_key(digest), info.size))
    return sweep


def plan_debris(blobs: BlobStore, cutoff: float, where: str) -> Sweep:
    """Temporary files killed writers left (``.tmp-*``), last written before ``cutoff``."""
    sweep = Sweep(f"{where} (temporary files)")
    sweep.keys = [(i.key, i.size) for i in blobs.debris()
                  if i.mtime is not None and i.mtime < cutoff]
    return sweep


def plan_quarantine(cache: Cache, cutoff: float) -> Sweep:
    """Corrupt objects reads moved to ``<cache>/quarantine/`` before ``cutoff`` (a good
    copy replaced each; kept for a grace period to look into, then they only take room)."""
    sweep = Sweep(f"{cache.url} (quarantined objects)")
    sweep.keys = [(i.key, i.size) for i in cache.blobs.list(f"{QUARANTINE}/")
                  if i.mtime is not None and i.mtime < cutoff]
    return sweep


def _each(store: ObjectStore, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``fn(item)`` for every item, ``store.concurrency`` at a time, each call retried
    by ``store._retry``; the results in the order the calls finish.  The first error
    left after the retries is raised once the calls in flight stop."""
    return [r for _, r in bounded_map(lambda item: store._retry(lambda: fn(item)), list(items),
                                      store.concurrency)]


def delete(store: ObjectStore, sweep: Sweep) -> None:
    """Delete every key of ``sweep`` from ``store``'s blobs, ``store.concurrency`` at a
    time, each retried within the store's retry budget; a key already gone is no error.
    The first StorageError left after the retries is raised."""
    _each(store, lambda kv: store.blobs.delete(kv[0]), sweep.keys)


def delete_unused(cache: Cache, sweep: Sweep, cutoff: float) -> None:
    """Delete the cache objects of ``sweep`` unless a clean used one since gc listed it
    (``Cache.delete_unused``, and ``Cache.delete_unused_packed`` for those in packs);
    what was kept leaves the sweep."""
    def one(item: tuple[str, int]) -> bool:
        digest = digest_of_key(item[0])
        return digest is not None and cache.delete_unused(digest, cutoff)

    loose = {item for item, gone in bounded_map(one, list(sweep.keys), cache.concurrency)
             if gone}
    packed = cache.delete_unused_packed((digest_of_key(k) for k, _ in sweep.keys), cutoff)
    sweep.keys = [item for item in sweep.keys
                  if item in loose or digest_of_key(item[0]) in packed]


def delete_debris(blobs: BlobStore, sweep: Sweep) -> None:
    """Remove what is safe to remove now; a lock file in use stays (and leaves the sweep)."""
    sweep.keys = [(k, n) for k, n in sweep.keys if blobs.delete_debris(k)]


# -- the remote's trash ---------------------------------------------------------------------
TRASH_PREFIX = "trash/"


def _digest_of(key: str) -> str:
    """The digest an ``objects/..`` or ``manifests/<hex>.json`` key names."""
    if key.startswith(MANIFESTS_PREFIX):
        return "blake3:" + key.split("/")[-1].removesuffix(".json")
    return digest_of_key(key) or key


class Trash:
    """One gc run's trash on a remote: ``trash/<id>/<original key>``."""

    def __init__(self, remote: SyncRemote, run_id: str):
        self.store = remote.objects
        self.prefix = f"{TRASH_PREFIX}{run_id}/"
        self.keys: dict[str, str] = {}  # digest -> original key, of what is in here

    def take(self, keys: Iterable[str]) -> None:
        """Move these keys into the trash (a key already gone is skipped)."""
        def one(key: str) -> None:
            try:
                self.store.blobs.move(key, self.prefix + key)
            except BlobNotFound:
                return
            self.keys[_digest_of(key)] = key

        _each(self.store, one, keys)

    def give_back(self, digests: Iterable[str]) -> set[str]:
        """Move these digests' blobs back where they were; returns the digests moved."""
        todo = [d for d in set(digests) if d in self.keys]

        def one(digest: str) -> None:
            key = self.keys[digest]
            try:
                self.store.blobs.move(self.prefix + key, key)
            except BlobNotFound:
                pass

        _each(self.store, one, todo)
        for d in todo:
            self.keys.pop(d, None)
        return set(todo)

    def empty(self) -> None:
        _each(self.store, self.store.blobs.delete,
              [self.prefix + k for k in self.keys.values()])
        self.keys.clear()
        self.store.blobs.prune(self.prefix)  # a folder remote keeps no empty folders


def restore_leftovers(remote: SyncRemote) -> int:
    """Move everything an earlier, interrupted gc left in the trash back into place."""
    blobs = remote.blobs
    todo = []
    for info in list(blobs.list(TRASH_PREFIX)):
        parts = info.key.split("/", 2)
        if len(parts) == 3 and (parts[2].startswith("objects/")
                                or parts[2].startswith("manifests/")):
            todo.append((info.key, parts[2]))

    def one(item: tuple[str, str]) -> bool:
        try:
            blobs.move(*item)
        except BlobNotFound:
            return False
        return True

    moved = sum(_each(remote.objects, one, todo))
    blobs.prune(TRASH_PREFIX)
    return moved


def _relist_and_restore(remote: SyncRemote, trash: Trash, cutoff: float,
                        first: Roots) -> Roots:
    """List the remote's roots again and move back from ``trash`` whatever they name,
    manifests first (a ref may name a trashed set whose members were trashed too),
    then objects and, transitively, their delta bases.  Roots that ``first`` (the
    planning listing) had were closed over their bases when gc planned; new ones (a
    delta a push wrote since) are closed here."""
    while True:
        again = Roots()
        remote_roots(remote, again, cutoff)
        if not trash.give_back(again.unreadable):
            break
    new = set(again.chunks) - set(first.chunks)
    needed = set(again.chunks) | with_bases(remote.objects, new)
    while True:
        back = trash.give_back(needed)
        if not back:
            break
        needed = with_bases(remote.objects, back) - back
    return again


@dataclass
class GcResult:
    """What ``collect`` did: a Sweep per place (cache objects, cache temporary files, then,
    with a remote, its manifests, objects and temporary files, and last any quarantined
    cache objects), each holding only what was removed (or would be, in a dry run);
    ``start``: when gc started (seconds since the epoch; the grace period counts back from
    it); ``problems``: the remote's refs or staged shards that could not be read (every
    manifest there was then kept: ``remote_roots``); ``restored``: objects and
    manifests moved back from the trash because a concurrent push needed them."""

    sweeps: list[Sweep]
    start: float
    problems: list[str] = field(default_factory=list)
    restored: int = 0  # objects and manifests moved back from the trash
    #: why nothing was deleted from the remote after all (a git push landed meanwhile)
    aborted: str | None = None


def collect(cache: Cache, roots_of: Callable[[], Roots], grace: float,
            remote: SyncRemote | None = None, dry_run: bool = False,
            now: float | None = None, hook: Callable[[str], None] | None = None,
            keep_cache: bool = False, moved: Callable[[], str | None] | None = None
            ) -> GcResult:
    """Delete unreachable objects older than ``grace`` from the cache (and the remote).

    ``keep_cache``: leave the cache as it is (one other repositories share, whose
    chunks look unreachable from this one); only the remote is collected.

    ``roots_of`` gathers the git roots; the remote's roots are added here.  On the
    remote, garbage goes through a trash (see the module docstring).  ``hook`` is
    called with ``"planned"``, ``"trashed"`` and ``"restored"`` between the steps
    (tests interleave pushes there).  Temporary files older than ``grace`` go too.

    ``moved`` is asked once the remote's garbage is in the trash and its roots were
    listed again: a reason (a git push landed since gc planned: its commits, which this
    clone cannot see, may reuse that garbage) puts everything back, and nothing is
    deleted from the remote (``GcResult.aborted`` says why).
    """
    start = time.time() if now is None else now
    cutoff = start - grace
    step = hook or (lambda name: None)
    problems: list[str] = []
    restored = 0
    aborted = None
    if remote is not None and not dry_run:
        restored += restore_leftovers(remote)
    roots = roots_of()
    if remote is not None:
        problems += remote_roots(remote, roots, cutoff)
    if keep_cache:
        sweeps = [Sweep(f"{cache.url} (objects)"), Sweep(f"{cache.url} (temporary files)")]
        quarantined = Sweep(f"{cache.url} (quarantined objects)")
    else:
        sweeps = [plan_objects(cache, set(roots.chunks), cutoff),
                  plan_debris(cache.blobs, cutoff, cache.url)]
        quarantined = plan_quarantine(cache, cutoff)
    if remote is not None:
        sweeps.append(plan_manifests(remote, roots.manifests, cutoff))
        sweeps.append(plan_objects(remote.objects, set(roots.chunks), cutoff))
        sweeps.append(plan_debris(remote.blobs, cutoff, remote.url))
    if quarantined.keys:  # listed only where there are some (they are rare)
        sweeps.append(quarantined)
    step("planned")
    if dry_run:
        return GcResult(sweeps, start, problems)
    if remote is not None:
        trash = Trash(remote, f"{int(start)}-{uuid.uuid4().hex[:12]}")
        trash.take(k for k, _ in sweeps[2].keys)  # manifests before the objects they name
        trash.take(k for k, _ in sweeps[3].keys)
        step("trashed")
        _relist_and_restore(remote, trash, cutoff, roots)
        aborted = moved() if moved is not None else None
        if aborted is not None:
            trash.give_back(list(trash.keys))
        step("restored")
        gone = set(trash.keys.values())
        if aborted is None:
            restored += len(sweeps[2].keys) + len(sweeps[3].keys) - len(gone)
        for sweep in sweeps[2:4]:
            sweep.keys = [(k, n) for k, n in sweep.keys if k in gone]
        trash.empty()
        delete_debris(remote.blobs, sweeps[4])
    if not keep_cache:
        cache.quarantine_bad_packs()  # unreadable already: kept a grace period, then gone
    delete_unused(cache, sweeps[0], cutoff)
    delete_debris(cache.blobs, sweeps[1])
    delete(cache, quarantined)
    return GcResult(sweeps, start, problems, restored, aborted)


# -- a node cache: no roots, trimmed by age and size ------------------------------------------
def plan_prune(cache: Cache, cutoff: float, max_bytes: int | None = None) -> Sweep:
    """Objects of a cache that no repository owns (the node cache of ``publish``, ``watch``
    and ``pull``) to delete: every one last written before ``cutoff`` (seconds since the
    epoch; a clean that finds an object renews its mtime, as git freshens its objects),
    or with ``max_bytes``, only the least recently written ones beyond the newest
    ``max_bytes`` stored bytes, the way a least-recently-used cache (pip's, Hugging Face's
    hub cache) is trimmed.  An object written since ``cutoff`` is kept either way (a job
    may be cleaning or uploading it now), and so is every delta base a kept object needs.
    """
    sweep = Sweep(f"{cache.url} (objects)")
    listed = sorted(cache.iter_digests(), key=lambda item: item[2] or float("inf"),
                    reverse=True)  # newest first; no mtime: kept, as plan_objects keeps it
    keep: set[str] = set()
    held = 0
    within = max_bytes is not None  # still within the budget: older objects may stay
    for digest, size, mtime in listed:
        if within and mtime is not None and mtime < cutoff:
            within = held + size <= max_bytes  # the first that does not fit ends it
        if mtime is None or mtime >= cutoff or within:
            keep.add(digest)
            held += size
    keep = with_bases(cache, keep, {d for d, _, _ in listed})
    sweep.keys = [(object_key(d), n) for d, n, _ in listed if d not in keep]
    return sweep


def prune(cache: Cache, cutoff: float, max_bytes: int | None = None,
          dry_run: bool = False) -> list[Sweep]:
    """Trim a node cache (``plan_prune``), with its temporary files and quarantined objects
    last written before ``cutoff``; the Sweeps of what was removed (or would be).

    An object a clean renews while it is being deleted stays (``Cache.delete_unused``).
    Raises StorageError where the cache cannot be listed or an object deleted.
    """
    sweeps = [plan_prune(cache, cutoff, max_bytes), plan_debris(cache.blobs, cutoff, cache.url)]
    quarantined = plan_quarantine(cache, cutoff)
    if not dry_run:
        cache.quarantine_bad_packs()
        delete_unused(cache, sweeps[0], cutoff)
        delete_debris(cache.blobs, sweeps[1])
        delete(cache, quarantined)
    return sweeps + ([quarantined] if quarantined.keys else [])  # listed where there are any


# -- repack ---------------------------------------------------------------------------------------
@dataclass
class Repack:
    """What ``repack`` rewrote: ``objects`` delta objects made full, their stored bytes
    before and after (``bytes_after`` is 0 in a dry run, which writes nothing)."""

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
