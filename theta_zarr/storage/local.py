"""A folder on a local or network file system."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

from .base import BlobInfo, BlobNotFound, BlobStore, Parts, StorageError


class LocalStore(BlobStore):
    """Blobs as files; writes go to a temporary name in the same folder, then link/rename."""

    def __init__(self, root: str):
        self.root = root
        self.url = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

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
