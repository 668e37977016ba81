"""The manifest: what git stores in place of a checkpoint (DESIGN.md section 3).

A manifest holds content only (shapes, dtypes, chunk shapes, digests and what
the format plug-in needs to rebuild the file), so the same checkpoint gives the
same bytes on every machine.  Everything read is validated before use: a name
or digest from a manifest may later become a key or a path.  Validation is in
two steps: the JSON Schema ``schema/manifest-v1.json`` (the structure), then the
rules no schema can express (chunk counts, contiguous chunk shapes, inline
lengths); docs/manifest.md is the normative text.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from . import chunking
from .dtypes import BY_NAME

VERSION = 1
MAGIC = b'{"theta_zarr":'
DIGEST_RE = re.compile(r"blake3:[0-9a-f]{64}")
_FORMAT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_NAME_LEN = 4096
_BAD_NAME_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")
#: Largest dimension, and largest parameter in bytes, any reader accepts: integers JSON
#: carries exactly (2**53), and far above any real tensor.  Clean refuses what smudge would.
MAX_EXTENT = 2**53 - 1
MAX_PARAM_BYTES = 2**53 - 1
MAX_NDIM = 32
#: JSON nesting deeper than this is refused before parsing (a manifest needs 4 levels).
MAX_JSON_DEPTH = 64


class ManifestError(ValueError):
    """A manifest that cannot be used; the message is one line naming the source."""


def looks_like_manifest(head: bytes) -> bool:
    """True if these first bytes of a file are a manifest (a pointer, not a checkpoint)."""
    return head.lstrip(b" \t\r\n").startswith(MAGIC)


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


def json_depth_ok(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if the brackets of ``data`` (JSON) nest at most ``limit`` deep.

    A cheap scan before ``json.loads``, whose recursion a few kilobytes of ``[[[[``
    would exhaust; brackets inside strings count too, which only overestimates.
    """
    depth = 0
    for m in _BRACKETS.finditer(data):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


_BRACKETS = re.compile(rb"[\[\]{}]")


def loads_json(data: bytes, source: str, what: str = "manifest") -> Any:
    """Parse JSON from untrusted bytes: one ManifestError line for anything wrong.

    Covers invalid UTF-8, invalid JSON and nesting deeper than ``MAX_JSON_DEPTH``
    (refused before parsing).
    """
    if not json_depth_ok(data):
        raise ManifestError(f"{source}: {what} is nested more than {MAX_JSON_DEPTH} levels "
                            "deep (not a theta-zarr file)")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise ManifestError(f"{source}: {what} is not valid JSON ({detail})") from None


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
        if not _contiguous(tuple(shape), tuple(chunk_shape)):
            raise ManifestError(f"{where}: chunk_shape {chunk_shape} does not fit shape {shape}")
        count = _chunk_count(tuple(shape), tuple(chunk_shape))
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
            return cls(tuple(shape), dtype, tuple(chunk_shape), digests, None)
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
        return cls(tuple(shape), dtype, tuple(chunk_shape), (), tuple(blobs))


