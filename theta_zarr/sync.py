"""Cluster sync: publish checkpoints to a remote under named refs, without git.

A training job runs ``theta-zarr publish CKPT REMOTE --ref run7/step-3000``: the
checkpoint is cleaned into a local cache (chunks hashed once), the chunks the
remote lacks are uploaded, then the manifest, then the ref moves (invariant 3:
a remote never names an object it lacks).  ``pull``/``ls``/``import`` read it back.

A directory (Hugging Face shards + index.json, or one file per rank) is pushed
as a *set*: a small JSON document listing each file's manifest (checkpoints) or
chunks (any other file), stored beside the manifests and named by a ref like a
single checkpoint.  Ranks may push their files separately (``--shard``: each
records ``<remote>/staging/<ref>/.parts/<file>``) and one ``--combine`` turns the
staged files into the set and moves the ref.

Remote layout::

    objects/ab/cdef...           chunks (ObjectStore)
    manifests/<64 hex>.json      manifests and sets, named by the blake3 of their bytes
    refs/<name>                  see refs.py
    staging/<ref>/.parts/<file>  one JSON FileEntry per staged shard (until --combine)
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import checkpoint, chunking, delta, formats, interrupts, shards
from .cache import Cache
from .chunkreader import ordered_map
from .formats.base import FormatError, NotWeights
from .manifest import (
    DIGEST_RE,
    MAX_MANIFEST_BLOB,
    Manifest,
    ManifestError,
    check_name,
    loads_json,
    looks_like_manifest,
)
from .objects import ObjectError, ObjectStore, bounded_map
from .refs import RefError, Refs, RefValue, check_ref_name, ref_folder
from .remote import RemoteSpec, TransferStats, fetch_objects, open_remote, push_objects
from .settings import Settings
from .storage import (
    BlobInfo,
    BlobNotFound,
    BlobTooLarge,
    ConditionalWritesUnsupported,
    ConditionFailed,
    StorageError,
)
from .streams import write_atomic
from .wording import counted, natural_key

MANIFESTS_PREFIX = "manifests/"
STAGING_PREFIX = "staging/"
PARTS = ".parts"
SET_VERSION = 1
SET_MAGIC = b'{"theta_zarr_set":'
DEFAULT_CACHE = "~/.cache/theta-zarr"


class SyncError(StorageError):
    """A cluster-sync operation cannot go on; the message says what and where."""


def default_cache_dir(override: str | None = None) -> str:
    """--cache, else $THETA_ZARR_CACHE, else ~/.cache/theta-zarr (shared by a node's jobs)."""
    path = override or os.environ.get("THETA_ZARR_CACHE") or DEFAULT_CACHE
    return os.path.abspath(os.path.expanduser(path))


# -- sets: a directory of files as one ref ---------------------------------------------------
@dataclass(frozen=True)
class FileEntry:
    """One file of a set: a checkpoint's manifest digest, or a plain file's chunks."""

    manifest: str | None = None
    chunks: tuple[str, ...] = ()
    size: int = 0
    chunk_bytes: int = 0

    def to_json(self) -> dict:
        if self.manifest is not None:
            return {"manifest": self.manifest}
        return {"size": self.size, "chunk_bytes": self.chunk_bytes, "chunks": list(self.chunks)}

    @classmethod
    def from_json(cls, obj: object, where: str) -> FileEntry:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: file entry is not an object")
        if "manifest" in obj:
            if set(obj) != {"manifest"}:
                raise ManifestError(f"{where}: unknown keys beside 'manifest'")
            return cls(manifest=_digest(obj["manifest"], where))
        if set(obj) != {"size", "chunk_bytes", "chunks"}:
            raise ManifestError(f"{where}: needs 'manifest' or 'size', 'chunk_bytes', 'chunks'")
        size, cb, chunks = obj["size"], obj["chunk_bytes"], obj["chunks"]
        if not (isinstance(size, int) and isinstance(cb, int) and size >= 0 and cb > 0
                and isinstance(chunks, list) and len(chunks) == -(-size // cb)):
            raise ManifestError(f"{where}: inconsistent size, chunk_bytes and chunks")
        return cls(None, tuple(_digest(d, where) for d in chunks), size, cb)

    def chunk_sizes(self) -> dict[str, int]:
        return {d: min(self.chunk_bytes, self.size - i * self.chunk_bytes)
                for i, d in enumerate(self.chunks)}


def _digest(value: object, where: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise ManifestError(f"{where}: invalid digest {str(value)[:80]!r}")
    return value


@dataclass
class FileSet:
    """A directory published as one ref: ``files`` maps each file's ``/``-separated path in
    it (checked by ``check_name`` and ``check_file_names``) to its FileEntry.

    Stored in the remote's ``manifests/`` like a manifest, as deterministic JSON that
    starts with ``{"theta_zarr_set":`` (``to_bytes``), so a reader tells the two apart by
    their first bytes (``parse_target``).
    """

    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Deterministic, like manifests: the same files give the same digest anywhere."""
        body = {name: self.files[name].to_json() for name in sorted(self.files)}
        files = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        # the version key first, so a reader tells a set from a manifest by its first bytes
        return f'{{"theta_zarr_set":{SET_VERSION},"files":{files}}}\n'.encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> FileSet:
        """The set ``to_bytes`` wrote; ManifestError naming ``source`` for anything else (not
        JSON, another version, extra keys, a bad entry, digest or file name)."""
        obj = loads_json(data, source, "set")
        if not isinstance(obj, dict) or obj.get("theta_zarr_set") != SET_VERSION or \
                set(obj) != {"theta_zarr_set", "files"} or not isinstance(obj["files"], dict):
            raise ManifestError(f"{source}: not a theta-zarr set of version {SET_VERSION}")
        files = {check_name(n, source): FileEntry.from_json(e, f"{source}: {n[:80]}")
                 for n, e in obj["files"].items()}
        check_file_names(files, source)
        return cls(files)


def check_file_names(names: Iterable[str], source: str) -> None:
    """The names of a set must make a folder ``pull`` can write: no ``.git`` folder (a set
    pulled into a work tree would write git's own config and hooks; publish never reads
    dot-folders) and no name that is also another one's folder (``sub`` and
    ``sub/x.safetensors``), which failed half-way with a raw errno."""
    names = set(names)
    for name in sorted(names):
        parts = name.split("/")
        if any(part.lower() == ".git" for part in parts):
            raise ManifestError(f"{source}: file name {name!r} has a '.git' component (git's "
                                "own folder, never written by pull)")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in names:
                raise ManifestError(f"{source}: {'/'.join(parts[:i])!r} is both a file and "
                                    f"the folder of {name!r}")


Target = Manifest | FileSet


def chunk_sizes(manifest: Manifest) -> dict[str, int]:
    """Raw size of every chunk object a manifest names."""
    return manifest.chunk_sizes()


# -- the remote as cluster sync sees it ------------------------------------------------------
class SyncRemote:
    """Objects, manifests, refs and staged shards of one remote."""

    def __init__(self, objects: ObjectStore):
        self.objects = objects
        self.blobs = objects.blobs
        self.refs = Refs(self.blobs)

    @classmethod
    def open(cls, spec: RemoteSpec, concurrency: int = 16, need: str | None = None
             ) -> SyncRemote:
        """Open a remote; ``need`` ("read", "write", None) checks its bucket or folder first."""
        return cls(open_remote(spec, concurrency, need))

    @property
    def url(self) -> str:
        return self.objects.url

    @staticmethod
    def manifest_key(digest: str) -> str:
        return f"{MANIFESTS_PREFIX}{_digest(digest, 'manifest name')[7:]}.json"

    def put_manifest(self, data: bytes) -> str:
        """Store a manifest or set under its digest (idempotent: same bytes, same key).

        One already there is read back (a manifest is small) and written again unless it
        holds these bytes: a copy damaged on the remote is repaired, never named by a
        new ref that nobody could pull."""
        digest = chunking.digest(data)
        key = self.manifest_key(digest)
        try:
            there = self.objects._retry(lambda: self.blobs.get(key, len(data)))
        except (BlobNotFound, BlobTooLarge):  # a larger copy is damaged: written again
            there = None
        if there is None or bytes(there) != data:
            self.objects._retry(lambda: self.blobs.put(key, [data]))
        return digest

    def get_bytes(self, digest: str) -> bytes:
        key = self.manifest_key(digest)
        try:
            data = self.objects._retry(lambda: self.blobs.get(key, MAX_MANIFEST_BLOB))
        except BlobNotFound:
            raise SyncError(f"manifest {digest} is missing from {self.url}") from None
        if chunking.digest(data) != digest:
            raise SyncError(f"manifest {digest} in {self.url} is corrupt "
                            "(content does not match digest)")
        return data

    def load(self, digest: str) -> Target:
        return parse_target(self.get_bytes(digest), f"{self.url} {digest[:19]}")

    def load_many(self, digests: Iterable[str]) -> dict[str, Target]:
        """Each manifest or set of ``digests``, by digest, read concurrently: the members
        of a set of 200 files are 200 reads, which one after another took most of a
        pull of small files.  Raises what ``load`` raises for the first that fails."""
        todo = list(dict.fromkeys(digests))
        if len(todo) < 2:
            return {d: self.load(d) for d in todo}
        return dict(bounded_map(self.load, todo, self.objects.concurrency))

    def members(self, target: FileSet) -> dict[str, Target | FileEntry]:
        """Each file of a set, by name: its manifest (or set) read from the remote, or its
        entry when it is stored as it is (no manifest)."""
        loaded = self.load_many(e.manifest for e in target.files.values() if e.manifest)
        return {name: loaded[e.manifest] if e.manifest else e
                for name, e in target.files.items()}

    def resolve(self, ref: str) -> tuple[RefValue, Target]:
        """What ``ref`` names: its value and the manifest or set it points at.  RefError
        when there is no such ref; when its folder holds no ref either (a typo in the
        URL's prefix, which no storage refuses), the message says so."""
        value = self.refs.read(ref)
        if value is None:
            folder = ref_folder(ref)
            empty = bool(folder) and next(iter(self.refs.list(folder)), None) is None
            hint = (f" (nor any ref in {folder}: is the URL right? 'theta-zarr ls {self.url}' "
                    "lists its refs)") if empty else ""
            raise RefError(f"no ref {ref} in {self.url}{hint}")
        return value, self.load(value.digest)

    def iter_manifests(self) -> Iterator[tuple[str, BlobInfo]]:
        for info in self.blobs.list(MANIFESTS_PREFIX):
            hexd = info.key[len(MANIFESTS_PREFIX):].removesuffix(".json")
            if DIGEST_RE.fullmatch("blake3:" + hexd) and info.key.endswith(".json"):
                yield "blake3:" + hexd, info

    # -- staged shards ----------------------------------------------------------------------
    def _staging(self, ref: str) -> str:
        return f"{STAGING_PREFIX}{check_ref_name(ref)}/{PARTS}/"

    def _stage_key_data(self, ref: str, name: str, entry: FileEntry) -> tuple[str, bytes]:
        return (self._staging(ref) + check_name(name, "shard name"),
                json.dumps(entry.to_json(), sort_keys=True).encode())

    def check_stage_free(self, ref: str, name: str, entry: FileEntry) -> None:
        """SyncError if another shard of ``ref`` is staged under ``name`` with other
        content (two ranks' files of one name would make one of them vanish)."""
        key, data = self._stage_key_data(ref, name, entry)
        try:
            now = self.objects._retry(lambda: self.blobs.get(key, MAX_MANIFEST_BLOB))
        except BlobNotFound:
            return
        if bytes(now) != data:
            raise SyncError(f"{ref}: a shard named {name!r} is already staged with other "
                            "content (another rank's file of the same name, or one an "
                            "earlier attempt of the job staged?); give each rank's file its "
                            "own name (--name NAME), drop an earlier attempt's shards with "
                            f"'theta-zarr combine REMOTE --ref {ref} --abort', or --force to "
                            "replace it")

    def stage(self, ref: str, name: str, entry: FileEntry, force: bool = False) -> None:
        """Stage one shard of ``ref`` under ``name``: created only if absent (or holding
        the same entry, a retried publish) unless ``force``; SyncError otherwise."""
        key, data = self._stage_key_data(ref, name, entry)
        if force:
            self.objects._retry(lambda: self.blobs.put(key, [data]))
            return
        try:
            self.blobs.put_if(key, data, None)
        except ConditionFailed:
            self.check_stage_free(ref, name, entry)  # the same entry: a retry, fine
        except ConditionalWritesUnsupported:
            self.check_stage_free(ref, name, entry)
            self.objects._retry(lambda: self.blobs.put(key, [data]))

    def staged(self, ref: str) -> dict[str, FileEntry]:
        prefix = self._staging(ref)
        out = {}
        for info in self.blobs.list(prefix):
            name = check_name(info.key[len(prefix):], "staged shard")
            data = self.objects._retry(lambda k=info.key: self.blobs.get(k, MAX_MANIFEST_BLOB))
            obj = loads_json(data, f"{self.url} {info.key}", "staged shard")
            out[name] = FileEntry.from_json(obj, info.key)
        return out

    def all_staged(self) -> Iterator[tuple[str, FileEntry]]:
        """(key, entry) of every staged shard of every ref (gc treats them as roots)."""
        for info in self.blobs.list(STAGING_PREFIX):
            if f"/{PARTS}/" in info.key:
                data = self.objects._retry(
                    lambda k=info.key: self.blobs.get(k, MAX_MANIFEST_BLOB))
                obj = loads_json(data, f"{self.url} {info.key}", "staged shard")
                yield info.key, FileEntry.from_json(obj, info.key)

    def unstage(self, ref: str, names: Iterable[str]) -> None:
        prefix = self._staging(ref)
        for name in names:
            self.objects._retry(lambda n=name: self.blobs.delete(prefix + n))
        self.blobs.prune(STAGING_PREFIX)  # a folder remote keeps no empty folders


def parse_target(data: bytes, source: str) -> Target:
    """What a ref names, from its blob in ``manifests/``: a FileSet or a Manifest, told by
    the first bytes and validated; ManifestError naming ``source`` when it is neither or
    does not validate."""
    if data.lstrip().startswith(SET_MAGIC):
        return FileSet.from_bytes(data, source)
    if looks_like_manifest(data[:64]):
        return Manifest.from_bytes(data, source)
    raise ManifestError(f"{source}: neither a manifest nor a set")


def objects_of(remote: SyncRemote, target: Target) -> tuple[set[str], set[str], int]:
    """(chunk digests, manifest digests) a target needs, following a set's members, and
    its raw size in bytes (every file's, as rebuilt)."""
    if isinstance(target, Manifest):
        return target.digests(), set(), target.nbytes
    chunks: set[str] = set()
    manifests: set[str] = set()
    total = 0
    loaded = remote.members(target)
    for name, entry in target.files.items():
        if entry.manifest is not None:
            manifests.add(entry.manifest)
            member = loaded[name]
            if isinstance(member, Manifest):
                chunks |= member.digests()
                total += member.nbytes
        else:
            chunks.update(entry.chunks)
            total += entry.size
    return chunks, manifests, total


# -- local files to cache ----------------------------------------------------------------------
@dataclass
class Cleaned:
    """A local file after clean: its set entry, and what it needs on the remote."""

    entry: FileEntry
    manifest_bytes: bytes | None
    sizes: dict[str, int]
    elems: dict[str, int] = field(default_factory=dict)  # chunk digest -> dtype item size


def clean_file(path: str, settings: Settings, cache: Cache, plain: bool = True) -> Cleaned:
    """A checkpoint becomes a manifest; any other file is cut into plain chunks
    (with ``plain`` False, it is refused: FormatError)."""
    with open(path, "rb") as f:
        source = checkpoint.open_source(f, cache, name=os.path.basename(path),
                                        path=os.path.abspath(path))
        try:
            manifest = checkpoint.clean(source, settings, cache, opaque=False).manifest
        except NotWeights:  # a set keeps such files as plain chunks of its own
            if not plain:
                raise
            manifest = None
    if manifest is not None:
        data = manifest.to_bytes()
        return Cleaned(FileEntry(manifest=chunking.digest(data)), data, chunk_sizes(manifest),
                       manifest.itemsizes())
    return _store_plain(path, settings.chunk_bytes, cache)


def _store_plain(path: str, chunk_bytes: int, cache: Cache) -> Cleaned:
    digests, sizes = [], {}
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            d = chunking.digest(block)
            cache.ensure(d, block)
            digests.append(d)
            sizes[d] = len(block)
    size = os.path.getsize(path)
    return Cleaned(FileEntry(None, tuple(digests), size, chunk_bytes), None, sizes)


def file_in_the_way(top: str, rel: str) -> str | None:
    """The first folder on the way to ``top``/``rel`` (``rel`` '/'-separated) that exists
    as something other than a folder, relative to ``top``; None when there is none."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        above = os.path.join(top, *parts[:i])
        if os.path.lexists(above) and not os.path.isdir(above):
            return "/".join(parts[:i])
    return None


def inside(folder: str, path: str) -> bool:
    """True if ``path``, every symbolic link resolved, lies within ``folder`` (resolved)."""
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def list_files(folder: str, skip: Callable[[str], bool] = lambda rel: False) -> list[str]:
    """Relative paths of the files under ``folder``, sorted; hidden folders (``.git``,
    ``.cache``) and git's own files (``.git``, ``.gitattributes``, ``.gitignore``, …: a
    Hub snapshot's ``*.safetensors filter=lfs`` would take effect in the repository a set is
    imported or pulled into) are left out, other hidden files kept (DCP's ``.metadata`` is
    what makes its folder loadable).

    Symbolic links are never followed out of ``folder``: a link to a file outside it
    (``~/.aws/credentials``, ``/etc/shadow``) or a link to a folder is refused with
    a SyncError naming it, rather than uploaded or silently left out; so is a folder that
    cannot be read (another user's, mode 0700).
    """
    out = []

    def unreadable(e: OSError) -> None:  # os.walk skipped such a folder without a word
        raise SyncError(f"{e.filename}: {e.strerror}: a folder that cannot be read would "
                        "be left out of the checkpoint (nothing was uploaded)")

    for here, dirs, files in os.walk(folder, onerror=unreadable):
        for d in dirs:
            if not d.startswith(".") and os.path.islink(os.path.join(here, d)):
                raise SyncError(_link_message(folder, os.path.join(here, d), "a folder"))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            full = os.path.join(here, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if name.lower().startswith(".git") or skip(rel):
                continue
            if os.path.islink(full) and not inside(folder, full):
                raise SyncError(_link_message(folder, full, "a file outside it"))
            out.append(rel)
    return out


def check_set_names(folder: str, names: list[str]) -> None:
    """Refuse, with a SyncError naming the file, a folder whose files a set cannot hold
    under their names: a name that is not UTF-8 (a Latin-1 ``\xe9``), or that holds a
    control character or a backslash.  ``pull`` reads a set only with names that are
    printable UTF-8 text (``check_name``), so such a folder was published whole and its
    ref could then never be pulled, listed or imported."""
    for name in names:
        try:
            check_name(name, "file name")
        except ManifestError:
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            why = ("is not UTF-8" if any(0xDC80 <= ord(c) <= 0xDCFF for c in name) else
                   "holds a control character" if any(ord(c) < 0x20 or ord(c) == 0x7F
                                                      for c in name) else
                   "holds a backslash" if "\\" in name else "cannot be a name in a set")
            raise SyncError(f"{os.path.join(folder, shown)}: its name {why}, and a published "
                            "set names its files by UTF-8 text: rename it (nothing was "
                            "uploaded)") from None
    try:
        check_file_names(names, folder)
    except ManifestError as e:
        raise SyncError(str(e)) from None


def _link_message(folder: str, link: str, what: str) -> str:
    return (f"{link}: a symbolic link to {what} ({os.readlink(link)}); theta-zarr never "
            f"follows links out of the folder it pushes ({folder}): copy the file in instead")


# -- push ----------------------------------------------------------------------------------------
@dataclass
class PushResult:
    """One cluster push: the ref, what moved (``stats``: raw bytes and bytes over the
    wire, delta or full), the checkpoint's raw size and the delta base ref used."""

    ref: str
    digest: str
    action: str
    stats: TransferStats = field(default_factory=TransferStats)
    total_bytes: int = 0
    seconds: float = 0.0
    base: str | None = None  # the ref whose version gave the delta bases
    note: str = ""  # said after the figures (what is left to tidy up)

    def summary(self) -> str:
        base = f"; delta base {self.base}" if self.base else "; no delta base"
        note = f"; {self.note}" if self.note else ""
        return (f"{self.action} {self.ref} -> {self.digest[:19]}: "
                f"{counted(self.stats.objects, 'object')} sent, {self.stats.wire()}; "
                f"{self.total_bytes / 1e6:.1f} MB total{base}; {self.seconds:.1f} s{note}")


def _needs(cleaned: list[Cleaned]) -> tuple[dict[str, int], dict[str, int], list[bytes]]:
    """What a push's cleaned files need on the remote: (raw size of each chunk, dtype
    item size of each chunk, the manifests' bytes)."""
    sizes: dict[str, int] = {}
    elems: dict[str, int] = {}
    for c in cleaned:
        sizes.update(c.sizes)
        elems.update(c.elems)
    return sizes, elems, [c.manifest_bytes for c in cleaned if c.manifest_bytes is not None]


def _put_manifests(remote: SyncRemote, documents: Iterable[bytes]) -> None:
    """Store each manifest or set concurrently (put_manifest skips those already there
    intact)."""
    for _ in bounded_map(remote.put_manifest, documents, remote.objects.concurrency):
        pass


def _upload(remote: SyncRemote, cache: Cache, sizes: dict[str, int], elems: dict[str, int],
            manifests: list[bytes], bases: dict[str, delta.Base] | None = None,
            policy: delta.DeltaPolicy | None = None) -> TransferStats:
    """Objects (``sizes``: digest -> raw size; ``elems``: digest -> dtype item size),
    then ``manifests``; returns what was sent, which includes the delta bases the
    uploaded deltas need (``bases_used``), and the objects the remote had (``present``).

    Objects the remote already has are reused; ``settle`` checks them again once the
    ref names them.
    """
    lacking = remote.objects.missing(sizes)
    stats = push_objects(cache, remote.objects, lacking, bases, policy, elems, checked=True)
    stats.present = set(sizes) - lacking
    _put_manifests(remote, manifests)
    return stats


def settle(remote: SyncRemote, cache: Cache, sizes: dict[str, int], elems: dict[str, int],
           documents: list[bytes], bases: set[str] = frozenset()) -> int:
    """After the ref moved: put back any object or manifest it names that is missing.

    A gc running at the same time may have taken an old, unreachable object this push
    reused (or, with a short grace, one it uploaded) after the push saw it; gc
    gives back what refs name only if the ref was there when it listed them again,
    so the push checks once more *after* its ref write (docs/reliability.md).
    ``sizes`` and ``elems`` are the push's chunks as ``_upload`` took them;
    ``bases`` are the delta bases this push's deltas need (each in the cache: the
    delta was made from it).  Returns the number of objects put back (manifests
    are put back too, by put_manifest's own check, and not counted).
    """
    vanished = remote.objects.missing(set(bases) | set(sizes))
    if vanished:
        push_objects(cache, remote.objects, vanished, elems=elems, checked=True)
    _put_manifests(remote, documents)
    return len(vanished)


def _ref_bases(remote: SyncRemote, value: RefValue | None, names: list[str],
               cleaned: list[Cleaned]) -> dict[str, delta.Base] | None:
    """Delta bases for a cluster push: each pushed manifest against the manifest of the
    same file in ``value``, what the base ref names now (nothing when the ref is new or
    unreadable: ``value`` None, or what it names cannot be read: None)."""
    if value is None:
        return None
    try:
        before = remote.load(value.digest)
        if isinstance(before, Manifest):
            olds = {n: before for n in names} if len(names) == 1 else {}
        else:
            wanted = {n: before.files[n].manifest for n in names
                      if n in before.files and before.files[n].manifest is not None}
            loaded = remote.load_many(wanted.values())
            olds = {n: loaded[d] for n, d in wanted.items()}
    except (StorageError, ValueError):
        return None
    found: dict[str, delta.Base] = {}
    for name, c in zip(names, cleaned, strict=True):
        old = olds.get(name)
        if c.manifest_bytes is not None and isinstance(old, Manifest):
            new = Manifest.from_bytes(c.manifest_bytes, name)
            for digest, base in delta.candidates(new, old).items():
                found.setdefault(digest, base)
    return found


def push(path: str, remote: SyncRemote, ref: str, settings: Settings, force: bool = False,
         shard: str | None = None, skip: Callable[[str], bool] = lambda rel: False,
         base_ref: str | None = None) -> PushResult:
    """Publish a checkpoint file or directory under ``ref`` (or stage it as a shard).

    ``skip`` leaves files of a directory out (watch's marker files).  Delta bases come
    from ``base_ref``'s version (RefError when it does not exist) or, when it is None,
    from ``Refs.base_of``: ``ref`` itself when ``force`` moves it, else the newest ref in
    its folder.  A ref that exists and names another version is refused (RefConflict)
    before anything is uploaded, unless ``force``.
    """
    start = time.perf_counter()
    check_ref_name(ref)
    cache = checkpoint.open_cache(settings)
    if os.path.isdir(path):
        if shard is not None:
            raise SyncError("--shard takes one file; push a directory without --shard")
        names = list_files(path, skip)
        if not names:
            raise SyncError(f"{path}: no files to push")
        check_set_names(path, names)  # before anything is cleaned or uploaded
        cleaned = [clean_file(os.path.join(path, n), settings, cache) for n in names]
        target = FileSet({n: c.entry for n, c in zip(names, cleaned, strict=True)}).to_bytes()
    elif os.path.isfile(path):
        # one file must be a checkpoint (a shard may be any file of a set): other files
        # travel inside a pushed folder
        cleaned = [clean_file(path, settings, cache, plain=shard is not None)]
        names = [shard or os.path.basename(path)]
        entry = cleaned[0].entry
        target = cleaned[0].manifest_bytes if entry.manifest is not None else \
            FileSet({names[0]: entry}).to_bytes()
    else:
        raise SyncError(f"{path}: no such file or directory")
    if shard is None and not force:  # a taken ref fails before anything is uploaded
        remote.refs.check_free(ref, chunking.digest(target))
    else:  # so does a name no ref can take, and a shard name another rank's file holds
        remote.refs.check_new(ref)
        if not force and shard is not None:
            remote.check_stage_free(ref, names[0], cleaned[0].entry)
    # delta bases: the version this one continues (``base_ref``, which must exist), else
    # the default (Refs.base_of); a default that cannot be read is no base, not a failure
    if base_ref:
        base_ref = remote.refs.base_of(ref, base_ref, force)
    else:
        try:
            base_ref = remote.refs.base_of(ref, None, force or shard is not None)
        except StorageError:
            base_ref = None
    policy = settings.delta_policy
    bases = None
    if policy.enabled and base_ref:
        bases = _ref_bases(remote, _read_ref(remote, base_ref), names, cleaned)
        if bases is None:  # the push line must not claim a base it could not read
            base_ref = f"{base_ref} (unreadable: no deltas)"
    sizes, elems, documents = _needs(cleaned)
    stats = _upload(remote, cache, sizes, elems, documents, bases, policy)
    total = sum(sizes.values())
    if bases:  # a delta needs the base's chunk here: a pruned node cache has none
        absent = cache.missing({b.digest for d, b in bases.items()
                                if d in sizes and d not in stats.present})
        if absent:
            base_ref = (f"{base_ref} ({counted(len(absent), 'chunk')} of it not in the "
                        "node cache, so not used as delta bases: 'theta-zarr pull' it first "
                        "to send deltas)")
    interrupts.hold_sigint()  # staging or moving the ref commits: reported, not cut short
    if shard is not None:
        remote.stage(ref, check_name(names[0], "shard name"), cleaned[0].entry, force)
        settle(remote, cache, sizes, elems, documents, stats.bases_used)
        return PushResult(ref, cleaned[0].entry.manifest or "blake3:" + "0" * 64,
                          f"staged {names[0]} for", stats, total,
                          time.perf_counter() - start, base_ref)
    digest = remote.put_manifest(target)
    _, action = remote.refs.set(ref, digest, force=force)
    settle(remote, cache, sizes, elems, [*documents, target], stats.bases_used)
    return PushResult(ref, digest, action, stats, total, time.perf_counter() - start,
                      base_ref)


def _read_ref(remote: SyncRemote, ref: str) -> RefValue | None:
    """What ``ref`` names now; None when it does not exist or cannot be read."""
    try:
        return remote.refs.read(ref)
    except (StorageError, ValueError):
        return None


def combine(remote: SyncRemote, ref: str, force: bool = False,
            expect: int | None = None) -> PushResult:
    """Record the shards staged for ``ref`` as one set and move the ref to it."""
    start = time.perf_counter()
    staged = remote.staged(ref)
    if not staged:
        raise SyncError(f"no shards staged for {ref} in {remote.url} (push them with --shard)")
    if expect is not None and len(staged) != expect:
        hint = "" if len(staged) < expect else (
            f" (shards an earlier attempt staged? 'combine --ref {ref} --abort' drops every "
            "staged shard; then publish them again)")
        raise SyncError(f"{len(staged)} shard(s) staged for {ref}, expected {expect}: "
                        f"{', '.join(sorted(staged))}{hint}")
    check_file_names(staged, f"shards staged for {ref} in {remote.url}")
    fileset = FileSet(staged)
    chunks, manifests, total = objects_of(remote, fileset)
    lacking = remote.objects.missing(chunks)
    if lacking:
        raise SyncError(f"{len(lacking)} object(s) of the staged shards are missing from "
                        f"{remote.url} (first: {sorted(lacking)[0]}); push the shards again")
    digest = remote.put_manifest(fileset.to_bytes())
    interrupts.hold_sigint()  # moving the ref commits: reported, not cut short
    _, action = remote.refs.set(ref, digest, force=force)
    note = ""
    try:
        remote.unstage(ref, staged)
    except (OSError, StorageError) as e:  # the set is recorded: said, not a failure
        why = (f"{e.filename}: {e.strerror}" if not isinstance(e, StorageError)
               and e.filename else str(e))
        note = (f"the staged shards stay in {remote.url} ({why}); "
                f"'theta-zarr combine {remote.url} --ref {ref} --abort' drops them")
    return PushResult(ref, digest, f"{action} ({len(staged)} shards)", total_bytes=total,
                      seconds=time.perf_counter() - start, note=note)


def abort_combine(remote: SyncRemote, ref: str) -> list[str]:
    """Drop every shard staged for ``ref`` (an attempt that died before ``combine``), the
    ref itself untouched; the names dropped, sorted (none: nothing was staged).  Their
    chunks stay on the remote, unreferenced, until gc's grace period has passed."""
    prefix = remote._staging(ref)
    # by key, unread: a damaged staged entry (which combine refuses) is dropped too
    names = sorted(info.key[len(prefix):] for info in remote.blobs.list(prefix))
    if names:
        remote.unstage(ref, names)
    return names


# -- pull / ls ------------------------------------------------------------------------------------
def select_params(manifest: Manifest, include: list[str] | None) -> Manifest:
    """The manifest of a file holding only the parameters matching a glob of ``include``
    (by their own name or a tensor living in them: ``checkpoint.matching_params``), which
    may hold none; ``manifest`` itself when ``include`` is empty or None.  FormatError when
    the format's plug-in is not installed."""
    if not include:
        return manifest
    return checkpoint.select(manifest, checkpoint.matching_params(manifest, include))


#: file name endings torch.load's users give pickled checkpoints
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def _check_consolidated_name(manifest: Manifest, ref: str, out: str) -> None:
    """Refuse (SyncError) to write a distributed checkpoint, whose file form is a
    safetensors file, under a name that says PyTorch pickle: ``torch.load`` of it fails
    and its message suggests ``weights_only=False``."""
    stem, suffix = os.path.splitext(out)
    if manifest.format_name == "dcp" and suffix.lower() in PICKLE_SUFFIXES:
        raise SyncError(f"{ref} is a distributed checkpoint, which pull writes as one "
                        f"safetensors file, not a PyTorch pickle: name it {stem}.safetensors "
                        "and read it with safetensors.torch.load_file")


def pull(remote: SyncRemote, ref: str, out: str, settings: Settings,
         include: list[str] | None = None, force: bool = False) -> list[str]:
    """Rebuild the checkpoint (or directory) a ref names at ``out``; bit-exact, verified.

    Refuses (SyncError), before anything is fetched, an ``out`` that exists (a file) or
    is a folder that is not empty, unless ``force`` (then the files the ref names are
    overwritten, others left as they are), as ``git clone`` and ``dvc get`` refuse;
    and an ``include`` that matches no parameter.
    """
    cache = checkpoint.open_cache(settings)
    _, target = remote.resolve(ref)
    if isinstance(target, Manifest):
        # --force does not make a folder a file; nor does a trailing '/' name a file
        if os.path.isdir(out) or out.endswith(("/", os.sep)):
            what = "is a folder" if os.path.isdir(out) else "ends in '/' (a folder)"
            raise SyncError(f"{out} {what}, and {ref} is one checkpoint file: give a "
                            f"file path (e.g. {os.path.join(out, 'model.safetensors')})")
        if os.path.lexists(out) and not force:
            raise SyncError(f"{out} already exists; pull to a new path, or --force to "
                            "overwrite it")
        _check_consolidated_name(target, ref, out)
        items: list[tuple[str, Any]] = [(out, select_params(target, include))]
        selected = bool(items[0][1].params)
    else:
        if os.path.isfile(out):
            raise SyncError(f"{ref} is a directory of {len(target.files)} files; "
                            f"{out} is a file")
        if os.path.isdir(out) and os.listdir(out) and not force:
            raise SyncError(f"{out} is not an empty folder; pull into a new folder, or "
                            "--force to overwrite the files the ref names")
        selected = False
        items = []
        for name, member in remote.members(target).items():
            if isinstance(member, FileSet):
                raise ManifestError(f"{ref}: {name} names a set inside a set")
            if isinstance(member, Manifest):
                member = select_params(member, include)
                if include and not member.params:
                    continue
                selected = selected or bool(member.params)
            items.append((os.path.join(out, *name.split("/")), member))
    if include and not selected:
        raise SyncError(f"{ref}: no parameter matches {', '.join(include)}")
    _check_paths([dest for dest, _ in items], out)
    needs = {dest: item.digests() if isinstance(item, Manifest) else set(item.chunks)
             for dest, item in items if not isinstance(item, bytes)}
    sizes: dict[str, int] = {}
    for _, item in items:
        if not isinstance(item, bytes):
            sizes.update(item.chunk_sizes())
    try:
        fetch_objects(remote.objects, cache, cache.missing(set().union(*needs.values())),
                      sizes)
    except ObjectError as e:
        users = [dest for dest, digests in needs.items() if e.digest in digests]
        if not users:
            raise
        more = f" and {len(users) - 3} more" if len(users) > 3 else ""
        raise ObjectError(f"{e}; needed by {', '.join(users[:3])}{more}; nothing was "
                          "written") from None
    if include and not isinstance(target, Manifest):
        items = _restrict_indexes(items, out, cache)
    done = []
    for dest, item in items:
        if isinstance(item, bytes):
            write_atomic(dest, lambda f, b=item: f.write(b))
        elif isinstance(item, Manifest):
            write_atomic(dest, lambda f, m=item, d=dest: checkpoint.smudge(
                m, f, settings, name=d, cache=cache, ensured=True))
        else:
            write_atomic(dest, lambda f, e=item: _write_plain(e, f, cache, settings.workers))
        done.append(dest)
    return done


def _check_paths(dests: list[str], out: str) -> None:
    """SyncError, before anything is written, where a file must go and a folder is, or a
    folder must go and a file is (a half-written pull otherwise), or where a file would go
    in a folder this process cannot write (a read-only share: known before the fetch)."""
    for dest in dests:
        if os.path.isdir(dest):
            raise SyncError(f"{dest} is a folder; the ref has a file there")
        rel = os.path.relpath(dest, out).replace(os.sep, "/")
        blocking = file_in_the_way(out, rel)
        if blocking is not None:
            raise SyncError(f"{os.path.join(out, blocking)} is a file; the ref has a folder "
                            "there")
    for dest in dests:  # a folder that cannot be written fails now, not after the fetch
        where = os.path.dirname(os.path.abspath(dest))
        while not os.path.isdir(where) and os.path.dirname(where) != where:
            where = os.path.dirname(where)  # the nearest that exists: pull makes the rest
        if not os.access(where, os.W_OK | os.X_OK):
            raise SyncError(f"cannot write {dest}: {where} is not writable (nothing was "
                            "fetched)")


def _restrict_indexes(items: list[tuple[str, Any]], out: str, cache: Cache
                      ) -> list[tuple[str, Any]]:
    """A partial pull of a sharded set: each ``*.index.json`` names exactly the tensors and
    shards written next to it (see theta_zarr.shards)."""
    written = {dest: item for dest, item in items if isinstance(item, Manifest)}
    result: list[tuple[str, Any]] = []
    for dest, item in items:
        if isinstance(item, FileEntry) and shards.is_index_name(dest):
            data = b"".join(bytes(cache.get(d)) for d in item.chunks)
            rel = os.path.relpath(dest, out)
            try:
                index = shards.parse_index(data, rel)
            except ManifestError:
                result.append((dest, item))  # not a weight-map index: copied as it is
                continue
            folder = os.path.dirname(dest)
            kept = {s: written[os.path.join(folder, *s.split("/"))]
                    for s in set(index.weight_map.values())
                    if os.path.join(folder, *s.split("/")) in written}
            result.append((dest, shards.restrict_index(index, kept)))
        else:
            result.append((dest, item))
    return result


def _write_plain(entry: FileEntry, out, cache: Cache, workers: int) -> None:
    for raw in ordered_map(cache.get, entry.chunks, workers):
        out.write(raw)


@dataclass
class RefRow:
    """One line of ``ls``: ``nbytes`` is the checkpoint's raw size, ``stored`` what its
    distinct chunk objects take on the remote as stored (compressed, or as deltas:
    a chunk shared with other refs counts in each)."""

    name: str
    mtime: float | None
    digest: str
    nbytes: int
    params: int
    files: int
    error: str | None = None
    stored: int = 0


def _tensor_count(manifest: Manifest) -> int:
    """The tensors a reader gets (``load_state_dict``'s keys): a DCP checkpoint's
    non-tensor items (step, optimizer scalars) are parameters of its manifest but no
    tensors; a manifest of a plug-in not installed here counts its parameters."""
    try:
        return len(formats.tensor_views(manifest))
    except FormatError:
        return len(manifest.params)


#: the character classes git's wildmatch knows inside brackets (``[[:digit:]]``)
_GLOB_CLASSES = {"alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "digit": "0-9",
                 "lower": "a-z", "upper": "A-Z", "space": " \\t\\n\\r\\f\\v",
                 "xdigit": "0-9a-fA-F", "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
                 "cntrl": "\\x00-\\x1f\\x7f", "print": "\\x20-\\x7e", "graph": "\\x21-\\x7e"}


def _glob_regex(pattern: str) -> str:
    """``pattern`` as a regular expression matching as git's wildmatch with ``WM_PATHNAME``
    (what ``git for-each-ref`` uses): ``*``, ``?`` and ``[...]`` never match ``/``, a
    ``**`` that is a whole component matches any number of them (``a/**/b`` matches
    ``a/b``), ``\\`` quotes the next character."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            whole = j - i >= 2 and (i == 0 or pattern[i - 1] == "/") and \
                (j == n or pattern[j] == "/")
            if not whole:
                out.append("[^/]*")
            elif j == n:
                out.append(".*")  # a/** : everything inside a/
            else:
                out.append("(?:.*/)?")  # **/ : any number of folders, none included
                j += 1
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] in "!^"
            j += negate
            items: list[str] = []
            first = True
            while j < n and (pattern[j] != "]" or first):
                first = False
                if pattern.startswith("[:", j) and ":]" in pattern[j + 2:]:
                    end = pattern.index(":]", j + 2)
                    if pattern[j + 2:end] in _GLOB_CLASSES:
                        items.append(_GLOB_CLASSES[pattern[j + 2:end]])
                        j = end + 2
                        continue
                if pattern[j] == "\\" and j + 1 < n:
                    j += 1
                if j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    lo, hi = pattern[j], pattern[j + 2]
                    if hi == "\\" and j + 3 < n:
                        hi = pattern[j + 3]
                        j += 1
                    items.append(f"{re.escape(lo)}-{re.escape(hi)}" if lo <= hi else "")
                    j += 3
                else:
                    items.append(re.escape(pattern[j]))
                    j += 1
            if j >= n:  # no closing bracket: git's wildmatch matches nothing
                return "(?!)"
            body = "".join(items)
            out.append(f"[^/{body}]" if negate else (f"(?:(?!/)[{body}])" if body else "(?!)"))
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def ref_matches(name: str, pattern: str) -> bool:
    """Whether ``pattern`` selects ref ``name``, as ``git for-each-ref`` matches its
    patterns: the pattern matches the name completely or from its beginning up to a slash
    (``run7`` selects ``run7`` and ``run7/step-1``, not ``run70/step-1``), or, as a glob
    (``*``, ``?``, ``[``, ``\\``), matches the whole name as git's wildmatch does
    for paths (``*`` stops at ``/``: ``run7*`` selects ``run7x``, not ``run7/step-1``;
    ``run7/**`` selects every name under ``run7/``).  An empty pattern selects all."""
    if not pattern or name == pattern or name.startswith(pattern.rstrip("/") + "/"):
        return True
    return any(c in pattern for c in "*?[\\") and \
        re.fullmatch(_glob_regex(pattern), name, re.DOTALL) is not None


def ls(remote: SyncRemote, pattern: str = "") -> list[RefRow]:
    """Every ref ``pattern`` selects (``ref_matches``) with its time, raw and stored size
    and parameter count, in natural name order (``run7/step-999`` before
    ``run7/step-1000``: a run's last row is its latest step).

    Stored sizes come from one listing of the remote's objects (a request per
    thousand objects on S3 and GCS), not one request per chunk.
    """
    literal = re.split(r"[*?\[\\]", pattern, maxsplit=1)[0]  # listed: refs under this prefix
    listed = [item for item in remote.refs.list(literal) if ref_matches(item[0], pattern)]
    stored = {d: n for d, n, _ in remote.objects.iter_digests()} if listed else {}
    workers = remote.objects.concurrency

    def attempt(fn: Callable[[str], Any]) -> Callable[[str], tuple[Any, str | None]]:
        def run(arg: str) -> tuple[Any, str | None]:
            try:
                return fn(arg), None
            except (StorageError, ValueError) as e:
                return None, str(e)
        return run

    # every ref, then every set's member manifests, read concurrently (a set's members
    # were read one after another); a ref or member that cannot be read is its row's error
    resolved = dict(bounded_map(attempt(remote.resolve), [n for n, _ in listed], workers))
    wanted = {e.manifest for (found, _) in resolved.values()
              if found is not None and isinstance(found[1], FileSet)
              for e in found[1].files.values() if e.manifest}
    loaded = dict(bounded_map(attempt(remote.load), wanted, workers))

    def row(name: str, info: BlobInfo) -> RefRow:
        found, error = resolved[name]
        if found is None:
            return RefRow(name, info.mtime, "?", 0, 0, 0, error)
        value, target = found
        if isinstance(target, Manifest):
            members: list[Target | FileEntry] = [target]
        else:
            members = []
            for file, e in target.files.items():
                member, error = loaded[e.manifest] if e.manifest else (e, None)
                if error is not None:
                    return RefRow(name, info.mtime, value.digest, 0, 0, 0, f"{file}: {error}")
                members.append(member)
        nbytes = sum(m.nbytes if isinstance(m, Manifest) else m.size for m in members
                     if isinstance(m, (Manifest, FileEntry)))
        params = sum(_tensor_count(m) for m in members if isinstance(m, Manifest))
        chunks: set[str] = set()
        for m in members:
            if isinstance(m, (Manifest, FileEntry)):
                chunks |= m.digests() if isinstance(m, Manifest) else set(m.chunks)
        return RefRow(name, info.mtime, value.digest, nbytes, params, len(members),
                      stored=sum(stored.get(d, 0) for d in chunks))

    rows = [row(name, info) for name, info in listed]
    return sorted(rows, key=lambda r: natural_key(r.name))  # step-999 before step-1000
