"""Any fsspec URL (memory://, s3://, gs://, ...): the general backend."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.exceptions import FSTimeoutError

from .base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ConditionalWritesUnsupported,
    Parts,
    StorageError,
    too_large,
)


class FsspecStore(BlobStore):
    """Blobs through an fsspec filesystem; a single PUT per blob is atomic on object stores."""

    #: keyword arguments of every whole-blob read (``cat_file``), for a backend whose
    #: library needs telling how to read one blob in one request
    _read_options: dict[str, Any] = {}

    def __init__(self, url: str, storage_options: dict[str, Any]):
        self.url = url.rstrip("/")
        # Listings must never answer existence checks from a stale cache: another
        # writer (a concurrent push) may have added objects since.
        options = {"use_listings_cache": False, **storage_options}
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as e:
            raise StorageError(f"cannot open {self.describe()}: {e}") from None
        self.root = self.root.rstrip("/")
        #: seconds one call may take, the storage library's own retries included (None:
        #: no bound); the object layer sets it to its retry budget
        self.timeout: float | None = None

    @property
    def _bound(self) -> dict[str, Any]:
        """The per-call time bound, for async filesystems (whose calls accept one)."""
        if self.timeout and getattr(self.fs, "async_impl", False):
            return {"timeout": self.timeout}
        return {}

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _bucket_key(self, key: str) -> tuple[str, str]:
        """(bucket, object name) of a key, for object stores' own conditional requests."""
        bucket, path, _ = self.fs.split_path(self._path(key))
        return bucket, path

    def _fail(self, what: str, key: str, e: BaseException) -> StorageError:
        return fail(self, what, key, e)

    def exists(self, key: str) -> bool:
        try:
            return bool(self.fs.exists(self._path(key), **self._bound))
        except Exception as e:
            raise self._fail("check", key, e) from None

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        # with a bound: a ranged read of one byte more than allowed (still one request)
        ranged = {} if max_bytes is None else {"start": 0, "end": max_bytes + 1}
        try:
            data = bytes(self.fs.cat_file(self._path(key), **ranged, **self._read_options,
                                          **self._bound))
        except Exception as e:
            if ranged and _unsatisfiable(e):
                return b""  # a range from byte 0 fails only on an empty blob
            raise self._fail("read", key, e) from None
        if max_bytes is not None and len(data) > max_bytes:
            raise too_large(self.describe(), key, max_bytes)
        return data

    def get_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """Refused, as ``BlobStore`` refuses it; for an http(s) URL the message says what
        such a remote is for (refs are read with their version, which HTTP gives none of)."""
        from .open import NO_REFS, is_read_only, read_only_hint  # here: open.py imports us

        if is_read_only(self.url):
            raise ConditionalWritesUnsupported(
                f"{self.describe()} {NO_REFS}: {read_only_hint(self.url)}")
        return super().get_versioned(key, max_bytes)

    def put(self, key: str, parts: Parts) -> None:
        data = b"".join(parts)
        try:
            self.fs.pipe_file(self._path(key), data, **self._bound)
        except Exception as e:
            raise self._fail("write", key, e) from None

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key), **self._bound)
        except FileNotFoundError:
            pass
        except Exception as e:
            raise self._fail("delete", key, e) from None

    def move(self, src: str, dst: str) -> None:
        """A server-side copy (S3 CopyObject, GCS rewrite), then a delete of ``src``."""
        try:
            self.fs.copy(self._path(src), self._path(dst), **self._bound)
        except Exception as e:
            raise self._fail("move", src, e) from None
        self.delete(src)

    def _find(self, prefix: str) -> dict[str, dict[str, Any]]:
        """{path: info} of every blob under the folder-like ``prefix`` (the library's
        ``find``); raises FileNotFoundError where the library says it is absent."""
        top = self._path(prefix.rstrip("/")) if prefix else self.root
        return self.fs.find(top, detail=True, **self._bound)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        try:
            found = self._find(prefix)
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._fail("list", prefix or "/", e) from None
        start = len(self.root) + 1
        for path, info in sorted(found.items()):
            if path.endswith("/"):  # a folder marker (a console's "Create folder"): no blob
                continue
            path = path.lstrip("/") if not self.root.startswith("/") else path
            key = path[start:] if path.startswith(self.root + "/") else path.split(
                self.root.lstrip("/") + "/", 1)[-1]
            mtime = info.get("mtime") or info.get("LastModified") or info.get("updated")
            yield BlobInfo(key, int(info.get("size") or 0), _to_ts(mtime))


def _unsatisfiable(e: BaseException) -> bool:
    """True if ``e`` is a 416 answer to a ranged read (gcsfs: HttpError code 416; s3fs:
    InvalidRange, raised as EINVAL "The requested range is not satisfiable")."""
    return getattr(e, "code", None) == 416 or (
        isinstance(e, OSError) and e.errno == errno.EINVAL and "range" in str(e).lower())


def fail(store: BlobStore, what: str, key: str, e: BaseException) -> StorageError:
    """One StorageError line for a failed call: not found, no answer in time, or the
    library's own words."""
    if isinstance(e, FileNotFoundError):
        return BlobNotFound(f"{key} not found in {store.describe()}")
    if isinstance(e, (FSTimeoutError, asyncio.TimeoutError)):
        return StorageError(f"cannot {what} {key} in {store.describe()}: no answer within "
                            f"{getattr(store, 'timeout', None) or '?'} s")
    text = " ".join(str(e).split()) or type(e).__name__
    if any(c.__name__ in _NO_CREDENTIALS for c in type(e).__mro__):
        from .open import credential_hint  # here: open.py imports the backends

        text += f" (theta-zarr takes none itself: the storage library looks in " \
                f"{credential_hint(store.describe())})"
    return StorageError(f"cannot {what} {key} in {store.describe()}: {text}")


#: exception class names that mean the storage library found no credentials at all:
#: botocore's ("Unable to locate credentials") and google-auth's (no default credentials)
_NO_CREDENTIALS = frozenset({"NoCredentialsError", "DefaultCredentialsError"})


#: exception class names (anywhere in the class's MRO) that mean the endpoint did not
#: answer: the built-in ConnectionError (refused, reset), botocore's ConnectionError
#: (EndpointConnectionError, ConnectTimeoutError) and aiohttp's connector errors
_NO_ANSWER = frozenset({"ConnectionError", "TimeoutError", "ClientConnectorError"})


def unreachable(e: BaseException) -> bool:
    """True if ``e`` says the endpoint gave no answer (not a refusal such as 403)."""
    return isinstance(e, (FSTimeoutError, asyncio.TimeoutError)) or \
        any(c.__name__ in _NO_ANSWER for c in type(e).__mro__)


def _to_ts(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    ts = getattr(value, "timestamp", None)
    if callable(ts):
        return float(ts())
    try:
        from datetime import datetime

        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
