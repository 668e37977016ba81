"""The local object cache: ``<git-common-dir>/theta-zarr/objects`` or a shared folder.

Worktrees share it because it lives in the common git dir; ``theta-zarr.cache``
points several repositories at one folder.  Because a digest is the hash of a
chunk's raw bytes, "has this chunk changed?" is a single existence check here:
an unchanged chunk is never re-encoded or re-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from . import codecs, delta, packs
from .objects import (
    MissingBaseError,
    MissingObjectError,
    ObjectError,
    ObjectStore,
    matches,
    object_key,
)
from .storage import StorageError
from .storage.local import TMP_PREFIX, LocalStore
from .streams import pwrite_all

T = TypeVar("T")

QUARANTINE = "quarantine"
RAW_HEADER = codecs.header("raw")
#: raw objects up to this size are copied out with one read and one write (no memory
#: map: for a 1 KiB chunk its set-up costs more than the copy)
SMALL_OBJECT = 64 << 10
#: seconds after which an object found again by a clean is given a new mtime (one
#: ``utime`` per object an hour at most: an unchanged chunk still costs about a stat)
FRESHEN_AFTER = 3600.0


#: the way out of a cache folder that cannot be one; the folder is the default one as often
#: as one the settings chose, so neither is claimed
_CHOOSE = "move that away, or choose another folder with theta-zarr.cache or THETA_ZARR_CACHE"


class QuarantinedError(ObjectError):
    """A cache object failed verification and was moved aside; a good copy can replace it."""


class Cache(ObjectStore):
    """An ObjectStore on a local folder, plus a scratch area for spooled files."""

    def __init__(self, root: str, codec: str = "raw", concurrency: int = 16):
        """StorageError (one line) where ``root`` is a file: every object would otherwise
        read as missing from it."""
        self.root = os.path.abspath(root)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StorageError(f"cannot use {self.root} as the cache: it is a file, not a "
                               f"folder ({_CHOOSE})")
        super().__init__(LocalStore(self.root), codec=codec, concurrency=concurrency, retries=0)
        self._packs_dir = os.path.join(self.root, packs.FOLDER)
        self._packs_lock = threading.Lock()
        self._packs: dict[str, packs.Pack] = {}  # path -> pack, as last read
        self._packed: dict[str, packs.Pack] = {}  # digest -> the pack holding it
        self._packs_read = False  # the packs folder was read once
        #: packs whose index is malformed or that cannot be opened (path -> one line), as
        #: the packs were last read: left out of every lookup
        self.bad_packs: dict[str, str] = {}
        # a malformed pack's (size, mtime, inode) and line: a reader that looks again for
        # an absent object does not read its index again
        self._bad_stats: dict[str, tuple[tuple[int, int, int], str]] = {}
        #: the names of the malformed packs ``quarantine_bad_packs`` moved (gc reports them)
        self.packs_moved: list[str] = []

    @property
    def tmp_dir(self) -> str:
        """The folder for spooled files: ``<cache>/tmp``, or the system's temporary folder
        when the cache cannot be written (a team's pre-filled cache on a read-only mount
        still serves checkouts, which only read it), its ``tmp/`` included (a copy of a
        whole cache, made read-only)."""
        path = os.path.join(self.root, "tmp")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            if not os.path.isdir(self.root):
                raise StorageError(f"cannot use {self.root} as the cache ({e.strerror}; "
                                   f"{_CHOOSE})") from None
            return tempfile.gettempdir()
        if not os.access(path, os.W_OK | os.X_OK):
            return tempfile.gettempdir()
        return path

    def ensure(self, digest: str, raw: bytes | memoryview, elem: int = 1,
               packer: Packer | None = None) -> int:
        """Store a chunk unless present; returns the bytes newly written (0 if present).

        With ``packer`` (one clean's, ``Cache.packer``), a new chunk of at most
        ``packs.SMALL_OBJECT`` bytes goes to it, to be stored in a pack.

        A present object older than ``FRESHEN_AFTER`` gets a new mtime, as git freshens a
        loose object it would write again: gc keeps what was written within its grace
        period, and the manifest naming it is new (not yet in any ref or index gc reads).

        ``elem`` is the item size of the chunk's dtype (for the ``auto`` codec).  A
        present raw object of the wrong size (a truncated write, cut by a full disk or a
        crash) is rewritten from ``raw``; with the raw codec the size says it all, so
        an unchanged chunk still costs only a stat.  An object of another storage form
        (zstd, blosc: written by a repository sharing this cache with another
        ``cache-compression``, or before this one's changed) is a good object, kept.
        """
        held = None  # a pack holds small chunks only: a large one never reads their indexes
        small = len(raw) <= packs.SMALL_OBJECT
        if small:
            held = (packer.packed() if packer is not None else self._load_packs()).get(digest)
        if held is not None and self._packed_whole(held, digest, raw):
            stale = time.time() - held.mtime > FRESHEN_AFTER
            if _freshen(held.path, held.mtime):
                if stale:  # freshened: once for the whole pack
                    held.mtime = time.time()
                return 0
        if small and packer is not None and not packer.maybe_loose(digest):
            return packer.add(digest, codecs.encode(raw, self.codec, elem))
        path = self._object_path(digest)
        try:
            st = os.stat(path)
        except OSError:  # absent (or unreachable: put says why)
            if small and packer is not None:
                return packer.add(digest, codecs.encode(raw, self.codec, elem))
            return self.put(digest, raw, elem)
        if self.codec == "raw" and st.st_size != len(RAW_HEADER) + len(raw) and \
                _raw_form(path):
            self.quarantine(digest)
            return self.put(digest, raw, elem)
        if not _freshen(path, st.st_mtime):  # gc took it between the stat and the utime
            return self.put(digest, raw, elem)
        return 0

    def ensure_small(self, chunks: list[tuple[str, memoryview, int]], packer: Packer
                     ) -> list[int]:
        """``ensure`` of each (digest, raw, elem), of at most ``packs.SMALL_OBJECT``
        bytes, with ``packer``; the bytes newly written for each.  A chunk surely new
        (in no pack, not loose) goes to the packer with the others in one call: 10^5
        chunks of 1 KiB spent more in taking locks one by one than in hashing."""
        packed = packer.packed()
        sizes = [0] * len(chunks)
        new: list[tuple[str, list[bytes | memoryview]]] = []
        where: list[int] = []
        for i, (digest, raw, elem) in enumerate(chunks):
            if digest in packed or packer.maybe_loose(digest):
                sizes[i] = self.ensure(digest, raw, elem, packer)
            else:
                new.append((digest, codecs.encode(raw, self.codec, elem)))
                where.append(i)
        for i, size in zip(where, packer.add_many(new), strict=True):
            sizes[i] = size
        return sizes

    def freshen(self, digests: Iterable[str], small: int = 0) -> set[str]:
        """Give these objects a new mtime where theirs is older than ``FRESHEN_AFTER``, as
        ``ensure`` does: for a manifest answered without storing its chunks again (a clean
        answered from its stat record).  Returns the digests not present (deleted, or
        taken by a gc running now): the caller must store them again.  ``small`` as for
        ``missing``: with many chunks a pack may hold, the packs are asked first."""
        gone = set()
        fresh: set[str] = set()  # packs freshened already

        def in_fresh_pack(digest: str) -> bool:  # a pack holds it (freshened once)
            held = self._load_packs().get(digest)
            if held is None or not (held.path in fresh or _freshen(held.path, held.mtime)):
                return False
            fresh.add(held.path)
            return True

        digests = set(digests)
        if small >= packs.PACK_MIN:
            digests = {d for d in digests if not in_fresh_pack(d)}
        for digest in digests:
            path = self._object_path(digest)
            try:
                mtime = os.stat(path).st_mtime
            except OSError:  # not loose: in a pack, or as ``missing`` counts it
                if not in_fresh_pack(digest):
                    gone.add(digest)
                continue
            if not _freshen(path, mtime):
                gone.add(digest)
        return gone

    def delete_unused(self, digest: str, cutoff: float) -> bool:
        """Delete an object gc found unreachable and last written before ``cutoff``, unless
        a clean has used it since; True if it was deleted.

        A clean that finds the object gives it a new mtime (``ensure``), but gc listed the
        mtimes earlier: the object is first renamed aside (atomic), then its mtime read
        again, and it goes back where it was if a clean freshened it meanwhile.  A clean
        whose ``utime`` comes after the rename finds the object gone and writes it again.
        So an add running while gc deletes does not commit a chunk gc then removes (a clean
        freshens only objects older than ``FRESHEN_AFTER``: a grace period shorter than
        that leaves younger garbage unprotected, as ``--grace 0`` does new objects)."""
        path = self._object_path(digest)
        aside = os.path.join(os.path.dirname(path),
                             f"{TMP_PREFIX}gc-{os.getpid()}-{digest[9:]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            used = os.stat(aside).st_mtime >= cutoff
        except FileNotFoundError:
            return False
        if used:
            os.replace(aside, path)  # a copy a clean wrote meanwhile holds the same bytes
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        return True

    def get(self, digest: str, bases: ObjectStore | None = None, size: int | None = None
            ) -> bytes | memoryview:
        """The verified raw chunk; a corrupt object is moved to quarantine first
        (QuarantinedError says where), so the next write or fetch replaces it.

        ``size`` (the chunk's raw size, from a manifest) is taken for the readers' common
        signature and not applied: the cache's objects were verified as they were stored,
        and a manifest edited without its chunks must not get a good object quarantined.
        Readers that fetch (``ReadThrough``, ``checkpoint.Healing``) bound the remote's
        object with it."""
        try:
            return super().get(digest, bases)
        except (MissingObjectError, MissingBaseError, QuarantinedError):
            raise
        except ObjectError as e:
            where = self.quarantine(digest)
            raise QuarantinedError(f"{e}; {where}", digest) from None

    def quarantine(self, digest: str) -> str:
        """Move an object out of the store into ``<cache>/quarantine/``; returns what was
        done, to end an error message ("moved it to <folder>").  It is dated by the move
        (``gc`` deletes it once older than its grace period).

        An object in a pack takes its pack along: the pack's other objects are stored
        loose first, so nothing else leaves the cache; where one of them cannot be (a full
        disk), the pack stays where it is and the phrase says so."""
        held = self._load_packs().get(digest)
        if held is not None and not self._loose_corrupt(digest):
            return self._quarantine_pack(held, digest)
        key = object_key(digest)
        dest = f"{QUARANTINE}/{digest[7:]}"
        try:
            self.blobs.move(key, dest)
        except StorageError:
            pass  # already moved by another reader
        with contextlib.suppress(OSError):
            os.utime(os.path.join(self.root, dest))
        return f"moved it to {os.path.join(self.root, QUARANTINE)}"

    def _loose_corrupt(self, digest: str) -> bool:
        """A loose copy of ``digest`` exists and fails verification: that copy is the one
        to move, not a pack holding the same object (two cleans running at once can store
        one object both ways; the good packed copy went to quarantine with its pack)."""
        try:
            self.decode(digest, super().get_encoded(digest))
        except MissingObjectError:
            return False
        except ObjectError:
            return True
        return False

    def _quarantine_pack(self, pack: packs.Pack, bad: str) -> str:
        where = os.path.join(self.root, QUARANTINE)
        for digest, (offset, length) in pack.entries.items():
            if digest == bad or os.path.exists(self._object_path(digest)):
                continue
            try:
                obj = pack.read(offset, length)
            except packs.PackError:
                continue  # cut short: what is left of it is lost
            except OSError:  # the pack is gone: another reader moved it, and stored the rest
                return f"moved its pack to {where}"
            try:
                self.put_encoded(digest, obj)
            except OSError as e:
                # moving the pack now would take this object (and the others not yet
                # stored loose) out of the cache with the corrupt one
                return (f"its pack {pack.path} stays in place: its other objects could not "
                        f"be stored loose ({e})")
        dest = os.path.join(where, os.path.basename(pack.path))
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(pack.path, dest)
            os.utime(dest)
        self._load_packs(force=True)
        return f"moved its pack to {where} (its other objects stay, stored loose)"

    # -- packs --------------------------------------------------------------------------
    def quarantine_bad_packs(self) -> list[str]:
        """Move the packs whose index is malformed to ``<cache>/quarantine/``, dated by
        the move (gc deletes them once older than its grace period, as it does corrupt
        objects); the names moved.  Their objects were unreadable already (each read as
        missing); a pack that cannot be opened (permissions) is left where it is."""
        self._load_packs(force=True)
        moved = []
        for path in list(self._bad_stats):
            dest = os.path.join(self.root, QUARANTINE, os.path.basename(path))
            try:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(path, dest)
                os.utime(dest)
            except OSError:
                continue  # gone already, or a read-only cache
            moved.append(os.path.basename(path))
        if moved:
            self._load_packs(force=True)
        self.packs_moved += moved
        return moved

    def malformed_packs(self) -> list[str]:
        """The names of the packs whose index is malformed, which ``quarantine_bad_packs``
        would move (the packs folder read again)."""
        self._load_packs(force=True)
        return sorted(os.path.basename(p) for p in self._bad_stats)

    def packer(self) -> Packer:
        """A Packer for one clean's new small objects (see ``packs``)."""
        return Packer(self)

    def _load_packs(self, force: bool = False) -> dict[str, packs.Pack]:
        """digest -> the pack holding it, as read at the first call, or read again with
        ``force``.  A view older than the folder costs nothing wrong: a pack never
        changes (one gc replaced still reads, from the file a reader holds open),
        and a reader that finds an object nowhere reads the folder again (``force``)
        before it calls the object missing; a writer at worst stores a second copy."""
        if self._packs_read and not force:
            return self._packed
        with self._packs_lock:
            if self._packs_read and not force:
                return self._packed
            current: dict[str, packs.Pack] = {}
            bad: dict[str, str] = {}
            try:
                listed = packs.list_packs(self._packs_dir)
            except OSError as e:
                raise StorageError(f"cannot list the packs of the cache {self.root} "
                                   f"({e.strerror})") from None
            for path in listed:
                pack = self._packs.get(path)
                try:
                    st = os.stat(path)
                    if pack is None:
                        known = self._bad_stats.get(path)
                        if known is not None and known[0] == _file_id(st):
                            bad[path] = known[1]  # the same bad file: not read again
                            continue
                        pack = packs.read_index(path)
                    else:  # the same file (packs never change); its mtime may have
                        pack.mtime = st.st_mtime
                except packs.PackError as e:
                    bad[path] = f"{e} in {self.url}"
                    self._bad_stats[path] = (_file_id(st), bad[path])
                    continue
                except OSError as e:
                    if not os.path.lexists(path):
                        continue  # removed since it was listed
                    # unreadable (permissions, a symlink loop or a dangling one, an I/O
                    # error): its objects read as missing, so fsck must name the pack
                    bad[path] = (f"cannot read pack {os.path.basename(path)} in "
                                 f"{self.url}: {e.strerror}")
                    continue
                current[path] = pack
            # a bad pack deleted, or replaced by a good one (the next clean or fetch of its
            # objects writes a pack of the same name), is no longer reported
            self.bad_packs = bad
            self._bad_stats = {p: v for p, v in self._bad_stats.items() if p in bad}
            if current.keys() == self._packs.keys():
                # the same packs (a reader that found an object nowhere looks again): the
                # table of every packed digest is rebuilt only when a pack came or went,
                # or each object a cache lacks cost a pass over every packed entry
                packed = self._packed
            else:
                packed = {}
                for pack in current.values():
                    for digest in pack.entries:
                        packed.setdefault(digest, pack)
            self._packs, self._packed, self._packs_read = current, packed, True
        return packed

    def _from_pack(self, digest: str, size: int | None = None, reload: bool = False
                   ) -> bytes | None:
        """The stored object from the pack holding it, None where no pack does.  ``size``
        (the chunk's raw size) bounds it as ``get_encoded`` does.

        Without ``reload``, only packs already read are asked, and no pack for a chunk too
        large for one: a process that reads large chunks only never reads a pack's index
        (the caller tries the loose object next, then asks again with ``reload``)."""
        if reload:
            held = self._load_packs(force=True).get(digest)
        elif size is not None and size > packs.SMALL_OBJECT:
            return None
        else:
            held = self._packed.get(digest)
        if held is None:
            return None
        offset, length = held.entries[digest]
        if size is not None and length > codecs.encoded_bound(size):
            where = self.quarantine(digest)
            raise QuarantinedError(f"object {digest} in {self.url} is corrupt (its pack gives "
                                   f"it {length} bytes, more than any storage form of its "
                                   f"chunk takes); {where}", digest)
        try:
            return held.read(offset, length)
        except FileNotFoundError:  # a gc replaced the pack: it is read again
            return None if reload else self._from_pack(digest, size, reload=True)
        except packs.PackError as e:  # cut short since its index was read
            where = self.quarantine(digest)
            raise QuarantinedError(f"object {digest} in {self.url} is corrupt ({e}); {where}",
                                   digest) from None
        except OSError as e:
            raise StorageError(f"cannot read {held.path}: {e.strerror}") from None

    def _packed_whole(self, pack: packs.Pack, digest: str, raw: bytes | memoryview) -> bool:
        """False (the pack moved to quarantine) where the cache writes raw objects and the
        packed one has the wrong size for ``raw`` while stored raw: ``ensure``'s check of
        a loose object, for a packed one."""
        length = pack.entries[digest][1]
        if self.codec != "raw" or length == len(RAW_HEADER) + len(raw):
            return True
        try:
            name, _ = codecs.split(pack.read(*pack.entries[digest])[:5 + 255])
        except (codecs.CodecError, OSError):
            name = "raw"
        if name != "raw":
            return True
        self._quarantine_pack(pack, digest)
        return False

    def delete_unused_packed(self, digests: Iterable[str], cutoff: float) -> set[str]:
        """Delete from their packs the objects gc found unreachable (``digests``; those no
        pack holds are ignored), unless a clean used their pack since ``cutoff``; the
        digests deleted.

        Each pack holding any is rewritten without them (a new pack of the rest is written
        first, so a reader never misses a live object), then moved aside and its mtime
        read again, as ``delete_unused`` does for a loose object: a pack a clean
        freshened meanwhile goes back (the new pack then only duplicates its objects).
        """
        self._load_packs(force=True)
        wanted = set(digests)
        # every pack holding one, not only the one the lookup table names: two cleans
        # running at once can pack the same object twice, and a copy left behind was
        # reported deleted
        dead_by_pack = {path: dead for path, pack in self._packs.items()
                        if (dead := wanted.intersection(pack.entries))}
        gone: set[str] = set()
        kept: set[str] = set()  # in a pack a clean used meanwhile
        for path, dead in dead_by_pack.items():
            pack = self._packs[path]
            live = sorted(d for d in pack.entries if d not in dead)
            aside = os.path.join(self._packs_dir, f"{TMP_PREFIX}gc-{os.getpid()}-"
                                                  f"{os.path.basename(path)}")
            try:
                if live:  # as old as the objects it keeps: a new date made them look
                    # most recently used, and the next prune --max-size evicted a newer
                    # checkpoint's chunks instead
                    packs.write_pack(self._packs_dir,
                                     ((d, pack.read(*pack.entries[d])) for d in live),
                                     mtime=pack.mtime)
                os.rename(path, aside)
            except FileNotFoundError:
                continue  # another gc took it
            except OSError as e:
                raise StorageError(f"cannot rewrite {path}: {e.strerror}") from None
            if os.stat(aside).st_mtime >= cutoff:
                os.replace(aside, path)
                kept |= dead
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)
            gone |= dead
        self._load_packs(force=True)
        return gone - kept

    # -- reads: a pack first (a dictionary lookup), then the loose object ------------
    def has(self, digest: str) -> bool:
        return digest in self._packed or super().has(digest) or \
            digest in self._load_packs(force=True)

    def get_encoded(self, digest: str, size: int | None = None) -> bytes:
        obj = self._from_pack(digest, size)
        if obj is not None:
            return obj
        try:
            return super().get_encoded(digest, size)
        except MissingObjectError:
            obj = self._from_pack(digest, size, reload=True)
            if obj is None:
                raise
            return obj

    def get_head(self, digest: str, n: int = delta.PREFIX_BYTES) -> bytes:
        obj = self._from_pack(digest)
        if obj is not None:
            return obj[:n]
        try:
            return super().get_head(digest, n)
        except MissingObjectError:
            obj = self._from_pack(digest, reload=True)
            if obj is None:
                raise
            return obj[:n]

    def iter_loose_digests(self) -> Iterator[str]:
        """The digest of every loose object (names only: nothing is stat'ed or read);
        OSError where a folder of them cannot be listed."""
        top = os.path.join(self.root, "objects")
        try:
            prefixes = os.listdir(top)
        except FileNotFoundError:  # no loose object yet
            return
        for prefix in prefixes:
            if len(prefix) != 2:
                continue
            try:
                names = os.listdir(os.path.join(top, prefix))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not name.startswith(TMP_PREFIX):
                    yield f"blake3:{prefix}{name}"

    def iter_digests(self) -> Iterator[tuple[str, int, float | None]]:
        """(digest, stored size, mtime) of every object, loose then packed (a packed
        object has its pack's mtime)."""
        loose = set()
        for digest, size, mtime in super().iter_digests():
            loose.add(digest)
            yield digest, size, mtime
        for digest, held in self._load_packs(force=True).items():
            if digest not in loose:
                yield digest, held.entries[digest][1], held.mtime

    def _object_path(self, digest: str) -> str:
        # keys use "/", which every platform's file calls take
        return f"{self.root}/{object_key(digest)}"

    def missing(self, digests: Iterable[str], small: int = 0) -> set[str]:
        """Which of these digests the cache lacks: a lookup among the packs, then one
        ``stat`` each, in this thread (a thread-pool task per digest would cost ten times
        the ``stat``).  ``small`` says how many are chunks a pack may hold: with
        ``packs.PACK_MIN`` or more the packs are read first (10^5 packed chunks cost
        0.35 s of ``stat`` calls on files that do not exist); with fewer, only where some
        are not loose (a process of large chunks never reads a pack's index)."""
        path, exists = self._object_path, os.path.exists
        # the packs read so far (none: a large checkpoint's reads), or read now
        packed = self._load_packs() if small >= packs.PACK_MIN else self._packed
        lacking = {d for d in set(digests) if d not in packed and not exists(path(d))}
        if lacking:  # in a pack not read yet, or written since
            packed = self._load_packs(force=True)
            lacking = {d for d in lacking if d not in packed}
        return lacking

    def copy_to(self, digest: str, fd: int, offset: int, length: int) -> None:
        """Put the chunk's raw bytes (``length`` of them) at ``offset`` of the open file ``fd``.

        A ``raw`` object is hashed from a memory map of the cache file and written from
        that same map (``pwrite``), so the bytes are read once and never copied into a
        Python buffer; any other storage form (zstd, xor-delta) is decoded and verified
        by ``get``.  Raises MissingObjectError or ObjectError (corrupt: content or length
        does not match the digest), before anything is written.

        Why not ``copy_file_range``: without reflinks (ext4) the kernel copies through a
        pipe page by page, and a chunk's offset in a checkpoint is rarely at the same
        place in a page as in its object, so every page went as two pieces: a 950 MiB
        safetensors file took 0.28 s that way on two cores here, 0.16 s written from
        the maps the hash had already touched (``cp`` of the file: 0.22 s).
        """
        obj = self._from_pack(digest, length)
        if obj is not None:
            payload = self._raw_payload(digest, obj, length)
            if payload is not None:
                pwrite_all(fd, payload, offset)
            else:
                self._copy_decoded(digest, fd, offset, length)
            return
        path = self._object_path(digest)
        try:
            src = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
        except FileNotFoundError:
            if self._from_pack(digest, length, reload=True) is None:
                raise MissingObjectError(f"object {digest} is missing from {self.url}"
                                         ) from None
            return self.copy_to(digest, fd, offset, length)  # packed since packs were read
        try:
            # a small object is read whole at once; of a large one, enough for its header
            small = length <= SMALL_OBJECT
            head = os.pread(src, len(RAW_HEADER) + length + 1 if small else 5 + 255, 0)
            try:
                name, payload = codecs.split(head)
            except codecs.CodecError:
                name, payload = "", memoryview(b"")
            start = len(head) - len(payload)
            # a small object was read whole (a byte more than it should hold): its size is
            # known without an fstat, which 10^5 small tensors would pay 10^5 times
            size = len(payload) if small else os.fstat(src).st_size - start
            if name != "raw" or size != length or not length:
                self._copy_decoded(digest, fd, offset, length)
                return
            if small:  # hashed and written from memory: no map to set up
                self._verify(digest, payload)
                pwrite_all(fd, payload, offset)
                return
            failed = None
            with mmap.mmap(src, 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    self._verify(digest, view[start:])
                    pwrite_all(fd, view[start:], offset)
                except OSError as e:  # a full disk: its traceback holds views of the map
                    failed = OSError(e.errno, e.strerror)
                finally:
                    view.release()
            if failed is not None:
                raise failed
        finally:
            os.close(src)

    def read_packed_raw(self, digest: str, length: int) -> bytes | memoryview | None:
        """The verified raw bytes (``length`` of them) of a chunk a pack holds in the raw
        form; None where no pack holds it or it is stored in another form (``copy_to``
        then copies it).  Raises QuarantinedError (the pack moved to quarantine) for a
        corrupt object.  For a file of many small chunks: its writer joins neighbouring
        chunks into one write."""
        obj = self._from_pack(digest, length)
        return None if obj is None else self._raw_payload(digest, obj, length)

    def read_packed_raws(self, chunks: list[tuple[str, int]]) -> list[memoryview | None]:
        """``read_packed_raw`` of many chunks, each (digest, raw length): objects that lie
        back to back in one pack (a clean packs a file's chunks in its order) are read
        with one ``pread`` of at most ``packs.WRITE_BLOCK`` bytes, and each is verified
        against its digest.  None for a chunk not read so (in no pack read yet, stored in
        another form, or failing a check): the caller reads that one alone
        (``read_packed_raw``, ``copy_to``), whose errors say what is wrong.  For a file of
        10^5 small tensors: one call each cost more than the copy.  The packs are read
        at the first small chunk, as a clean reads them: none, no index."""
        if not chunks:  # a batch of large chunks (or header bytes) only
            return []
        packed, head = self._load_packs(), len(RAW_HEADER)
        out: list[memoryview | None] = [None] * len(chunks)
        runs: list[list] = []  # [pack, start, end, [(index, offset, digest, length)]]
        for i, (digest, length) in enumerate(chunks):
            held = packed.get(digest) if 0 < length <= packs.SMALL_OBJECT else None
            if held is None:
                continue
            offset, stored = held.entries[digest]
            if stored != head + length:  # not raw: read alone
                continue
            run = runs[-1] if runs else None
            if run is not None and run[0] is held and run[2] == offset and \
                    offset + stored - run[1] <= packs.WRITE_BLOCK:
                run[2] = offset + stored
                run[3].append((i, offset, digest, length))
            else:
                runs.append([held, offset, offset + stored, [(i, offset, digest, length)]])
        for held, start, end, members in runs:
            try:
                data = memoryview(held.read(start, end - start))
            except (OSError, packs.PackError):
                continue  # read alone, and the error said there
            for i, offset, digest, length in members:
                at = offset - start
                payload = data[at + head:at + head + length]
                if data[at:at + head] == RAW_HEADER and matches(digest, payload):
                    out[i] = payload
        return out

    def _raw_payload(self, digest: str, obj: bytes, length: int) -> memoryview | None:
        """The verified payload of a raw object of ``length`` bytes, else None."""
        try:
            name, payload = codecs.split(obj)
        except codecs.CodecError:
            return None
        if name != "raw" or len(payload) != length or not length:
            return None
        self._verify(digest, payload)
        return payload

    def _copy_decoded(self, digest: str, fd: int, offset: int, length: int) -> None:
        """``copy_to`` of an object stored in another form than raw (or of the wrong
        size): decoded and verified by ``get``."""
        raw = self.get(digest)
        if len(raw) != length:
            raise ObjectError(f"object {digest} in {self.url} holds {len(raw)} bytes, "
                              f"the manifest says {length}")
        pwrite_all(fd, memoryview(raw), offset)

    def _verify(self, digest: str, raw: bytes | memoryview) -> None:
        """QuarantinedError (the object moved aside) unless ``raw`` hashes to ``digest``."""
        ok = matches(digest, raw)
        del raw  # the error's traceback must not hold a view of a memory map being closed
        if not ok:
            where = self.quarantine(digest)
            raise QuarantinedError(f"object {digest} in {self.url} is corrupt (content does "
                                   f"not match digest); {where}", digest)


class Packer:
    """The new small objects of one clean (``Cache.packer``): held in memory until there
    are ``packs.PACK_MIN`` of them, then written to a pack as they come.  ``commit``
    (when the clean's chunks are all stored, before its manifest is given out) stores
    the pack, or the few held objects loose; ``abort`` drops them.  Thread-safe."""

    def __init__(self, cache: Cache):
        self.cache = cache
        self._lock = threading.Lock()
        self._held: dict[str, bytes] = {}
        self._writer: packs.PackWriter | None = None
        self._looked = False
        self._asked = 0  # maybe_loose calls so far
        self._loose: set[str] | None = None  # the loose objects, once listed
        self._unlistable = False  # their folder could not be listed: each is looked for

    def packed(self) -> dict[str, packs.Pack]:
        """digest -> pack of the cache, its packs folder read again at the first call
        (a long-running process, ``watch``, would otherwise store again what its own
        earlier cleans packed; a clean of large chunks only never reads it)."""
        if not self._looked:
            self.cache._load_packs(force=True)
            self._looked = True
        return self.cache._packed

    def maybe_loose(self, digest: str) -> bool:
        """False where the cache has surely no loose object ``digest`` (``ensure`` then
        packs a new chunk without a ``stat``).  The first ``packs.PACK_MIN`` answers are
        True (the caller looks); past that the loose objects are listed once, and a
        digest listed is True: a file of 10^5 new small chunks cost 10^5 ``stat`` calls
        on files that do not exist, each giving the GIL away.  An object another process
        writes loose after the listing gets a packed copy too, which is harmless."""
        with self._lock:
            if self._loose is None:
                self._asked += 1
                if self._asked <= packs.PACK_MIN or self._unlistable:
                    return True
                try:
                    self._loose = set(self.cache.iter_loose_digests())
                except OSError:  # a folder that cannot be listed: look for each
                    self._unlistable = True
                    return True
        return digest in self._loose

    def add(self, digest: str, parts: list[bytes | memoryview]) -> int:
        """Take one encoded object (its parts, in order); returns its size."""
        return self.add_many([(digest, parts)])[0]

    def add_many(self, objects: list[tuple[str, list[bytes | memoryview]]]) -> list[int]:
        """``add`` of each (digest, parts), in order; their sizes."""
        with self._lock:
            if self._writer is None:
                sizes = []
                for i, (digest, parts) in enumerate(objects):
                    if len(self._held) >= packs.PACK_MIN - 1:  # this one begins the pack
                        return sizes + self._begin_pack(objects[i:])
                    if digest in self._held:
                        sizes.append(0)
                        continue
                    self._held[digest] = b"".join(parts)  # the parts' buffers are reused
                    sizes.append(len(self._held[digest]))
                return sizes
        return self._write(lambda: self._writer.add_many(objects))

    def _begin_pack(self, objects: list[tuple[str, list[bytes | memoryview]]]) -> list[int]:
        """Under the lock: start the pack with the held objects, then ``objects``."""
        self._writer = packs.PackWriter(self.cache._packs_dir)
        held, self._held = self._held, {}
        self._write(lambda: self._writer.add_many([(d, [o]) for d, o in held.items()]))
        return self._write(lambda: self._writer.add_many(objects))

    def _write(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except OSError as e:
            raise StorageError(f"cannot write a pack to {self.cache.url}: "
                               f"{e.strerror}") from None

    def commit(self) -> None:
        """Store what was added: a pack, or the few objects loose (StorageError)."""
        with self._lock:
            held, self._held = self._held, {}
        for digest, obj in held.items():
            self.cache.put_encoded(digest, obj)
        if self._writer is not None:
            self._write(self._writer.commit)

    def abort(self) -> None:
        """Drop what was added and not committed."""
        self._held = {}
        if self._writer is not None:
            self._writer.abort()


def _file_id(st: os.stat_result) -> tuple[int, int, int]:
    """What tells a file from one written in its place: size, mtime and inode."""
    return st.st_size, st.st_mtime_ns, st.st_ino


def _raw_form(path: str) -> bool:
    """The object at ``path`` is stored raw, or has no readable header: its size alone
    tells whether it is whole.  An object in another storage form (zstd, blosc, ...) is
    not judged by its size (a reader verifies it, as any object, before use)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO planted here must not block
    except OSError:
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True  # no object at all: judged (and quarantined) by its size
        head = os.pread(fd, 5 + 255, 0)
    except OSError:
        return True
    finally:
        os.close(fd)
    try:
        name, _ = codecs.split(head)
    except codecs.CodecError:
        return True
    return name == "raw"


def _freshen(path: str, mtime: float) -> bool:
    """A new mtime for the object at ``path`` if its own is older than ``FRESHEN_AFTER``;
    False if the object is gone (a gc removed it after the caller's ``stat``)."""
    if time.time() - mtime > FRESHEN_AFTER:
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        except OSError:  # a read-only or another user's object
            pass
    return True


def default_cache_dir(git_common_dir: str) -> str:
    """A repository's own cache folder: ``<git-common-dir>/theta-zarr``, made absolute.

    Shared by every worktree of the repository (the common dir, not a worktree's git
    dir), unless git config ``theta-zarr.cache`` names another (``Repo.settings``).  The
    cluster-sync commands, which have no repository, use ``sync.default_cache_dir``.
    """
    return os.path.join(os.path.abspath(git_common_dir), "theta-zarr")


#: the folder of a cache that names each repository whose ``theta-zarr.cache`` points at
#: it (one file per repository, named by the SHA-256 of its git dir, holding that path):
#: such a cache holds the only copy of those repositories' unpushed commits' chunks
REPOSITORIES = "repositories"


def record_repository(root: str, git_common_dir: str) -> None:
    """Name the repository of ``git_common_dir`` in the shared cache ``root`` (best
    effort: a read-only cache is left as it is), so that ``theta-zarr cache prune``,
    which trims by age alone, refuses a cache holding a repository's chunks."""
    git_dir = os.path.abspath(git_common_dir)
    folder = os.path.join(root, REPOSITORIES)
    path = os.path.join(folder, hashlib.sha256(os.fsencode(git_dir)).hexdigest())
    if os.path.exists(path):
        return
    with contextlib.suppress(OSError):
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(os.fsencode(git_dir) + b"\n")
        os.replace(tmp, path)


def owning_repository(root: str) -> str | None:
    """The git dir whose own cache ``root`` is, ``<git-dir>/theta-zarr`` (its parent holds
    ``HEAD`` and ``refs/`` as every git dir does, a bare one too); None for any other."""
    parent = os.path.dirname(os.path.realpath(root))
    if os.path.isfile(os.path.join(parent, "HEAD")) and \
            os.path.isdir(os.path.join(parent, "refs")):
        return parent
    return None


def recorded_repositories(root: str) -> list[str]:
    """The git dirs of the repositories ``record_repository`` named in the cache ``root``
    that still exist (each still has its ``HEAD``), sorted."""
    folder = os.path.join(root, REPOSITORIES)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = set()
    for name in names:
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(folder, name), "rb") as f:
                git_dir = os.fsdecode(f.read(1 << 16).rstrip(b"\n"))
        except OSError:
            continue
        if git_dir and os.path.isfile(os.path.join(git_dir, "HEAD")):
            found.add(git_dir)
    return sorted(found)
