"""Direct writes a filter process has still to do, recorded so git's hooks can do them.

The filter answers the smudge of a large checkpoint with its manifest and writes the real
file itself once git is done with its index (git/direct.py).  The filter learns that only
when git closes the pipe, at its exit; but git runs its ``post-checkout`` and
``post-merge`` hooks before it exits, with its index already written, so a user's hook
(tests run after a checkout, a DVC-style post-checkout) read manifests.

So each direct write is also recorded in ``<git-dir>/theta-zarr/pending/<filter pid>``
(one JSON line per file: path and the manifest's blob id), and theta-zarr's own hook of
each of those names (installed by git/hooks.py, run before the hook it chains) has them
written first: it signals the filter (``SIGUSR1``; idle while git runs hooks), which
writes them and removes its record, and waits for that.  Where it cannot tell that the
pid is a theta-zarr filter (no ``/proc``), ``git-theta-zarr post-checkout`` writes them
itself, under git's index lock as the filter would (:func:`finish`), and removes the
record: the files are then the hook's, and the filter at its exit writes only what its
record still lists.  A record whose filter no longer runs (a kill) is stale: removed, its
files not written (nobody asked for them now), and those still holding their manifests
named, with 'git theta-zarr materialize' to finish them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys

from ..manifest import Manifest, looks_like_manifest
from .direct import Pending, lazy_note, write_repairing
from .index import blob_id
from .repo import Repo

#: a manifest larger than this is not read back from the work tree (a checkpoint is there)
MAX_MANIFEST = 256 << 20


def record_dir(git_dir: str) -> str:
    """The folder of the pending-write records (``<git-dir>/theta-zarr/pending``), one file
    per filter process named by its pid; ``git_dir`` is the work tree's own git dir (a
    linked worktree has its own), not the common one."""
    return os.path.join(git_dir, "theta-zarr", "pending")


class Record:
    """This filter process's record of the files it left for a direct write."""

    def __init__(self, git_dir: str, object_format: str = "sha1"):
        self.path = os.path.join(record_dir(git_dir), str(os.getpid()))
        self.object_format = object_format

    def add(self, path: str, manifest_bytes: bytes) -> None:
        """Record one file (appended: one line, written whole)."""
        line = json.dumps({"path": path,
                           "blob": blob_id(manifest_bytes, self.object_format)}) + "\n"
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def paths(self) -> set[str]:
        """The paths recorded and not yet taken over by a hook (none once it removed the
        record)."""
        return {path for path, _ in _entries(self.path)}

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entries(record: str) -> list[tuple[str, str]]:
    """(path, manifest blob id) of each line of a record; a line cut short by a kill, or a
    path that is not a plain relative one, is skipped."""
    try:
        with open(record, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            item = json.loads(line)
            path, blob = str(item["path"]), str(item["blob"])
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
        if path and not os.path.isabs(path) and ".." not in path.split("/"):
            out.append((path, blob))
    return out


def _read(repo: Repo, record: str) -> list[Pending]:
    """The files of one record that still hold the manifest it names."""
    out = []
    for path, blob in _entries(record):
        full = os.path.join(repo.top, path)
        try:
            if os.path.getsize(full) > MAX_MANIFEST:
                continue
            with open(full, "rb") as f:
                if not looks_like_manifest(f.read(64)):
                    continue  # the checkpoint is there already
                f.seek(0)
                data = f.read()
        except OSError:
            continue
        p = Pending(path, data, Manifest.from_bytes(data, path))  # LF, as git stores it
        if blob_id(p.data, repo.object_format) == blob:
            out.append(p)
    return out


def finish(repo: Repo) -> list[str]:
    """Write every checkpoint the running filter processes of this work tree left for a
    direct write; returns the paths written.  Each record read is removed, written or not:
    its files are this hook's now, and a failure is reported here, in one line naming the
    files left lazy (ValueError), not again by the filter."""
    folder = record_dir(repo.git_dir)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    files: dict[str, Pending] = {}
    orphans: set[str] = set()
    for name in names:
        record = os.path.join(folder, name)
        if name.isdigit() and _alive(int(name)):
            for p in _read(repo, record):
                files[p.path] = p
        elif name.isdigit():  # its filter was killed before it wrote these: said, not written
            orphans.update(p.path for p in _read(repo, record))
        with contextlib.suppress(OSError):
            os.unlink(record)  # taken (or stale: its filter no longer runs)
    if orphans - set(files):
        print(f"theta-zarr: an earlier checkout was stopped before it wrote these files"
              f"{lazy_note(sorted(orphans - set(files)))}", file=sys.stderr)
    if not files:
        return []
    from .. import checkpoint
    from ..errors import one_line
    from .push import read_through

    try:
        settings = repo.settings()
        cache = checkpoint.open_cache(settings)

        @functools.cache
        def find_fetch() -> checkpoint.Fetcher | None:  # the remote only when needed
            objects = read_through(repo, cache=cache, settings=settings)
            return objects.fetcher

        for p in files.values():
            if checkpoint.missing_chunks(p.manifest, cache):
                checkpoint.ensure_local(p.manifest, cache, find_fetch(), source=p.path)
        write_repairing(repo, list(files.values()), cache, settings.workers, find_fetch)
    except Exception as e:
        raise ValueError(f"{one_line(e)}{lazy_note(sorted(files))}") from None
    return sorted(files)
