"""ObjectStore: content-addressed chunk objects over one BlobStore.

Layout ``objects/<hex[:2]>/<hex[2:]>``, identical in the cache and every remote.
Reads are decoded and checked against the digest before anyone sees them
(invariant 4); writes are whole objects under their digest (invariant 3).  Many
objects move at once through a bounded thread pool, results streaming back as
they complete, so memory stays bounded by concurrency x chunk size.

An object may be a delta (``xor-delta`` or ``int-delta``) against a base object
(delta.py): ``get`` resolves the chain through the same store (or a ``bases`` store
tried first, such as the local cache), one chain at a time and at most
``delta.MAX_DEPTH`` deep, verifying every base against its digest and the result against the
object's.  Recently used bases stay in a small LRU, so the chunks of several
versions of one parameter resolve their shared bases once.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from . import chunking, codecs, delta
from .manifest import DIGEST_RE
from .storage import (
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    NotABlob,
    RootMissing,
    StorageError,
)

DEFAULT_CONCURRENCY = 16
#: existence checks of fewer objects than this are always asked one by one
LIST_MIN_CHECKS = 32
#: a store estimated to hold more objects than this is never listed whole to answer
#: existence (the listing's entries are held in memory while it runs)
LIST_MAX_OBJECTS = 100_000
#: the most requests in flight one remote may be given (theta-zarr.concurrency, the
#: remote option ``concurrency``)
MAX_CONCURRENCY = 1024
#: seconds one storage operation may spend, retries of every layer included
DEFAULT_RETRY_TIMEOUT = 60.0
T = TypeVar("T")
R = TypeVar("R")


class ObjectError(Exception):
    """A missing or corrupt object; the message names the digest and the store.

    ``digest``: the object it is about, where the raiser knows it, or the one a transfer
    was reading (a delta chain's tip, not the base that failed: see :func:`reading`), so
    a caller can name the file that needs it; None if unknown.
    """

    def __init__(self, message: str, digest: str | None = None):
        super().__init__(message)
        self.digest = digest


@contextlib.contextmanager
def reading(digest: str) -> Iterator[None]:
    """Marks an ObjectError raised inside as met while reading ``digest``."""
    try:
        yield
    except ObjectError as e:
        if e.digest is None:
            e.digest = digest
        raise


class MissingObjectError(ObjectError):
    """An object that is not in the store asked (nor, for a push or a read-through, in the
    cache): the message names it, or how many and the first, and where it was looked for."""


class MissingBaseError(ObjectError):
    """A delta object is there but a base in its chain is not (a broken chain)."""


#: verified raw bases kept for reuse by delta resolution, per store
BASE_CACHE_BYTES = 64 << 20


class _LRU:
    """A small, thread-safe LRU of raw chunks bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: bytes | memoryview) -> None:
        if len(value) > self.max_bytes // 4:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = bytes(value)
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


def object_key(digest: str) -> str:
    """The key of an object; refuses anything that is not a well-formed digest."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ObjectError(f"invalid digest {str(digest)[:80]!r}")
    hexd = digest[7:]
    return f"objects/{hexd[:2]}/{hexd[2:]}"


def digest_of_key(key: str) -> str | None:
    """The digest an ``objects/ab/cd...`` key names, or None for anything else."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "objects":
        return None
    candidate = "blake3:" + parts[1] + parts[2]
    return candidate if DIGEST_RE.fullmatch(candidate) else None


def matches(digest: str, raw: bytes | memoryview) -> bool:
    """True if ``raw`` hashes to ``digest`` (blake3 releases the GIL on large inputs)."""
    return chunking.digest(raw) == digest


#: a thread-pool task covers at least this many bytes of small chunks (or BATCH_ITEMS of
#: them): one task per 1 KiB chunk costs more than reading it (10^5-tensor checkpoints)
BATCH_BYTES = 1 << 20
BATCH_ITEMS = 256