# A large checkpoint repeats a few geometries many times (every expert of every layer):
# the per-geometry checks are remembered.
@functools.lru_cache(maxsize=4096)
def _contiguous(shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> bool:
    return chunking.is_contiguous_chunking(shape, chunk_shape)


@functools.lru_cache(maxsize=4096)
def _chunk_count(shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> int:
    return chunking.chunk_count(shape, chunk_shape) if shape else 1


def _fast_entry(obj: Any) -> ParamEntry | None:
    """The entry of a schema-valid ``obj`` with digests, if every semantic check passes;
    None sends it to ``ParamEntry.from_json``, which decides and words the error."""
    chunks = obj.get("chunks")
    if type(chunks) is not list or len(obj) != 4:
        return None
    shape, chunk_shape = tuple(obj["shape"]), tuple(obj["chunk_shape"])
    for v in shape + chunk_shape:
        if type(v) is not int:  # the schema takes 4.0 for an integer; a manifest may not
            return None
    if not _contiguous(shape, chunk_shape) or len(chunks) != _chunk_count(shape, chunk_shape):
        return None
    if math.prod(shape) * BY_NAME[obj["dtype"]].itemsize > MAX_PARAM_BYTES:
        return None  # from_json words the error
    return ParamEntry(shape, obj["dtype"], chunk_shape, tuple(chunks), None)


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
        # What follows re-checks cheaply what the schema covers and adds what it cannot
        # express: integers spelt 4.0, contiguous chunking, chunk counts, inline lengths.
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
            # the schema checked names, types, digests; what is left is per geometry
            fast = _fast_entry(entry)
            if fast is None:
                check_name(name, source)
                fast = ParamEntry.from_json(entry, f"{source}: {name[:80]}")
            entries[name] = fast
        return cls(dict(fmt), entries)


# -- the JSON Schema ------------------------------------------------------------------------
SCHEMA_RESOURCE = "schema/manifest-v1.json"
_validator: Any = None
_validator_lock = threading.Lock()


def schema() -> dict[str, Any]:
    """The manifest v1 JSON Schema (draft 2020-12) shipped with the package."""
    text = resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def _get_validator() -> Any:
    """The compiled validator, built once per process on first use (jsonschema loads lazily)."""
    global _validator
    if _validator is None:
        with _validator_lock:
            if _validator is None:
                _validator = _compile(schema())
    return _validator


def _compile(doc: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator for ``doc``, with fast paths for the simple subschemas.

    jsonschema descends into a subschema per array item and per property (several
    microseconds each), which for a large checkpoint's thousands of digests is too
    slow for a filter.  Here a subschema that uses only type / enum / pattern / length
    / bound keywords is checked by one compiled Python predicate; whatever the
    predicate does not accept goes to jsonschema's own keyword, which decides and
    words the error.  A predicate is never more lenient than the schema
    (tests/test_schema.py compares the two), so the result is the schema's.
    """
    import jsonschema

    base = jsonschema.Draft202012Validator
    flat = _inline_refs(doc, doc.get("$defs", {}))
    orig = base.VALIDATORS
    checks: dict[int, Any] = {}

    def simple(sub: Any) -> Any:
        key = id(sub)
        if key not in checks:
            checks[key] = _predicate(sub)
        return checks[key]

    def items(validator, sub, instance, schema_):
        check = simple(sub)
        if not (check and isinstance(instance, list) and all(map(check, instance))):
            yield from orig["items"](validator, sub, instance, schema_)

    def property_names(validator, sub, instance, schema_):
        check = simple(sub)
        if not (check and isinstance(instance, dict) and all(map(check, instance))):
            yield from orig["propertyNames"](validator, sub, instance, schema_)

    def properties(validator, props, instance, schema_):
        if not isinstance(instance, dict):
            return
        slow = {}
        for name, sub in props.items():
            if name in instance:
                check = simple(sub)
                if not (check and check(instance[name])):
                    slow[name] = sub
        if slow:
            yield from orig["properties"](validator, slow, instance, schema_)

    fast = jsonschema.validators.extend(base, {"items": items, "properties": properties,
                                               "propertyNames": property_names})
    # the validator holds ``flat``, so the ids ``checks`` is keyed by stay valid
    return fast(flat)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with its local ``#/$defs/...`` references replaced by their targets.

    In draft 2020-12 a ``$ref`` beside other keywords applies both, as ``allOf`` does.
    """
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/") or ref.count("/") != 2:
            raise ValueError(f"manifest schema: unsupported $ref {ref!r}")
        target = _inline_refs(defs[ref.rsplit("/", 1)[1]], defs)
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {"allOf": [target, _inline_refs(rest, defs)]} if rest else target
    return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}


_SIMPLE_KEYS = {"type", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
                "maxItems", "minItems", "items", "description", "title"}


def _predicate(sub: Any) -> Any:
    """A function deciding ``sub`` exactly, or None when ``sub`` is not simple enough."""
    if not isinstance(sub, dict) or not set(sub) <= _SIMPLE_KEYS:
        return None
    kind = sub.get("type")
    if kind == "string":
        if "items" in sub or "enum" in sub and not all(isinstance(e, str) for e in sub["enum"]):
            return None
        pattern = re.compile(sub["pattern"]).search if "pattern" in sub else None
        lo, hi = sub.get("minLength", 0), sub.get("maxLength")
        enum = frozenset(sub["enum"]) if "enum" in sub else None

        def check_str(x: Any) -> bool:
            return (isinstance(x, str) and lo <= len(x) and (hi is None or len(x) <= hi)
                    and (enum is None or x in enum)
                    and (pattern is None or pattern(x) is not None))
        return check_str
    if kind == "integer":
        if set(sub) - {"type", "minimum", "maximum", "description", "title"}:
            return None
        low, high = sub.get("minimum"), sub.get("maximum")

        def check_int(x: Any) -> bool:
            # draft 2020-12: 4.0 is an integer; a bool is not
            if isinstance(x, bool) or not isinstance(x, (int, float)) or (
                    isinstance(x, float) and not x.is_integer()):
                return False
            return (low is None or x >= low) and (high is None or x <= high)
        return check_int
    if kind == "array":
        if set(sub) - {"type", "items", "minItems", "maxItems", "description", "title"}:
            return None
        item = _predicate(sub["items"]) if "items" in sub else (lambda x: True)
        if item is None:
            return None
        lo, hi = sub.get("minItems", 0), sub.get("maxItems")

        def check_list(x: Any) -> bool:
            return (isinstance(x, list) and lo <= len(x) and (hi is None or len(x) <= hi)
                    and all(map(item, x)))
        return check_list
    return None


_params_check: Any = None


def _get_params_check() -> Any:
    """A predicate deciding the schema's ``params`` object in one pass, or None."""
    global _params_check
    if _params_check is None:
        flat = _inline_refs(schema(), schema().get("$defs", {}))
        sub = flat["properties"]["params"]
        entry = _object_predicate(sub.get("additionalProperties"))
        name = _predicate(sub.get("propertyNames"))
        if set(sub) - {"type", "propertyNames", "additionalProperties", "description"} or \
                sub.get("type") != "object" or entry is None or name is None:
            _params_check = False
        else:
            def check(params: Any) -> bool:
                return (isinstance(params, dict) and all(map(name, params))
                        and all(map(entry, params.values())))
            _params_check = check
    return _params_check


def _object_predicate(sub: Any) -> Any:
    """A function deciding an object subschema exactly (required, min/maxProperties, no
    additional properties, simple properties), or None when it uses anything else."""
    if not isinstance(sub, dict) or sub.get("type") != "object" or \
            sub.get("additionalProperties") is not False or set(sub) - {
                "type", "required", "minProperties", "maxProperties", "additionalProperties",
                "properties", "description", "title"}:
        return None
    props = {k: _predicate(v) for k, v in sub.get("properties", {}).items()}
    if any(v is None for v in props.values()):
        return None
    required = tuple(sub.get("required", ()))
    lo, hi = sub.get("minProperties", 0), sub.get("maxProperties")

    def check(x: Any) -> bool:
        if not isinstance(x, dict) or len(x) < lo or (hi is not None and len(x) > hi):
            return False
        for key, value in x.items():
            test = props.get(key)
            if test is None or not test(value):
                return False
        return all(k in x for k in required)
    return check


def check_schema(obj: object, source: str = "manifest") -> None:
    """Validate a parsed manifest against the schema; a failure is one ManifestError line.

    The ``params`` object (the bulk of a large manifest: one entry per parameter) is
    decided by one predicate compiled from the schema's own subschemas; the rest, and
    any manifest that predicate does not accept, goes through jsonschema, which decides
    and words the error.  tests/test_schema.py checks that the two agree.
    """
    validator = _get_validator()
    params_check = _get_params_check()
    if params_check and isinstance(obj, dict) and "params" in obj and \
            params_check(obj["params"]) and validator.is_valid({**obj, "params": {}}):
        return
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


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
