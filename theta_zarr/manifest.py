"""The manifest: what git stores in place of a checkpoint (DESIGN.md section 3).

A manifest holds content only (shapes, dtypes, chunk shapes, digests and what
the format plug-in needs to rebuild the file), so the same checkpoint gives the
same bytes on every machine.  Everything read is validated before use: a name
or digest from a manifest may later become a key or a path.  The JSON Schema
``schema/manifest-v1.json`` states the structure and docs/manifest.md is the
normative text; rules no schema can express (chunk counts, contiguous chunk
shapes, inline lengths) are checked after it.

Reading has two lanes.  The fast one decodes and type-checks in one pass with
msgspec (typed JSON decoding in C): the types below say what the schema says,
field by field, and a test compares both on a corpus of broken manifests.
Whatever the fast lane refuses goes to the slow one (``json`` + jsonschema +
hand-written checks), which decides and words the error, so messages name the
rule and the JSON path.  Why msgspec: a 100,000-parameter manifest must parse and
validate in under 0.5 s, and jsonschema alone costs about 0.1 s to import and
compile in every process that reads a manifest.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import json
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec

from . import chunking
from .dtypes import BY_NAME

VERSION = 1
MAGIC = b'{"theta_zarr":'
#: The schema's regular expressions, as the schema spells them (tests/test_schema.py checks
#: they are the same text); ``(?![\s\S])`` ends the text where ``$`` would allow a newline.
DIGEST_PATTERN = r"^blake3:[0-9a-f]{64}(?![\s\S])"
NAME_PATTERN = (r"^(?![\s\S]*(?:[\u0000-\u001f\u007f\\]|(?:^|/)\.{0,2}(?:/|(?![\s\S]))"
                r"|(?:^|/)zarr\.json(?![\s\S])))")
FORMAT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}(?![\s\S])"
DIGEST_RE = re.compile(r"blake3:[0-9a-f]{64}")
_FORMAT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_NAME_LEN = 4096
#: control characters, backslash, and lone surrogates (no UTF-8 text holds them: they would
#: fail as Zarr keys, file names and output; the schema's pattern cannot say so portably,
#: since an ECMA regex sees an emoji as two surrogates)
_BAD_NAME_CHAR = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")
#: Largest dimension, and largest parameter in bytes, any reader accepts: integers JSON
#: carries exactly (2**53), and far above any real tensor.  Clean refuses what smudge would.
MAX_EXTENT = 2**53 - 1
MAX_PARAM_BYTES = 2**53 - 1
MAX_NDIM = 32
#: JSON nesting deeper than this is refused before parsing (a manifest needs 4 levels).
MAX_JSON_DEPTH = 64
#: No manifest is larger (about 1.5 million parameters of 8 chunks); a blob beyond it is
#: not read into memory to see whether it is one (a checkpoint committed before tracking).
MAX_MANIFEST_BLOB = 256 << 20


class ManifestError(ValueError):
    """A manifest that cannot be used; the message is one line naming the source."""


def looks_like_manifest(head: bytes) -> bool:
    """True if these first bytes of a file are a manifest (a pointer, not a checkpoint)."""
    return head.lstrip(b" \t\r\n").startswith(MAGIC)


#: the first line of a checkpoint's textconv summary (``diff.textconv_lines``)
SUMMARY_RE = re.compile(rb"# theta-zarr [\w.-]+ checkpoint: \d+ parameters, \d+ bytes\n")


def looks_like_summary(head: bytes) -> bool:
    """True for the textconv summary of a checkpoint, which ``git blame FILE`` hands to
    clean as the working-tree file's content (blame.c: textconv, then convert_to_git)."""
    return SUMMARY_RE.match(head) is not None


def looks_like_conflicted_manifest(head: bytes) -> bool:
    """True for a manifest that a text merge wrapped in conflict markers."""
    return head.lstrip().startswith(b"<<<<<<<") and MAGIC in head


