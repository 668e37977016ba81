"""A toy theta-zarr format plug-in: ``rawbin`` files.

A rawbin file is ``b"RAWBIN1\\n"``, one line of JSON ``{"dtype":..,"name":..,"shape":[..]}``
(sorted keys, no spaces) ending in ``\\n``, then the tensor's raw bytes in C order,
little-endian.  It holds exactly one tensor.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from theta_zarr.chunkreader import ChunkReader
from theta_zarr.chunkwriter import ChunkWriter
from theta_zarr.dtypes import DTypeError, by_name
from theta_zarr.formats.base import Format, FormatError, Source
from theta_zarr.manifest import Manifest, ManifestError

MAGIC = b"RAWBIN1\n"
MAX_LINE = 64 * 1024


def header_line(name: str, dtype: str, shape: tuple[int, ...] | list[int]) -> bytes:
    """The one canonical header line (so a rebuilt file is byte-identical)."""
    info = {"dtype": dtype, "name": name, "shape": [int(s) for s in shape]}
    return json.dumps(info, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def save(out: BinaryIO, name: str, dtype: str, shape: tuple[int, ...], raw: bytes) -> None:
    """Write a rawbin file (for users and tests)."""
    out.write(MAGIC + header_line(name, dtype, shape))
    out.write(raw)


class RawbinFormat(Format):
    name = "rawbin"  # the manifest's format.name
    extensions = (".rawbin",)

    def sniff(self, head: bytes) -> bool:
        # Detection is by content, never by file name.
        return head.startswith(MAGIC)

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        source.read_exact(len(MAGIC), "rawbin magic")
        line = b""
        while not line.endswith(b"\n"):
            if len(line) > MAX_LINE:
                raise FormatError(f"{source.name}: rawbin header line is too long")
            line += source.read_exact(1, "rawbin header line")
        try:
            info = json.loads(line)
            name, dtype, shape = info["name"], by_name(info["dtype"]), info["shape"]
            shape = tuple(int(s) for s in shape)
        except (ValueError, KeyError, TypeError, DTypeError) as e:
            raise FormatError(f"{source.name}: bad rawbin header ({e})") from None
        if line != header_line(name, dtype.name, shape):
            raise FormatError(f"{source.name}: rawbin header line is not canonical")
        try:
            # Stream the bytes: the writer chunks, hashes and stores them as they come.
            writer.add_stream(name, dtype, shape, source.readinto)
        except ManifestError as e:
            raise FormatError(str(e)) from None
        if not source.at_end():
            raise FormatError(f"{source.name}: data continues past the tensor")
        # Everything besides the tensors that the rebuild needs goes here, as JSON.
        return {"name": self.name}

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        if len(manifest.params) != 1:
            raise ManifestError("a rawbin manifest holds exactly one parameter")
        (name, entry), = manifest.params.items()
        out.write(MAGIC + header_line(name, entry.dtype, entry.shape))
        for chunk in reader.iter_entry(entry):  # verified chunks, in order
            out.write(chunk)
