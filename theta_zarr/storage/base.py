"""The small abstract interface every storage backend implements.

Operations are synchronous and thread-safe; the object layer runs many of them
at once from a bounded thread pool (fsspec's async filesystems serve such calls
from their event loop, so the requests overlap on the wire).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


class StorageError(OSError):
    """A storage operation failed; the message names the store."""


class BlobNotFound(StorageError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


@dataclass(frozen=True)
class BlobInfo:
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
    def get(self, key: str) -> bytes:
        """The blob's bytes; raises BlobNotFound if absent."""

    @abstractmethod
    def put(self, key: str, parts: Parts) -> None:
        """Write the concatenated parts atomically (readers never see half a blob)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (a folder-like prefix)."""

    def describe(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """A URL fit for messages and logs: any user:password@ part removed."""
    return re.sub(r"(//)[^/@]*@", r"\1", url)


def open_store(url: str, storage_options: dict[str, Any] | None = None) -> BlobStore:
    """The BlobStore for a URL: a local path or file:// URL, or any fsspec URL."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    if "://" not in url:
        from .local import LocalStore

        return LocalStore(os.path.abspath(os.path.expanduser(url)))
    from .fsspec import FsspecStore

    return FsspecStore(url, storage_options or {})
