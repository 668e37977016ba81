"""Remotes: object stores in buckets or folders, and moving objects to and from them.

A remote is an fsspec URL plus non-secret storage options (endpoint, region,
requester-pays...).  Credentials never pass through here: s3fs and gcsfs find
them in their usual places (environment, instance roles, gcloud).

push: which digests a remote lacks (concurrent existence checks), then upload
those, concurrently, with retries.  fetch: download, decode and verify each
object before it enters the cache.  Objects go first; manifests and refs are
written only after every object they name is in place (invariant 3).

Codecs: a remote's ``compression`` is ``auto`` unless configured, so each object is
encoded by its dtype's item size (codecs.choose); the local cache stays raw.

Deltas (delta.py): a push may store a chunk as a delta (int-delta where the item
size allows, else xor-delta) against the same chunk of the parent version
(``bases``, computed by the caller from manifests).  The writer decides here,
per chunk, in ``_delta_encoder``: only over a base
the remote had before this push began, only if the delta is smaller than
``policy.ratio`` x the plain object, and only while the chain stays within
``policy.max_depth``.  A fetch resolves deltas, asking the cache for bases
first, and stores raw objects in the cache.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import codecs, delta, packs, progress
from .cache import Cache, QuarantinedError
from .delta import Base, DeltaPolicy
from .objects import (
    DEFAULT_RETRY_TIMEOUT,
    MAX_CONCURRENCY,
    MissingObjectError,
    ObjectError,
    ObjectStore,
    bounded_map,
    reading,
)
from .redact import credential_part
from .settings import DEFAULT_WORKERS, parse_bool
from .storage import (
    RootMissing,
    StorageError,
    check_url,
    credential_hint,
    is_read_only,
    open_store,
    read_only_hint,
)
from .storage.local import LocalStore
from .wording import counted

#: Option names a remote may carry in git config or .thetazarr (none is a secret).
OPTION_NAMES = ("endpoint-url", "region", "requester-pays", "anon", "project", "compression",
                "concurrency", "retry-timeout")
#: environment variable that sets the retry budget of every remote (seconds)
RETRY_TIMEOUT_ENV = "THETA_ZARR_RETRY_TIMEOUT"
#: boolean options: git takes one written without ``= value`` (``anon``) as true, and
#: refuses a value that is no boolean (``ture``), as they are refused here
BOOLEAN_OPTIONS = ("requester-pays", "anon")
SECRET_WORDS = ("key", "secret", "token", "password", "credential")
#: remotes pick a codec per object by dtype (codecs.choose): expsplit for bf16/fp16/fp32,
#: blosc for other multi-byte items, zstd for bytes, raw where none pays
DEFAULT_REMOTE_CODEC = codecs.AUTO
#: threads that read, decode, verify and encode in a transfer (one per core)
CPU_WORKERS = DEFAULT_WORKERS


log = logging.getLogger(__name__)


class RemoteError(StorageError):
    """A remote that cannot be used as configured: a bad URL or option, a bad retry budget,
    no such remote, a ``.thetazarr`` that cannot be read; the one-line message says which."""


@dataclass
class RemoteSpec:
    """A remote as configured: its ``name`` (git config, ``.thetazarr``, or a label such as
    ``load_state_dict``), its ``url`` (stored stripped, checked by ``check_url``) and its
    non-secret ``options`` (names in ``OPTION_NAMES``).

    Construction raises RemoteError naming the remote for a bad URL, an option holding or
    looking like a credential, an unknown option, ``concurrency`` outside 1 to
    ``MAX_CONCURRENCY``, an unknown ``compression`` (``codecs.WRITER_NAMES``) or a bad
    ``retry-timeout``, so ``remote add`` refuses what a later push would.
    """

    name: str
    url: str
    options: dict[str, str] = field(default_factory=dict)
    #: option names whose value came from a committed file (``.thetazarr``), not from the
    #: user's own configuration: whoever wrote the repository chose them
    committed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        try:
            self.url = check_url(self.url)
        except StorageError as e:
            raise RemoteError(f"remote {self.name!r}: {e}") from None
        for key, value in self.options.items():
            part = credential_part(value)
            if part:
                raise RemoteError(
                    f"remote {self.name!r}: option {key!r} holds credentials ({part}); "
                    f"theta-zarr never stores credentials: put them in "
                    f"{credential_hint(self.url)}")
            if any(word in key.lower() for word in SECRET_WORDS):
                raise RemoteError(
                    f"remote {self.name!r}: option {key!r} looks like a credential; theta-zarr "
                    "never stores credentials: use the storage library's environment or config")
            if key not in OPTION_NAMES:
                raise RemoteError(f"remote {self.name!r}: unknown option {key!r} "
                                  f"(known: {', '.join(OPTION_NAMES)})")
        text = self.options.get("concurrency")
        if text is not None and not (text.strip().isdigit() and
                                     1 <= int(text) <= MAX_CONCURRENCY):
            raise RemoteError(f"remote {self.name!r}: option concurrency={text!r} must be a "
                              f"whole number from 1 to {MAX_CONCURRENCY}")
        codec = self.options.get("compression")
        if codec is not None and codec not in codecs.WRITER_NAMES:
            raise RemoteError(f"remote {self.name!r}: unknown compression {codec!r} "
                              f"(known: {', '.join(codecs.WRITER_NAMES)})")
        for key in BOOLEAN_OPTIONS:
            if key in self.options:
                try:
                    parse_bool(self.options[key])
                except ValueError:
                    raise RemoteError(f"remote {self.name!r}: option {key}="
                                      f"{self.options[key]!r} is not a boolean (true/false, "
                                      "yes/no, on/off, 1/0)") from None
        if self.options.get("retry-timeout"):
            retry_timeout(self)  # checked here, so 'remote add' refuses what push would

    @property
    def codec(self) -> str:
        """The codec name objects are written to this remote with (``compression``, else
        ``auto``: ``codecs.choose`` per chunk)."""
        return self.options.get("compression", DEFAULT_REMOTE_CODEC)


def _true(value: str | None) -> bool:
    """A boolean option as git reads it (RemoteSpec has refused one that is not)."""
    return parse_bool(value or "")


def check_trusted(spec: RemoteSpec) -> None:
    """Refuse an ``endpoint-url`` a committed ``.thetazarr`` chose for a GCS remote.

    gcsfs sends the user's Google access token (a bearer token: whoever receives it can
    use it) to the endpoint, so a repository that names one could collect the token of
    everyone who clones and pushes.  S3 requests are signed for their host (SigV4: the
    secret never leaves), so an S3 endpoint from the file is taken, as git-lfs takes
    ``lfs.url`` from ``.lfsconfig``.  Anonymous remotes send no token, and the endpoint
    the user's own environment names (``STORAGE_EMULATOR_HOST``, where gcsfs sends the
    token anyway) is no new destination.  Raises RemoteError saying how to accept the
    endpoint from the user's own git config.
    """
    protocol = spec.url.split("://", 1)[0].lower() if "://" in spec.url else "file"
    endpoint = spec.options.get("endpoint-url")
    own = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    if protocol in ("gs", "gcs") and endpoint and "endpoint-url" in spec.committed \
            and not _true(spec.options.get("anon")) and endpoint.rstrip("/") != own:
        raise RemoteError(
            f"remote {spec.name!r}: endpoint-url {endpoint} comes from the committed "
            ".thetazarr, and a GCS remote sends your Google access token there; if you "
            f"trust it, set it in your own config: git config theta-zarr.remote.{spec.name}"
            f".endpoint-url {endpoint}")


def check_writable(spec: RemoteSpec) -> None:
    """Refuse, before anything is read or sent, a remote no one can write to: an
    ``http://`` or ``https://`` URL (a static server or mirror serves clones and fetches;
    fsspec's HTTP file system has no writes, and the server answers a PUT with 403 or
    501).  Raises RemoteError naming the remote, with the S3-compatible spelling of the
    URL (MinIO at ``http://host:9000`` is the usual case)."""
    if is_read_only(spec.url):
        raise RemoteError(f"remote {spec.name!r} ({spec.url}) cannot be written: "
                          f"{read_only_hint(spec.url)}")


#: the options each storage library takes (``storage_options``); others are theta-zarr's
#: own and apply to every remote
STORAGE_OPTIONS = {"s3": ("endpoint-url", "region", "requester-pays", "anon"),
                   "gs": ("endpoint-url", "project", "requester-pays", "anon")}


def unused_options(url: str, options: dict[str, str]) -> list[str]:
    """The options that no storage library takes for ``url``'s kind of remote (a region
    for a folder, a project for S3): ``remote add`` refuses them, as they would do
    nothing."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    kind = {"s3a": "s3", "gcs": "gs"}.get(protocol, protocol)
    takes = STORAGE_OPTIONS.get(kind, ())
    storage = {key for names in STORAGE_OPTIONS.values() for key in names}
    return sorted(k for k in options if k in storage and k not in takes)


def storage_options(url: str, options: dict[str, str], concurrency: int) -> dict:
    """fsspec keyword arguments for a URL from our option names."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    out: dict = {}
    if protocol in ("s3", "s3a"):
        client: dict = {}
        if options.get("endpoint-url"):
            client["endpoint_url"] = options["endpoint-url"]
        if options.get("region"):
            client["region_name"] = options["region"]
        if client:
            out["client_kwargs"] = client
        if _true(options.get("requester-pays")):
            out["requester_pays"] = True
        if _true(options.get("anon")):
            out["anon"] = True
        # botocore opens 10 connections by default: match the transfer concurrency.
        # Every object and manifest read is checked against its blake3 digest (a ref is a
        # digest, checked by its form and by what it names), so botocore's CRC32 of each
        # response is not asked for; uploads keep theirs, a write's only check in transit.
        out["config_kwargs"] = {"max_pool_connections": max(10, concurrency),
                                "retries": {"max_attempts": 3, "mode": "standard"},
                                "connect_timeout": 10,
                                "response_checksum_validation": "when_required"}
    elif protocol in ("gs", "gcs"):
        if options.get("endpoint-url"):
            out["endpoint_url"] = options["endpoint-url"]
        if options.get("project"):
            out["project"] = options["project"]
        if _true(options.get("requester-pays")):
            out["requester_pays"] = True
        if _true(options.get("anon")):
            out["token"] = "anon"
    return out


def retry_timeout(spec: RemoteSpec) -> float:
    """The remote's retry budget in seconds: its ``retry-timeout`` option, else
    $THETA_ZARR_RETRY_TIMEOUT, else 60."""
    own = spec.options.get("retry-timeout")
    text = own or os.environ.get(RETRY_TIMEOUT_ENV) or str(DEFAULT_RETRY_TIMEOUT)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        where = f"remote {spec.name!r}: retry-timeout" if own else RETRY_TIMEOUT_ENV
        raise RemoteError(f"{where} must be a number of seconds above 0 and at most 86400, "
                          f"not {text[:40]!r}")
    return value


def open_remote(spec: RemoteSpec, concurrency: int = 16, need: str | None = None
                ) -> ObjectStore:
    """The object store of a remote.  ``need`` ("read" or "write") first checks that its
    bucket or folder exists (raises storage.RootMissing: "bucket X does not exist"); "write"
    first refuses a read-only remote (``check_writable``)."""
    concurrency = int(spec.options.get("concurrency", concurrency))  # checked by RemoteSpec
    if need == "write":
        check_writable(spec)
    check_trusted(spec)  # before the storage library is set up for that endpoint
    blobs = open_store(spec.url, storage_options(spec.url, spec.options, concurrency))
    if isinstance(blobs, LocalStore) and os.path.isdir(os.path.join(blobs.root, packs.FOLDER)):
        # a local repository's own cache (the git remote of 'git clone ../repo' is a work
        # tree, served from its cache): its small objects are in packs, which only a
        # Cache reads
        store: ObjectStore = Cache(blobs.root, codec=spec.codec, concurrency=concurrency)
    else:
        store = ObjectStore(blobs, codec=spec.codec, concurrency=concurrency,
                            retry_timeout=retry_timeout(spec))  # bounds every call, this one too
    if need is not None:
        store.check_root(for_write=need == "write")
    return store


@dataclass
class TransferStats:
    """What one transfer moved: raw bytes, and bytes as stored at the destination
    (on a push, what went over the wire), in total and for the delta objects."""

    objects: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    skipped: int = 0  # already present at the destination
    seconds: float = 0.0
    deltas: int = 0  # objects stored as deltas
    delta_saved: int = 0  # bytes the deltas saved over plain objects
    bases_used: set[str] = field(default_factory=set)  # delta bases the deltas stored need
    #: a push's objects that were at the destination already (not sent)
    present: set[str] = field(default_factory=set)
    delta_raw: int = 0  # raw bytes of the chunks stored as deltas
    delta_stored: int = 0  # bytes of those delta objects
    read_bytes: int = 0  # bytes of the objects as read from the source (a fetch's wire)

    def add(self, other: TransferStats) -> None:
        """Add another transfer's counts (not its time or skips) and delta bases used to these."""
        for name in ("objects", "raw_bytes", "stored_bytes", "deltas", "delta_saved",
                     "delta_raw", "delta_stored", "read_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.bases_used |= other.bases_used

    def wire(self) -> str:
        """'R MB raw -> S MB (D deltas R1 -> S1 MB, F full R2 -> S2 MB)': raw bytes, the
        bytes as stored, and how they split between delta and full objects."""
        full = self.objects - self.deltas
        parts = []
        if self.deltas:
            parts.append(f"{counted(self.deltas, 'delta')} "
                         f"{_mb(self.delta_raw)} -> {_mb(self.delta_stored)} MB")
        if full:
            parts.append(f"{full} full {_mb(self.raw_bytes - self.delta_raw)} -> "
                         f"{_mb(self.stored_bytes - self.delta_stored)} MB")
        split = f" ({', '.join(parts)})" if parts else ""
        return f"{_mb(self.raw_bytes)} MB raw -> {_mb(self.stored_bytes)} MB{split}"

    def summary(self, verb: str, where: str) -> str:
        """The push line (``verb`` 'uploaded': raw -> as sent) or, for 'fetched', the
        bytes read (delta bases fetched on the way not counted) -> raw."""
        moved = (f"{_mb(self.read_bytes)} MB read -> {_mb(self.raw_bytes)} MB raw"
                 if verb == "fetched" else self.wire())
        return (f"{verb} {counted(self.objects, 'object')} {where}: {moved}; "
                f"{self.skipped} already there; {self.seconds:.1f} s")


def _mb(n: int) -> str:
    """Megabytes to one decimal; below 0.05 MB (which reads 0.0), two significant digits
    (``0.0021``): a fine-tune step's deltas of a few KB are not said to be nothing."""
    if not 0 < n < 50_000:
        return f"{n / 1e6:.1f}"
    return f"{n / 1e6:.{1 - math.floor(math.log10(n / 1e6))}f}"


#: digest -> (the object to store, as parts written in order; its raw bytes; plain size
#: minus stored size, or -1 if it is not a delta): the CPU side of a push
Encoder = Callable[[str], tuple[list[bytes | memoryview], int, int]]
#: digest -> item size in bytes of its dtype; a digest it lacks counts as bytes (1),
#: applied where a chunk is encoded (``elems.get(digest, 1)``)
Elems = Mapping[str, int]
NO_ELEMS: Elems = MappingProxyType({})
#: digest -> raw size in bytes of the chunk (from its manifest): a fetched object must
#: decode to exactly that, and decoding stops past it (``ObjectStore.decode``)
Sizes = Mapping[str, int]
NO_SIZES: Sizes = MappingProxyType({})


def transfer(src: ObjectStore, dst: ObjectStore, digests: Iterable[str], desc: str,
             check_destination: bool = True, encoder: Encoder | None = None,
             bases: ObjectStore | None = None, elems: Elems = NO_ELEMS,
             sizes: Sizes = NO_SIZES) -> TransferStats:
    """Copy objects from ``src`` to ``dst``: verified on read, re-encoded for ``dst``.

    With ``check_destination`` the objects ``dst`` already has are skipped
    (concurrent existence checks), which makes an interrupted transfer
    resumable: a re-run moves only the rest.  ``encoder`` replaces the plain
    read-verify-encode of one object (the delta writer); ``bases`` is a store
    asked first for delta bases while reading ``src`` (the cache, on fetch);
    ``elems`` gives each chunk's item size, for ``dst``'s ``auto`` codec; ``sizes`` each
    chunk's raw size where its manifest is known, which bounds what decoding an object
    fetched from ``src`` may allocate.

    The remote side keeps its ``concurrency`` requests in flight in a pool of its own,
    while reading, decoding, verifying and encoding run in one thread per core
    (``CPU_WORKERS``): the codecs release the GIL, so every core works while requests
    wait on the network.  Running codecs in every request's thread put 16 of them on
    2 cores here, and they took twice the CPU time (cache and allocator contention).
    """
    start = time.perf_counter()
    todo = sorted(set(digests))
    stats = TransferStats()
    if check_destination and todo:
        lacking = dst.missing(todo)
        stats.skipped = len(todo) - len(lacking)
        todo = sorted(lacking)

    def encode(digest: str) -> tuple[list[bytes | memoryview], int, int]:
        with reading(digest):
            raw = src.get(digest, bases)
        return codecs.encode(raw, dst.codec, elems.get(digest, 1)), len(raw), -1

    def get_encoded(digest: str) -> bytes:
        with reading(digest):
            return src.get_encoded(digest, sizes.get(digest))

    def send(encoded: tuple[str, tuple[list[bytes | memoryview], int, int]]
             ) -> tuple[int, int, int, int]:
        digest, (parts, raw_n, saved) = encoded
        return raw_n, dst.put_parts(digest, parts), saved, raw_n

    # a fetch of many small chunks stores them in a pack, as a clean does (packs.py)
    packer = dst.packer() if isinstance(dst, Cache) else None

    def store(fetched: tuple[str, bytes]) -> tuple[int, int, int, int]:
        digest, obj = fetched
        with reading(digest):
            raw = src.decode(digest, obj, bases, size=sizes.get(digest))
        elem = elems.get(digest, 1)
        if packer is not None and len(raw) <= packs.SMALL_OBJECT:
            return len(raw), packer.add(digest, codecs.encode(raw, dst.codec, elem)), -1, \
                len(obj)
        return len(raw), dst.put(digest, raw, elem), -1, len(obj)

    with progress.bar(len(todo), desc, unit="obj") as bar, contextlib.ExitStack() as stack:
        if packer is not None:  # verified objects fetched so far are kept, even on error
            stack.callback(packer.commit)
        if isinstance(dst, Cache):  # a fetch: requests first, then the cores
            fetched = stack.enter_context(contextlib.closing(
                bounded_map(get_encoded, todo, src.concurrency)))
            results = stack.enter_context(contextlib.closing(
                bounded_map(store, fetched, CPU_WORKERS)))
        else:  # a push: the cores first, then requests
            encoded = stack.enter_context(contextlib.closing(
                bounded_map(encoder or encode, todo, CPU_WORKERS)))
            results = bounded_map(send, encoded, dst.concurrency)
        for _, (raw_n, stored_n, saved, read_n) in results:
            stats.objects += 1
            stats.raw_bytes += raw_n
            stats.stored_bytes += stored_n
            stats.read_bytes += read_n
            if saved >= 0:
                stats.deltas += 1
                stats.delta_saved += saved
                stats.delta_raw += raw_n
                stats.delta_stored += stored_n
            bar.update(1)
    stats.seconds = time.perf_counter() - start
    return stats


def _delta_encoder(cache: Cache, remote: ObjectStore, bases: dict[str, Base],
                 policy: DeltaPolicy, elems: Elems = NO_ELEMS,
                 used: set[str] | None = None) -> Encoder:
    """Encode each object plain or as a delta, whichever the policy prefers (see module doc).

    ``cache`` is anything with ``get(digest)`` giving verified raw bytes; ``elems`` gives
    a chunk's item size for the remote's ``auto`` codec (1 when it lacks one); the base of each
    delta written is added to ``used``.
    """
    used = set() if used is None else used
    depths: dict[str, int | None] = {}

    def base_depth(digest: str) -> int | None:
        """The chain depth of a base on the remote (0: full), None when it cannot be read."""
        if digest not in depths:
            try:
                header = remote.delta_header(digest)
            except ObjectError:
                depths[digest] = None
            else:
                depths[digest] = 0 if header is None else header.depth
        return depths[digest]

    def encode(digest: str) -> tuple[list[bytes | memoryview], int, int]:
        raw = cache.get(digest)
        base = bases.get(digest)
        parts = codecs.encode(raw, remote.codec, base.elem if base else elems.get(digest, 1))
        plain_n = sum(len(p) for p in parts)
        if base is not None and len(raw):
            obj = _try_delta(raw, base, plain_n)
            if obj is not None:
                depth = base_depth(base.digest)
                if depth is not None and depth + 1 <= policy.max_depth:
                    obj = delta.with_depth(obj, depth + 1)
                    used.add(base.digest)
                    return [obj], len(raw), plain_n - len(obj)
        return parts, len(raw), -1

    def _try_delta(raw, base: Base, plain_n: int) -> bytes | None:
        try:
            base_raw = cache.get(base.digest)
        except ObjectError:
            return None  # the cache lacks the parent's chunk: no delta
        if len(base_raw) != len(raw):
            return None
        obj = delta.encode(raw, base_raw, base.digest, base.elem, 1, policy.level,
                           delta.best_form(base.elem))
        return obj if len(obj) < policy.ratio * plain_n else None

    return encode


def push_objects(cache: Cache, remote: ObjectStore, digests: Iterable[str],
                 bases: dict[str, Base] | None = None,
                 policy: DeltaPolicy | None = None,
                 elems: Elems = NO_ELEMS,
                 checked: bool = False,
                 fix: str | Callable[[], str] =
                 "fetch them or check out the version that made them") -> TransferStats:
    """Upload the objects ``remote`` lacks; every one must be in the cache.

    ``checked`` says the caller has just asked the remote and ``digests`` are all
    lacking there: the existence checks are not repeated (one request per object saved).

    ``bases`` maps a chunk's digest to the same chunk of its parent version
    (delta.candidates); with a ``policy`` that is enabled, chunks whose base the
    remote already has may be stored as deltas (see the module doc).  ``elems``
    maps digests to their dtype's item size (Manifest.itemsizes), which the
    remote's ``auto`` codec chooses by; a digest it lacks counts as bytes.
    Raises MissingObjectError when an object is in neither the cache nor the remote;
    its line ends with ``fix`` (or what ``fix()`` says, asked only then), what the
    caller's user can do about it.
    """
    digests = set(digests)
    lacking = set(digests) if checked else remote.missing(digests)
    absent = cache.missing(lacking)
    if absent:
        first = sorted(absent)[0]
        raise MissingObjectError(
            f"{len(absent)} object(s) to push are in neither the cache nor {remote.url} "
            f"(first: {first}); {fix() if callable(fix) else fix}")
    policy = policy or DeltaPolicy()
    if not (bases and policy.enabled):
        stats = transfer(cache, remote, lacking, f"push {remote.url}", check_destination=False,
                         elems=elems)
        stats.skipped = len(digests) - len(lacking)
        stats.present = digests - lacking
        return stats
    wanted = {d: bases[d] for d in lacking if d in bases}
    base_digests = {b.digest for b in wanted.values()}
    have = base_digests - remote.missing(base_digests - lacking) - lacking
    # Waves: a chunk whose base is itself being pushed waits until that base is in
    # place, so a delta never names an object still on its way (invariant 3) and a
    # push of several commits chains each step on the one before.
    stats = TransferStats()
    pending = set(lacking)
    start = time.perf_counter()
    while pending:
        ready = {d for d in pending if not (d in wanted and wanted[d].digest in pending)}
        ready = ready or set(pending)  # a cycle (a revert among the commits): all plain
        usable = {d: wanted[d] for d in ready if d in wanted and wanted[d].digest in have}
        encoder = _delta_encoder(cache, remote, usable, policy, elems, stats.bases_used) \
            if usable else None
        wave = transfer(cache, remote, ready, f"push {remote.url}", check_destination=False,
                        encoder=encoder, elems=elems)
        stats.add(wave)
        have |= ready
        pending -= ready
    stats.seconds = time.perf_counter() - start
    stats.skipped = len(digests) - len(lacking)
    stats.present = digests - lacking
    return stats


def fetch_objects(remote: ObjectStore, cache: Cache, digests: Iterable[str],
                  sizes: Sizes = NO_SIZES) -> TransferStats:
    """Download objects into the cache, each verified against its digest first.

    Delta objects are resolved (bases from the cache where it has them) and the
    cache stores the raw chunk.  ``sizes`` (digest -> raw size, from the manifests
    that name them) bounds what decoding each object may allocate; an object it does
    not name may decode to at most ``codecs.MAX_RAW`` bytes.
    """
    return transfer(remote, cache, digests, f"fetch {remote.url}", bases=cache, sizes=sizes)


class ReadThrough:
    """The cache, falling back to a remote for what it lacks (lazy reads).

    Every object fetched is verified and kept in the cache, so a chunk crosses
    the network once.  The remote is opened on first need (a checkout served
    from the cache never imports a cloud library).  Offers the read side of
    ObjectStore.
    """

    def __init__(self, cache: Cache, open_remote: Callable[[], ObjectStore] | None):
        self.cache = cache
        self._open_remote = open_remote
        self._remote: ObjectStore | None = None
        self._lock = threading.Lock()
        self.concurrency = cache.concurrency

    @property
    def remote(self) -> ObjectStore | None:
        with self._lock:
            if self._remote is None and self._open_remote is not None:
                self._remote = self._open_remote()
            return self._remote

    @property
    def url(self) -> str:
        return self.cache.url

    @property
    def has_remote(self) -> bool:
        return self._open_remote is not None

    @property
    def fetcher(self) -> Callable[[set[str], Sizes], None] | None:
        """``fetch``, or None without a remote: ``checkpoint.ensure_local`` then says which
        file lacks chunks rather than only how many."""
        return self.fetch if self._open_remote is not None else None

    def get(self, digest: str, size: int | None = None) -> bytes | memoryview:
        """The verified raw chunk, from the cache or else fetched into it.  ``size``, the
        chunk's raw size where a manifest gives it, bounds what the remote's object may
        be and decode to (``ObjectStore.get``); the cache's own copy is not judged by it
        (``Cache.get``)."""
        try:
            return self.cache.get(digest)
        except (MissingObjectError, QuarantinedError) as e:
            if self._open_remote is None:
                raise
            corrupt = str(e) if isinstance(e, QuarantinedError) else None
        try:
            raw = self.remote.get(digest, self.cache, size=size)
        except MissingObjectError:
            self._root_missing()
            raise
        self.cache.put(digest, raw)
        if corrupt:
            log.warning("%s; fetched a good copy from %s", corrupt, self.remote.url)
        return raw

    def fetch(self, digests: set[str], sizes: Sizes = NO_SIZES) -> None:
        """Bring these objects into the cache (the smudge Fetcher); ``sizes`` as for
        ``fetch_objects``."""
        if self._open_remote is None:
            raise MissingObjectError(f"{len(digests)} chunk(s) are not in the cache and no "
                                     f"remote is configured (first: {sorted(digests)[0]})")
        try:
            fetch_objects(self.remote, self.cache, digests, sizes)
        except MissingObjectError:
            self._root_missing()
            raise

    def _root_missing(self) -> None:
        """Raise RootMissing ("bucket X does not exist") when the remote's bucket or folder
        is not there: its objects are missing because its URL is wrong (a typo in
        .thetazarr), not because a push was incomplete."""
        try:
            self.remote.check_root()
        except RootMissing:
            raise
        except StorageError:
            pass  # the object's own error says enough


__all__ = ["ObjectError", "ReadThrough", "RemoteSpec", "TransferStats", "check_writable",
           "fetch_objects", "open_remote", "push_objects", "storage_options", "transfer"]
