"""Large checkpoints written into the working tree by theta-zarr, not through git's pipe.

git buffers a smudged file whole in memory before writing it, so a file of
``theta-zarr.direct-checkout`` bytes or more (default 64 MiB) is answered to git
with its manifest, which git writes and records as it would a lazy checkout.
When git is done with the filter (it closes the pipe as it exits, after its index
is written, and waits for the filter to end), theta-zarr writes each such file
itself, straight from the cache (``filewriter``), and records its stat data in the
index (``index``), so the first ``git status`` runs no filter.  ``materialize``
uses the same path.  Every git command keeps working because the working tree
holds a valid state at every step:

1. each real file is built under a temporary name (a kill here leaves the
   manifest, which git already recorded: ``git status`` is clean);
2. under ``index.lock``: entries whose blob is the manifest and whose file still
   holds it get size 0 in the index, git's "look at the content" mark (a file
   whose entry is another blob, as ``stash pop`` leaves it, is written without
   touching its entry: git already sees it as changed);
3. the manifest is unlinked and the new file renamed into place (a kill here
   leaves the manifest or the real file; either cleans to the same blob, and
   git compares content for a size-0 entry);
4. under ``index.lock``: entries whose file is still the one written get its stat data.

The new file's mtime is set just before the current second, so the index written
in step 4 is never in the same second as the file (git without nanosecond
timestamps would take the entry as "racily clean" and re-clean the whole file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat as stat_
import sys
import tempfile
import time
from collections.abc import Callable

from .. import checkpoint
from ..cache import Cache, QuarantinedError
from ..filewriter import write_checkpoint
from ..manifest import Manifest
from ..objects import MissingObjectError, ObjectError
from ..storage import RootMissing
from ..storage.local import TMP_PREFIX
from .index import GitIndex, IndexUnsupported, Stat, blob_id
from .repo import Repo
from .statcache import StatCache

log = logging.getLogger(__name__)

#: how many times a direct write fetches good copies of corrupt cache objects and tries again
REPAIRS = 3

#: git commands that smudge into the working tree (the parent of the filter process).
#: Anything else (archive, cat-file --filters, checkout-index --temp/--prefix, or a
#: parent that cannot be told) gets the file through git's pipe as before.
WORKTREE_COMMANDS = frozenset({
    "checkout", "switch", "restore", "reset", "stash", "merge", "pull", "rebase",
    "cherry-pick", "revert", "am", "clone", "worktree", "sparse-checkout", "read-tree",
    "bisect",
})


@dataclasses.dataclass
class Pending:
    """A file git holds as its manifest until theta-zarr writes the real one."""

    path: str  # relative to the work tree's top, '/'-separated (git's pathname)
    data: bytes  # the manifest's bytes as git stores them (its blob)
    manifest: Manifest

    def __post_init__(self) -> None:
        # git converts a text file's line ends for the work tree *before* the smudge
        # filter (a later ``* text=auto eol=crlf`` line overrides ``-text``): the manifest
        # then arrives, and is written, with CRLF; the blob has LF (a manifest never has CR)
        self.data = self.data.replace(b"\r\n", b"\n")


#: the file being built: a temporary file by the name gc knows, so the one a killed
#: checkout leaves in the cache's ``tmp/`` goes with the next gc after the grace period
SPOOL_PREFIX = f"{TMP_PREFIX}checkout-"


def _tmp_dir_for(cache: Cache, target_dir: str) -> str:
    """The cache's scratch folder when it is on the target's file system (a leftover
    from a kill stays out of ``git status``), else the target's own folder."""
    with contextlib.suppress(OSError):
        if os.stat(cache.tmp_dir).st_dev == os.stat(target_dir).st_dev:
            return cache.tmp_dir
    return target_dir


def _holds(full: str, data: bytes) -> bool:
    """The file holds the manifest ``data`` as git wrote it: as it is, or with CRLF line
    ends (a later ``* text=auto eol=crlf`` line overrides ``-text``: git converts the
    manifest's text, while a checkpoint, binary, is left alone)."""
    crlf = data.replace(b"\n", b"\r\n")
    try:
        st = os.lstat(full)
        if not stat_.S_ISREG(st.st_mode) or st.st_size not in (len(data), len(crlf)):
            return False
        with open(full, "rb") as f:
            return f.read() in (data, crlf)
    except OSError:
        return False


