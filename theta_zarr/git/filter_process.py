"""git's long-running filter protocol (``filter.<driver>.process``), version 2.

One process serves every clean and smudge of a git command, so Python and the
libraries start once, not once per file.  See gitattributes(5), "Long Running
Filter Process".  Errors are reported per file (``status=error``) with a
one-line message on stderr; git then fails the command, because
``filter.theta-zarr.required`` is set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from .. import checkpoint, interrupts, lfs, malloc, progress
from ..errors import one_line, opaque_note
from ..logs import setup_logging
from ..manifest import (
    Manifest,
    looks_like_conflicted_manifest,
    looks_like_manifest,
    looks_like_summary,
)
from ..settings import Settings
from ..streams import named
from . import lfs as git_lfs
from .direct import WORKTREE_COMMANDS, Pending, lazy_note, write_repairing
from .files import IndexBlobs
from .hooks import CommittedHooks, ensure_hooks
from .index import GitIndex, IndexUnsupported
from .parent import parent_git
from .pending import Record
from .pktline import PktReader, PktWriter, ProtocolError
from .repo import GitError, Repo
from .statcache import StatCache, stat_key

#: set to 1 by ``migrate``: clean converts a file the index holds as a git-lfs pointer
CONVERT_LFS_ENV = "GIT_THETA_ZARR_CONVERT_LFS"
#: a clean reads what git sends (or the file) through a buffer of this size: a read of at
#: least this many bytes (a large chunk) goes straight into the chunk's buffer, smaller
#: ones (small tensors: 10^5 of 1 KiB) are served from it, instead of a system call each
#: that gave the GIL away to the threads hashing chunks
READ_BLOCK = 64 << 10
log = logging.getLogger(__name__)


class FilterServer:
    """One filter process.  ``broken``: a start-up failure (a bad config value...), then
    reported as a one-line error for every file git asks about, instead of a crash."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO, settings: Settings | None,
                 find_fetch: Callable[[], checkpoint.Fetcher | None] | None = None,
                 repo: Repo | None = None, broken: str | None = None, direct: bool = False):
        self.repo = repo
        self.broken = broken
        # files answered with their manifest, to be written directly when git is done
        self.direct = direct and repo is not None and settings is not None and \
            settings.direct_checkout is not None
        self.index: GitIndex | None = None
        self.index_blobs: IndexBlobs | None = None  # the index's manifests, for clean
        self.pending: dict[str, Pending] = {}
        self.unwritten: list[str] = []  # direct writes not done (finish failed part-way)
        self.smudged = False  # a smudge came: Ctrl-C then says how to restore a file
        # a smudge answered with an error: git (the filter is required) dies holding its
        # index lock, waits for this process to end and writes no index
        self.smudge_failed = False
        self._in_smudge = False
        self.record: Record | None = None  # the pending direct writes, for git's hooks
        # clean's content is the working-tree file (not hash-object --stdin, apply...)
        self.clean_reads_worktree = False
        self.stat_cache = StatCache(repo.git_dir) if repo is not None else None
        # delayed smudges (git-lfs's lesson: fetch a checkout's chunks in one batch)
        self.delayed: dict[str, Manifest] = {}
        self.ready: dict[str, Manifest] = {}
        self.reader = PktReader(stdin)
        self.writer = PktWriter(stdout)
        self.settings = settings
        self.cache = checkpoint.open_cache(settings) if settings is not None else None
        # the remote is looked up on first need: a checkout the cache serves starts no
        # ``git config`` for it (the filter starts in every git command)
        self._find_fetch = find_fetch
        self._fetch: checkpoint.Fetcher | None = None
        #: say which files are kept as opaque bytes (off for commands that only look)
        self.notes = True
        self.noted: set[str] = set()

    @property
    def fetch(self) -> checkpoint.Fetcher | None:
        """What fetches chunks from the repository's remote, or None without one.

        Raises what looking the remote up raises (a bad remote setting), on every use,
        so that each file reports it."""
        if self._find_fetch is not None:
            self._fetch = self._find_fetch()
            self._find_fetch = None
            if self._fetch is not None:  # transfers ahead: a few MB allocated per object
                malloc.reuse_freed_memory()
        return self._fetch

    def serve(self) -> None:
        """Answer git's requests until it closes the pipe (the handshake is done)."""
        while True:
            try:
                headers = self.reader.read_text_list()
            except EOFError:
                return
            meta = dict(h.split("=", 1) for h in headers if "=" in h)
            command, path = meta.get("command"), meta.get("pathname", "?")
            if self.broken is not None and command in ("clean", "smudge"):
                self.reader.content_stream().drain()
                self._error(path, self.broken)
            elif command == "clean":
                self.clean(path)
            elif command == "smudge":
                self._in_smudge = True
                try:
                    self.smudge(path, can_delay=meta.get("can-delay") == "1")
                finally:
                    self._in_smudge = False
            elif command == "list_available_blobs":
                self.list_available_blobs()
            else:
                self.reader.content_stream().drain()
                self._error(path, f"unsupported filter command {command!r}")

    def _error(self, path: str, message: str) -> None:
        if self._in_smudge and not self.smudge_failed and self._first_checkout():
            message += FIRST_CHECKOUT_HINT
        self.smudge_failed = self.smudge_failed or self._in_smudge
        print(f"theta-zarr: {message}" if path in message else f"theta-zarr: {path}: {message}",
              file=sys.stderr, flush=True)
        self.writer.text("status=error")
        self.writer.flush()

    def _first_checkout(self) -> bool:
        """This work tree has no index yet: git is checking it out for the first time
        (``git clone``, ``git worktree add``, a checkout after ``clone --no-checkout``), so
        nothing in it is the user's."""
        return self.repo is not None and not self.repo.bare and bool(self.repo.index_path) \
            and not os.path.exists(self.repo.index_path)

    def _reply(self, data: bytes) -> None:
        self.writer.text("status=success")
        self.writer.flush()
        content = self.writer.content()
        content.write(data)
        content.close()
        self.writer.flush()
        self.writer.flush()  # empty list: status stays "success"

    def clean(self, path: str) -> None:
        content = self.reader.content_stream()
        read_from = time.time_ns()  # before the stat: a record needs an mtime older than this
        before = self._worktree_stat(path)
        if os.environ.get(CONVERT_LFS_ENV) == "1":
            before = None  # migrate: the index's pointer decides, not a record
        if before is not None and self.stat_cache is not None:
            cached = self.stat_cache.get(path, before)
            # the file theta-zarr last cleaned or wrote: no re-hash, unless the cache lost
            # a chunk since (deleted, gc'd, or taken by a gc running now): then the clean
            # below stores it again.  The chunks found get a new mtime, as a clean gives them
            if cached is not None and not checkpoint.freshen(self.cache, cached[1]):
                log.debug("%s: answered from its stat record, not hashed again", path)
                content.drain()
                if content.count == before.st_size and \
                        stat_key(before) == stat_key(self._worktree_stat(path) or before):
                    self._reply(cached[0])
                else:
                    self._error(path, "changed while git was reading it; run the command "
                                      "again")
                return
        if before is not None and self.settings.direct_checkout is not None and \
                before.st_size >= self.settings.direct_checkout:
            self._clean_from_file(path, content, before, read_from)
            return
        try:
            with progress.bar(_size(path), f"clean {path}") as bar:
                buffered = io.BufferedReader(content, READ_BLOCK)
                source = checkpoint.open_source(progress.CountingStream(buffered, bar),
                                                self.cache, name=path)
                out = self._clean_source(source, path)
        except Exception as e:  # every failure is reported for this file only
            content.drain()
            self._error(path, one_line(e))
            return
        content.drain()
        if looks_like_manifest(out[:64]) and before is not None and \
                self.stat_cache is not None and content.count == before.st_size:
            after = self._worktree_stat(path)
            if after is not None and stat_key(after) == stat_key(before):
                self.stat_cache.put(path, before, out, read_from)
        self._reply(out)

    def _clean_source(self, source, path: str) -> bytes:
        """The blob for a file being cleaned (a manifest, or what stays as it is)."""
        if not source.head:  # an empty file stays empty, as git-lfs does
            return b""
        if lfs.parse(source.head) is not None:
            return source.head  # a git-lfs pointer stays one (git-lfs's own rule)
        if looks_like_summary(source.head):
            # git blame FILE cleans the working tree's textconv summary: kept as text, it
            # compares line by line with the committed versions' summaries
            with source.as_file() as full, open(full, "rb") as f:
                return f.read()
        blob = self.index_blob(path)
        pointer = lfs.parse(blob) if blob is not None else None
        if pointer is not None and os.environ.get(CONVERT_LFS_ENV) != "1":
            return self.clean_lfs_era(source, path, pointer, blob)
        previous = _as_manifest(blob, path)
        result = checkpoint.clean(source, self.settings, self.cache, previous)
        if result.opaque_reason and self.notes and path not in self.noted and not (
                previous is not None and previous.format_name == "opaque"):
            self.noted.add(path)  # once per file, and not again once git stores it so
            print(f"theta-zarr: {path}: {opaque_note(result.opaque_reason)}",
                  file=sys.stderr, flush=True)
        return result.manifest.to_bytes()

    def _clean_from_file(self, path: str, content, before: os.stat_result,
                         read_from: int) -> None:
        """Clean a large working-tree file from the file itself while a thread drains
        git's pipe of the same bytes: hashing does not wait on the pipe, and formats that
        need random access read the file in place instead of a spooled copy.  The answer
        stands only if git sent as many bytes as the file holds and its stat did not move.
        """
        full = os.path.join(self.repo.top, path)
        drainer = threading.Thread(target=content.drain, name="tz-drain", daemon=True)
        drainer.start()
        error: Exception | None = None
        out = b""
        try:
            with open(full, "rb", buffering=READ_BLOCK) as f, \
                    progress.bar(before.st_size, f"clean {path}") as bar:
                source = checkpoint.open_source(progress.CountingStream(f, bar), self.cache,
                                                name=path, path=full)
                out = self._clean_source(source, path)
        except Exception as e:  # reported once git's content is drained
            error = e
        drainer.join()
        after = self._worktree_stat(path)
        if error is not None:
            self._error(path, one_line(error))
        elif content.count != before.st_size or after is None or \
                stat_key(after) != stat_key(before):
            self._error(path, "changed while git was reading it; run the command again")
        else:
            if looks_like_manifest(out[:64]) and self.stat_cache is not None:
                self.stat_cache.put(path, before, out, read_from)
            self._reply(out)

    def _worktree_stat(self, path: str) -> os.stat_result | None:
        """The stat of the working-tree file git is cleaning, when git reads that file."""
        if self.repo is None or not self.clean_reads_worktree:
            return None
        try:
            st = os.stat(os.path.join(self.repo.top, path))
        except OSError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def index_blob(self, path: str) -> bytes | None:
        """What git's index holds for ``path`` (its manifest keeps chunk shapes stable)."""
        if self.repo is None:
            return None
        if self.index_blobs is None:
            self.index_blobs = IndexBlobs(self.repo)
        return self.index_blobs.get(path)

    def clean_lfs_era(self, source, path: str, pointer: lfs.LfsPointer, blob: bytes) -> bytes:
        """A file the index holds as a git-lfs pointer: the same content keeps the pointer
        (a checkout of an LFS-era commit leaves ``git status`` clean); changed content is
        stored by theta-zarr.  ``git theta-zarr migrate`` converts unchanged files too."""
        with tempfile.TemporaryFile(dir=self.cache.tmp_dir) as spool, \
                named(f"a copy of {path} in {self.cache.tmp_dir}"):  # a full disk says where
            h, size = hashlib.sha256(), 0
            view = memoryview(bytearray(1 << 20))
            while n := source.readinto(view):
                h.update(view[:n])
                spool.write(view[:n])
                size += n
            spool.flush()
            if size == pointer.size and h.hexdigest() == pointer.oid:
                return blob
            spool.seek(0)
            again = checkpoint.open_source(spool, self.cache, name=path)
            return checkpoint.clean(again, self.settings, self.cache).manifest.to_bytes()

    def list_available_blobs(self) -> None:
        """Fetch every delayed checkpoint's missing chunks in one concurrent batch.

        (This command carries no content section.)
        """
        paths = sorted(self.delayed)
        if paths and self.fetch is not None:
            lacking: set[str] = set()
            sizes: dict[str, int] = {}
            for manifest in self.delayed.values():
                lacking |= checkpoint.missing_chunks(manifest, self.cache)
                sizes.update(manifest.chunk_sizes())
            try:
                if lacking:
                    self.fetch(lacking, sizes)
            except Exception as e:  # each file then fetches again and reports what it lacks,
                log.debug("batch fetch failed: %s", one_line(e))  # naming itself: said once
        self.ready.update(self.delayed)
        self.delayed.clear()
        self.writer.text(*(f"pathname={p}" for p in paths))
        self.writer.flush()
        self.writer.text("status=success")
        self.writer.flush()

    def smudge(self, path: str, can_delay: bool = False) -> None:
        if not self.smudged:  # git removes a file before it asks for the new one
            self.smudged = True
            interrupts.install(lambda: "; git's checkout stopped part way: 'git status' shows "
                               "what it left, and 'git restore PATH' puts back a file it "
                               "removed")
        data = self.reader.content_stream().read()
        if not data and path in self.ready:  # git asks again for a delayed file
            data = self.ready.pop(path).to_bytes()
        try:
            if looks_like_conflicted_manifest(data[:4096]):
                Manifest.from_bytes(data, path)  # raises: conflict markers, one line
            if not looks_like_manifest(data[:64]):
                if lfs.parse(data) is not None and not self.settings.lazy:
                    self.smudge_lfs(path, data)
                    return
                self._reply(data)  # not ours (committed before tracking): as it is
                return
            manifest = Manifest.from_bytes(data, path)
            if self.settings.lazy:
                self._reply(data)
                return
            if checkpoint.missing_chunks(manifest, self.cache):
                if can_delay and self.fetch is not None:
                    self.delayed[path] = manifest
                    self.writer.text("status=delayed")
                    self.writer.flush()
                    return
                checkpoint.ensure_local(manifest, self.cache, self.fetch, source=path)
            if self._direct(path, manifest):
                self.pending[path] = Pending(path, data, manifest)
                self._record().add(path, self.pending[path].data)  # git's hooks may write it
                self._reply(data)  # git writes the manifest; finish() writes the file
                return
        except Exception as e:
            self._error(path, one_line(e))
            return
        def write(content) -> None:
            with progress.bar(manifest.nbytes, f"smudge {path}") as bar:
                checkpoint.smudge(manifest, progress.CountingStream(content, bar), self.settings,
                                  name=path, cache=self.cache, fetch=self.fetch,
                                  ensured=True)

        self._stream_reply(path, write)

    def _stream_reply(self, path: str, write) -> None:
        """Answer git with content streamed by ``write(stream)``: status, content, final
        flush; a failure part-way becomes git's error status for ``path`` (filter protocol:
        an empty list after the content, then ``status=error``)."""
        self.writer.text("status=success")
        self.writer.flush()
        content = self.writer.content()
        try:
            write(content)
            content.close()
        except Exception as e:
            content.close()
            self.writer.flush()
            self._error(path, one_line(e))
            return
        self.writer.flush()
        self.writer.flush()

    def smudge_lfs(self, path: str, data: bytes) -> None:
        """An LFS-era version: git-lfs rebuilds it; without git-lfs the pointer stays,
        with a warning that says why and what to do."""
        if not git_lfs.installed():
            pointer = lfs.parse(data)
            assert pointer is not None
            print(f"theta-zarr: warning: {path}: {pointer.describe()}; git-lfs is not "
                  f"installed, so the pointer is checked out as it is ({git_lfs.INSTALL_HINT}"
                  ", then 'git checkout -- PATH')", file=sys.stderr, flush=True)
            self._reply(data)
            return
        top = self.repo.top if self.repo is not None else os.getcwd()
        self._stream_reply(path, lambda content: git_lfs.smudge(top, path, data, content))

    def _direct(self, path: str, manifest: Manifest) -> bool:
        """Should this file skip git's pipe (large enough, and the index can take it)?"""
        if not self.direct or manifest.nbytes < (self.settings.direct_checkout or 0):
            return False
        if self.index is None:
            try:
                self.index = GitIndex(self.repo.index_path, self.repo.object_format)
                self.index.check()
            except (IndexUnsupported, GitError, OSError):
                self.direct = False
                return False
        return True

    def finish(self) -> None:
        """git has closed the pipe (its index is written): write the pending files.

        Should the index refuse a direct write after all, git writes them through
        its pipe (``checkout-index``), as it would have.  Any other failure leaves the
        files as git wrote them (their manifests: lazy files), and ``unwritten`` names them.
        After a smudge failed, git is dying instead: it holds ``index.lock`` until this
        process ends and writes no index, so the files are written without touching the
        index, as git's pipe would have written them before the failure.
        """
        if not self.pending:
            return
        files = list(self.pending.values())
        self.pending.clear()
        try:
            self._write_pending(files)
        finally:
            self._record().remove()

    def on_hook(self, signum: int, frame: object) -> None:
        """SIGUSR1 from theta-zarr's post-checkout (post-merge) hook: git has
        written its index and waits for its hooks, so the pending files are written now,
        and the record removed (the hook waits for that).  git sends no request meanwhile:
        this process is idle, blocked reading the pipe.  A failure is said here, once."""
        try:
            self.finish()
        except Exception as e:
            print(f"theta-zarr: {one_line(e)}{lazy_note(self.unwritten)}", file=sys.stderr,
                  flush=True)
            self.unwritten = []

    def _record(self) -> Record:
        if self.record is None:
            assert self.repo is not None
            self.record = Record(self.repo.git_dir, self.repo.object_format)
        return self.record

    def _write_pending(self, files: list[Pending]) -> None:
        # files git's post-checkout (post-merge) hook took over are the
        # hook's: it removed them from the record, and reported any failure
        recorded = self._record().paths()
        files = [p for p in files if p.path in recorded]
        self.unwritten = [p.path for p in files]
        interrupts.install(lambda: "; files not written yet stay lazy (run 'git theta-zarr "
                           f"materialize'): {', '.join(self.unwritten)}")
        write_repairing(self.repo, files, self.cache, self.settings.workers,
                        lambda: self.fetch, self.index, touch_index=not self.smudge_failed)
        self.unwritten = []


