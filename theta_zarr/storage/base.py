"""The small abstract interface every storage backend implements.

Operations are synchronous and thread-safe; the object layer runs many of them
at once from a bounded thread pool (fsspec's async filesystems serve such calls
from their event loop, so the requests overlap on the wire).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..redact import redact


class StorageError(OSError):
    """A storage operation failed; the message names the store."""


class BlobNotFound(StorageError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class NotABlob(StorageError):
    """The key holds what no blob can be (on a folder remote: a FIFO, a device, a socket,
    or a link to one): it is refused as it is, since retrying cannot change it."""


class BlobTooLarge(NotABlob):
    """The blob holds more bytes than any blob of its kind may (a ref, a manifest, an
    object of a known chunk): refused before it is read whole, and not retried."""

    holds = "it holds more"  #: the words for its size ("it holds 12 bytes")


def too_large(store: str, key: str, max_bytes: int, n: int | None = None) -> BlobTooLarge:
    """The one-line refusal of a blob over ``max_bytes`` (``n``: its size, if known)."""
    holds = f"it holds {n} bytes" if n is not None else "it holds more"
    e = BlobTooLarge(f"cannot read {key} from {store}: {holds}, more than the "
                     f"{max_bytes} it may (a damaged or hostile blob)")
    e.holds = holds
    return e


class RootMissing(StorageError):
    """The remote's bucket or folder does not exist (a typo, or not created yet)."""


class ConditionFailed(StorageError):
    """A conditional write lost: the blob existed (create) or had changed (compare-and-swap)."""


class ConditionalWritesUnsupported(StorageError):
    """The backend cannot write conditionally; refs there would not be safe, so none are made."""


@dataclass(frozen=True)
class BlobInfo:
    """One blob as a listing gives it: its ``key`` relative to the store's root, its
    ``size`` in bytes, and its modification time ``mtime`` in seconds since the epoch
    (None where the backend reports none)."""

    key: str
    size: int
    mtime: float | None = None


Parts = Sequence["bytes | memoryview"]


class BlobStore(ABC):
    """Blobs under one root, addressed by '/'-separated keys relative to it."""

    url: str

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The blob's bytes; raises BlobNotFound if absent, and BlobTooLarge (before it is
        read whole) if it holds more than ``max_bytes``."""

    def read_head(self, key: str, n: int) -> bytes:
        """The first ``n`` bytes of the blob (fewer if it is shorter); raises BlobNotFound
        if absent.  The default reads the whole blob; a folder reads only the head."""
        return self.get(key)[:n]

    @abstractmethod
    def put(self, key: str, parts: Parts) -> None:
        """Write the concatenated parts atomically (readers never see half a blob)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (a folder-like prefix)."""

    #: keys one listing request returns, on stores where listing many keys is cheaper
    #: than asking key by key (object stores: 1,000 per page on S3 and GCS); None where
    #: asking is cheap (a local folder), so existence is never answered by a listing
    list_page: int | None = None

    def describe(self) -> str:
        return redact(self.url)

    def check_root(self, for_write: bool = False) -> None:
        """Raise RootMissing when the bucket or folder under this store does not exist.

        Stores that cannot tell (memory://, other fsspec protocols) accept every root.
        ``for_write``: a writer may create what is missing below an existing root.
        """
        return None

    def move(self, src: str, dst: str) -> None:
        """Move a blob to another key (gc's trash); raises BlobNotFound if ``src`` is absent.

        The default copies then deletes; backends override it with a rename or a
        server-side copy.  Readers of ``dst`` never see half a blob.
        """
        data = self.get(src)
        self.put(dst, [data])
        self.delete(src)

    def prune(self, prefix: str) -> None:
        """Remove the folders left empty under ``prefix`` (and ``prefix`` itself when empty);
        object stores have no folders, so there is nothing to do there."""
        return None

    def debris(self) -> Iterator[BlobInfo]:
        """Temporary files killed writers left behind (``.tmp-*``); none on object stores,
        whose single PUTs leave nothing half-written.  Never listed by ``list``."""
        return iter(())

    def delete_debris(self, key: str) -> bool:
        """Remove one debris file if that is safe now; True if removed."""
        return False

    # -- conditional writes (refs) -------------------------------------------------------
    # Optional: only backends that the storage service itself can make atomic override
    # these.  The defaults refuse rather than emulate with a read-then-write, which
    # would let two racing writers both "win".

    #: True where put_if/get_versioned give a real server-side guarantee.
    conditional_writes: bool = False

    def get_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """The blob's bytes and an opaque version token (ETag, generation...) read together.

        Raises BlobNotFound if absent, BlobTooLarge if it holds more than ``max_bytes``.
        """
        raise ConditionalWritesUnsupported(
            f"{self.describe()} cannot read a blob with its version: refs need S3, GCS or "
            "a local folder")

    def put_if(self, key: str, data: bytes, expect: str | None) -> str:
        """Write ``data`` only if the blob is absent (``expect`` None) or still has version
        ``expect``; returns the new version token.  Raises ConditionFailed otherwise."""
        raise ConditionalWritesUnsupported(
            f"{self.describe()} has no conditional writes: refs need S3 (If-None-Match/"
            "If-Match), GCS (ifGenerationMatch) or a local folder")
