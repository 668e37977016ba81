"""A folder on a local or network file system."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator

import blake3

from .base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ConditionFailed,
    Parts,
    RootMissing,
    StorageError,
)


class LocalStore(BlobStore):
    """Blobs as files; writes go to a temporary name in the same folder, then link/rename."""

    conditional_writes = True

    def __init__(self, root: str):
        self.root = root
        self.url = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def check_root(self, for_write: bool = False) -> None:
        """A reader needs the folder; a writer creates it, but only inside an existing
        folder (an unmounted share must not become a folder on the local disk)."""
        if os.path.isdir(self.root):
            return
        parent = os.path.dirname(self.root)
        if for_write and os.path.isdir(parent):
            return
        raise RootMissing(f"folder {self.root} does not exist" +
                          ("" if not for_write else f" (nor does {parent})"))

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BlobNotFound(f"{key} not found in {self.describe()}") from None
        except OSError as e:
            raise StorageError(f"cannot read {key} from {self.describe()}: {e.strerror}") from None

    def put(self, key: str, parts: Parts) -> None:
        path = self._path(key)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        except OSError as e:
            raise StorageError(f"cannot write {key} to {self.describe()}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                for part in parts:
                    f.write(part)
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            hint = " (disk full)" if e.errno == errno.ENOSPC else ""
            raise StorageError(
                f"cannot write {key} to {self.describe()}: {e.strerror}{hint}") from None

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        top = self._path(prefix.rstrip("/")) if prefix else self.root
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in sorted(files):
                if name.startswith(".tmp-"):
                    continue
                st = os.stat(os.path.join(folder, name))
                key = name if rel == "." else f"{rel}/{name}"
                yield BlobInfo(key, st.st_size, st.st_mtime)

    # -- conditional writes --------------------------------------------------------------
    # The version token is the blake3 of the content: a blob is only ever replaced
    # whole (rename), so the bytes read and their token always belong together.

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        data = self.get(key)
        return data, _token(data)

    def put_if(self, key: str, data: bytes, expect: str | None) -> str:
        """Create with link(2) (fails if the name exists, like O_EXCL, but the file is
        complete before it appears); compare-and-swap under an flock(2) on a sidecar
        lock file, then rename over the old file."""
        path = self._path(key)
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise StorageError(f"cannot write {key} to {self.describe()}: {e.strerror}") from None
        try:
            if expect is None:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ConditionFailed(f"{key} already exists in {self.describe()}") from None
            else:
                with self._lock(path):
                    try:
                        current = self.get(key)
                    except BlobNotFound:
                        raise ConditionFailed(
                            f"{key} was deleted from {self.describe()}") from None
                    if _token(current) != expect:
                        raise ConditionFailed(f"{key} changed in {self.describe()}")
                    os.replace(tmp, path)
        except OSError as e:
            if isinstance(e, StorageError):
                raise
            raise StorageError(f"cannot write {key} to {self.describe()}: {e.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return _token(data)

    @contextlib.contextmanager
    def _lock(self, path: str) -> Iterator[None]:
        folder, name = os.path.split(path)
        fd = os.open(os.path.join(folder, f".tmp-lock.{name}"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _token(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()
