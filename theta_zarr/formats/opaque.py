"""Opaque files: bytes no plug-in reads as weights, kept as content-addressed chunks.

A folder under a tracked pattern holds more than weights: a Trainer's
``rng_state.pth`` and ``training_args.bin`` are pickles that ``weights_only=True``
refuses, a config may be pickled.  Such a file is stored as one ``uint8``
parameter named ``bytes``: its byte ranges are chunks like any tensor's, so they
are deduplicated, pushed and verified the same way; nothing is ever unpickled,
and the rebuild is the same bytes.  This plug-in never claims a file by its
content: ``checkpoint.clean`` chooses it when no other plug-in can read the file.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from ..chunkreader import ChunkReader
from ..chunkwriter import ChunkWriter
from ..dtypes import by_name
from ..manifest import Manifest, ManifestError, ParamEntry
from .base import Format, Source, write_layout

PARAM = "bytes"


class OpaqueFormat(Format):
    """Any file as its bytes: one 1-D ``uint8`` parameter named ``bytes``, rebuilt byte
    for byte (module doc).  Never detected by content; it has no tensors to load."""

    name = "opaque"

    def sniff(self, head: bytes) -> bool:
        return False  # chosen only as the fallback, never by content

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        u8 = by_name("uint8")
        with source.as_file() as path, open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            writer.add_stream(PARAM, u8, (size,), f.readinto)
        return {"name": self.name}

    def layout(self, manifest: Manifest) -> list[bytes | ParamEntry]:
        """The file is its one ``bytes`` parameter's raw bytes.

        Raises ManifestError unless the manifest holds exactly one 1-D ``uint8``
        parameter named ``bytes``.
        """
        entry = manifest.params.get(PARAM)
        if list(manifest.params) != [PARAM] or entry.dtype != "uint8" or len(entry.shape) != 1:
            raise ManifestError(f"an opaque manifest holds exactly one 1-D uint8 "
                                f"parameter named {PARAM!r}")
        return [entry]

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        write_layout(self.layout(manifest), reader, out)

    def tensors(self, fmt: dict[str, Any], params: dict[str, Any]) -> dict:
        return {}  # bytes, not weights: load_state_dict finds no tensors here
