"""dcp: a distributed checkpoint (torch.distributed.checkpoint) rebuilt as one safetensors file.

A ``dcp`` manifest (written by ``theta_zarr.dcp.ThetaZarrWriter``) has one
parameter per global tensor, plus one ``uint8`` parameter per non-tensor item
(bytes DCP wrote with ``torch.save``).  Its file form is the consolidated
checkpoint that DCP's ``dcp_to_torch_save`` and Hugging Face consolidation
produce, as safetensors: every tensor whole, in name order.  The safetensors
``__metadata__`` carries, under the key ``dcp``, what the tensors alone do not
say (the saving job's shard layout, chunk shapes, non-tensor items in base64),
so cleaning that file gives the same manifest back (``clean(smudge(m)) == m``)
and ``git status`` stays clean after ``git theta-zarr import``.

This module needs no torch: it only moves bytes between manifests and files.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, BinaryIO

from ..chunkreader import ChunkReader
from ..chunkwriter import ChunkWriter
from ..dtypes import by_name
from ..manifest import Manifest, ManifestError, check_name
from .base import Format, FormatError, Source, TensorView
from .safetensors import SafetensorsFormat, read_header, stream_tensors

NAME = "dcp"
#: the safetensors header of a consolidated DCP checkpoint starts with these bytes
#: (sorted metadata keys: "dcp" comes before "format")
SNIFF = b'{"__metadata__":{"dcp":'
BYTES_DTYPE = "uint8"
#: what an error about the ``dcp`` metadata adds: whose key it is, and the way out
RESERVED = ("the first safetensors metadata key 'dcp' marks the file form of a distributed "
            "checkpoint theta-zarr wrote (a 'dcp' key of your own: rename it)")


class DcpFormat(Format):
    """A distributed checkpoint's manifest, whose file form is one consolidated
    safetensors file with the ``dcp`` metadata key (module doc).

    Claims only safetensors files whose sorted ``__metadata__`` starts with ``dcp``
    (``SNIFF``).  Clean raises FormatError when that metadata is missing, is not JSON,
    lacks ``format``, ``chunk_shapes`` or ``bytes``, or holds an item that is not base64.
    """

    name = NAME
    extensions = (".safetensors",)

    def sniff(self, head: bytes) -> bool:
        return len(head) > 8 + len(SNIFF) and head[8:8 + len(SNIFF)] == SNIFF

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        fmt = manifest.format
        blobs = sorted(set(fmt.get("bytes", [])) & set(manifest.params))
        tensors = sorted(set(manifest.params) - set(blobs))
        raw = {n: b"".join(bytes(c) for c in reader.iter_entry(manifest.params[n]))
               for n in blobs}
        info = {
            "format": {k: v for k, v in fmt.items() if k != "name"},
            "chunk_shapes": {n: list(e.chunk_shape) for n, e in manifest.params.items()},
            "bytes": {n: base64.b64encode(raw[n]).decode("ascii") for n in blobs},
        }
        meta = {"dcp": json.dumps(info, sort_keys=True, separators=(",", ":")),
                "format": "pt"}
        flat = Manifest({"name": SafetensorsFormat.name, "order": tensors,
                         "header": {"__metadata__": meta}},
                        {n: manifest.params[n] for n in tensors})
        SafetensorsFormat().smudge(flat, reader, out, tmp_dir)

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        _, header, metadata = read_header(source)
        info = _info(metadata, source.name)
        shapes = info["chunk_shapes"]
        blobs = {name: _b64(text, source.name, name) for name, text in info["bytes"].items()}
        recorded: dict[str, tuple[int, ...]] = {}
        named = [n for n, entry in header.items() if isinstance(entry, dict)] + list(blobs)
        for name in named:
            if name in shapes:
                try:
                    recorded[name] = tuple(int(c) for c in shapes[name])
                except (TypeError, ValueError):
                    continue  # not a shape: the policy chunks it
        writer.chunk_shapes.update(recorded)
        stream_tensors(source, writer, header)
        for name, data in sorted(blobs.items()):
            try:
                writer.add_buffer(check_name(name, source.name), by_name(BYTES_DTYPE),
                                  (len(data),), memoryview(data))
            except ManifestError as e:
                raise FormatError(str(e)) from None
        fmt = {**info["format"], "name": NAME}  # the file's metadata names no other format
        try:  # what readers check: a manifest they refuse would commit a file none can check out
            Manifest.from_json({"theta_zarr": 1, "format": fmt, "params": {}}, source.name)
        except ManifestError:
            raise FormatError(f"{source.name}: the 'dcp' metadata's format does not fit the "
                              "manifest schema (shards, bytes, planner_data, version); "
                              f"{RESERVED}") from None
        return fmt

    def tensors(self, fmt: dict[str, Any], params: dict[str, Any]) -> dict[str, TensorView]:
        """The tensors only: the bytes items (pickled non-tensor state) are no tensors for
        ``load_state_dict``, however the manifest is read (a ref, a file in git)."""
        blobs = set(self.non_tensors(fmt))
        return {n: TensorView(n) for n in params if n not in blobs}

    def non_tensors(self, fmt: dict[str, Any]) -> list[str]:
        return [str(n) for n in fmt.get("bytes", [])]

    def select(self, fmt: dict[str, Any], names: list[str]) -> dict[str, Any]:
        keep = set(names)
        out = dict(fmt)
        out["shards"] = {k: v for k, v in fmt.get("shards", {}).items() if k in keep}
        out["bytes"] = [b for b in fmt.get("bytes", []) if b in keep]
        if isinstance(fmt.get("planner_data"), dict):
            out["planner_data"] = {k: v for k, v in fmt["planner_data"].items() if k in keep}
        return out


def _info(metadata: dict[str, str] | None, where: str) -> dict[str, Any]:
    try:
        info = json.loads((metadata or {})["dcp"])
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError):
        raise FormatError(f"{where}: the 'dcp' metadata is missing or not JSON; "
                          f"{RESERVED}") from None
    if not (isinstance(info, dict) and isinstance(info.get("format"), dict)
            and isinstance(info.get("chunk_shapes"), dict)
            and isinstance(info.get("bytes"), dict)):
        raise FormatError(f"{where}: the 'dcp' metadata needs format, chunk_shapes, bytes; "
                          f"{RESERVED}")
    return info


def _b64(text: object, where: str, name: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{where}: bytes item {name[:80]!r} is not base64") from None
