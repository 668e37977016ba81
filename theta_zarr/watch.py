"""``theta-zarr watch``: push each checkpoint that appears under a folder, once complete.

A training job writes checkpoints as it goes; the watcher notices one only when
it is complete (unchanged between two scans, or beside a marker file), pushes it
once under ``<prefix><name>``, and records it (and the remote) in a state file so a
restart never uploads it twice; the same folder watched into another remote is pushed
there too.  SIGTERM finishes the push in progress, then stops.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from . import interrupts
from .formats.base import FormatError
from .manifest import ManifestError
from .refs import RefError, check_ref_name
from .settings import Settings
from .storage import StorageError
from .streams import write_atomic
from .sync import PushResult, SyncError, SyncRemote, inside, list_files, push
from .wording import natural_key

CHECKPOINT_GLOBS = ("*.safetensors", "*.pt", "*.pth", "*.bin", "*.npz", "*.npy")
STATE_FILE = ".theta-zarr-watch.json"
#: ``Watcher.failed``'s mark for a checkpoint that could not be listed (never a signature)
UNREADABLE = "unreadable"


@dataclass
class WatchOptions:
    """How ``theta-zarr watch`` runs (its flags): ``prefix`` goes before each checkpoint's
    name to make its ref; ``interval``: seconds between scans (a checkpoint is complete
    once unchanged over one); ``marker``: a glob whose file marks a folder complete
    (pushed with it unless empty);
    ``globs``: which top-level files are checkpoints; ``once``: two scans, then exit;
    ``exit_after``: seconds after which to stop (None: never); ``state``: the state file
    (None: ``FOLDER/.theta-zarr-watch.json``); ``force``: move refs that point elsewhere.
    """

    prefix: str
    interval: float = 30.0
    marker: str | None = None
    globs: tuple[str, ...] = CHECKPOINT_GLOBS
    once: bool = False
    exit_after: float | None = None
    state: str | None = None
    force: bool = False


class Watcher:
    """Push each checkpoint that appears under a folder once it is complete.

    A checkpoint is a sub-folder (pushed as a set, ref = prefix + folder name) or
    a top-level file matching ``globs`` (ref = prefix + file name without suffix).
    Complete means: the marker file is present (folders, with ``marker``), or the
    names, sizes and mtimes did not change between two scans ``interval`` apart.
    What was pushed is kept in a state file, so a restarted watcher re-uploads
    nothing; a checkpoint that changes after its push is reported, not re-pushed
    over the ref (its ref would have to move: that needs --force).
    """

    def __init__(self, root: str, remote: SyncRemote, settings: Settings, opts: WatchOptions,
                 echo: Callable[[str], None]):
        self.root = os.path.abspath(root)
        self.remote = remote
        self.settings = settings
        self.opts = opts
        self.echo = echo
        self.state_path = opts.state or os.path.join(self.root, STATE_FILE)
        self.state: dict[str, dict] = self._load_state()
        self._check_state_writable()
        self.failed: dict[str, str] = {}  # ref -> signature that failed (retried on change)
        #: ref -> the storage error (an outage) its last push met: pushed again next scan
        self.retrying: dict[str, str] = {}
        #: refs whose push failed (a broken file) and that no later push (of the file
        #: changed since: a half-written one completed) has pushed: the exit status counts
        #: these, not every failure met on the way
        self.unpushed: set[str] = set()
        #: refs whose record names no remote and whose ref here does not hold its digest
        self._unverified: set[str] = set()

    def _load_state(self) -> dict[str, dict]:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except RecursionError:
            raise SyncError(f"cannot read watch state {self.state_path}: nested too "
                            "deeply") from None
        except (OSError, ValueError) as e:
            raise SyncError(f"cannot read watch state {self.state_path}: {e}") from None
        pushed = data.get("pushed", {}) if isinstance(data, dict) else {}
        if not isinstance(pushed, dict) or not all(isinstance(v, dict) for v in pushed.values()):
            raise SyncError(f"cannot read watch state {self.state_path}: 'pushed' is not an "
                            "object of objects")
        return pushed

    def _check_state_writable(self) -> None:
        """Refuse to start when the state file cannot be written (a read-only checkpoint
        folder): the first push would succeed and the watcher stop on recording it."""
        folder = os.path.dirname(self.state_path) or "."
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".theta-zarr-", dir=folder)
        except OSError as e:
            raise self._state_unwritable(e) from None
        os.close(fd)
        os.unlink(tmp)

    def _state_unwritable(self, e: OSError) -> SyncError:
        return SyncError(f"cannot write watch state {self.state_path}: "
                         f"{e.strerror or e}; choose a writable file with --state")

    def _save_state(self) -> None:
        data = json.dumps({"pushed": self.state}, indent=1, sort_keys=True).encode()
        try:
            write_atomic(self.state_path, lambda f: f.write(data))
        except OSError as e:
            raise self._state_unwritable(e) from None

    def candidates(self) -> tuple[dict[str, str], int]:
        """ref -> path of every checkpoint-like entry of the folder, and how many entries
        (or sets of entries sharing one ref) were newly found to make no valid ref name or
        the same ref as another (reported once each, skipped).

        Entries come in natural name order (``checkpoint-9`` before ``checkpoint-10``), the
        order a run wrote them: a watcher started on a folder holding many steps pushes
        each after the one before it, so each step's delta base is its predecessor and
        the ref written last is the run's latest step."""
        out: dict[str, str] = {}
        clashes: dict[str, list[str]] = {}
        bad = 0
        for name in sorted(os.listdir(self.root), key=lambda n: (natural_key(n), n)):
            path = os.path.join(self.root, name)
            if name.startswith(".") or os.path.abspath(path) == self.state_path:
                continue
            if os.path.islink(path) and not inside(self.root, path):
                if self.failed.get(name) != "link":
                    self.echo(f"{path}: a symbolic link out of {self.root}; not pushed "
                              "(theta-zarr never follows links out of the watched folder)")
                    self.failed[name] = "link"
                continue
            if os.path.isdir(path):
                ref = self.opts.prefix + name
            elif any(fnmatch.fnmatch(name, g) for g in self.opts.globs):
                ref = self.opts.prefix + os.path.splitext(name)[0]
            else:
                continue
            if ref in out:  # step-1.pt beside step-1.safetensors, or beside folder step-1
                clashes.setdefault(ref, [out[ref]]).append(path)
            out[ref] = path
        for ref, paths in clashes.items():  # which one the ref means is the user's call
            del out[ref]
            if self.failed.get(ref) != "clash":
                self.echo(f"{' and '.join(paths)}: not pushed: all would be ref {ref!r}; "
                          "rename all but one (the others go on)")
                self.failed[ref] = "clash"
                bad += 1
        for ref, path in list(out.items()):  # a name no ref can take: said once, skipped
            try:
                check_ref_name(ref)
            except RefError as e:
                del out[ref]
                if self.failed.get(path) != "name":
                    self.echo(f"{path}: not pushed: {e}; rename it (the others go on)")
                    self.failed[path] = "name"
                    bad += 1
        return out, bad

    def _is_marker(self, rel: str) -> bool:
        return self.opts.marker is not None and fnmatch.fnmatch(rel.rsplit("/", 1)[-1],
                                                               self.opts.marker)

    def signature(self, path: str) -> str:
        if os.path.isdir(path):
            items = []
            for rel in list_files(path):
                st = os.stat(os.path.join(path, rel))
                items.append((rel, st.st_size, st.st_mtime_ns))
        else:
            st = os.stat(path)
            items = [("", st.st_size, st.st_mtime_ns)]
        return blake3.blake3(json.dumps(items).encode()).hexdigest()[:32]

    def _has_marker(self, path: str) -> bool:
        return os.path.isdir(path) and any(self._is_marker(r) for r in list_files(path))

    def scan(self, previous: dict[str, str], stop) -> tuple[dict[str, str], int]:
        """One pass: push what is complete; returns (signatures seen, failures other than
        a push's, which ``unpushed`` holds until a later push of the ref succeeds)."""
        seen = {}
        found, failures = self.candidates()
        self.remote.objects.revive()  # an outage during the last scan may be over
        for ref, path in found.items():
            if stop.is_set():
                break
            try:
                sig = self.signature(path)
            except FileNotFoundError:
                continue  # removed while we looked
            except SyncError as e:  # a folder in it cannot be read: said once, the rest go on
                if self.failed.get(ref) != UNREADABLE:
                    self.echo(f"{ref}: not pushed: {e}")
                    self.failed[ref] = UNREADABLE
                    failures += 1
                continue
            seen[ref] = sig
            done = self._pushed_here(ref)
            if done is not None:
                if done.get("signature") != sig and self.failed.get(ref) != sig:
                    self.echo(f"{ref}: {path} changed after it was pushed; not pushed again")
                    self.failed[ref] = sig
                continue
            by_marker = self.opts.marker is not None and os.path.isdir(path)
            complete = self._has_marker(path) if by_marker else previous.get(ref) == sig
            if not complete:
                continue
            if self.failed.get(ref) == sig:
                continue
            try:
                result = self._push(path, ref)
            except (StorageError, ManifestError, FormatError, OSError, ValueError) as e:
                _stop_if_interrupted()
                if _outage(e):  # the storage did not answer: try again at the next scan
                    if ref not in self.retrying:  # said once per outage, not every scan
                        self.echo(f"{ref}: push failed: {e}; trying again every scan")
                    self.retrying[ref] = str(e)
                    continue
                self.echo(f"{ref}: push failed: {e}")
                self.retrying.pop(ref, None)
                self.failed[ref] = sig
                self.unpushed.add(ref)
                continue
            self.retrying.pop(ref, None)
            self.unpushed.discard(ref)
            seq = 1 + max((e.get("seq", 0) for e in self.state.values()), default=0)
            self.state[ref] = {"signature": sig, "digest": result.digest, "path": path,
                               "seq": seq, "remote": self.remote.url}
            self._save_state()
            self.echo(result.summary())
            _stop_if_interrupted()
        return seen, failures

    def _pushed_here(self, ref: str) -> dict | None:
        """The state's record of ``ref`` when it was pushed to this watcher's remote; None
        when it was not pushed, or pushed to another remote (the same folder watched into
        a new bucket is pushed there too).  A record from before records named their
        remote counts when this remote's ref names the digest it recorded."""
        entry = self.state.get(ref)
        if entry is None:
            return None
        where = entry.get("remote")
        if where is None and ref not in self._unverified:
            try:
                value = self.remote.refs.read(ref)
            except (StorageError, RefError):
                value = None
            if value is not None and value.digest == entry.get("digest"):
                entry["remote"] = where = self.remote.url
            else:
                self._unverified.add(ref)
        return entry if where == self.remote.url else None

    def _push(self, path: str, ref: str) -> PushResult:
        # each checkpoint continues the one pushed before it (to this remote): its delta base
        here = [r for r in self.state if self.state[r].get("remote") == self.remote.url]
        latest = max(here, key=lambda r: self.state[r].get("seq", 0), default=None)
        if latest is not None and self.remote.refs.read(latest) is None:
            latest = None  # gone from the remote since (or another remote): the default base

        def sentinel(rel: str) -> bool:  # an empty marker (DONE) is no part of the checkpoint
            if not self._is_marker(rel):
                return False
            try:
                return os.path.getsize(os.path.join(path, rel)) == 0
            except OSError:
                return False

        return push(path, self.remote, ref, self.settings, force=self.opts.force,
                    skip=sentinel, base_ref=latest)

    def run(self, stop) -> int:
        """Scan until ``stop`` is set (SIGTERM), ``exit_after`` passes, or once; 1 on failures."""
        started = time.monotonic()
        previous: dict[str, str] = {}
        failures = 0
        passes = 0
        while not stop.is_set():
            previous, failed = self.scan(previous, stop)
            failures += failed
            passes += 1
            if self.opts.once and passes >= 2:
                break
            pause = self.opts.interval
            if self.opts.exit_after is not None:
                left = started + self.opts.exit_after - time.monotonic()
                if left <= pause:
                    # the run ends first: no scan sooner than one interval after the
                    # last, which could take a file still being written for complete
                    stop.wait(max(left, 0.0))
                    break
            stop.wait(pause)
        for ref, error in sorted(self.retrying.items()):
            self.echo(f"{ref}: not pushed ({error})")
        # a push that failed and went through later (the file completed) is no failure
        return 1 if failures or self.unpushed or self.retrying else 0


def _outage(e: BaseException) -> bool:
    """A storage call that failed for want of an answer (a timeout, a refused connection,
    a server error), not a ref, manifest or file the user must fix: worth pushing again."""
    return type(e) is StorageError


def _stop_if_interrupted() -> None:
    """After a push has reported: Ctrl-C interrupts again, and one that came while the
    push committed (``interrupts.hold_sigint``) stops the watch now."""
    if interrupts.release_sigint():
        raise KeyboardInterrupt
