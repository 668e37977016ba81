"""ObjectStore: content-addressed chunk objects over one BlobStore.

Layout ``objects/<hex[:2]>/<hex[2:]>``, identical in the cache and every remote.
Reads are decoded and checked against the digest before anyone sees them
(invariant 4); writes are whole objects under their digest (invariant 3).  Many
objects move at once through a bounded thread pool, results streaming back as
they complete, so memory stays bounded by concurrency x chunk size.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import blake3

from . import codecs
from .manifest import DIGEST_RE
from .storage import BlobNotFound, BlobStore, StorageError

DEFAULT_CONCURRENCY = 16
T = TypeVar("T")
R = TypeVar("R")


class ObjectError(Exception):
    """A missing or corrupt object; the message names the digest and the store."""


class MissingObjectError(ObjectError):
    pass


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
    return "blake3:" + blake3.blake3(raw).hexdigest() == digest


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
                 concurrency: int = DEFAULT_CONCURRENCY, retries: int = 4):
        codecs.get_codec(codec)
        self.blobs = blobs
        self.codec = codec
        self.concurrency = max(1, concurrency)
        self.retries = retries

    @property
    def url(self) -> str:
        return self.blobs.describe()

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # -- retries: transient storage errors are retried with backoff ------------
    def _retry(self, fn: Callable[[], R]) -> R:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except BlobNotFound:
                raise
            except StorageError:
                if attempt == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # -- single objects ---------------------------------------------------------
    def has(self, digest: str) -> bool:
        key = object_key(digest)
        return self._retry(lambda: self.blobs.exists(key))

    def get_encoded(self, digest: str) -> bytes:
        key = object_key(digest)
        try:
            return self._retry(lambda: self.blobs.get(key))
        except BlobNotFound:
            raise MissingObjectError(f"object {digest} is missing from {self.url}") from None

    def get(self, digest: str) -> bytes | memoryview:
        """The verified raw bytes of a chunk."""
        return self.decode(digest, self.get_encoded(digest))

    def decode(self, digest: str, obj: bytes | memoryview) -> bytes | memoryview:
        try:
            raw = codecs.decode(obj)
        except codecs.CodecError as e:
            raise ObjectError(f"object {digest} in {self.url} is corrupt ({e})") from None
        if not matches(digest, raw):
            raise ObjectError(
                f"object {digest} in {self.url} is corrupt (content does not match digest)")
        return raw

    def put(self, digest: str, raw: bytes | memoryview) -> int:
        """Store a raw chunk (encoded with this store's codec); returns bytes written."""
        key = object_key(digest)
        parts = codecs.encode(raw, self.codec)
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
        """Which of these digests the store lacks (concurrent existence checks)."""
        todo = sorted(set(digests))
        return {d for d, present in bounded_map(self.has, todo, self.concurrency) if not present}

    def get_many(self, digests: Iterable[str]) -> Iterator[tuple[str, bytes | memoryview]]:
        """(digest, verified raw bytes) for each digest, concurrently, as they arrive."""
        yield from bounded_map(self.get, digests, self.concurrency)

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