def write_files(repo: Repo, files: list[Pending], cache: Cache, workers: int,
                index: GitIndex | None = None, touch_index: bool = True) -> list[str]:
    """Replace each working-tree manifest in ``files`` by its checkpoint; record stat data.

    Every chunk must be in ``cache``.  Returns the paths written.  A file that no
    longer holds its manifest, or whose index entry moved on, is left alone.
    Raises IndexUnsupported before touching anything when the index cannot be
    rewritten safely; chunk errors (MissingObjectError, ObjectError) leave every
    file as it was.  Without ``touch_index`` (a git command that failed keeps its old
    index, whose entries are not these manifests) steps 2 and 4 are skipped.
    """
    index = index or GitIndex(repo.index_path, repo.object_format)
    built: dict[str, tuple[Pending, str]] = {}
    try:
        for p in files:
            full = os.path.join(repo.top, p.path)
            if not _holds(full, p.data):
                continue
            fd, tmp = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=_tmp_dir_for(
                cache, os.path.dirname(full)))
            built[p.path] = (p, tmp)
            try:
                write_checkpoint(p.manifest, fd, cache, workers, name=p.path)
                os.fchmod(fd, stat_.S_IMODE(os.lstat(full).st_mode))
            finally:
                os.close(fd)
        if not built:
            return []
        blobs = {path: blob_id(p.data, index.object_format) for path, (p, _) in built.items()}

        def mark(entry) -> Stat | None:  # step 2
            p, _ = built[entry.path]
            if entry.blob != blobs[entry.path] or not _holds(os.path.join(repo.top, p.path),
                                                              p.data):
                return None
            return dataclasses.replace(entry.stat, size=0)

        marked = index.update(sorted(built), mark) if touch_index else {}
        written: dict[str, Stat] = {}
        for path in sorted(built):  # step 3
            p, tmp = built[path]
            full = os.path.join(repo.top, path)
            if not _holds(full, p.data):
                continue
            del built[path]
            os.unlink(full)  # then rename: no flush of the whole file at rename (ext4)
            os.rename(tmp, full)
            mtime = (time.time_ns() // 1_000_000_000) * 1_000_000_000 - 1
            os.utime(full, ns=(mtime, mtime))
            st = os.lstat(full)
            written[path] = Stat.of(st)
            StatCache(repo.git_dir).put(path, st, p.data)  # a later clean is a lookup
        # A file whose entry is not its manifest (``stash pop`` leaves changes unstaged)
        # is written too; its entry keeps stat data that tell git to look at it.
        recorded = {path: st for path, st in written.items() if path in marked}

        def record(entry) -> Stat | None:  # step 4
            # The file still has the stat it had right after the rename: it is ours, and
            # it cleans to the entry's blob, whatever stat another writer put there.
            new = recorded.get(entry.path)
            if new is None or entry.blob != blobs[entry.path]:
                return None
            return new if Stat.of(os.lstat(os.path.join(repo.top, entry.path))) == new else None

        if recorded:
            try:
                index.update(sorted(recorded), record)
            except IndexUnsupported as e:  # entries stay marked: git compares content
                print(f"theta-zarr: {e}; git status will re-read these files once",
                      file=sys.stderr)
        return sorted(written)
    finally:
        for _, tmp in built.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def checkout_through_git(repo: Repo, path: str, data: bytes) -> None:
    """Let git write ``path`` through the filter (the pipe), so the index records it.

    git skips an up-to-date file, so the manifest goes first; on failure it is put back.
    """
    full = os.path.join(repo.top, path)
    os.unlink(full)
    try:
        repo.git("-c", "theta-zarr.lazy=false", "-c", "theta-zarr.direct-checkout=off",
                 "checkout-index", "-u", "--force", "--", path,
                 env={"GIT_THETA_ZARR_SKIP_SMUDGE": "0"})
    except BaseException:
        with open(full, "wb") as f:
            f.write(data)
        raise


def write_repairing(repo: Repo, files: list[Pending], cache: Cache, workers: int,
                    find_fetch: Callable[[], checkpoint.Fetcher | None],
                    index: GitIndex | None = None, touch_index: bool = True) -> None:
    """``write_files``; where the index cannot be rewritten safely, git writes the files
    through its pipe (``checkout-index``), as it would have; a corrupt cache object (moved
    aside) is fetched again from the remote (``find_fetch()``, asked only then: a checkout
    the cache serves looks up no remote) and the files written again (each attempt finds
    at least one more bad object).  Raises ObjectError when no good copy can be had, and
    what ``write_files`` raises otherwise; ``touch_index`` as for ``write_files``."""
    for attempt in range(REPAIRS + 1):
        try:
            write_files(repo, files, cache, workers, index, touch_index)
            return
        except IndexUnsupported:
            for p in files:
                checkout_through_git(repo, p.path, p.data)
            return
        except QuarantinedError as e:
            fetch = find_fetch()
            if fetch is None or attempt == REPAIRS:
                why = "no remote to fetch a good copy from" if fetch is None else \
                    "the remote had no good copy either"
                raise ObjectError(f"{e}; {why}; restore the chunk") from None
            try:
                for p in files:
                    checkpoint.ensure_local(p.manifest, cache, fetch, source=p.path)
            except (MissingObjectError, RootMissing) as missing:
                raise ObjectError(checkpoint.no_good_copy(str(e), missing)) from None
            log.warning("%s; fetched a good copy again", e)


def lazy_note(paths: list[str]) -> str:
    """What a failed direct write adds to its error line."""
    return f"; left as manifests (lazy files): {', '.join(paths)}; then run " \
        "'git theta-zarr materialize'" if paths else ""
