"""DCP's ``Metadata`` <-> the ``format`` object of a ``dcp`` manifest (JSON, never pickle).

DCP's own writers pickle ``Metadata``; a manifest holds JSON only, and the
reader rebuilds the dataclasses from it, so loading a checkpoint never
unpickles anything from a bucket.  What is kept (docs/manifest.md, "dcp")::

    {"name": "dcp",
     "version": "<DCP metadata version>",
     "shards": {fqn: [[offsets], [sizes]], ...]},   # how the saving job sharded each tensor
     "bytes": [fqn, ...],                          # non-tensor items (torch.save bytes)
     "planner_data": {fqn: [key, ...]}}            # DefaultSavePlanner's flattening map

Shapes and dtypes are the parameters' own (one parameter per tensor); storage
metadata, ids and times are left out (invariant 1).  ``TensorProperties`` other
than the dtype are deprecated in DCP and come back as their defaults.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from ..dtypes import by_name
from ..manifest import Manifest, ManifestError

FORMAT_NAME = "dcp"


def _path(value: object, where: str) -> list[str | int]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(p, (str, int)) and not isinstance(p, bool) for p in value):
        raise ManifestError(f"{where}: planner_data entries must be lists of keys")
    return list(value)


def to_format(metadata: Metadata) -> dict[str, Any]:
    """The manifest's ``format`` object for DCP ``metadata`` (deterministic JSON)."""
    shards: dict[str, list] = {}
    blobs: list[str] = []
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            boxes = sorted((list(c.offsets), list(c.sizes)) for c in md.chunks)
            shards[fqn] = [[o, s] for o, s in boxes]
        else:
            blobs.append(fqn)
    fmt: dict[str, Any] = {"name": FORMAT_NAME, "shards": shards, "bytes": sorted(blobs)}
    if metadata.version is not None:
        fmt["version"] = str(metadata.version)
    planner = metadata.planner_data
    if isinstance(planner, dict) and planner:
        fmt["planner_data"] = {k: _path(v, "planner_data") for k, v in planner.items()}
    return fmt


def from_manifest(manifest: Manifest, source: str) -> Metadata:
    """DCP ``Metadata`` from a manifest: a ``dcp`` one as saved; any other (a pushed
    safetensors or PyTorch file) as one whole-tensor shard per parameter."""
    fmt = manifest.format
    if fmt.get("name") != FORMAT_NAME:
        # any other checkpoint loads too: every parameter is one whole-tensor shard
        fmt = {"name": FORMAT_NAME, "bytes": [],
               "shards": {n: [[[0] * len(e.shape), list(e.shape)]]
                          for n, e in manifest.params.items()}}
    shards = fmt.get("shards")
    blobs = fmt.get("bytes")
    if not isinstance(shards, dict) or not isinstance(blobs, list):
        raise ManifestError(f"{source}: dcp manifest needs 'shards' and 'bytes'")
    state: dict[str, Any] = {}
    for fqn, boxes in shards.items():
        entry = manifest.params.get(fqn)
        if entry is None or not isinstance(boxes, list):
            raise ManifestError(f"{source}: tensor {fqn[:80]!r} has no parameter entry")
        chunks = []
        for box in boxes:
            if not (isinstance(box, list) and len(box) == 2 and all(
                    isinstance(v, list) and len(v) == len(entry.shape) and all(
                        isinstance(x, int) and x >= 0 for x in v) for v in box)) or any(
                    o + s > n for o, s, n in zip(box[0], box[1], entry.shape, strict=True)):
                raise ManifestError(f"{source}: tensor {fqn[:80]!r} has a bad shard box")
            chunks.append(ChunkStorageMetadata(torch.Size(box[0]), torch.Size(box[1])))
        props = TensorProperties(dtype=by_name(entry.dtype).torch)
        state[fqn] = TensorStorageMetadata(props, torch.Size(entry.shape), chunks)
    for fqn in blobs:
        if not isinstance(fqn, str) or fqn not in manifest.params:
            raise ManifestError(f"{source}: bytes item {str(fqn)[:80]!r} has no entry")
        state[fqn] = BytesStorageMetadata()
    planner = fmt.get("planner_data")
    if planner is not None:
        if not isinstance(planner, dict):
            raise ManifestError(f"{source}: planner_data must be an object")
        planner = {k: tuple(_path(v, source)) for k, v in planner.items()}
    version = fmt.get("version")
    return Metadata(state_dict_metadata=state, planner_data=planner, storage_data={},
                    storage_meta=StorageMeta(), version=version if isinstance(version, str)
                    else None)
