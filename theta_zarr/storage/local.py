"""A folder on a local or network file system."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import blake3

from .base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ConditionFailed,
    NotABlob,
    Parts,
    RootMissing,
    StorageError,
    too_large,
)

#: Names of temporary files (never listed as blobs; gc removes old ones) and lock files.
TMP_PREFIX = ".tmp-"
_tmp_names = itertools.count()  # next() is atomic under the GIL
LOCK_PREFIX = ".tmp-lock."


T = TypeVar("T")


def _in_folder(folder: str, create: Callable[[], T]) -> T:
    """``create()`` a file in ``folder``, making the folder where it is missing; a prune
    may remove a folder just made (it removes empty ones), so it is made again, twice."""
    for attempt in range(3):
        try:
            return create()
        except FileNotFoundError:
            if attempt == 2:
                raise
            os.makedirs(folder, exist_ok=True)
    raise AssertionError("unreachable")


def writev_all(fd: int, parts: Parts) -> None:
    """Write every part, in order, at the file position of ``fd``: ``writev`` may write
    less than asked (a signal, a nearly full disk)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]


class LocalStore(BlobStore):
    """Blobs as files; writes go to a temporary name in the same folder, then link/rename."""

    conditional_writes = True

    def __init__(self, root: str):
        self.root = root
        self.url = root

    def _path(self, key: str) -> str:
        # keys use "/", which every platform's file calls take
        return f"{self.root}/{key}"

    def check_root(self, for_write: bool = False) -> None:
        """A reader needs the folder; a writer creates it, but only inside an existing
        folder (an unmounted share must not become a folder on the local disk)."""
        if os.path.isdir(self.root):
            return
        if os.path.lexists(self.root):
            raise RootMissing(f"{self.root} is a file, not a folder")
        parent = os.path.dirname(self.root)
        if for_write and os.path.isdir(parent):
            return
        why = "" if not for_write else f" ({parent} is a file, not a folder)" \
            if os.path.lexists(parent) else f" (nor does {parent})"
        raise RootMissing(f"folder {self.root} does not exist{why}")

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return self._read(key, -1, max_bytes)

    def read_head(self, key: str, n: int) -> bytes:
        """The first ``n`` bytes of the blob (fewer if it is shorter)."""
        return self._read(key, n)

    def _read(self, key: str, n: int, max_bytes: int | None = None) -> bytes:
        """``n`` bytes of the blob (all with -1).  Only a regular file is a blob: a FIFO
        or a link to ``/dev/zero`` that whoever shares the folder put at a key would hang
        the reader or fill its memory, so it is refused (NotABlob) before a byte is read;
        so is one of more than ``max_bytes`` (a sparse file of a terabyte costs nothing
        to make)."""
        try:
            # O_NONBLOCK: opening a FIFO that no one writes must not block
            with open(self._path(key), "rb",
                      opener=lambda path, flags: os.open(path, flags | os.O_NONBLOCK)) as f:
                mode = os.fstat(f.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise NotABlob(f"cannot read {key} from {self.describe()}: it is "
                                   f"{_kind(mode)}, not a file; remove it from the folder")
                if max_bytes is not None:
                    size = os.fstat(f.fileno()).st_size
                    if size > max_bytes:
                        raise too_large(self.describe(), key, max_bytes, size)
                    # read at most one byte more than allowed: the file may grow meanwhile
                    n = max_bytes + 1 if n < 0 else min(n, max_bytes + 1)
                data = f.read(n)
                if max_bytes is not None and len(data) > max_bytes:
                    raise too_large(self.describe(), key, max_bytes)
                return data
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            # a folder of blobs at the key, or a blob where a folder of the key would be:
            # no blob here, as an object store says for a key that is only a prefix
            raise BlobNotFound(f"{key} not found in {self.describe()}") from None
        except StorageError:
            raise
        except OSError as e:
            raise StorageError(f"cannot read {key} from {self.describe()}: {e.strerror}") from None

    def put(self, key: str, parts: Parts) -> None:
        """Write under a temporary name (this process, thread and a counter: unique
        without mkstemp's retries), read-only, then rename over ``key``.  A checkpoint
        of 10^5 small tensors writes 10^5 objects, so this path stays a handful of
        syscalls."""
        path = self._path(key)
        folder = os.path.dirname(path)
        tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-"
                                   f"{next(_tmp_names)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # not inherited by children (PEP 446)
        try:
            fd = _in_folder(folder, lambda: os.open(tmp, flags, 0o444))
        except OSError as e:
            raise StorageError(f"cannot write {key} to {self.describe()}: "
                               f"{_strerror(e)}") from None
        try:
            try:
                writev_all(fd, parts)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(
                f"cannot write {key} to {self.describe()}: {_strerror(e)}") from None

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self._walk(prefix, temporary=False)

    def prune(self, prefix: str) -> None:
        """rmdir(2) every empty folder under ``prefix``, deepest first: a folder that is not
        empty (or gains a file meanwhile) stays, and a writer that finds its folder gone
        makes it again (``put``)."""
        top = self._path(prefix.rstrip("/"))
        for folder, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    def _walk(self, prefix: str, temporary: bool) -> Iterator[BlobInfo]:
        top = self._path(prefix.rstrip("/")) if prefix else self.root

        def unreadable(e: OSError) -> None:
            if isinstance(e, (FileNotFoundError, NotADirectoryError)):
                return  # no such prefix, or a folder removed while we looked
            # os.walk skipped such a folder without a word: a listing of refs without
            # another group's refs/team/ let gc delete what they name
            where = os.path.relpath(e.filename or top, self.root).replace(os.sep, "/")
            raise StorageError(f"cannot list {where}/ in {self.describe()}: "
                               f"{_strerror(e)}")

        for folder, dirs, files in os.walk(top, onerror=unreadable):
            dirs.sort()
            rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in sorted(files):
                if name.startswith(TMP_PREFIX) != temporary:
                    continue
                try:
                    st = os.stat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue  # renamed or removed while we looked
                key = name if rel == "." else f"{rel}/{name}"
                yield BlobInfo(key, st.st_size, st.st_mtime)

    def move(self, src: str, dst: str) -> None:
        """rename(2): atomic on one file system."""
        target = self._path(dst)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(self._path(src), target)
        except FileNotFoundError:
            raise BlobNotFound(f"{src} not found in {self.describe()}") from None
        except OSError as e:
            raise StorageError(f"cannot move {src} in {self.describe()}: {e.strerror}") from None

    def debris(self) -> Iterator[BlobInfo]:
        """Every ``.tmp-*`` file: partial writes of killed writers, and ref lock files."""
        return self._walk("", temporary=True)

    def delete_debris(self, key: str) -> bool:
        """Unlink a temporary file; a ref's lock file only while nobody holds it (taken
        here without waiting, and lockers re-check the inode they locked, see _lock)."""
        path = self._path(key)
        if not os.path.basename(path).startswith(LOCK_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return True
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use: a ref is being moved right now
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return True
        finally:
            os.close(fd)

    # -- conditional writes --------------------------------------------------------------
    # The version token is the blake3 of the content: a blob is only ever replaced
    # whole (rename), so the bytes read and their token always belong together.

    def get_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        data = self.get(key, max_bytes)
        return data, _token(data)

    def put_if(self, key: str, data: bytes, expect: str | None) -> str:
        """Create with link(2) (fails if the name exists, like O_EXCL, but the file is
        complete before it appears); compare-and-swap under an flock(2) on a sidecar
        lock file, then rename over the old file."""
        path = self._path(key)
        folder = os.path.dirname(path)
        tmp = None
        try:
            fd, tmp = _in_folder(folder, lambda: tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise StorageError(f"cannot write {key} to {self.describe()}: "
                               f"{_strerror(e)}") from None
        try:
            if expect is None:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    # empty folders in the way (refs/run7/ once its refs were deleted by
                    # hand) are removed, as git removes them in the way of a new ref
                    if not os.path.isdir(path) or os.path.islink(path):
                        raise ConditionFailed(
                            f"{key} already exists in {self.describe()}") from None
                    if not _remove_empty_tree(path):
                        raise StorageError(f"cannot write {key} to {self.describe()}: a "
                                           "folder is in the way, holding files that are "
                                           "no refs; remove it") from None
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise ConditionFailed(
                            f"{key} already exists in {self.describe()}") from None
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
            raise StorageError(f"cannot write {key} to {self.describe()}: "
                               f"{_strerror(e)}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return _token(data)

    @contextlib.contextmanager
    def _lock(self, path: str) -> Iterator[None]:
        """An exclusive flock(2) on the ref's sidecar lock file.  gc may unlink an idle
        lock file, so after locking, the file must still be the one at that name;
        otherwise lock the new one."""
        folder, name = os.path.split(path)
        lock_path = os.path.join(folder, f"{LOCK_PREFIX}{name}")
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)


def _remove_empty_tree(path: str) -> bool:
    """rmdir(2) the folder ``path`` and its empty sub-folders, deepest first; False where
    it holds a file (or cannot be removed)."""
    for folder, _, _ in os.walk(path, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    return not os.path.lexists(path)


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, words in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"),
                        (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def _strerror(e: OSError) -> str:
    """The OS's words, with "disk full" said plainly for ENOSPC (and quota)."""
    text = e.strerror or str(e)
    return f"disk full ({text})" if e.errno in (errno.ENOSPC, errno.EDQUOT) else text


def _token(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()
