"""Pack files: many small cache objects in one file, with an index at its end.

A checkpoint of 10^5 small tensors (the experts of a mixture-of-experts model, the
norms and biases of every layer) made 10^5 cache files, one per chunk, and creating
that many files costs far more than hashing or copying their bytes: 9.4 s for
100,000 files of 1 KiB on this project's ext4 test machine, 0.2 s for the same bytes
in one file.  A clean that stores at least ``PACK_MIN`` new small objects writes them
as one pack instead, as git keeps the objects of a large fetch in a pack and explodes
only small ones into loose objects (``fetch.unpackLimit``, default 100).  DESIGN.md
foresees this: a pack is a storage form, and no manifest changes.

Layout (all integers little-endian)::

    <cache>/packs/pack-<blake3 of the index, hex>.tzpack
      object bytes, each exactly as the object's loose file holds it
      index: count entries of 48 bytes, sorted by digest:
             32-byte blake3 digest, u64 offset, u64 length
      trailer (24 bytes): b"TZPACK01", u64 count, u64 offset of the index

A pack is written under a temporary name and renamed into place whole, and never
changes after that: a reader that opened it reads valid objects for as long as it
holds it, even after gc replaced it.  Every field of an index is checked against the
file before it is used (``read_index``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import blake3

from . import interrupts
from .storage.local import TMP_PREFIX, writev_all

#: the cache's folder of packs
FOLDER = "packs"
SUFFIX = ".tzpack"
MAGIC = b"TZPACK01"
TRAILER = struct.Struct("<8sQQ")
#: one index entry: digest, offset, length (numpy is not imported: the filter never needs it)
ENTRY = struct.Struct("<32sQQ")
#: fewer new small objects than this in one clean are stored loose (git's
#: ``fetch.unpackLimit``: a handful of objects in a pack of their own gains nothing,
#: and every pack is one more index each process reads)
PACK_MIN = 100
#: objects of chunks of at most this many raw bytes go to packs (larger ones are
#: stored loose: one file per 4 MiB chunk costs little, and is read with a memory map)
SMALL_OBJECT = 64 << 10
#: a pack is closed, and another started, once it holds this many bytes
PACK_MAX = 256 << 20
#: ... or this many objects (an index of more is refused: a hostile one of 3 x 10^7 tiny
#: entries would cost gigabytes to hold in memory)
MAX_OBJECTS = 1 << 20
#: objects are written to the pack in blocks of about this many bytes
WRITE_BLOCK = 1 << 20
#: no object in a pack is larger than this (packs hold small chunks, encoded)
MAX_ENTRY = 1 << 20

_tmp_names = itertools.count()


class PackError(Exception):
    """A pack file whose trailer or index does not hold together (one line: which file)."""


@dataclass(eq=False)
class Pack:
    """One pack file as read: ``path``, its ``mtime`` (seconds since the epoch: when it
    was written or last freshened), and ``entries``: digest -> (offset, length) in bytes
    of each object in it."""

    path: str
    mtime: float
    entries: dict[str, tuple[int, int]]
    _fd: int | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (an entry of this pack's index); OSError where
        the file is gone.  The file is opened at the first read and kept open while this
        object lives, so a pack gc replaced meanwhile still reads (``pread``, not a memory
        map: a map's pages would count in the process's memory for the whole pack)."""
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise PackError(f"pack {os.path.basename(self.path)} is cut short")
        return data

    def __del__(self) -> None:
        # no reader holds this object any more: nobody can be using its descriptor
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def read_index(path: str) -> Pack:
    """The pack at ``path`` with its index; PackError where the trailer or the index is
    malformed (entries out of the file, unsorted or repeated digests, an entry of 0 bytes
    or larger than ``MAX_ENTRY``, entries that add up to more bytes than the objects take,
    more objects or bytes than ``MAX_OBJECTS`` and ``PACK_MAX`` allow), OSError where the
    file cannot be read.  The index is read a block at a time and checked as it comes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO planted here must not block
    try:
        st = os.fstat(fd)
        name = os.path.basename(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size < TRAILER.size:
            raise PackError(f"pack {name} is not a pack file")
        magic, count, start = TRAILER.unpack(os.pread(fd, TRAILER.size,
                                                      st.st_size - TRAILER.size))
        end = st.st_size - TRAILER.size
        if magic != MAGIC or start + count * ENTRY.size != end:
            raise PackError(f"pack {name} is corrupt (its trailer does not match its size)")
        if start > PACK_MAX + MAX_ENTRY or count > MAX_OBJECTS:  # a trailer that lies
            raise PackError(f"pack {name} is corrupt (its trailer gives {count} objects "
                            f"of {start} bytes, more than a pack holds)")
        entries: dict[str, tuple[int, int]] = {}
        last = ""
        total = 0  # the objects' bytes: they do not overlap, so at most ``start``
        # read a block at a time and checked as it comes: a hostile or sparse file's
        # index (gigabytes of it) is refused at its first bad entry, never read whole
        step = ENTRY.size * (WRITE_BLOCK // ENTRY.size)
        for at in range(start, end, step):
            raw = os.pread(fd, min(step, end - at), at)
            if len(raw) != min(step, end - at):
                raise PackError(f"pack {name} is corrupt (its index is cut short)")
            for digest, offset, length in ENTRY.iter_unpack(raw):
                key = f"blake3:{digest.hex()}"
                total += length
                if not 0 < length <= MAX_ENTRY or offset + length > start or \
                        total > start or key <= last:
                    raise PackError(f"pack {name} is corrupt (an index entry is out of the "
                                    "file, too large, or out of order)")
                entries[key] = (offset, length)
                last = key
    finally:
        os.close(fd)
    return Pack(path, st.st_mtime, entries)


def list_packs(folder: str) -> list[str]:
    """The paths of the pack files in ``folder`` (none where it does not exist), sorted;
    OSError where it cannot be listed."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):  # none yet (or a cache that is none)
        return []
    return sorted(os.path.join(folder, n) for n in names
                  if n.startswith("pack-") and n.endswith(SUFFIX))