def check_chunking(shape: Sequence[int], chunk_shape: Sequence[int], where: str) -> int:
    """The number of chunks of a shape already checked (``check_shape``); ManifestError
    naming ``where`` unless the chunk shape is contiguous for it (chunking.py)."""
    if not chunking.is_contiguous_chunking(shape, chunk_shape):
        raise ManifestError(f"{where}: chunk_shape {list(chunk_shape)} does not fit shape "
                            f"{list(shape)}")
    return chunking.chunk_count(shape, chunk_shape) if shape else 1


def check_shape(shape: Sequence[int], itemsize: int, where: str) -> int:
    """Check a tensor shape against the limits every reader applies; returns its bytes.

    Arithmetic only: nothing is built per element or chunk, so a hostile shape such as
    ``[2**40, 2**40]`` costs nothing (at most ``MAX_NDIM`` axes, extents at most
    ``MAX_EXTENT``, at most ``MAX_PARAM_BYTES`` bytes).  Raises ManifestError naming
    ``where``; ``check_chunking`` then checks a chunk shape for it.
    """
    if len(shape) > MAX_NDIM or any(not 0 <= s <= MAX_EXTENT for s in shape):
        raise ManifestError(f"{where}: shape {list(shape)[:8]} is out of range "
                            f"(at most {MAX_NDIM} axes of at most {MAX_EXTENT})")
    nbytes = math.prod(shape) * itemsize
    if nbytes > MAX_PARAM_BYTES:
        raise ManifestError(f"{where}: shape {list(shape)} holds {nbytes} bytes, more than "
                            f"the {MAX_PARAM_BYTES} a parameter may have")
    return nbytes