#: said after the first smudge that fails in a work tree's first checkout: git then dies
#: without writing an index, and the "git restore --source=HEAD :/" it suggests writes the
#: files but leaves every one staged as deleted; ``git reset --hard`` writes both (nothing
#: in a new clone is the user's to lose)
FIRST_CHECKOUT_HINT = ("; once that is fixed, run 'git reset --hard' in this new work tree "
                       "to check its files out")


def _as_manifest(blob: bytes | None, path: str) -> Manifest | None:
    if blob is None or not looks_like_manifest(blob[:64]):
        return None
    try:
        return Manifest.from_bytes(blob, path)
    except ValueError:
        return None

#: git commands whose clean reads the working-tree file named by ``pathname`` (not
#: ``hash-object --stdin --path``, ``apply`` or ``am``, which clean other content).
CLEANS_WORKTREE = frozenset({"add", "commit", "status", "diff", "stash", "update-index", "rm",
                             "mv", "checkout", "switch", "restore", "reset"})

#: git commands that only read: they smudge blobs just to hand them to a diff driver or
#: textconv, which work from the manifest (the blob itself), so rebuilding is waste.
READ_ONLY_COMMANDS = frozenset({"diff", "log", "show", "whatchanged", "format-patch",
                                "range-diff", "blame", "grep", "difftool"})


