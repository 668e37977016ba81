"""What theta-zarr last cleaned or wrote at a working-tree path, keyed by the file's stat.

git pipes a tracked file through clean again whenever its index entry does not
vouch for it (racily clean after ``git add``, a refreshed index, ``git add`` of a
file git already has).  When the file's stat (device, inode, size, mtime and
ctime in nanoseconds) is the one recorded when theta-zarr last cleaned or wrote
it, the recorded manifest is the answer: the pipe is drained, nothing re-hashed.
This is git's own trust in stat data, one level down.  Records live in
``<git-dir>/theta-zarr/stat/`` (one file per path, per worktree), written
atomically; a record is only used after its manifest parses and validates, and
only while the cache holds every chunk it names (a deleted or collected cache gets
them back from the clean that follows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time

from ..manifest import Manifest, ManifestError, looks_like_manifest


def stat_key(st: os.stat_result) -> list[int]:
    """What a record compares: [device, inode, size in bytes, mtime, ctime], the times in
    nanoseconds (the stat data git's index keeps, gitformat-index(5), at full precision)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


#: age after which a temporary file of an interrupted record write is removed, seconds
LEFT_BEHIND_S = 3600

#: longest first line of a record read: the path (at most 4096 bytes) and the stat numbers
MAX_HEAD = 1 << 16


class StatCache:
    """The stat records of one worktree, under ``<git_dir>/theta-zarr/stat/`` (the
    worktree's own git dir): one file per path (named by the SHA-256 of the path), holding
    a JSON line with the path and its ``stat_key``, then the manifest's bytes.

    Only a cache: a record that is damaged, names another path or stat, or holds no valid
    manifest reads as no record, and a failed write is ignored.
    """

    def __init__(self, git_dir: str):
        self.root = os.path.join(git_dir, "theta-zarr", "stat")

    def _file(self, path: str) -> str:
        return os.path.join(self.root, hashlib.sha256(os.fsencode(path)).hexdigest())

    def get(self, path: str, st: os.stat_result) -> tuple[bytes, Manifest] | None:
        """The manifest recorded for ``path`` (its bytes, parsed) if ``st`` is the recorded
        stat, else None."""
        try:
            with open(self._file(path), "rb") as f:
                # a damaged record (garbage, a line without end, deep nesting) is no record
                head = json.loads(f.readline(MAX_HEAD))
                if head.get("path") != path or head.get("stat") != stat_key(st):
                    return None
                data = f.read()
        except (OSError, ValueError, AttributeError, RecursionError):
            return None
        if not looks_like_manifest(data[:64]):
            return None
        try:
            return data, Manifest.from_bytes(data, path)
        except ManifestError:
            return None

    def remove(self, path: str) -> None:
        """Forget ``path``'s record, if there is one."""
        with contextlib.suppress(OSError):
            os.unlink(self._file(path))

    def put(self, path: str, st: os.stat_result, manifest: bytes,
            read_from_ns: int | None = None) -> None:
        """Record ``manifest`` for ``path`` at stat ``st`` (best effort: a cache).

        ``read_from_ns``: when the clean that made ``manifest`` began reading the file
        (``time.time_ns()``); a file modified too shortly before then (:func:`racy`) gets
        no record, as git trusts no racily clean index entry.  None: theta-zarr wrote the
        file itself and stamped it in the past (git/direct.py)."""
        if read_from_ns is not None and racy(st, read_from_ns):
            self.remove(path)
            return
        head = json.dumps({"path": path, "stat": stat_key(st)}).encode() + b"\n"
        with contextlib.suppress(OSError):
            os.makedirs(self.root, exist_ok=True)
            # made 0666 less the umask, as git makes its files (core.sharedRepository
            # narrows it): mkstemp's 0600 kept the group's git status from reading it
            tmp = os.path.join(self.root, f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(head + manifest)
                os.replace(tmp, self._file(path))
            except OSError:
                os.unlink(tmp)

    def prune(self, top: str, dry_run: bool = False) -> int:
        """Remove the records no file answers any more (its path gone, or its stat moved
        on: a record is only used at the stat it names), as gc does; returns how many.
        A path a Trainer's checkpoint folder held once would otherwise keep its record,
        the size of its manifest, for good.  A temporary file an interrupted write left
        (``.tmp-*``) goes too once it is an hour old (a write in progress is younger)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return 0
        stale = 0
        for name in names:
            record = os.path.join(self.root, name)
            if name.startswith("."):
                if not name.startswith(".tmp-") or not _older(record, LEFT_BEHIND_S):
                    continue
            try:
                with open(record, "rb") as f:
                    head = json.loads(f.readline(MAX_HEAD))
                path = head["path"]
                if self._file(path) == record and \
                        head.get("stat") == stat_key(os.lstat(os.path.join(top, path))):
                    continue
            except (OSError, ValueError, LookupError, TypeError, RecursionError):
                pass  # a damaged record, or its file gone: no file answers it
            stale += 1
            if not dry_run:
                with contextlib.suppress(OSError):
                    os.unlink(record)
        return stale


#: how long before a clean began reading a file its mtime must lie for the manifest to be
#: recorded, in nanoseconds.  File systems stamp times from a coarse clock (a jiffy, 1 to
#: 10 ms, on Linux), so a rewrite of the same size just after the read began can keep the
#: file's inode, size, mtime and ctime, and a record would then answer the old manifest
#: for new bytes: git's "racy git" problem (git's Documentation/technical/racy-git.txt)
RACY_NS = 100_000_000
#: the same where stamps are whole seconds (FAT keeps 2 s, HFS+ and some network file
#: systems 1 s), told by an mtime with no sub-second part
RACY_WHOLE_SECONDS_NS = 2_000_000_000


def racy(st: os.stat_result, read_from_ns: int) -> bool:
    """Whether a file of stat ``st`` may have changed within its mtime's clock tick after
    a read that began at ``read_from_ns`` (``time.time_ns()``): its record is not kept."""
    margin = RACY_WHOLE_SECONDS_NS if st.st_mtime_ns % 1_000_000_000 == 0 else RACY_NS
    return st.st_mtime_ns > read_from_ns - margin


def _older(path: str, seconds: float) -> bool:
    """Whether ``path`` was last modified more than ``seconds`` ago (False if it is gone)."""
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except OSError:
        return False
