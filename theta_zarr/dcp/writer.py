"""ThetaZarrWriter: ``torch.distributed.checkpoint`` saves straight into a theta-zarr remote.

The calls DCP makes, and what each does here:

1. ``prepare_global_plan`` (coordinator): from every rank's write items (the
   global shard layout) pick each tensor's chunk shape (layout.py) so that no
   chunk straddles two shards, and send every rank the shapes of its tensors.
   A ref that exists already fails the save here, before any upload, and so do
   ranks whose writers were given another ref, remote, base, force or chunk size
   (each rank's plan carries them: ``prepare_local_plan``).
2. ``write_data`` (every rank, concurrently): hash the chunks of its own shards
   straight from the tensors' memory, ask the remote which it lacks, upload
   those (plain, or as deltas against the same chunk of the base step),
   concurrently.  Nothing is written to local disk.
3. ``finish`` (coordinator): one manifest (DCP's metadata plus every chunk
   digest of every shard), then the ref moves by conditional write: of two
   jobs racing for one ref exactly one wins; the other gets ``RefConflict``.

A rank that dies before ``finish`` leaves the ref where it was; the chunks
already uploaded are unreferenced (gc's grace period keeps them a while, and
the next save skips the ones it needs).

A gc running during the save may take an old, unreachable object a rank reused
(or a delta base) after the rank saw it.  Each rank checks its reused objects
again at the end of ``write_data``; after the ref moves, the coordinator checks
every object the manifest names and every delta base the ranks used, and puts
back those it holds (its own rank's chunks, kept until ``finish``).  One that
only another rank held fails the save with a one-line error saying to save
again (see docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint import StorageWriter
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult

from .. import chunking, delta
from ..dtypes import by_name, from_torch
from ..manifest import Manifest, ManifestError, ParamEntry, check_name
from ..objects import ObjectError, bounded_map
from ..refs import RefConflict, check_ref_name
from ..remote import _delta_encoder, check_writable
from ..sync import SyncError
from . import layout
from .meta import to_format
from .reader import DcpLoadError, unsafe_reason
from .remotes import DcpRemote

BYTES_DTYPE = "uint8"


@dataclass
class SaveResult:
    """What a save did (the coordinator's view; ``ThetaZarrWriter.result``)."""

    ref: str
    digest: str
    action: str
    uploaded_objects: int = 0
    uploaded_bytes: int = 0  # stored (encoded) bytes sent to the remote
    uploaded_raw_bytes: int = 0  # raw bytes of the chunks sent
    total_bytes: int = 0  # raw bytes of the whole checkpoint
    base_ref: str | None = None
    deltas: int = 0


@dataclass
class _Upload:
    """One rank's counters (threads add to them)."""

    objects: int = 0
    stored: int = 0
    raw: int = 0
    deltas: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, raw: int, stored: int, saved: int) -> None:
        """One object moved: raw bytes, bytes stored, bytes a delta saved (-1: none)."""
        with self.lock:
            self.objects += 1
            self.raw += raw
            self.stored += stored
            self.deltas += saved >= 0


class _Chunks:
    """The raw chunks of this save (views of the tensors) and delta bases read from the
    remote: the ``source`` the delta writer reads with ``get``."""

    def __init__(self, remote: DcpRemote):
        self.remote = remote
        self.views: dict[str, memoryview] = {}
        self.itemsizes: dict[str, int] = {}  # digest -> its dtype's item size

    def get(self, digest: str) -> bytes | memoryview:
        view = self.views.get(digest)
        return view if view is not None else self.remote.objects.get(digest)