def parent_git_command() -> str | None:
    """The subcommand of the git process that started this filter, if it can be told
    (git may start the filter through ``sh -c``)."""
    found = parent_git()
    return found[0] if found else None


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _start(stdin: BinaryIO, stdout: BinaryIO) -> FilterServer:
    """The server for this repository (bare ones too: ``git archive`` on a server smudges,
    with the remote from the committed ``.thetazarr``).  A failure to start (a bad
    ``theta-zarr.*`` value) gives a server that reports it per file; the remote is looked
    up when a file first needs it, and a bad one is reported by each file that does."""
    setup_logging()  # a repaired object is a ``theta-zarr:`` line; libraries stay quiet
    try:
        repo = Repo.discover(bare_ok=True)
        settings = repo.settings()
        command = parent_git_command()
        if command in READ_ONLY_COMMANDS:
            settings.lazy = True  # the manifest is all a diff driver or textconv needs
        direct = (command in WORKTREE_COMMANDS and not repo.bare
                  and "GIT_INDEX_FILE" not in os.environ)

        def find_fetch() -> checkpoint.Fetcher | None:
            from .push import read_through  # the transfer machinery: only for a fetch

            objects = read_through(repo, cache=server.cache, settings=settings)
            return objects.fetcher

        server = FilterServer(stdin, stdout, settings, find_fetch, repo=repo, direct=direct)
        server.notes = command not in READ_ONLY_COMMANDS | {"status"}
        server.clean_reads_worktree = command in CLEANS_WORKTREE and not repo.bare
    except Exception as e:
        return FilterServer(stdin, stdout, None, broken=one_line(e))
    try:
        installed = ensure_hooks(repo)
    except CommittedHooks as e:
        if server.notes:
            print(f"theta-zarr: warning: {e}", file=sys.stderr, flush=True)
    except (OSError, GitError) as e:
        print(f"theta-zarr: cannot install the hooks ({one_line(e)}); pushes will not upload "
              "chunks: run 'git theta-zarr install'", file=sys.stderr, flush=True)
    else:
        if installed:
            print(f"theta-zarr: installed the hooks {', '.join(installed)} in "
                  f"{repo.hooks_dir} (git push uploads chunks; checkouts are complete when "
                  "git's own hooks run)", file=sys.stderr, flush=True)
    return server


def main(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Serve git until it closes the pipe, then write the files kept for a direct write.

    ``stdin``/``stdout`` come from ``git.filter_start``, which opened them and answered
    git's handshake before these modules were imported.
    """
    server = _start(stdin, stdout)
    try:
        if hasattr(signal, "SIGUSR1"):  # even with nothing to write: never a kill
            signal.signal(signal.SIGUSR1, server.on_hook)
        server.serve()
    except EOFError:  # git went away in the middle of a request: killed, or interrupted
        print("theta-zarr: git closed the filter pipe in the middle of a request (git was "
              "stopped); the file it was sending was not recorded", file=sys.stderr)
        return 1
    except (ProtocolError, BrokenPipeError) as e:
        print(f"theta-zarr: filter protocol error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # never a traceback into git's output
        print(f"theta-zarr: {one_line(e)}", file=sys.stderr)
        return 1
    try:
        server.finish()
    except Exception as e:
        print(f"theta-zarr: {one_line(e)}{lazy_note(server.unwritten)}", file=sys.stderr)
        return 1
    return 0