def json_depth_ok(data: bytes | bytearray | memoryview, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if the brackets of ``data`` (JSON) nest at most ``limit`` deep.

    A cheap scan before parsing, whose recursion a few kilobytes of ``[[[[`` would
    exhaust; brackets inside strings count too, which only overestimates.  The brackets
    are picked out in C (``bytes.translate``) and their running sum taken by
    ``itertools.accumulate``: about 35 ms for the million brackets of a 17 MiB manifest,
    and no NumPy import (35-70 ms) in the filter git starts for every ``status``.
    """
    brackets = bytes(data).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return True
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets))) <= limit


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: +1 for an opening bracket, -1 for a closing one, by byte value
_BRACKET_STEP = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]


def loads_json(data: bytes | bytearray | memoryview, source: str, what: str = "manifest"
               ) -> Any:
    """Parse JSON from untrusted bytes: one ManifestError line for anything wrong.

    Covers invalid UTF-8, invalid JSON (``NaN`` and ``Infinity`` included), integers
    too long for Python to convert (over 4,300 digits) and nesting deeper than
    ``MAX_JSON_DEPTH`` (refused before parsing).
    """
    if not json_depth_ok(data):
        raise ManifestError(f"{source}: {what} is nested more than {MAX_JSON_DEPTH} levels "
                            "deep (no theta-zarr file or checkpoint index nests so)")
    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=_no_constant,
                          parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise ManifestError(f"{source}: {what} has the key {e.key!r} twice in one object "
                            "(a hand edit or a bad merge?)") from None
    except (ValueError, RecursionError) as e:  # incl. JSONDecodeError, UnicodeDecodeError
        detail = "nested too deeply" if isinstance(e, RecursionError) else _short(str(e))
        raise ManifestError(f"{source}: {what} is not valid JSON ({detail})") from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: ``json`` keeps the last of two equal keys,
    so a hand-edited manifest naming one parameter twice silently lost the other one."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _no_constant(name: str) -> Any:
    """``NaN`` and ``Infinity`` are not JSON (RFC 8259), and no manifest could be written
    back with them."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; ``1e400`` (infinite as a float) is
    refused for the same reason as ``Infinity``."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def check_digest(value: object, where: str = "manifest") -> str:
    """``value`` if it is a digest (``blake3:`` and 64 lowercase hex digits), else
    ManifestError naming ``where``: a digest from a manifest becomes an object's path."""
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise ManifestError(f"{where}: invalid digest {str(value)[:80]!r}")
    return value


def check_name(name: object, where: str = "manifest") -> str:
    """Parameter names: printable Unicode text, no path tricks (they become Zarr keys)."""
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{where}: empty or non-string parameter name")
    if "/" not in name:  # one path part (most names): the checks below, done cheaply
        if len(name) <= MAX_NAME_LEN and name not in (".", "..", "zarr.json") and \
                _BAD_NAME_CHAR.search(name) is None:
            return name
        raise ManifestError(f"{where}: invalid parameter name {name[:80]!r}")
    bad = (
        len(name) > MAX_NAME_LEN
        or _BAD_NAME_CHAR.search(name) is not None
        or name.startswith("/")
        or name.endswith("/")
        or any(part in ("", ".", "..") for part in name.split("/"))
        or name == "zarr.json"
        or name.endswith("/zarr.json")
    )
    if bad:
        raise ManifestError(f"{where}: invalid parameter name {name[:80]!r}")
    return name


class _Absent(tuple):
    """The type of ``NO_CHUNKS``: an empty tuple with an identity of its own."""

    __slots__ = ()


#: ``ParamEntry.chunks`` of an entry made without digests (an inline one).  It equals
#: ``()``, but decoding can tell a missing ``"chunks"`` key (this object) from
#: ``"chunks": []`` (a new empty tuple), which "exactly one of chunks and inline" needs.
NO_CHUNKS = _Absent()

# The schema's leaf types, for msgspec's typed decoding (the fast lane of Manifest.from_bytes)
Extent = Annotated[int, msgspec.Meta(ge=0, le=MAX_EXTENT)]
ChunkExtent = Annotated[int, msgspec.Meta(ge=1, le=MAX_EXTENT)]
Digest = Annotated[str, msgspec.Meta(pattern=DIGEST_PATTERN)]
ParamName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LEN,
                                        pattern=NAME_PATTERN)]
#: padded base64 (RFC 4648) in JSON, decoded by msgspec, which refuses any other spelling
InlineChunk = Annotated[bytes, msgspec.Meta(max_length=chunking.INLINE_MAX_BYTES)]
DTypeName = Literal[tuple(sorted(BY_NAME))]  # type: ignore[valid-type]


class ParamEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One parameter: its geometry and its chunks (digests, or inline bytes).

    ``shape`` and ``chunk_shape`` are extents in elements; ``chunks`` holds one digest
    per chunk in C order over the chunk grid; ``inline`` (None unless the chunks are
    small enough to live in the manifest) holds raw chunk bytes instead.  The field types
    are the schema's, so msgspec can decode and check an entry in one pass.
    """

    shape: Annotated[tuple[Extent, ...], msgspec.Meta(max_length=MAX_NDIM)]
    dtype: DTypeName
    chunk_shape: Annotated[tuple[ChunkExtent, ...], msgspec.Meta(max_length=MAX_NDIM)]
    chunks: tuple[Digest, ...] = NO_CHUNKS
    inline: tuple[InlineChunk, ...] = None  # type: ignore[assignment]  # never JSON null

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
        """(offset, length) in bytes of each chunk in the parameter's raw bytes (C order)."""
        if self.shape == self.chunk_shape and all(self.shape):  # one chunk: most tensors
            return [(0, self.nbytes)]
        return chunking.spans(self.shape, self.itemsize, self.chunk_shape)

    def chunk_nbytes(self, index: int) -> int:
        """Raw bytes chunk ``index`` must hold: dtype size x its part of the chunk shape."""
        return chunking.span_length(self.shape, self.itemsize, self.chunk_shape, index)

    def check_chunk(self, index: int, raw: bytes | memoryview, where: str) -> None:
        """Raise ManifestError unless ``raw`` has the length this entry says chunk
        ``index`` has (a dtype or shape edited without its chunks)."""
        need = self.chunk_nbytes(index)
        if len(raw) != need:
            raise ManifestError(
                f"{where}: chunk {index} holds {len(raw)} bytes but dtype {self.dtype} x "
                f"chunk shape {list(self.chunk_shape)} needs {need} (the manifest's dtype or "
                "shape does not match its chunks)")

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

    def to_json_text(self) -> str:
        """``to_json`` as the manifest writes it: compact, keys sorted, the bytes
        ``json.dumps(to_json(), sort_keys=True, separators=(",", ":"))`` gives, built
        without json (10^5 entries took 1 s through it): strings go through json only
        where they need an escape (``_dump_name``)."""
        chunk_shape, shape = ",".join(map(str, self.chunk_shape)), ",".join(map(str, self.shape))
        dtype = _dump_name(self.dtype)
        if self.inline is not None:  # keys in order: chunk_shape, dtype, inline, shape
            inline = ",".join(f'"{base64.b64encode(b).decode("ascii")}"' for b in self.inline)
            return (f'{{"chunk_shape":[{chunk_shape}],"dtype":{dtype},"inline":[{inline}],'
                    f'"shape":[{shape}]}}')
        chunks = ",".join(map(_dump_name, self.chunks))  # chunk_shape, chunks, dtype, shape
        return f'{{"chunk_shape":[{chunk_shape}],"chunks":[{chunks}],"dtype":{dtype},' \
               f'"shape":[{shape}]}}'

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
        check_shape(shape, BY_NAME[dtype].itemsize, where)
        count = check_chunking(shape, chunk_shape, where)
        if ("chunks" in obj) == ("inline" in obj):
            raise ManifestError(f"{where}: needs exactly one of 'chunks' and 'inline'")
        if "chunks" in obj:
            chunks = obj["chunks"]
            if not isinstance(chunks, list):
                raise ManifestError(f"{where}: chunks is not a list")
            if len(chunks) != count:
                raise ManifestError(f"{where}: {len(chunks)} chunks listed, shape needs {count} "
                                    f"(shape {shape}, chunk_shape {chunk_shape})")
            digests = tuple(check_digest(d, where) for d in chunks)
            return cls(tuple(shape), dtype, tuple(chunk_shape), digests)
        raw_list = obj["inline"]
        if not isinstance(raw_list, list) or len(raw_list) != count:
            raise ManifestError(f"{where}: inline needs {count} chunks")
        entry_spans = chunking.spans(shape, BY_NAME[dtype].itemsize, chunk_shape)
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
        return cls(tuple(shape), dtype, tuple(chunk_shape), inline=tuple(blobs))


def _int_list(value: object, where: str, minimum: int) -> list[int]:
    if not isinstance(value, list) or len(value) > 32 or not all(
            type(v) is int and minimum <= v < 2**53 for v in value):
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

    def chunk_sizes(self) -> dict[str, int]:
        """{chunk digest: raw size in bytes} of every stored (non-inline) chunk: what its
        object must decode to (a reader refuses an object that would decode to more)."""
        out: dict[str, int] = {}
        for entry in self.params.values():
            if entry.chunks:
                out.update((d, n) for d, (_, n) in zip(entry.chunks, entry.spans(),
                                                        strict=True))
        return out

    def itemsizes(self) -> dict[str, int]:
        """{chunk digest: item size in bytes of its parameter's dtype}: what a writer
        choosing a codec by dtype needs (a digest shared by two dtypes gets the wider)."""
        out: dict[str, int] = {}
        for entry in self.params.values():
            n = entry.itemsize
            for d in entry.chunks:
                if out.get(d, 0) < n:
                    out[d] = n
        return out

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
                lines.append(f"  {_dump_name(name)}: {self.params[name].to_json_text()}{sep}")
            lines.append(" }")
        lines.append("}")
        return ("\n".join(lines) + "\n").encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "manifest") -> Manifest:
        """Parse and validate a manifest's bytes (UTF-8 JSON).

        The fast lane (``_decode_typed``) decides a valid manifest; anything it refuses
        goes to ``from_json``, which applies the schema and the semantic rules and raises
        the ManifestError (one line naming ``source``, the rule and the JSON path).
        """
        stripped = data.lstrip()
        if stripped.startswith(b"<<<<<<<") or b"\n<<<<<<< " in data or b"\n>>>>>>> " in data:
            raise ManifestError(f"{source}: has merge conflict markers; resolve the merge first")
        if not looks_like_manifest(data[:64]):
            raise ManifestError(f"{source}: not a theta-zarr manifest")
        if json_depth_ok(data):
            fast = _decode_typed(data)
            if fast is not None:
                return fast
        return cls.from_json(loads_json(data, source), source)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str = "manifest") -> Manifest:
        version = obj.get("theta_zarr") if isinstance(obj, Mapping) else None
        if version != VERSION or isinstance(version, bool):
            # before the schema: a newer manifest's other fields mean nothing to us
            raise ManifestError(
                f"{source}: unsupported manifest version {version!r} (this theta-zarr reads "
                f"version {VERSION}; upgrade theta-zarr)")
        check_schema(obj, source)
        # What follows re-checks what the schema covers and adds what it cannot express:
        # integers spelt 4.0, contiguous chunking, chunk counts, inline lengths.
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
        entries = {check_name(name, source): ParamEntry.from_json(entry, f"{source}: {name[:80]}")
                   for name, entry in params.items()}
        return cls(dict(fmt), entries)


# -- the fast lane: typed decoding ---------------------------------------------------------
# The built-in plug-ins' ``format`` keys as the schema's allOf / if-then types them; keys not
# named here belong to the plug-in and are not checked (the schema does not check them either).

class _SafetensorsHeader(msgspec.Struct, rename={"metadata": "__metadata__"}):
    metadata: dict[str, str] | msgspec.UnsetType = msgspec.UNSET


class _SafetensorsFormat(msgspec.Struct):
    order: list[str] | msgspec.UnsetType = msgspec.UNSET
    header: _SafetensorsHeader | msgspec.UnsetType = msgspec.UNSET
    header_text: str | msgspec.UnsetType = msgspec.UNSET
    raw: dict[str, tuple[str, list[Annotated[int, msgspec.Meta(ge=0)]]]] | \
        msgspec.UnsetType = msgspec.UNSET


class _TorchFormat(msgspec.Struct):
    serialization: Literal["legacy"] | msgspec.UnsetType = msgspec.UNSET


_NpyVersion = tuple[Literal[2, 3], Literal[0]]  # the .npy format version when not 1.0


class _NumpyMember(msgspec.Struct):
    param: str
    fortran_order: bool | msgspec.UnsetType = msgspec.UNSET
    version: _NpyVersion | msgspec.UnsetType = msgspec.UNSET


class _NumpyFormat(msgspec.Struct):
    compressed: bool | msgspec.UnsetType = msgspec.UNSET
    members: list[_NumpyMember] | msgspec.UnsetType = msgspec.UNSET


class _NpyFormat(msgspec.Struct):
    fortran_order: bool | msgspec.UnsetType = msgspec.UNSET
    version: _NpyVersion | msgspec.UnsetType = msgspec.UNSET


_Offsets = list[Annotated[int, msgspec.Meta(ge=0)]]


class _DcpFormat(msgspec.Struct):
    shards: dict[str, list[tuple[_Offsets, _Offsets]]]
    bytes: list[str]
    planner_data: dict[str, list[str | int]] | msgspec.UnsetType = msgspec.UNSET
    version: str | msgspec.UnsetType = msgspec.UNSET


FORMAT_TYPES: dict[str, type] = {"safetensors": _SafetensorsFormat, "torch": _TorchFormat,
                                 "numpy": _NumpyFormat, "npy": _NpyFormat, "dcp": _DcpFormat}


class _TypedManifest(msgspec.Struct, forbid_unknown_fields=True):
    theta_zarr: Literal[1]  # type: ignore[valid-type]
    format: msgspec.Raw
    params: msgspec.Raw


_TypedParams = dict[ParamName, ParamEntry]


@functools.cache
def _decoders() -> tuple[Any, Any]:
    """msgspec's decoders of a manifest and of its params, made on first use, both at
    once: threads decoding their first manifests together (``ls`` of several refs) saw one
    made and the other still None when they were two globals set one after the other."""
    return msgspec.json.Decoder(_TypedManifest), msgspec.json.Decoder(_TypedParams)


@functools.lru_cache(maxsize=4096)
def _geometry(shape: tuple[int, ...], chunk_shape: tuple[int, ...], dtype: str) -> int:
    """The chunk count of a geometry, or -1 if ``check_shape`` / ``check_chunking``
    refuse it (remembered: MoE checkpoints repeat a few geometries 10^4 times)."""
    try:
        check_shape(shape, BY_NAME[dtype].itemsize, "")
        return check_chunking(shape, chunk_shape, "")
    except ManifestError:
        return -1


_TOP_KEYS = (b'"theta_zarr"', b'"format"', b'"params"')
_ENTRY_KEYS = (b'"chunk_shape"', b'"dtype"', b'"shape"')


def _keys_unique(data: bytes, fmt: bytes, params: bytes, count: int) -> bool:
    """True if no key is named twice in one object of ``data``, proved by counting.

    msgspec keeps the last of two equal keys, as ``json`` does; ``loads_json`` refuses
    them, and the two lanes must agree.  ``fmt`` and ``params`` are the text of the
    last ``format`` and ``params`` values.  Without ``\\u`` escapes a key is spelled
    literally, so: each top-level key occurs once outside those two values (a repeated
    key, and the value it brought, would add to the count), and each entry field occurs in
    ``params`` once per parameter.  A count that differs (a parameter or a metadata key
    spelled like one of these words) only sends the manifest down the exact lane.
    The format section is checked by ``loads_json`` itself.
    """
    if b"\\u" in data:
        return False
    if any(data.count(key) - fmt.count(key) - params.count(key) != 1 for key in _TOP_KEYS):
        return False
    return all(params.count(key) == count for key in _ENTRY_KEYS) \
        and params.count(b'"chunks"') + params.count(b'"inline"') == count


def _decode_typed(data: bytes) -> Manifest | None:
    """The manifest in ``data`` if it is valid, decided in one typed pass; None for
    anything else, which ``Manifest.from_json`` then decides and words.

    Never more lenient than the schema plus the semantic rules: msgspec refuses what the
    types above refuse (4.0 for an integer, NaN, unpadded base64, unknown keys), the
    format section goes through ``loads_json`` (which refuses a repeated key), and the
    loop below adds the rules no schema states.  tests/test_schema.py compares it with
    stock jsonschema on a corpus of broken manifests.
    """
    typed_decoder, params_decoder = _decoders()
    try:
        typed = typed_decoder.decode(data)
        params = params_decoder.decode(typed.params)
        fmt_text, params_text = bytes(typed.format), bytes(typed.params)
        if not _keys_unique(data, fmt_text, params_text, len(params)):
            return None
        fmt = loads_json(fmt_text, "manifest")
        name = fmt.get("name") if type(fmt) is dict else None
        if type(name) is not str or not _FORMAT_NAME_RE.fullmatch(name):
            return None
        if name in FORMAT_TYPES:
            msgspec.convert(fmt, FORMAT_TYPES[name])
    except (msgspec.DecodeError, RecursionError, ManifestError):  # ValidationError too
        return None
    for entry in params.values():
        count = _geometry(entry.shape, entry.chunk_shape, entry.dtype)
        if entry.inline is None:
            if entry.chunks is NO_CHUNKS or len(entry.chunks) != count:
                return None
        elif entry.chunks is not NO_CHUNKS or len(entry.inline) != count or any(
                len(blob) != length
                for blob, (_, length) in zip(entry.inline, entry.spans(), strict=True)):
            return None
    return Manifest(fmt, params)


# -- the JSON Schema ------------------------------------------------------------------------
SCHEMA_RESOURCE = "schema/manifest-v1.json"
_validator: Any = None
_validator_lock = threading.Lock()


def schema() -> dict[str, Any]:
    """The manifest v1 JSON Schema (draft 2020-12) shipped with the package."""
    text = resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def _get_validator() -> Any:
    """The schema's stock Draft 2020-12 validator, built once per process on first use
    (jsonschema loads lazily: only a manifest the fast lane refuses needs it)."""
    global _validator
    if _validator is None:
        with _validator_lock:
            if _validator is None:
                import jsonschema

                _validator = jsonschema.Draft202012Validator(schema())
    return _validator


def check_schema(obj: object, source: str = "manifest") -> None:
    """Validate a parsed manifest against the schema; a failure is one ManifestError line
    naming the rule and the JSON path of the shallowest error."""
    validator = _get_validator()
    if validator.is_valid(obj):
        return
    # the shallowest error first (a bad name before its entry); "exactly one of" last
    errors = sorted(validator.iter_errors(obj), key=lambda e: (
        len(e.absolute_path), e.validator in ("minProperties", "maxProperties")))
    raise ManifestError(_describe(errors[0], source))


def json_path(path: Iterable[object]) -> str:
    """``$.params["a.b"].chunks[1]``: names quoted (they hold dots), one line, bounded."""
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}"
        else:
            out += f"[{json.dumps(str(part)[:80])}]"
    return out