class ThetaZarrWriter(DcpRemote, StorageWriter):
    """A DCP ``StorageWriter`` that publishes the checkpoint under ``ref`` in ``remote``.

    ``remote``: a remote URL (``s3://bucket/prefix``, ``gs://…``, a folder);
    ``options``: its non-secret options (``endpoint-url``, ``region``, …, as for
    ``theta-zarr push -o``); ``base_ref``: the step this one continues (delta
    bases; it must exist; default, as ``publish``: ``ref`` itself when ``force`` moves
    it, else the newest other ref under ``ref``'s folder, ``Refs.base_of``); ``force``: move
    a ref that already names another checkpoint (compare-and-swap);
    ``chunk_size``: target raw chunk bytes; ``delta``: store changed chunks as
    deltas where that pays.  ``dcp.save(..., checkpoint_id=NAME)`` overrides ``ref``.
    """

    need = "write"  # the bucket or folder must exist (a folder is never created)

    def __init__(self, remote: str, ref: str, *, base_ref: str | None = None,
                 force: bool = False, options: dict[str, str] | None = None,
                 chunk_size: int = chunking.DEFAULT_CHUNK_BYTES, concurrency: int = 16,
                 delta: bool = True) -> None:
        DcpRemote.__init__(self, remote, options, concurrency)
        check_writable(self.spec)  # here, not inside dcp.save, which wraps every error
        self.ref = check_ref_name(ref)
        self.base_ref = check_ref_name(base_ref) if base_ref else None
        self.force = force
        self.chunk_bytes = max(int(chunk_size), chunking.MIN_CHUNK_BYTES)
        self.policy = delta_policy(delta)
        self.is_coordinator = False
        self.result: SaveResult | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._base_name: str | None = None
        self._held: _Chunks | None = None  # the coordinator's chunks, until finish

    # -- StorageWriter ----------------------------------------------------------------------
    def reset(self, checkpoint_id: Any = None) -> None:
        """A new save; a ``checkpoint_id`` given to ``dcp.save`` names the ref."""
        if checkpoint_id:
            self.ref = check_ref_name(str(checkpoint_id))
        self.result = None
        self._held = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Every save begins here (``reset`` only runs with a ``checkpoint_id``): a writer
        used again keeps nothing of its last save."""
        self.is_coordinator = is_coordinator
        self.result = None
        self._held = None

    def _intent(self) -> _Intent:
        where = tuple(sorted((k, v) for k, v in self.spec.options.items()
                             if k not in _PER_RANK_OPTIONS))
        return _Intent(self.spec.url, where, self.ref,
                       self.base_ref, self.force, self.chunk_bytes, self.policy.enabled)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Each rank's plan carries what its writer was told (remote, ref, base_ref, force,
        chunk size), for the coordinator to check that every rank saves the same step."""
        return dataclasses.replace(plan, storage_data=self._intent())

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Chunk shapes from the global layout, and the base step; refuses ranks that
        disagree on the ref (or remote, base_ref, force, chunk size), a taken ref, or a
        name no manifest can hold."""
        _check_ranks_agree(self._intent(), [p.storage_data for p in plans])
        current = self.sync.refs.read(self.ref)
        if current is not None and not self.force:
            raise RefConflict(f"ref {self.ref} already exists in {self.sync.url} and points "
                              f"at {current.digest}; nothing was uploaded: pass force=True "
                              "to ThetaZarrWriter to move it, or save under a new ref")
        if current is None:
            self.sync.refs.check_new(self.ref)  # a name set would refuse, before uploads
        boxes: dict[str, list[layout.Box]] = {}
        geometry: dict[str, tuple[tuple[int, ...], int]] = {}
        for plan in plans:
            for item in plan.items:
                fqn = check_name(item.index.fqn, "state dict")  # every item, before uploads
                if item.tensor_data is None:
                    continue
                td = item.tensor_data
                geometry[fqn] = (tuple(td.size), from_torch(td.properties.dtype).itemsize)
                boxes.setdefault(fqn, []).append((tuple(td.chunk.offsets),
                                                  tuple(td.chunk.sizes)))
        self._shapes = {fqn: layout.chunk_shape_for_shards(shape, itemsize, boxes[fqn],
                                                           self.chunk_bytes)
                        for fqn, (shape, itemsize) in geometry.items()}
        self._base_name = self.sync.refs.base_of(self.ref, self.base_ref, self.force)
        out = []
        for plan in plans:
            mine = {i.index.fqn: self._shapes[i.index.fqn] for i in plan.items
                    if i.tensor_data is not None}
            out.append(dataclasses.replace(plan, storage_data=_Plan(mine, self._base_name)))
        return out

    def write_data(self, plan: SavePlan, planner: SavePlanner
                   ) -> torch.futures.Future[list[WriteResult]]:
        """Hash this rank's chunks, upload those the remote lacks; no local copy."""
        info: _Plan = plan.storage_data
        chunks = _Chunks(self)
        jobs: list[tuple[str, int, memoryview]] = []  # (fqn, global chunk index, raw view)
        geometry: dict[str, tuple[tuple[int, ...], str, tuple[int, ...]]] = {}
        results: list[tuple[Any, int, dict[str, Any]]] = []
        keep: list[Any] = []  # the tensors the views point into, alive until uploaded
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO:
                data = planner.resolve_data(item).getvalue()
                reason = unsafe_reason(data)
                if reason is not None:  # the reader would refuse it: fail now, not at resume
                    raise DcpLoadError(
                        f"dcp save {self.ref}: item {fqn[:80]!r} does not load back with "
                        f"weights_only=True ({reason}), so ThetaZarrReader would refuse it; "
                        "save a plain value (int(x), x.tolist(), bytes, a tensor), "
                        "or allow the class with torch.serialization.add_safe_globals")
                raw = memoryview(data)
                if len(raw) <= chunking.INLINE_MAX_BYTES:
                    results.append((item.index, len(raw), {"raw": bytes(raw)}))
                    continue
                cs = chunking.chunk_shape_for((len(raw),), 1, self.chunk_bytes)
                spans = chunking.spans((len(raw),), 1, cs)
                jobs += [(fqn, i, raw[o:o + n]) for i, (o, n) in enumerate(spans)]
                geometry[fqn] = ((len(raw),), BYTES_DTYPE, cs)
                results.append((item.index, len(raw), {"size": len(raw)}))
                continue
            td = item.tensor_data
            tensor = planner.resolve_data(item).detach()
            if tensor.device.type != "cpu":
                tensor = tensor.cpu()
            tensor = tensor.contiguous()
            keep.append(tensor)
            raw = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B") \
                if tensor.numel() else memoryview(b"")
            shape = tuple(td.size)
            cs = info.shapes[fqn]
            itemsize = from_torch(tensor.dtype).itemsize
            box = (tuple(td.chunk.offsets), tuple(td.chunk.sizes))
            if math.prod(shape) * itemsize <= chunking.INLINE_MAX_BYTES:
                results.append((item.index, len(raw), {"raw": bytes(raw)}))
                continue
            geometry[fqn] = (shape, from_torch(tensor.dtype).name, cs)
            for gi, off, n in layout.shard_chunks(shape, itemsize, cs, box):
                jobs.append((fqn, gi, raw[off:off + n]))
            results.append((item.index, len(raw), {}))
        stats = self._upload(jobs, geometry, chunks, info.base)
        per_fqn: dict[str, list[tuple[int, str]]] = {}
        for fqn, gi, d in stats.pop("digests"):
            per_fqn.setdefault(fqn, []).append((gi, d))
        out = []
        for n, (index, nbytes, data) in enumerate(results):
            if "raw" not in data:
                data["chunks"] = per_fqn.pop(index.fqn, [])
            if n == 0:
                data["uploaded"] = stats
            out.append(WriteResult(index=index, size_in_bytes=nbytes, storage_data=data))
        del keep
        if self.is_coordinator:
            self._held = chunks  # for finish's check after the ref moves
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(out)
        return fut

    def _upload(self, jobs: list[tuple[str, int, memoryview]],
                geometry: dict[str, tuple[tuple[int, ...], str, tuple[int, ...]]],
                chunks: _Chunks, base_name: str | None) -> dict[str, Any]:
        """Hash, check and upload every chunk job concurrently; this rank's counters."""
        objects = self.objects
        base = self._manifest_of(base_name) if self.policy.enabled else None
        bases: dict[str, delta.Base] = {}
        counts = _Upload()
        itemsizes: dict[str, int] = {}  # for the remote's auto codec (chosen by dtype)
        used: set[str] = set()  # delta bases the deltas written need
        encode = _delta_encoder(chunks, objects, bases, self.policy,  # type: ignore[arg-type]
                              itemsizes, used)
        chunks.itemsizes = itemsizes

        def put(d: str) -> None:
            parts, raw_n, saved = encode(d)
            counts.add(raw_n, objects.put_parts(d, parts), saved)

        def send(d: str) -> None:
            fqn, gi = first[d]
            old = base.params.get(fqn) if base is not None else None
            if old is not None and old.chunks and \
                    (old.shape, old.dtype, old.chunk_shape) == geometry[fqn] and \
                    old.chunks[gi] != d:
                bases[d] = delta.Base(old.chunks[gi], by_name(old.dtype).itemsize)
            put(d)

        # Hash every chunk, then ask the remote once which it lacks (one listing where
        # that costs fewer requests than a check per chunk, as publish does).
        first: dict[str, tuple[str, int]] = {}  # digest -> where it first occurs
        digests: list[tuple[str, int, str]] = []
        for (fqn, gi, view), d in bounded_map(lambda job: chunking.digest(job[2]), jobs,
                                              objects.concurrency):
            digests.append((fqn, gi, d))
            if d not in first:
                first[d] = (fqn, gi)
                chunks.views[d] = view
                itemsizes[d] = by_name(geometry[fqn][1]).itemsize
        absent = objects.missing(first)
        reused = first.keys() - absent
        for _ in bounded_map(send, sorted(absent), objects.concurrency):
            pass
        # An object this save counted on may have been taken meanwhile by a gc (an old,
        # unreachable leftover of a crashed save): put it back before any ref names it.
        for _ in bounded_map(put, objects.missing(reused), objects.concurrency):
            pass
        return {"digests": digests, "objects": counts.objects, "stored": counts.stored,
                "raw": counts.raw, "deltas": counts.deltas, "base": base_name,
                "bases_used": sorted(used)}

    def _manifest_of(self, name: str | None) -> Manifest | None:
        """The manifest a base ref names (None when there is none or it is unreadable:
        a save never fails for want of a delta base)."""
        if not name:
            return None
        try:
            value = self.sync.refs.read(name)
            target = self.sync.load(value.digest) if value is not None else None
        except (ValueError, ObjectError, SyncError, OSError):
            return None
        return target if isinstance(target, Manifest) else None

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """One manifest, then the ref (conditional write); sets ``self.result``."""
        by_fqn: dict[str, list[WriteResult]] = {}
        up = {"objects": 0, "stored": 0, "raw": 0, "deltas": 0}
        bases_used: set[str] = set()
        for rank_results in results:
            for wr in rank_results:
                by_fqn.setdefault(wr.index.fqn, []).append(wr)
                stats = wr.storage_data.get("uploaded")
                if stats:
                    for k in up:
                        up[k] += stats[k]
                    bases_used.update(stats.get("bases_used", ()))
        params: dict[str, ParamEntry] = {}
        for fqn, md in metadata.state_dict_metadata.items():
            check_name(fqn, "state dict")
            got = by_fqn.get(fqn, [])
            if isinstance(md, TensorStorageMetadata):
                params[fqn] = self._tensor_entry(fqn, md, got)
            else:
                params[fqn] = _bytes_entry(fqn, got, self.chunk_bytes)
        manifest = Manifest(to_format(metadata), params)
        data = manifest.to_bytes()
        Manifest.from_bytes(data, f"dcp save {self.ref}")  # what readers will check
        digest = self.sync.put_manifest(data)
        try:
            _, action = self.sync.refs.set(self.ref, digest, force=self.force)
        except RefConflict:
            now = self.sync.refs.read(self.ref)
            raise RefConflict(
                f"ref {self.ref} in {self.sync.url} was published by another job while this "
                f"save ran (it now names {now.digest if now else 'nothing'}); nothing was "
                "overwritten: save under another ref, or pass force=True") from None
        self._settle(manifest, bases_used)
        self.result = SaveResult(self.ref, digest, action, up["objects"], up["stored"],
                                 up["raw"], manifest.nbytes, self._base_name, up["deltas"])

    def _settle(self, manifest: Manifest, bases_used: set[str]) -> None:
        """After the ref moved: put back any object it names (or any delta base a rank
        used) that a concurrent gc took.  Only the coordinator's own chunks can be put
        back here; raises SyncError naming the ref when another rank's is gone."""
        held, self._held = self._held, None
        vanished = self.objects.missing(manifest.digests() | bases_used)
        if not vanished:
            return
        views = held.views if held is not None else {}
        sizes = held.itemsizes if held is not None else {}
        for d in sorted(vanished & views.keys()):
            self.objects.put(d, views[d], sizes.get(d, 1))
        lost = sorted(vanished - views.keys())
        if lost:
            raise SyncError(
                f"ref {self.ref} in {self.sync.url} names {len(lost)} object(s) a concurrent "
                f"gc removed while this save ran (first: {lost[0]}); save again with "
                "force=True to upload them")

    def _tensor_entry(self, fqn: str, md: TensorStorageMetadata,
                      got: list[WriteResult]) -> ParamEntry:
        shape = tuple(int(s) for s in md.size)
        dtype = from_torch(md.properties.dtype)
        cs = self._shapes.get(fqn) or chunking.chunk_shape_for(shape, dtype.itemsize)
        nbytes = math.prod(shape) * dtype.itemsize
        if shape and nbytes == 0:
            return ParamEntry(shape, dtype.name, cs, (), None)
        if nbytes <= chunking.INLINE_MAX_BYTES:
            whole = np.zeros(shape + (dtype.itemsize,), dtype=np.uint8)
            for wr, chunk in zip(got, _boxes(md, got), strict=True):
                part = np.frombuffer(wr.storage_data["raw"], dtype=np.uint8).reshape(
                    chunk[1] + (dtype.itemsize,))
                layout.copy_box(part, chunk, whole, ((0,) * len(shape), shape))
            return ParamEntry(shape, dtype.name, cs, (), (whole.tobytes(),))
        n = chunking.chunk_count(shape, cs) if shape else 1
        digests: list[str | None] = [None] * n
        for wr in got:
            for gi, d in wr.storage_data.get("chunks", []):
                digests[gi] = d
        if any(d is None for d in digests):
            raise ManifestError(f"dcp save {self.ref}: the shards of {fqn[:80]!r} do not "
                                "cover the tensor")
        return ParamEntry(shape, dtype.name, cs, tuple(digests), None)  # type: ignore[arg-type]

    def storage_meta(self) -> None:
        return None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False  # never chosen implicitly: pass storage_writer=ThetaZarrWriter(...)