class PackWriter:
    """Objects appended to a temporary file in ``folder``; ``commit`` adds the index and
    renames it to its pack name.  Thread-safe: ``add`` may be called from many threads.

    ``mtime`` (seconds since the epoch), where given, dates each pack before it is
    renamed into place (gc's rewrite of a pack keeps the date of the objects it keeps).

    Raises OSError where the folder or the file cannot be written.
    """

    def __init__(self, folder: str, mtime: float | None = None):
        self.folder = folder
        self.mtime = mtime
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._tmp = ""
        self._entries: list[tuple[bytes, int, int]] = []
        self._seen: set[str] = set()
        self._offset = 0
        self._buf = bytearray()  # added objects not yet written
        # the pack being written is removed where a signal ends the process (Ctrl-C in a
        # filter ends it at once): it was left in the packs folder for gc's grace period
        self._on_signal = contextlib.ExitStack()
        # a failed write left part of a block in the file, which no index can describe:
        # that pack is dropped, and the writer refuses to go on (its objects are not stored)
        self._failed: OSError | None = None
        self.committed: list[str] = []

    def add(self, digest: str, parts: list[bytes | memoryview]) -> int:
        """Append one object given as parts written in order; returns its size (0 for a
        digest this writer already holds).  A pack that would pass ``PACK_MAX`` is
        committed first and a new one begun.  After an OSError (a full disk), every
        later ``add`` and ``commit`` raises one too: the pack being written is gone."""
        return self.add_many([(digest, parts)])[0]

    def add_many(self, objects: list[tuple[str, list[bytes | memoryview]]]) -> list[int]:
        """``add`` of each (digest, parts), in order, under one lock; their sizes."""
        sizes = []
        with self._lock:
            self._check_failed()
            for digest, parts in objects:
                if digest in self._seen:
                    sizes.append(0)
                    continue
                size = 0
                try:
                    for part in parts:
                        size += len(part)
                    if self._fd is not None and (self._offset + size > PACK_MAX
                                                 or len(self._entries) >= MAX_OBJECTS):
                        self._commit_locked()
                    if self._fd is None:
                        self._open()
                    for part in parts:  # in blocks: one syscall per 1 KiB object cost more
                        self._buf += part
                    if len(self._buf) >= WRITE_BLOCK:
                        self._flush()
                except OSError as e:
                    self.abort_locked()
                    self._failed = e
                    raise
                self._seen.add(digest)
                self._entries.append((bytes.fromhex(digest[7:]), self._offset, size))
                self._offset += size
                sizes.append(size)
        return sizes

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise OSError(self._failed.errno, self._failed.strerror)

    def _open(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self._tmp = os.path.join(self.folder, f"{TMP_PREFIX}pack-{os.getpid()}-"
                                              f"{threading.get_ident()}-{next(_tmp_names)}")
        self._on_signal.enter_context(interrupts.removed_on_signal(self._tmp))
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        self._entries, self._offset = [], 0

    def _flush(self) -> None:
        writev_all(self._fd, [self._buf])
        self._buf = bytearray()

    def commit(self) -> list[str]:
        """Write the index and trailer, rename the pack into place; the paths of the packs
        this writer made (none where nothing was added)."""
        with self._lock:
            self._check_failed()
            if self._fd is not None:
                self._commit_locked()
        return self.committed

    def _commit_locked(self) -> None:
        try:
            self._write_index_locked()
        finally:
            self._on_signal.close()

    def _write_index_locked(self) -> None:
        fd, tmp = self._fd, self._tmp
        try:
            self._flush()
        except BaseException:
            self.abort_locked()
            raise
        self._fd = None
        try:
            index = b"".join(ENTRY.pack(*e) for e in sorted(self._entries))
            writev_all(fd, [index, TRAILER.pack(MAGIC, len(self._entries), self._offset)])
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        path = os.path.join(self.folder, f"pack-{blake3.blake3(index).hexdigest()}{SUFFIX}")
        try:
            if self.mtime is not None:
                os.utime(tmp, (self.mtime, self.mtime))
            os.replace(tmp, path)  # the same index names the same objects: same bytes
        except BaseException:
            _unlink(tmp)
            raise
        self.committed.append(path)

    def abort(self) -> None:
        """Remove the pack being written (nothing of it becomes visible)."""
        with self._lock:
            self.abort_locked()

    def abort_locked(self) -> None:
        """``abort`` with the writer's lock held."""
        self._buf = bytearray()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            _unlink(self._tmp)
        self._on_signal.close()


def write_pack(folder: str, objects: Iterator[tuple[str, bytes | memoryview]],
               mtime: float | None = None) -> list[str]:
    """A pack (or more, past ``PACK_MAX``) of these (digest, stored object) pairs, dated
    ``mtime`` where given; the paths written."""
    writer = PackWriter(folder, mtime)
    try:
        for digest, obj in objects:
            writer.add(digest, [obj])
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
