"""ThetaZarrReader: ``torch.distributed.checkpoint`` loads from a theta-zarr ref, resharded.

DCP's planner turns the saved layout (the manifest's ``shards``) and this job's
state dict into read items: boxes of global tensors.  Each rank fetches only
the chunks its boxes overlap (concurrently, each verified against its digest),
copies the overlapping parts into its own tensors and hands them back.  Any
world size loads any checkpoint, and a plain ``dcp.load`` without a process
group reads it into one process.

Non-tensor items were written by DCP with ``torch.save``; DCP's planner reads
them back with ``torch.load(weights_only=False)``, so this reader first loads
each with ``weights_only=True`` and refuses any that needs more (code in a
pickle), before the planner sees it.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint import StorageReader
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem

from ..dtypes import by_name
from ..formats.torch import refusal
from ..manifest import Manifest, ManifestError, ParamEntry
from ..objects import bounded_map
from ..refs import RefError, check_ref_name
from . import layout
from .meta import from_manifest
from .remotes import DcpRemote


class DcpLoadError(ValueError):
    """A checkpoint item that cannot be loaded safely; the message names it and the ref.

    A save raises it too, before the rank holding such an item uploads anything.
    """


def unsafe_reason(data: bytes) -> str | None:
    """Why ``torch.load(weights_only=True)`` refuses a non-tensor item's bytes (torch's
    "Unsupported global: GLOBAL numpy…" phrase), or None when it loads.  Honours the
    classes the process allowed with ``torch.serialization.add_safe_globals``."""
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # an UnpicklingError names the global it refused
        return refusal(e)
    return None


class ThetaZarrReader(DcpRemote, StorageReader):
    """A DCP ``StorageReader`` for the checkpoint ``ref`` names in ``remote``.

    ``options`` are the remote's non-secret options; ``dcp.load(...,
    checkpoint_id=NAME)`` overrides ``ref``.  Every rank reads the ref once per load
    (a reader used again loads what the ref names then) and then only the chunks it
    needs.
    """

    def __init__(self, remote: str, ref: str, *, options: dict[str, str] | None = None,
                 concurrency: int = 16) -> None:
        DcpRemote.__init__(self, remote, options, concurrency)
        self.ref = check_ref_name(ref)
        self.manifest: Manifest | None = None
        self.digest: str | None = None  # the manifest's, as this rank read the ref
        self._prepared: Metadata | None = None  # read by prepare, for the next load only

    def reset(self, checkpoint_id: Any = None) -> None:
        if checkpoint_id:
            self.ref = check_ref_name(str(checkpoint_id))
        self.manifest = None
        self._prepared = None

    def prepare(self) -> None:
        """Read the ref and its checkpoint's metadata now, before a load
        (``theta_zarr.dcp.load``), so that a ref that does not exist or names no
        checkpoint raises theta-zarr's own error here (``RefError``, ``ManifestError``,
        ``RemoteError``), outside DCP's collectives.  The next ``read_metadata`` returns
        what this read instead of reading the ref again.
        """
        self.manifest = None
        self._prepared = from_manifest(self._manifest(), f"{self.sync.url} ref {self.ref}")

    def _manifest(self) -> Manifest:
        if self.manifest is None:
            value, target = self.sync.resolve(self.ref)
            if not isinstance(target, Manifest):
                raise RefError(f"ref {self.ref} in {self.sync.url} names a set of files, "
                               "not a distributed checkpoint")
            self.manifest, self.digest = target, value.digest
        return self.manifest

    def _coordinators(self, digest: str | None) -> Manifest:
        """The checkpoint the coordinator read (``digest``), which every rank loads.

        Each rank read the ref on its own, and it may have moved in between (training
        moving ``run7/latest``): a rank that read another checkpoint takes the
        coordinator's if it is laid out alike (its plan still fits), else the load fails.
        """
        mine = self._manifest()
        if digest is None or digest == self.digest:
            return mine
        theirs = self.sync.load(digest)
        if not isinstance(theirs, Manifest) or not _same_layout(mine, theirs):
            raise DcpLoadError(f"{self.sync.url} ref {self.ref} moved while this job loaded "
                               f"it (rank 0 read {digest}, this rank {self.digest}); "
                               "load again")
        self.manifest, self.digest = theirs, digest
        return theirs

    def read_metadata(self) -> Metadata:  # type: ignore[override]
        """The checkpoint's metadata, from the ref's manifest.

        No ``rank`` keyword: a ref has one global metadata and no per-rank copy.  DCP
        retries a failed read as "rank local metadata" when the reader takes keywords,
        and a rank whose retry succeeds plans alone while the others wait for it.
        Each load begins here, so the ref is read again (it may have moved since), unless
        ``prepare`` has just read it for this load.
        """
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            return prepared
        self.manifest = None
        return from_manifest(self._manifest(), f"{self.sync.url} ref {self.ref}")

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        self._manifest()

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Every rank's plan carries the coordinator's manifest digest (read_data)."""
        return [dataclasses.replace(plan, storage_data=self.digest) for plan in plans]

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> torch.futures.Future[None]:
        """Fetch the chunks the plan's boxes overlap, concurrently; fill the tensors."""
        manifest = self._coordinators(plan.storage_data)
        where = f"{self.sync.url} ref {self.ref}"
        jobs: list[tuple[int, int]] = []  # (read item number, global chunk index)
        pending: dict[int, int] = {}
        for n, item in enumerate(plan.items):
            entry = _entry(manifest, item.storage_index.fqn, where)
            if item.type == LoadItemType.BYTE_IO:
                chunks = range(len(entry.chunks) if entry.inline is None else 1)
            else:
                chunks = [gi for gi, _ in layout.overlapping_chunks(
                    entry.shape, entry.chunk_shape, _box(item))]
            pending[n] = len(chunks)
            jobs += [(n, gi) for gi in chunks]
        buffers: dict[int, Any] = {}
        for n in [n for n, left in pending.items() if left == 0]:
            self._commit(plan.items[n], _empty(manifest, plan.items[n]), planner, where)
        for (n, gi), raw in bounded_map(lambda job: self._chunk(manifest, plan.items[job[0]],
                                                                 job[1]),
                                        jobs, self.objects.concurrency):
            item = plan.items[n]
            if n not in buffers:
                buffers[n] = _empty(manifest, item)
            _place(manifest, item, gi, raw, buffers[n])
            pending[n] -= 1
            if pending[n] == 0:
                self._commit(item, buffers.pop(n), planner, where)
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False  # never chosen implicitly: pass storage_reader=ThetaZarrReader(...)

    def _chunk(self, manifest: Manifest, item: ReadItem, gi: int) -> bytes | memoryview:
        entry = manifest.params[item.storage_index.fqn]
        if entry.inline is not None:
            return entry.inline[gi]
        return self.objects.get(entry.chunks[gi], size=entry.chunk_nbytes(gi))

    def _commit(self, item: ReadItem, buf: Any, planner: LoadPlanner, where: str) -> None:
        fqn = item.storage_index.fqn
        if item.type == LoadItemType.BYTE_IO:
            data = b"".join(bytes(buf[i]) for i in sorted(buf))
            reason = unsafe_reason(data)
            if reason is not None:
                raise DcpLoadError(
                    f"{where}: item {fqn[:80]!r} does not load with weights_only=True "
                    f"({reason}); theta-zarr never unpickles code: allow the class with "
                    "torch.serialization.add_safe_globals if you trust this checkpoint")
            planner.load_bytes(item, io.BytesIO(data))
            return
        entry = self._manifest().params[fqn]
        dtype = by_name(entry.dtype).torch
        lengths = tuple(int(x) for x in item.lengths)
        tensor = torch.from_numpy(buf).view(dtype).reshape(lengths)
        target = planner.resolve_tensor(item).detach()
        if tuple(target.size()) != lengths:
            raise DcpLoadError(f"{where}: {fqn[:80]!r} read {list(lengths)} but the "
                               f"planner expects {list(target.size())}")
        target.copy_(tensor)
        planner.commit_tensor(item, target)