@dataclass(frozen=True)
class _Intent:
    """What one rank's writer was told: every rank of a save must agree on it."""

    remote: str
    options: tuple[tuple[str, str], ...]
    ref: str
    base_ref: str | None
    force: bool
    chunk_bytes: int
    delta: bool


#: remote options that only tune one rank's transfers (ranks may differ in them)
_PER_RANK_OPTIONS = frozenset({"concurrency", "retry-timeout"})

_INTENT_WORDS = {"remote": "remote", "options": "remote options", "ref": "ref",
                 "base_ref": "base_ref", "force": "force", "chunk_bytes": "chunk_size",
                 "delta": "delta"}


def _check_ranks_agree(mine: _Intent, theirs: list[Any]) -> None:
    """SyncError naming what differs, and on which ranks, when the ranks' writers were not
    told the same thing (a rank computing another step number, another bucket, ...).

    Only the coordinator's ref would move, with other ranks' chunks in it (or, for another
    remote, naming objects its bucket lacks): a checkpoint no rank meant to save."""
    for field_name, word in _INTENT_WORDS.items():
        values: dict[Any, list[int]] = {}
        for rank, intent in enumerate(theirs):
            value = getattr(intent if isinstance(intent, _Intent) else mine, field_name)
            values.setdefault(value, []).append(rank)
        if len(values) > 1:
            parts = "; ".join(f"{_ranks(r)}: {_show(v)}" for v, r in values.items())
            raise SyncError(f"dcp save {mine.ref}: the ranks' ThetaZarrWriter {word} "
                            f"differs ({parts}); every rank must save the same checkpoint "
                            "with the same arguments; nothing was uploaded")


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return str(dict(value)) if isinstance(value, tuple) else str(value)


