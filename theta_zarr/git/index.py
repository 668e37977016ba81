"""Record new stat data for working-tree files in git's index, blob ids untouched.

When theta-zarr writes a checkpoint into the working tree itself, git's index still
holds the stat data of the manifest git wrote there; ``git status`` would call the
larger file modified without looking (git trusts a size change).  This module
rewrites just the stat fields of those entries, the way git refreshes an entry:

- under git's own lock (``index.lock``, created exclusively; the new index is
  written there and renamed over ``index``), so it never races a git command;
- entries are read and written by dulwich (a maintained implementation of the
  index format, versions 2-4); the extensions section is kept byte for byte, and
  the rewrite is refused unless dulwich re-encodes every unchanged entry exactly
  as git wrote it, so nothing it does not understand is lost;
- a split index (``link`` extension) is refused: its entries live in two files.

Callers fall back to git's own pipe when this refuses (IndexUnsupported).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import struct
import time
from collections.abc import Callable, Iterator

from .. import interrupts

LOCK_WAIT_S = 5.0


class IndexUnsupported(RuntimeError):
    """The index cannot be rewritten safely here (format, extension or lock)."""


class IndexLocked(IndexUnsupported):
    """``index.lock`` stayed there while we waited: another git command holds it (or one
    that was killed left it).  git's own pipe cannot write the file either then."""


@dataclasses.dataclass(frozen=True)
class Stat:
    """What git keeps of a file's stat(2), as git truncates it (32 bits each)."""

    ctime: tuple[int, int]
    mtime: tuple[int, int]
    dev: int
    ino: int
    uid: int
    gid: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        m = 0xFFFFFFFF
        c, m_ = divmod(st.st_ctime_ns, 1_000_000_000), divmod(st.st_mtime_ns, 1_000_000_000)
        return cls((c[0] & m, c[1]), (m_[0] & m, m_[1]),
                   st.st_dev & m, st.st_ino & m, st.st_uid & m, st.st_gid & m, st.st_size & m)


def blob_id(data: bytes, object_format: str = "sha1") -> str:
    """git's object id of a blob holding ``data`` (hex)."""
    h = hashlib.new(object_format)
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


@dataclasses.dataclass
class Entry:
    """One stage-0 entry as the update function sees it."""

    path: str
    blob: str  # hex object id
    stat: Stat


#: Given the entry for a path, return the new stat to record (or None to leave it).
Update = Callable[[Entry], Stat | None]


class GitIndex:
    """git's index file at ``path`` (``git rev-parse --git-path index``)."""

    def __init__(self, path: str, object_format: str = "sha1"):
        self.path = path
        self.object_format = object_format
        self.hash_len = 32 if object_format == "sha256" else 20

    @contextlib.contextmanager
    def _locked(self, wait_s: float) -> Iterator[int]:
        lock = self.path + ".lock"
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise IndexLocked(
                        f"{lock} exists: another git command is running") from None
                time.sleep(0.02)
        try:
            with interrupts.deferred():  # Ctrl-C waits until the lock is gone
                yield fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            raise

    def check(self) -> None:
        """Raise IndexUnsupported unless ``update`` could rewrite this index (no lock taken).

        An index git has not written yet (a new worktree, a clone) passes.
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        self._parse(data)

    def _parse(self, data: bytes) -> tuple[int, list, int, bytes, bytes]:
        """(version, entries, end of entries, extensions, trailer) of the index bytes."""
        from dulwich.index import read_index
        from dulwich.object_format import OBJECT_FORMATS

        fmt = OBJECT_FORMATS[self.object_format]
        body, trailer = data[:-self.hash_len], data[-self.hash_len:]
        if trailer not in (hashlib.new(self.object_format, body).digest(),
                           b"\0" * self.hash_len):
            raise IndexUnsupported(f"{self.path}: checksum does not match")
        stream = io.BytesIO(body)
        try:
            version = struct.unpack(">L", body[4:8])[0]
            entries = list(read_index(stream, fmt))
        except Exception as e:  # dulwich raises several kinds on a format it lacks
            raise IndexUnsupported(f"{self.path}: cannot read ({e})") from None
        end = stream.tell()
        extensions = body[end:]
        if "link" in _extension_names(extensions):
            raise IndexUnsupported(f"{self.path}: split index")
        if _encode(entries, version, self.object_format) != body[:end]:
            raise IndexUnsupported(f"{self.path}: entries do not round-trip")
        return version, entries, end, extensions, trailer

    def update(self, paths: list[str], fn: Update, wait_s: float = LOCK_WAIT_S) -> dict[str, Stat]:
        """Under ``index.lock``, call ``fn`` for each stage-0 entry among ``paths``; record
        the stat data it returns.  Returns {path: recorded stat}.  Raises IndexUnsupported
        (nothing changed) when the index cannot be rewritten safely.  Without an index
        file (git wrote none: ``rm .git/index; git restore …``) there is no entry to update.
        """
        wanted = {os.fsencode(p) for p in paths}
        with self._locked(wait_s) as fd:
            try:
                with open(self.path, "rb") as f:
                    version, entries, _, extensions, trailer = self._parse(f.read())
            except FileNotFoundError:
                version, entries, extensions, trailer = 2, [], b"", b""
            done: dict[str, Stat] = {}
            for i, e in enumerate(entries):
                if e.name not in wanted or e.flags & 0x3000:  # stage bits: conflicts are left alone
                    continue
                path = os.fsdecode(e.name)
                blob = e.sha.decode("ascii") if isinstance(e.sha, bytes) else str(e.sha)
                old = Stat(tuple(e.ctime), tuple(e.mtime), e.dev, e.ino, e.uid, e.gid, e.size)
                new = fn(Entry(path, blob, old))
                if new is not None:
                    entries[i] = dataclasses.replace(
                        e, ctime=new.ctime, mtime=new.mtime, dev=new.dev, ino=new.ino,
                        uid=new.uid, gid=new.gid, size=new.size)
                    done[path] = new
            if done:
                out = _encode(entries, version, self.object_format) + extensions
                checksum = (hashlib.new(self.object_format, out).digest()
                            if trailer != b"\0" * self.hash_len else trailer)
                with os.fdopen(fd, "wb", closefd=True) as f:
                    f.write(out + checksum)
                os.replace(self.path + ".lock", self.path)
            else:
                os.close(fd)
                os.unlink(self.path + ".lock")
            return done


def _encode(entries: list, version: int, object_format: str) -> bytes:
    from dulwich.index import write_index
    from dulwich.object_format import OBJECT_FORMATS

    buf = io.BytesIO()
    write_index(buf, entries, version=version, object_format=OBJECT_FORMATS[object_format])
    return buf.getvalue()


def _extension_names(data: bytes) -> list[str]:
    names = []
    pos = 0
    while pos + 8 <= len(data):
        sig, size = data[pos:pos + 4], struct.unpack(">L", data[pos + 4:pos + 8])[0]
        names.append(sig.decode("ascii", "replace"))
        pos += 8 + size
    return names