def _describe(error: Any, source: str) -> str:
    """The message for one schema error, in the words the hand-written checks always used."""
    path = list(error.absolute_path)
    at = f" (at {json_path(path)})"
    schema_path = list(error.absolute_schema_path)
    kind, value = error.validator, error.instance
    if not path:
        if kind == "additionalProperties":
            extra = sorted(set(value) - {"theta_zarr", "format", "params"})
            return f"{source}: unknown top-level keys {extra}{at}"
        if kind == "required":
            if "format" not in value:
                return f"{source}: 'format' must be an object with a valid 'name'{at}"
            return f"{source}: 'params' must be an object{at}"
    head = path[0] if path else None
    if head == "format":
        if len(path) == 1 or path[1] == "name":
            return f"{source}: 'format' must be an object with a valid 'name'{at}"
        return f"{source}: 'format' is invalid: {_short(error.message)}{at}"
    if head != "params":
        return f"{source}: {_short(error.message)}{at}"
    if len(path) == 1:
        if "propertyNames" in schema_path:
            if not isinstance(value, str) or not value:
                return f"{source}: empty or non-string parameter name{at}"
            return f"{source}: invalid parameter name {value[:80]!r}{at}"
        return f"{source}: 'params' must be an object{at}"
    where = f"{source}: {str(path[1])[:80]}"
    field_ = path[2] if len(path) > 2 else None
    if field_ is None:
        if kind == "type":
            return f"{where}: parameter entry is not an object{at}"
        if kind == "additionalProperties":
            extra = sorted(set(value) - {"shape", "dtype", "chunk_shape", "chunks", "inline"})
            return f"{where}: unknown keys {extra}{at}"
        if kind == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "?"
            if missing in ("shape", "chunk_shape"):
                minimum = 0 if missing == "shape" else 1
                return f"{where}: {missing} must be a list of integers >= {minimum}{at}"
            if missing == "dtype":
                return f"{where}: unknown dtype None{at}"
        return f"{where}: needs exactly one of 'chunks' and 'inline'{at}"
    if field_ in ("shape", "chunk_shape"):
        minimum = 0 if field_ == "shape" else 1
        return f"{where}: {field_} must be a list of integers >= {minimum}{at}"
    if field_ == "dtype":
        return f"{where}: unknown dtype {str(value)[:40]!r}{at}"
    if field_ == "chunks":
        if len(path) == 3:
            return f"{where}: chunks is not a list{at}"
        return f"{where}: invalid digest {str(value)[:80]!r}{at}"
    if field_ == "inline":
        if len(path) == 3:
            return f"{where}: inline is not a list{at}"
        if kind == "maxLength":
            return (f"{where}: inline chunk is longer than {chunking.INLINE_MAX_BYTES} "
                    f"bytes{at}")
        return f"{where}: inline chunk is not base64{at}"
    return f"{where}: {_short(error.message)}{at}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _dump_name(name: str) -> str:
    """A JSON string as ``_dump`` writes it; without json where nothing needs escaping
    (printable ASCII other than a quote or a backslash)."""
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        return f'"{name}"'
    return _dump(name)


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
