"""safetensors: streamed in from git's pipe, rebuilt byte-identically.

File layout: 8-byte little-endian header length N, N bytes of JSON header
(``{"__metadata__": {...}, name: {dtype, shape, data_offsets}}``, padded with
spaces), then the tensors' bytes back to back.  The manifest keeps the
metadata and the tensor order; the header text itself is kept only when the
canonical header rebuilt from those would differ from the original.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

from ..chunkreader import ChunkReader
from ..chunkwriter import ChunkWriter
from ..dtypes import SAFETENSORS_SUBBYTE, DTypeError, by_name, from_safetensors
from ..manifest import MAX_JSON_DEPTH, Manifest, ManifestError, ParamEntry, json_depth_ok
from .base import Format, FormatError, Source, flatten_json, write_layout

MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFormat(Format):
    """A safetensors file (the huggingface/safetensors format spec), streamed in and
    rebuilt byte-identically (module doc).

    Claims files whose 8-byte little-endian header length is 2 to ``MAX_HEADER`` bytes
    (100 MiB) and whose header starts with ``{``.  Clean raises FormatError for a header
    that is too large, too deeply nested, not a JSON object, whose ``__metadata__`` does
    not map strings to strings, or whose entries name an unknown dtype or do not tile the
    data (holes, overlaps, wrong sizes, trailing bytes).  Sub-byte types (``F4``,
    ``F6_*``) are stored as their bytes and recorded in ``format.raw``.
    """

    name = "safetensors"
    extensions = (".safetensors",)

    def sniff(self, head: bytes) -> bool:
        if len(head) < 10:
            return False
        (n,) = struct.unpack_from("<Q", head, 0)
        return 2 <= n <= MAX_HEADER and head[8:9] == b"{"

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        header_bytes, header, metadata = read_header(source)
        raw: dict[str, list] = {}
        tensors = stream_tensors(source, writer, header, raw)
        order = [t[2] for t in tensors]
        fmt: dict[str, Any] = {"name": self.name, "order": order}
        if metadata is not None:
            fmt["header"] = {"__metadata__": metadata}
        if raw:
            fmt["raw"] = raw
        # Keep the original header only if the canonical one would differ.
        canonical = _canonical_header(fmt, {t[2]: (t[3].name, t[4]) for t in tensors})
        if canonical != header_bytes:
            fmt["header_text"] = header_bytes.decode("utf-8")
        return fmt

    def layout(self, manifest: Manifest) -> list[bytes | ParamEntry]:
        """8-byte header length and header, then every tensor's bytes in data order."""
        fmt = manifest.format
        order = _order(manifest)
        params = manifest.params
        header = _canonical_header({**fmt, "order": order},
                                   {n: (params[n].dtype, params[n].shape) for n in order})
        kept = fmt.get("header_text")
        if isinstance(kept, str) and _same_tensors(kept, json.loads(header)):
            header = kept.encode("utf-8")
        return [struct.pack("<Q", len(header)) + header, *(manifest.params[n] for n in order)]

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        write_layout(self.layout(manifest), reader, out)

    def select(self, fmt: dict[str, Any], names: list[str]) -> dict[str, Any]:
        keep = set(names)
        out = {k: v for k, v in fmt.items() if k != "header_text"}
        out["order"] = [n for n in fmt.get("order", sorted(keep)) if n in keep]
        if isinstance(fmt.get("raw"), dict):
            out["raw"] = {n: v for n, v in fmt["raw"].items() if n in keep}
        return out

    def describe(self, fmt: dict[str, Any]) -> dict[str, Any]:
        """``__metadata__.KEY`` per metadata entry, and ``header_text`` when the original
        header text is kept (it differs from the canonical one); the tensor order follows
        the tensors and is left out."""
        meta = (fmt.get("header") or {}).get("__metadata__")
        out: dict[str, Any] = {} if meta is None else \
            flatten_json({"__metadata__": meta}) if meta else {"__metadata__": {}}
        out.update(flatten_json({k: v for k, v in fmt.items()
                                 if k not in ("name", "order", "header")}))
        return out


def read_header(source: Source) -> tuple[bytes, dict[str, Any], dict[str, str] | None]:
    """(header bytes, tensor entries, ``__metadata__``) of a safetensors stream, checked."""
    (n,) = struct.unpack("<Q", source.read_exact(8, "safetensors header length"))
    if n > MAX_HEADER:
        raise FormatError(f"{source.name}: safetensors header of {n} bytes is too large")
    header_bytes = source.read_exact(n, "safetensors header")
    if not json_depth_ok(header_bytes):
        raise FormatError(f"{source.name}: safetensors header is nested more than "
                          f"{MAX_JSON_DEPTH} levels deep")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{source.name}: safetensors header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{source.name}: safetensors header is not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise FormatError(f"{source.name}: __metadata__ must map strings to strings")
    return header_bytes, header, metadata


def stream_tensors(source: Source, writer: ChunkWriter, header: dict[str, Any],
                   raw: dict[str, list] | None = None
                   ) -> list[tuple[int, int, str, Any, list[int]]]:
    """Feed every tensor of the stream to ``writer`` in data order; (begin, end, name,
    dtype, shape) of each.  Holes, overlaps and trailing data are errors.

    A tensor of a sub-byte element type (``F4``, ``F6_*``: shapes count elements, not
    bytes) is fed as its bytes (``uint8``, 1-D) and recorded in ``raw`` as
    ``[code, shape]``; without ``raw`` such a tensor is an error.
    """
    tensors = []
    for name, info in header.items():
        try:
            code = info["dtype"]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
            if code in SAFETENSORS_SUBBYTE and raw is not None:
                bits = SAFETENSORS_SUBBYTE[code] * math.prod(shape)
                if bits % 8:
                    raise FormatError(f"{source.name}: tensor {name!r} of {code} does not "
                                      "end on a byte boundary")
                raw[name] = [code, shape]
                dtype, shape = from_safetensors("U8"), [bits // 8]
            else:
                dtype = from_safetensors(code)
        except DTypeError as e:
            raise FormatError(f"{source.name}: tensor {name!r}: {e}") from None
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{source.name}: bad header entry for {name!r}") from None
        tensors.append((begin, end, name, dtype, shape))
    tensors.sort(key=lambda t: (t[0], t[1]))
    pos = 0
    for begin, end, name, dtype, shape in tensors:
        need = dtype.itemsize * math.prod(shape)
        if begin != pos or end - begin != need or min(shape, default=0) < 0:
            raise FormatError(
                f"{source.name}: tensor {name!r} has offsets [{begin}, {end}] that do not "
                "tile the data (holes, overlaps or a wrong size)")
        pos = end
    try:
        writer.add_streams([(t[2], t[3], tuple(t[4])) for t in tensors], source.readinto)
    except ManifestError as e:
        raise FormatError(str(e)) from None
    if not source.at_end():
        raise FormatError(f"{source.name}: data continues past the last tensor")
    return tensors


def _order(manifest: Manifest) -> list[str]:
    order = manifest.format.get("order")
    # the same names once each (equal counts and sets): two sorts of 10^5 names cost 0.1 s
    if not isinstance(order, list) or len(order) != len(manifest.params) or \
            not all(isinstance(n, str) for n in order) or set(order) != manifest.params.keys():
        # A manifest made by a merge or by hand: tensors in name order.
        return sorted(manifest.params)
    return order


def _canonical_header(fmt: dict[str, Any],
                      geometry: dict[str, tuple[str, Sequence[int]]]) -> bytes:
    """The header the safetensors library writes: metadata, then tensors in data order,
    as the bytes written (compact JSON as ``json.dumps`` writes it, space-padded to a
    multiple of 8 bytes); ``geometry`` maps each tensor to its dtype name and shape.
    Raises ManifestError (a bad ``raw`` entry) and FormatError (a dtype safetensors
    cannot hold).

    Written without ``json.dumps`` per tensor, and each (dtype, shape) worked out once:
    10^5 tensors took 0.3 s with ``json.dumps``, and 0.9 s as objects and text both.
    """
    parts: list[str] = []
    meta = (fmt.get("header") or {}).get("__metadata__")
    if meta is not None:
        parts.append('"__metadata__":' + json.dumps(dict(sorted(meta.items())),
                                                    separators=(",", ":"), ensure_ascii=False))
    raw = fmt.get("raw") if isinstance(fmt.get("raw"), dict) else {}
    # (dtype name, shape) -> safetensors code, bytes, the shape as JSON
    known: dict[tuple[str, tuple[int, ...]], tuple[str | None, int, str]] = {}
    pos = 0
    for name in fmt["order"]:
        dtype_name, shape = geometry[name]
        geo = (dtype_name, tuple(shape))
        entry = known.get(geo)
        if entry is None:
            dtype = by_name(dtype_name)
            entry = known[geo] = (dtype.safetensors, dtype.itemsize * math.prod(shape),
                                  ",".join(map(str, shape)))
        code, size, dims = entry
        if name in raw:  # packed sub-byte elements: their own code and element shape
            try:
                code, packed = str(raw[name][0]), [int(s) for s in raw[name][1]]
            except (TypeError, ValueError, IndexError):
                raise ManifestError(f"safetensors format: bad raw entry for {name!r}") from None
            if code not in SAFETENSORS_SUBBYTE or \
                    SAFETENSORS_SUBBYTE[code] * math.prod(packed) != 8 * size:
                raise ManifestError(f"safetensors format: raw entry for {name!r} does not "
                                    "match its bytes")
            dims = ",".join(map(str, packed))
        if code is None:
            raise FormatError(f"dtype {dtype_name} of {name!r} cannot be written to safetensors")
        key = f'"{name}"' if _PLAIN.fullmatch(name) else json.dumps(name, ensure_ascii=False)
        parts.append(f'{key}:{{"dtype":"{code}","shape":[{dims}],'
                     f'"data_offsets":[{pos},{pos + size}]}}')
        pos += size
    text = ("{" + ",".join(parts) + "}").encode("utf-8")
    return text + b" " * (-len(text) % 8)


#: a string JSON writes as it is, between quotes (json.dumps with ensure_ascii=False
#: escapes only the quote, the backslash and control characters)
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')


def _same_tensors(text: str, canonical: dict[str, Any]) -> bool:
    """True if a kept header describes exactly the canonical header's tensors and metadata.

    Only then is the kept text written back (it may differ in key order, spacing,
    padding, a null or empty ``__metadata__``, or keys the safetensors library
    ignores): a manifest edited by a merge falls back to the canonical header.
    """
    try:
        kept = json.loads(text)
    except json.JSONDecodeError:
        return False
    if not isinstance(kept, dict):
        return False
    if (kept.get("__metadata__") or None) != (canonical.get("__metadata__") or None):
        return False
    names = {k for k in kept if k != "__metadata__"}
    if names != {k for k in canonical if k != "__metadata__"}:
        return False
    for name in names:
        info, want = kept[name], canonical[name]
        if not isinstance(info, dict) or any(info.get(k) != want[k] for k in want):
            return False
    return True