def _ranks(ranks: list[int]) -> str:
    shown = ", ".join(map(str, ranks[:4])) + (f" and {len(ranks) - 4} more"
                                              if len(ranks) > 4 else "")
    return f"rank {shown}" if len(ranks) == 1 else f"ranks {shown}"


@dataclass(frozen=True)
class _Plan:
    """What the coordinator sends each rank with its plan."""

    shapes: dict[str, tuple[int, ...]]
    base: str | None


def delta_policy(enabled: bool) -> delta.DeltaPolicy:
    """The DeltaPolicy a distributed save writes with: ``enabled`` (the writer's ``delta``)
    and the defaults (``delta.DEFAULT_RATIO``, ``DEFAULT_DEPTH``); a save reads no git
    config, so ``theta-zarr.delta-ratio`` and ``delta-depth`` do not apply to it."""
    return delta.DeltaPolicy(enabled=enabled)


def _boxes(md: TensorStorageMetadata, got: list[WriteResult]) -> list[layout.Box]:
    return [(tuple(wr.index.offset or (0,) * len(md.size)),
             _size_at(md, wr.index.offset)) for wr in got]


def _size_at(md: TensorStorageMetadata, offset: Any) -> tuple[int, ...]:
    for c in md.chunks:
        if offset is None or tuple(c.offsets) == tuple(offset):
            return tuple(c.sizes)
    raise ManifestError("a saved shard is missing from DCP's metadata")


def _bytes_entry(fqn: str, got: list[WriteResult], chunk_bytes: int) -> ParamEntry:
    if len(got) != 1:
        raise ManifestError(f"dcp save: bytes item {fqn[:80]!r} was written "
                            f"{len(got)} times")
    data = got[0].storage_data
    if "raw" in data:
        raw = data["raw"]
        n = len(raw)
        return ParamEntry((n,), BYTES_DTYPE, (max(n, 1),), (), (raw,)) if n else \
            ParamEntry((0,), BYTES_DTYPE, (1,), (), None)
    n = data["size"]
    cs = chunking.chunk_shape_for((n,), 1, chunk_bytes)
    digests = [d for _, d in sorted(data["chunks"])]
    return ParamEntry((n,), BYTES_DTYPE, cs, tuple(digests), None)


__all__ = ["SaveResult", "ThetaZarrWriter"]
