"""clean and smudge: a checkpoint to its manifest and back.

These are the two core operations every face shares (git's filter, the CLI,
the Python API).  clean streams the input through a format plug-in into the
cache; a manifest given to clean passes through unchanged (lazy checkouts put
manifests in the working tree).  smudge makes sure the cache holds every chunk
(asking ``fetch`` for the rest) and streams the rebuilt file out.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from . import formats, lfs, packs
from .cache import Cache, QuarantinedError
from .chunkreader import ChunkReader
from .chunkwriter import ChunkWriter, TruncatedInput, WriteStats
from .formats.base import FormatError, NotWeights, Source
from .formats.opaque import OpaqueFormat
from .manifest import (
    Manifest,
    ManifestError,
    ParamEntry,
    looks_like_conflicted_manifest,
    looks_like_manifest,
)
from .objects import MissingObjectError, ObjectError
from .settings import Settings
from .storage import RootMissing

log = logging.getLogger(__name__)

class Fetcher(Protocol):
    """Puts the digests the cache lacks into the cache.  ``sizes`` gives their raw sizes
    (digest -> bytes, from the manifests naming them), which bound what decoding each
    fetched object may allocate; a digest it lacks may decode to ``codecs.MAX_RAW``."""

    def __call__(self, digests: set[str], sizes: Mapping[str, int] = ..., /) -> None: ...


@dataclass
class CleanResult:
    """What ``clean`` made of one input: its manifest and what storing its chunks cost.

    ``stats`` counts the chunks hashed and the objects newly written to the cache (all
    zero when ``passed_through``: the input was already a manifest, given back as it is).
    """

    manifest: Manifest
    stats: WriteStats
    passed_through: bool = False
    #: why the file was kept as opaque bytes (a face says it once, on stderr), else None
    opaque_reason: str | None = None


def open_cache(settings: Settings) -> Cache:
    """The cache ``settings`` name (``cache_dir``), writing new objects with
    ``cache_codec`` and ``concurrency`` requests at a time."""
    return Cache(settings.cache_dir, codec=settings.cache_codec, concurrency=settings.concurrency)


def open_source(stream: BinaryIO, cache: Cache, name: str = "checkpoint",
                path: str | None = None) -> Source:
    """``stream`` as a ``clean`` input; its first bytes are read (peeked) at once.

    ``name`` says which file in errors; ``path`` is the file on disk when there is one
    (formats that need random access then open it, instead of spooling the stream to a
    temporary file in the cache's ``tmp`` folder: ``Source.as_file``).
    """
    return Source(stream, name=name, path=path, tmp_dir=cache.tmp_dir)


def clean(source: Source, settings: Settings, cache: Cache,
          previous: Manifest | None = None, opaque: bool | None = None) -> CleanResult:
    """Read a checkpoint (or a manifest) from ``source``; store its chunks; return the manifest.

    ``previous`` is the manifest this file had (git's index): its parameters keep
    their recorded chunk shapes.  A file no plug-in may read as weights (no format
    claims it, or a pickle ``weights_only=True`` refuses) is kept as opaque bytes
    when ``opaque`` is true (default: ``settings.opaque``), its ``opaque_reason``
    saying why; otherwise it is a ``NotWeights`` error naming what was refused.
    """
    name = source.name
    if looks_like_manifest(source.head) or looks_like_conflicted_manifest(source.head):
        data = source.head + source.stream.read()
        return CleanResult(Manifest.from_bytes(data, name), WriteStats(), passed_through=True)
    if lfs.looks_like_pointer(source.head):
        # a checkout made without git-lfs: storing it would keep the pointer, not the file
        raise FormatError(f"{name}: is a git-lfs pointer, not the file it stands for; fetch "
                          "the file with git-lfs (git lfs pull) before adding it")
    opaque = settings.opaque if opaque is None else opaque
    try:
        try:
            return _clean_with(formats.detect(source.head, name), source, settings, cache,
                               previous)
        except NotWeights as e:
            if not opaque:
                raise
            reason = str(e).removeprefix(f"{name}: ")
        result = _clean_with(OpaqueFormat(), source, settings, cache, previous)
        result.opaque_reason = reason
        return result
    finally:
        source.close()


def _clean_with(fmt: formats.Format, source: Source, settings: Settings, cache: Cache,
                previous: Manifest | None) -> CleanResult:
    writer = ChunkWriter(cache, settings.chunk_bytes, settings.workers, source=source.name,
                         previous=previous)
    with writer:
        try:
            fmt_info = fmt.clean(source, writer)
        except TruncatedInput as e:
            raise FormatError(str(e)) from None
        params = writer.finish()
    return CleanResult(Manifest(fmt_info, params), writer.stats)


def match_names(names: Iterable[str], include: Sequence[str] | str | None) -> list[str]:
    """Names matching any glob in ``include`` (all of them when it is None), in order."""
    names = list(names)
    if include is None:
        return names
    globs = [include] if isinstance(include, str) else list(include)
    return [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]


def matching_params(manifest: Manifest, include: Sequence[str] | str | None) -> list[str]:
    """Parameters matching ``include`` by their own name or by the name of a tensor that
    lives in them (a tied alias such as ``lm_head.weight``, a slice of a fused weight)."""
    if include is None:
        return list(manifest.params)
    views = formats.tensor_views(manifest)
    chosen = set(match_names(manifest.params, include))
    chosen.update(views[k].param for k in match_names(views, include))
    return [n for n in manifest.params if n in chosen]


def select(manifest: Manifest, names: list[str]) -> Manifest:
    """The manifest of a file holding only the named parameters (a partial materialize)."""
    fmt = formats.get_format(manifest.format_name)
    return Manifest(fmt.select(manifest.format, names), {n: manifest.params[n] for n in names})


def missing_chunks(manifest: Manifest, cache: Cache, names: list[str] | None = None) -> set[str]:
    """The digests of the stored (non-inline) chunks of ``manifest``, or of the parameters
    ``names``, that ``cache`` lacks (existence checks only: nothing is read)."""
    entries = list(manifest.params.values()) if names is None else \
        [manifest.params[n] for n in names]
    digests = {d for e in entries for d in e.chunks}
    return cache.missing(digests, _packable(entries, len(digests)))


def freshen(cache: Cache, manifest: Manifest) -> set[str]:
    """``Cache.freshen`` of ``manifest``'s chunks (a clean answered from its stat record):
    the digests gone from the cache, which the caller must store again."""
    digests = manifest.digests()
    return cache.freshen(digests, _packable(list(manifest.params.values()), len(digests)))


def _packable(entries: list[ParamEntry], count: int) -> int:
    """About how many of the ``count`` chunks of ``entries`` a pack may hold (a clean of
    many of them packed them), from a sample of the parameters: working out every one's
    chunk size cost 0.3 s for 10^5 of them."""
    sample = [e for e in entries[::max(1, len(entries) // 64)] if e.chunks]
    share = sum(e.chunk_nbytes(0) <= packs.SMALL_OBJECT for e in sample) / max(1, len(sample))
    return round(count * share)


def ensure_local(manifest: Manifest, cache: Cache, fetch: Fetcher | None,
                 names: list[str] | None = None, source: str = "checkpoint") -> None:
    """Make the cache hold every chunk of ``manifest`` (or of the named params)."""
    lacking = missing_chunks(manifest, cache, names)
    if not lacking:
        return
    if fetch is None:
        first = sorted(lacking)[0]
        # a pack left out of every lookup is the likely reason: say which one
        bad = sorted(cache.bad_packs.values())
        why = f"; {len(bad)} pack(s) of the cache are unusable, first: {bad[0]}" if bad else ""
        raise MissingObjectError(
            f"{source}: {len(lacking)} chunk(s) are not in the cache and no remote is "
            f"configured (first: {first}){why}")
    fetch(lacking, manifest.chunk_sizes())


def no_good_copy(corrupt: str, missing: Exception) -> str:
    """The line for a corrupt cache object (``corrupt``: moved to quarantine) that the
    remote lacks too (``missing``: MissingObjectError, or RootMissing where the remote's
    bucket or folder does not exist)."""
    return (f"{corrupt}; the remote has no copy either ({missing}): clean the file again "
            "(git add --renormalize PATH) to rewrite it, or push it from a clone that has it")


class Healing:
    """The cache as a reader sees it: a corrupt object is quarantined (cache.py), fetched
    again through ``fetch`` when there is a remote, and the repair is logged."""

    def __init__(self, cache: Cache, fetch: Fetcher | None):
        self.cache = cache
        self.fetch = fetch
        self.concurrency = cache.concurrency

    def get(self, digest: str, size: int | None = None) -> bytes | memoryview:
        """The verified raw chunk; raises ObjectError when no good copy can be had.
        ``size``, the chunk's raw size from the manifest, bounds the good copy fetched
        (``Fetcher``)."""
        try:
            return self.cache.get(digest)
        except QuarantinedError as e:
            if self.fetch is None:
                raise ObjectError(f"{e}; no remote to fetch a good copy from: clean the file "
                                  "again (git add --renormalize PATH) to rewrite it") from None
            message = str(e)
        try:
            self.fetch({digest}, {} if size is None else {digest: size})
        except (MissingObjectError, RootMissing) as missing:  # not pushed: the cache's was bad
            raise ObjectError(no_good_copy(message, missing)) from None
        log.warning("%s; fetched a good copy again", message)
        return self.cache.get(digest)


def smudge(manifest: Manifest, out: BinaryIO, settings: Settings, name: str = "checkpoint",
           cache: Cache | None = None, fetch: Fetcher | None = None,
           ensured: bool = False) -> None:
    """Write the checkpoint ``manifest`` describes to ``out``.

    ``ensured`` says the caller already made the cache complete (ensure_local),
    as git's filter does before it answers "success".
    """
    cache = cache or open_cache(settings)
    if not ensured:
        ensure_local(manifest, cache, fetch, source=name)
    fmt = formats.get_format(manifest.format_name)
    reader = ChunkReader(Healing(cache, fetch), workers=settings.workers)
    try:
        fmt.smudge(manifest, reader, out, tmp_dir=cache.tmp_dir)
    except ManifestError as e:
        raise ManifestError(f"{name}: {e}") from None