def batched(items: Iterable[T], size_of: Callable[[T], int], max_bytes: int = BATCH_BYTES,
            max_items: int = BATCH_ITEMS) -> Iterator[list[T]]:
    """Consecutive ``items`` in lists of at least ``max_bytes`` (by ``size_of``) or
    ``max_items`` items, the last one shorter; a large item is a list of its own."""
    batch: list[T] = []
    size = 0
    for item in items:
        batch.append(item)
        size += size_of(item)
        if size >= max_bytes or len(batch) >= max_items:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                window: int | None = None) -> Iterator[tuple[T, R]]:
    """Apply ``fn`` in a thread pool, yielding (item, result) as each completes.

    At most ``window`` items are in flight, so memory is bounded however many
    items come.  The first exception is raised after in-flight work stops.
    """
    window = window or workers * 2
    it = iter(items)
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="theta-zarr") as pool:
        pending: dict[cf.Future, T] = {}
        try:
            for item in it:
                pending[pool.submit(fn, item)] = item
                if len(pending) >= window:
                    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        yield pending.pop(fut), fut.result()
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
        finally:
            for fut in pending:
                fut.cancel()


class ObjectStore:
    """has / get / put of many digests over one BlobStore, concurrent and verified."""

    def __init__(self, blobs: BlobStore, codec: str = "raw",
                 concurrency: int = DEFAULT_CONCURRENCY, retries: int = 4,
                 retry_timeout: float = DEFAULT_RETRY_TIMEOUT):
        codecs.check_writer(codec)
        self.blobs = blobs
        self.codec = codec
        self.concurrency = max(1, concurrency)
        self.retries = retries
        self.retry_timeout = retry_timeout
        if hasattr(blobs, "timeout"):
            blobs.timeout = retry_timeout  # one call, the library's retries included
        self._down: str | None = None
        self._bases = _LRU(BASE_CACHE_BYTES)
        self._base_locks: dict[str, threading.RLock] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.blobs.describe()

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # -- retries: transient storage errors are retried with backoff ------------
    def _retry(self, fn: Callable[[], R]) -> R:
        """Run one storage call, retrying StorageErrors with backoff within a budget.

        The budget, ``retry_timeout`` seconds, bounds one operation across every
        layer: the storage library's own retries run inside each call, which the
        store bounds by the same number, and no retry starts past the budget.  Once
        an operation has used its whole budget the store counts as down: every later
        call fails at once with the same message, so an outage costs one budget, not
        one per object.
        """
        if self._down is not None:
            raise StorageError(self._down)
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (BlobNotFound, RootMissing, NotABlob):
                raise
            except StorageError as e:
                if self._down is not None:
                    raise StorageError(self._down) from None
                out_of_time = time.monotonic() + delay > deadline
                if attempt == self.retries or out_of_time:
                    if out_of_time:
                        self._down = (f"{e} (gave up after {self.retry_timeout:g} s of "
                                      "retries; see retry-timeout in docs/configuration.md)")
                        raise StorageError(self._down) from None
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def revive(self) -> None:
        """Forget an outage: the next call is tried again, with a whole budget (a
        long-running caller, such as ``watch``, starting its next round of work)."""
        self._down = None

    def check_root(self, for_write: bool = False) -> None:
        """The backend's ``check_root`` (RootMissing: no such bucket or folder), within the
        retry budget: an endpoint that does not answer counts as the outage it is, so the
        operations that follow fail at once instead of spending a budget again."""
        self._retry(lambda: self.blobs.check_root(for_write=for_write))

    # -- single objects ---------------------------------------------------------
    def has(self, digest: str) -> bool:
        key = object_key(digest)
        return self._retry(lambda: self.blobs.exists(key))

    def get_encoded(self, digest: str, size: int | None = None) -> bytes:
        """The stored object as it is.  ``size``, where the caller knows the chunk's raw
        size (from a manifest), bounds what is read: an object larger than any storage
        form of that chunk takes is corrupt (ObjectError), found before it is read whole
        (a sparse file of a terabyte in a folder remote costs nothing to make)."""
        key = object_key(digest)
        bound = None if size is None else codecs.encoded_bound(size)
        try:
            return self._retry(lambda: self.blobs.get(key, bound))
        except BlobTooLarge as e:
            raise ObjectError(f"object {digest} in {self.url} is corrupt ({e.holds}, more "
                              f"than the {bound} any storage form of its chunk takes)",
                              digest) from None
        except BlobNotFound:
            raise MissingObjectError(f"object {digest} is missing from {self.url}") from None

    def get_head(self, digest: str, n: int = delta.PREFIX_BYTES) -> bytes:
        """The first ``n`` bytes of an object (enough to tell its form and delta base):
        a ranged read where the backend offers one, else the whole object."""
        key = object_key(digest)
        blobs = self.blobs

        def read() -> bytes:
            fs, path = getattr(blobs, "fs", None), getattr(blobs, "_path", None)
            if fs is not None and path is not None:
                try:
                    return bytes(fs.cat_file(path(key), start=0, end=n))[:n]
                except FileNotFoundError:
                    raise BlobNotFound(key) from None
                except Exception:
                    pass  # no ranged reads here: read it whole
            return blobs.read_head(key, n)

        try:
            return self._retry(read)
        except BlobNotFound:
            raise MissingObjectError(f"object {digest} is missing from {self.url}") from None

    def delta_header(self, digest: str) -> delta.DeltaHeader | None:
        """The delta header of a stored object, None for a full object."""
        try:
            return delta.read_header(self.get_head(digest))
        except codecs.CodecError as e:
            raise ObjectError(f"object {digest} in {self.url} is corrupt ({e})") from None

    def get(self, digest: str, bases: ObjectStore | None = None, size: int | None = None
            ) -> bytes | memoryview:
        """The verified raw bytes of a chunk, resolving delta chains.

        ``bases`` is another store (the local cache) asked first for delta bases;
        ``size``, where the caller knows it (from a manifest), is the chunk's raw size:
        an object that would decode to more is refused before more is allocated (see
        :meth:`decode`).
        """
        return self.decode(digest, self.get_encoded(digest, size), bases, size=size)

    def decode(self, digest: str, obj: bytes | memoryview, bases: ObjectStore | None = None,
               _depth: int = 0, size: int | None = None) -> bytes | memoryview:
        """The verified raw bytes of an encoded object read from this store (``get``).

        Decoding never produces more than ``size`` bytes when given, and never more than
        ``codecs.MAX_RAW`` (the manifest giving ``size`` may be hostile too): a few KB of
        zstd from a hostile remote could otherwise expand to gigabytes in memory before
        the digest check refuses them.
        """
        limit = codecs.MAX_RAW if size is None else min(size, codecs.MAX_RAW)
        try:
            name, payload = codecs.split(obj)
            if name in delta.NAMES:
                header, body = delta.parse(payload, name)
            else:
                raw = codecs.get_codec(name).decode(payload, limit)
        except codecs.TooLarge as e:
            if size is None or size > limit:
                raise ObjectError(f"object {digest} in {self.url} is corrupt ({e})") from None
            raise ObjectError(f"object {digest} in {self.url} decodes to more than the {size} "
                              f"bytes its manifest gives the chunk; refused before decoding "
                              f"it (a corrupt object, or a manifest edited without its "
                              f"chunks)") from None
        except codecs.CodecError as e:
            raise ObjectError(f"object {digest} in {self.url} is corrupt ({e})") from None
        if name in delta.NAMES:
            if _depth >= delta.MAX_DEPTH:
                raise ObjectError(f"object {digest} in {self.url}: delta chain deeper than "
                                  f"{delta.MAX_DEPTH} (corrupt or looping chain)")
            base_raw = self._base(header.base, digest, bases, _depth + 1)
            if size is not None and len(base_raw) != size:
                raise ObjectError(f"object {digest} in {self.url} is a delta against base "
                                  f"{header.base} of {len(base_raw)} bytes, and its manifest "
                                  f"gives the chunk {size}")
            try:
                raw = delta.apply(header, body, base_raw)
            except codecs.CodecError as e:
                raise ObjectError(f"object {digest} in {self.url} is corrupt ({e}; "
                                  f"delta against base {header.base})") from None
            if not matches(digest, raw):
                raise ObjectError(
                    f"object {digest} in {self.url} is corrupt (its delta against base "
                    f"{header.base} gives content that does not match the digest)")
            return raw
        if not matches(digest, raw):
            raise ObjectError(
                f"object {digest} in {self.url} is corrupt (content does not match digest)")
        return raw

    def _base(self, base: str, of: str, bases: ObjectStore | None, depth: int) -> bytes:
        """The verified raw bytes of ``of``'s delta base: LRU, then ``bases``, then here.
        One thread resolves a given base at a time; the others wait for the LRU."""
        raw = self._bases.get(base)
        if raw is not None:
            return raw
        with self._lock:
            lock = self._base_locks.setdefault(base, threading.RLock())
        with lock:
            raw = self._bases.get(base)
            if raw is not None:
                return raw
            raw = None
            if bases is not None and bases is not self:
                try:
                    raw = bases.get(base)
                except ObjectError:
                    raw = None  # corrupt or missing there: the store itself decides
            if raw is None:
                try:
                    obj = self.get_encoded(base)
                except MissingObjectError:
                    raise MissingBaseError(
                        f"object {of} in {self.url} is a delta against base {base}, "
                        f"which is missing from {self.url}") from None
                try:
                    raw = self.decode(base, obj, bases, depth)
                except MissingBaseError as e:
                    raise MissingBaseError(f"{e} (needed through the chain of {of})") from None
                except ObjectError as e:
                    raise ObjectError(f"object {of} in {self.url} is a delta against base "
                                      f"{base}, which cannot be read: {e}") from None
            raw = bytes(raw)
            self._bases.put(base, raw)
        with self._lock:
            self._base_locks.pop(base, None)
        return raw

    def put(self, digest: str, raw: bytes | memoryview, elem: int = 1) -> int:
        """Store a raw chunk (encoded with this store's codec, or chosen by ``auto`` from
        ``elem``, the item size in bytes of its dtype); returns bytes written."""
        return self.put_parts(digest, codecs.encode(raw, self.codec, elem))

    def put_parts(self, digest: str, parts: list[bytes | memoryview]) -> int:
        """Store an encoded object given as parts written in order; returns its size."""
        key = object_key(digest)
        self._retry(lambda: self.blobs.put(key, parts))
        return sum(len(p) for p in parts)

    def put_encoded(self, digest: str, obj: bytes | memoryview) -> int:
        """Store an already-encoded object as it is (a transfer between stores)."""
        key = object_key(digest)
        self._retry(lambda: self.blobs.put(key, [obj]))
        return len(obj)

    def delete(self, digest: str) -> None:
        key = object_key(digest)
        self._retry(lambda: self.blobs.delete(key))

    # -- many objects at once -----------------------------------------------------
    def missing(self, digests: Iterable[str]) -> set[str]:
        """Which of these digests the store lacks.

        Asked object by object (concurrent existence checks), or, on an object store
        where that costs more requests than listing every object it holds, by one
        listing: the size of the store is estimated from one of the 256 key prefixes
        (digests are uniform), as DVC does before it chooses between querying and
        traversing a remote (dvc-data, ``HashFileDB.oids_exist``).  A first push of
        351 chunks to an empty bucket then costs two listings instead of 351 requests.
        """
        todo = sorted(set(digests))
        if self._lists_cheaper(len(todo)):
            wanted = set(todo)

            def scan() -> set[str]:
                return {d for d, _, _ in self.iter_digests() if d in wanted}
            return wanted - self._retry(scan)
        return {d for d, present in bounded_map(self.has, todo, self.concurrency) if not present}

    def _lists_cheaper(self, n: int) -> bool:
        """True when listing the store's objects costs fewer requests than ``n`` checks."""
        page = self.blobs.list_page
        if page is None or n < LIST_MIN_CHECKS:
            return False
        sample = self._retry(lambda: sum(1 for _ in self.blobs.list("objects/00/")))
        estimate = sample * 256
        return estimate <= LIST_MAX_OBJECTS and 2 * (estimate // page + 1) <= n

    def get_many(self, digests: Iterable[str]) -> Iterator[tuple[str, bytes | memoryview]]:
        """(digest, verified raw bytes) for each digest, concurrently, as they arrive."""
        yield from bounded_map(lambda d: self.get(d), digests, self.concurrency)

    def put_many(self, items: Iterable[tuple[str, bytes | memoryview]]) -> int:
        total = 0
        for _, n in bounded_map(lambda it: self.put(*it), items, self.concurrency):
            total += n
        return total

    def iter_digests(self) -> Iterator[tuple[str, int, float | None]]:
        """(digest, stored size, mtime) of every object in the store."""
        for info in self.blobs.list("objects/"):
            d = digest_of_key(info.key)
            if d is not None:
                yield d, info.size, info.mtime