def _same_layout(a: Manifest, b: Manifest) -> bool:
    """Two DCP manifests a load plan fits alike: same items, shards, shapes and dtypes."""
    return a.format == b.format and {n: (e.shape, e.dtype) for n, e in a.params.items()} \
        == {n: (e.shape, e.dtype) for n, e in b.params.items()}


def _entry(manifest: Manifest, fqn: str, where: str) -> ParamEntry:
    entry = manifest.params.get(fqn)
    if entry is None:
        raise ManifestError(f"{where}: no parameter {fqn[:80]!r}")
    return entry


def _box(item: ReadItem) -> layout.Box:
    base = tuple(item.storage_index.offset or (0,) * len(item.storage_offsets))
    start = tuple(int(b) + int(o) for b, o in zip(base, item.storage_offsets, strict=True))
    return start, tuple(int(x) for x in item.lengths)


def _empty(manifest: Manifest, item: ReadItem) -> Any:
    """The buffer a read item is assembled in: raw parts (bytes) or a uint8 box."""
    if item.type == LoadItemType.BYTE_IO:
        return {}
    entry = manifest.params[item.storage_index.fqn]
    return np.zeros(tuple(int(x) for x in item.lengths) + (entry.itemsize,), dtype=np.uint8)


def _place(manifest: Manifest, item: ReadItem, gi: int, raw: bytes | memoryview,
           buf: Any) -> None:
    if item.type == LoadItemType.BYTE_IO:
        buf[gi] = raw
        return
    entry = manifest.params[item.storage_index.fqn]
    chunk_box = layout.chunk_box(entry.shape, entry.chunk_shape, gi)
    part = np.frombuffer(raw, dtype=np.uint8).reshape(chunk_box[1] + (entry.itemsize,))
    layout.copy_box(part, chunk_box, buf, _box(item))


__all__ = ["DcpLoadError", "ThetaZarrReader"]
