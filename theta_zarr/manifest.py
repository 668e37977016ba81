"""The manifest: what git stores in place of a checkpoint (DESIGN.md section 3).

A manifest holds content only (shapes, dtypes, chunk shapes, digests and what
the format plug-in needs to rebuild the file), so the same checkpoint gives the
same bytes on every machine.  Everything read is validated before use: a name
or digest from a manifest may later become a key or a path.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import chunking
from .dtypes import BY_NAME

VERSION = 1
MAGIC = b'{"theta_zarr":'
DIGEST_RE = re.compile(r"blake3:[0-9a-f]{64}")
_FORMAT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_NAME_LEN = 4096


class ManifestError(ValueError):
    """A manifest that cannot be used; the message is one line naming the source."""


def looks_like_manifest(head: bytes) -> bool:
    """True if these first bytes of a file are a manifest (a pointer, not a checkpoint)."""
    return head.lstrip(b" \t\r\n").startswith(MAGIC)


def looks_like_conflicted_manifest(head: bytes) -> bool:
    """True for a manifest that a text merge wrapped in conflict markers."""
    return head.lstrip().startswith(b"<<<<<<<") and MAGIC in head


def check_digest(value: object, where: str = "manifest") -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise ManifestError(f"{where}: invalid digest {str(value)[:80]!r}")
    return value


def check_name(name: object, where: str = "manifest") -> str:
    """Parameter names: printable, no path tricks (they become Zarr keys)."""
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: empty or non-string parameter name")
    bad = (
        len(name) > MAX_NAME_LEN
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
        or "\\" in name
        or name.startswith("/")
        or name.endswith("/")
        or any(part in ("", ".", "..") for part in name.split("/"))
        or name == "zarr.json"
        or name.endswith("/zarr.json")
    )
    if bad:
        raise ManifestError(f"{where}: invalid parameter name {name[:80]!r}")
    return name


@dataclass(frozen=True)
class ParamEntry:
    """One parameter: its geometry and its chunks (digests, or inline bytes)."""

    shape: tuple[int, ...]
    dtype: str
    chunk_shape: tuple[int, ...]
    chunks: tuple[str, ...] = ()
    inline: tuple[bytes, ...] | None = None

    @property
    def itemsize(self) -> int:
        return BY_NAME[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    @property
    def nchunks(self) -> int:
        return chunking.chunk_count(self.shape, self.chunk_shape) if self.shape else 1

    def spans(self) -> list[tuple[int, int]]:
        return chunking.spans(self.shape, self.itemsize, self.chunk_shape)

    @property
    def is_inline(self) -> bool:
        return self.inline is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunk_shape": list(self.chunk_shape),
        }
        if self.inline is not None:
            out["inline"] = [base64.b64encode(b).decode("ascii") for b in self.inline]
        else:
            out["chunks"] = list(self.chunks)
        return out

    @classmethod
    def from_json(cls, obj: object, where: str) -> ParamEntry:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: parameter entry is not an object")
        allowed = {"shape", "dtype", "chunk_shape", "chunks", "inline"}
        extra = set(obj) - allowed
        if extra:
            raise ManifestError(f"{where}: unknown keys {sorted(extra)}")
        shape = _int_list(obj.get("shape"), f"{where}: shape", minimum=0)
        chunk_shape = _int_list(obj.get("chunk_shape"), f"{where}: chunk_shape", minimum=1)
        dtype = obj.get("dtype")
        if dtype not in BY_NAME:
            raise ManifestError(f"{where}: unknown dtype {str(dtype)[:40]!r}")
        if not chunking.is_contiguous_chunking(shape, chunk_shape):
            raise ManifestError(f"{where}: chunk_shape {chunk_shape} does not fit shape {shape}")
        entry_spans = chunking.spans(shape, BY_NAME[dtype].itemsize, chunk_shape)
        if ("chunks" in obj) == ("inline" in obj):
            raise ManifestError(f"{where}: needs exactly one of 'chunks' and 'inline'")
        if "chunks" in obj:
            chunks = obj["chunks"]
            if not isinstance(chunks, list):
                raise ManifestError(f"{where}: chunks is not a list")
            digests = tuple(check_digest(d, where) for d in chunks)
            if len(digests) != len(entry_spans):
                raise ManifestError(
                    f"{where}: {len(digests)} chunks listed, shape needs {len(entry_spans)}")
            return cls(tuple(shape), dtype, tuple(chunk_shape), digests, None)
        raw_list = obj["inline"]
        if not isinstance(raw_list, list) or len(raw_list) != len(entry_spans):
            raise ManifestError(f"{where}: inline needs {len(entry_spans)} chunks")
        blobs = []
        for text, (_, length) in zip(raw_list, entry_spans, strict=True):
            try:
                blob = base64.b64decode(text, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ManifestError(f"{where}: inline chunk is not base64") from None
            if len(blob) != length or length > chunking.INLINE_MAX_BYTES:
                raise ManifestError(
                    f"{where}: inline chunk has {len(blob)} bytes, expected {length}")
            blobs.append(blob)
        return cls(tuple(shape), dtype, tuple(chunk_shape), (), tuple(blobs))


def _int_list(value: object, where: str, minimum: int) -> list[int]:
    if not isinstance(value, list) or len(value) > 32 or not all(
            isinstance(v, int) and not isinstance(v, bool) and minimum <= v < 2**53 for v in value):
        raise ManifestError(f"{where} must be a list of integers >= {minimum}")
    return list(value)


@dataclass
class Manifest:
    """A checkpoint as theta-zarr stores it: format info plus named parameters."""

    format: dict[str, Any]
    params: dict[str, ParamEntry] = field(default_factory=dict)

    @property
    def format_name(self) -> str:
        return str(self.format["name"])

    def digests(self) -> set[str]:
        return {d for entry in self.params.values() for d in entry.chunks}

    def iter_chunks(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, int, str]]:
        """(param, chunk index, digest) for every stored (non-inline) chunk."""
        for name in self.params if names is None else names:
            for i, d in enumerate(self.params[name].chunks):
                yield name, i, d

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.params.values())

    def to_bytes(self) -> bytes:
        """Deterministic bytes: a fixed layout, sorted keys, one parameter a line.

        ``"theta_zarr"`` comes first so a reader can tell a manifest by its first
        bytes; one line per parameter keeps git's own diffs readable.
        """
        lines = [f'{{"theta_zarr": {VERSION},', f' "format": {_dump(self.format)},']
        names = sorted(self.params)
        if not names:
            lines.append(' "params": {}')
        else:
            lines.append(' "params": {')
            for i, name in enumerate(names):
                sep = "," if i < len(names) - 1 else ""
                lines.append(f"  {_dump(name)}: {_dump(self.params[name].to_json())}{sep}")
            lines.append(" }")
        lines.append("}")
        return ("\n".join(lines) + "\n").encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "manifest") -> Manifest:
        stripped = data.lstrip()
        if stripped.startswith(b"<<<<<<<") or b"\n<<<<<<< " in data or b"\n>>>>>>> " in data:
            raise ManifestError(f"{source}: has merge conflict markers; resolve the merge first")
        if not looks_like_manifest(data[:64]):
            raise ManifestError(f"{source}: not a theta-zarr manifest")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{source}: manifest is not valid JSON ({e})") from None
        return cls.from_json(obj, source)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str = "manifest") -> Manifest:
        version = obj.get("theta_zarr") if isinstance(obj, Mapping) else None
        if version != VERSION or isinstance(version, bool):
            raise ManifestError(
                f"{source}: unsupported manifest version {version!r} (this theta-zarr reads "
                f"version {VERSION}; upgrade theta-zarr)")
        extra = set(obj) - {"theta_zarr", "format", "params"}
        if extra:
            raise ManifestError(f"{source}: unknown top-level keys {sorted(extra)}")
        fmt = obj.get("format")
        if not isinstance(fmt, dict) or not isinstance(fmt.get("name"), str) or \
                not _FORMAT_NAME_RE.fullmatch(fmt["name"]):
            raise ManifestError(f"{source}: 'format' must be an object with a valid 'name'")
        params = obj.get("params")
        if not isinstance(params, dict):
            raise ManifestError(f"{source}: 'params' must be an object")
        entries = {}
        for name, entry in params.items():
            check_name(name, source)
            entries[name] = ParamEntry.from_json(entry, f"{source}: {name[:80]}")
        return cls(dict(fmt), entries)


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
