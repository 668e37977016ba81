"""ManifestStore: a manifest read as a Zarr v3 group, chunk by chunk, from an ObjectStore.

Every parameter of a manifest already *is* a chunked Zarr v3 array (DESIGN.md
section 3): its chunks are exactly what zarr's ``bytes`` codec (little-endian)
produces.  This store serves the metadata documents zarr expects, computed from
the manifest, and maps each chunk key to its digest (or inline bytes), so stock
zarr code, xarray or dask can read a checkpoint lazily, reading only the chunks
a selection touches (invariant 5) and only verified bytes (invariant 4: a
missing or corrupt object is an error naming the digest, never zeros).

Two differences from a plain Zarr store are bridged here:

* theta-zarr stores the last chunk along the split axis *short* (only the bytes
  that exist, so chunks tile the tensor's bytes), while zarr's regular grid wants
  every chunk at the full chunk shape; short chunks are padded with zeros (the
  fill value) when served.
* "/" in a parameter name means nested groups in Zarr; intermediate groups have
  no entry in a manifest, so they are served as implicit (empty) groups.

The store is read-only: a manifest is immutable content named by its digests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import zarr
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.common import concurrent_map
from zarr.core.config import config as zarr_config

from . import chunking, zarrdtypes
from .dtypes import BY_NAME
from .manifest import Manifest, ManifestError, ParamEntry
from .objects import ObjectError, ObjectStore

zarrdtypes.register()

__all__ = ["ManifestStore", "open_group"]

_META = "zarr.json"
_INDEX_RE = re.compile(r"0|[1-9][0-9]*")


class ManifestStore(Store):
    """A read-only Zarr v3 store over one manifest and the ObjectStore holding its chunks.

    ``reads`` counts the objects fetched (inline chunks cost none), so callers and
    tests can check that a selection read only the chunks it covers.
    """

    supports_writes: bool = False
    supports_deletes: bool = False
    supports_listing: bool = True

    def __init__(self, manifest: Manifest, objects: ObjectStore) -> None:
        super().__init__(read_only=True)
        self._is_open = True  # nothing to open: the manifest is in memory
        self._manifest = manifest
        self._objects = objects
        self._arrays: dict[str, ParamEntry] = dict(manifest.params)
        # arrays a reader gets as the transpose of what is stored (Fortran-ordered .npy):
        # served with their own shape and a transpose codec, chunk coordinates reversed
        self._transposed = _transposed(manifest)
        self._groups, self._children = _hierarchy(self._arrays)
        self._meta: dict[str, bytes] = {}
        self._meta_lock = threading.Lock()
        self._reads = 0
        self._reads_lock = threading.Lock()

    # -- identity ---------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    @property
    def reads(self) -> int:
        """How many objects (digests) this store has fetched so far (thread-safe)."""
        with self._reads_lock:
            return self._reads

    def __eq__(self, value: object) -> bool:
        return (isinstance(value, ManifestStore) and value._manifest == self._manifest
                and value._objects.url == self._objects.url)

    __hash__ = None  # type: ignore[assignment]  # equality is by content, like MemoryStore

    def __str__(self) -> str:
        return (f"theta-zarr://{self._manifest.format_name}"
                f"[{len(self._arrays)} params]@{self._objects.url}")

    def __repr__(self) -> str:
        return f"ManifestStore({str(self)!r})"

    def with_read_only(self, read_only: bool = False) -> ManifestStore:
        """A new view of the same manifest; it can only ever be read-only."""
        if not read_only:
            raise ValueError("a ManifestStore is read-only: a manifest is immutable content")
        return ManifestStore(self._manifest, self._objects)

    # -- capabilities -------------------------------------------------------------------
    @property
    def supports_consolidated_metadata(self) -> bool:
        # Consolidating would write to the store; all metadata is in memory anyway.
        return False

    # -- writes: refused ----------------------------------------------------------------
    def _refuse(self, what: str) -> ValueError:
        return ValueError(f"{what}: a ManifestStore is read-only (a manifest is immutable "
                          f"content; save a new checkpoint and clean it instead)")

    async def set(self, key: str, value: Buffer) -> None:
        raise self._refuse(f"cannot write {key!r}")

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        raise self._refuse(f"cannot write {key!r}")

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        raise self._refuse("cannot write")

    async def delete(self, key: str) -> None:
        raise self._refuse(f"cannot delete {key!r}")

    async def delete_dir(self, prefix: str) -> None:
        raise self._refuse(f"cannot delete {prefix!r}")

    async def clear(self) -> None:
        raise self._refuse("cannot clear")

    # -- key resolution -----------------------------------------------------------------
    def _resolve(self, key: str) -> tuple[str, ParamEntry, int] | bytes | None:
        """What a key names: metadata bytes, (array name, entry, chunk index), or None."""
        if key == _META or key.endswith("/" + _META):
            node = key[: -len(_META)].rstrip("/")
            return self._metadata(node)
        parts = key.split("/")
        for p, part in enumerate(parts):
            if part != "c":
                continue
            name = "/".join(parts[:p])
            entry = self._arrays.get(name)
            if entry is None:
                continue
            coords = parts[p + 1:]
            if name in self._transposed:
                coords = coords[::-1]
            index = _linear_index(entry, coords)
            return None if index is None else (name, entry, index)
        return None

    def _metadata(self, node: str) -> bytes | None:
        if node not in self._arrays and node not in self._groups:
            return None
        with self._meta_lock:
            cached = self._meta.get(node)
        if cached is not None:
            return cached
        doc = (_array_metadata(node, self._arrays[node], node in self._transposed)
               if node in self._arrays
               else _group_metadata(self._manifest if node == "" else None))
        data = json.dumps(doc, indent=2, sort_keys=False, allow_nan=False).encode("utf-8")
        with self._meta_lock:
            self._meta[node] = data
        return data

    def _read_chunk(self, name: str, entry: ParamEntry, index: int) -> bytes | memoryview:
        """The raw chunk padded to the full chunk shape (runs in a worker thread)."""
        if entry.inline is not None:
            raw: bytes | memoryview = entry.inline[index]
        else:
            digest = entry.chunks[index]
            with self._reads_lock:
                self._reads += 1
            try:
                raw = self._objects.get(digest, size=entry.chunk_nbytes(index))
            except ObjectError as e:
                raise type(e)(f"parameter {name!r} chunk {index}: {e}") from None
        try:
            entry.check_chunk(index, raw, f"parameter {name!r}")
        except ManifestError as e:
            raise ObjectError(str(e)) from None
        full = _full_chunk_nbytes(entry)
        if len(raw) == full:
            return raw
        padded = bytearray(full)  # zeros: the fill value of every dtype here
        padded[: len(raw)] = raw
        return padded

    # -- reads --------------------------------------------------------------------------
    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        """The value of a key; chunk objects are fetched in a thread (zarr runs many)."""
        if prototype is None:
            prototype = default_buffer_prototype()
        target = self._resolve(key)
        if target is None:
            return None
        if isinstance(target, bytes):
            data: bytes | bytearray | memoryview = target
        else:
            data = await asyncio.to_thread(self._read_chunk, *target)
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        async def one(key: str, byte_range: ByteRequest | None) -> Buffer | None:
            return await self.get(key, prototype, byte_range)

        return await concurrent_map(list(key_ranges), one,
                                    limit=zarr_config.get("async.concurrency"))

    async def exists(self, key: str) -> bool:
        """Whether the manifest names this key (no object is read)."""
        return self._resolve(key) is not None

    async def getsize(self, key: str) -> int:
        """The size of a value without reading its object (chunks are served padded)."""
        target = self._resolve(key)
        if target is None:
            raise FileNotFoundError(key)
        if isinstance(target, bytes):
            return len(target)
        return _full_chunk_nbytes(target[1])

    # -- listing ------------------------------------------------------------------------
    def _iter_keys(self, prefix: str = "") -> Iterator[str]:
        for group in sorted(self._groups):
            key = _join(group, _META)
            if key.startswith(prefix):
                yield key
        for name in sorted(self._arrays):
            base = name + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                continue
            if (base + _META).startswith(prefix):
                yield base + _META
            for key in _chunk_keys(name, self._arrays[name], name in self._transposed):
                if key.startswith(prefix):
                    yield key

    async def list(self) -> AsyncIterator[str]:
        for key in self._iter_keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._iter_keys(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for name in self._list_dir(prefix.strip("/")):
            yield name

    def _list_dir(self, path: str) -> list[str]:
        if path in self._groups:
            return [_META, *self._children.get(path, ())]
        entry = self._arrays.get(path)
        if entry is not None:
            has_chunks = not entry.shape or math.prod(_grid(entry)) > 0
            return [_META, "c"] if has_chunks else [_META]
        # inside a chunk directory: <array>/c/i/j...
        parts = path.split("/")
        for p, part in enumerate(parts):
            if part != "c":
                continue
            name = "/".join(parts[:p])
            entry = self._arrays.get(name)
            if entry is None:
                continue
            given = parts[p + 1:]
            grid = _grid(entry)[::-1] if name in self._transposed else _grid(entry)
            if len(given) >= len(grid) or not all(
                    _INDEX_RE.fullmatch(t) and int(t) < g
                    for t, g in zip(given, grid[:len(given)], strict=True)):
                return []
            return [str(i) for i in range(grid[len(given)])]
        return []


def open_group(manifest: Manifest, objects: ObjectStore) -> zarr.Group:
    """The manifest as a read-only Zarr group: ``g[name][3:7]`` reads only those chunks."""
    return zarr.open_group(store=ManifestStore(manifest, objects), mode="r")


# -- helpers ----------------------------------------------------------------------------
def _join(group: str, leaf: str) -> str:
    return f"{group}/{leaf}" if group else leaf


def _hierarchy(arrays: dict[str, ParamEntry]) -> tuple[set[str], dict[str, list[str]]]:
    """Groups (the root and every intermediate path) and each group's children.

    Zarr cannot hold a node under an array, so a manifest with both ``a`` and
    ``a/b`` has no Zarr view; that is refused with a message naming both.
    """
    groups = {""}
    children: dict[str, set[str]] = {"": set()}
    for name in arrays:
        parts = name.split("/")
        if _META in parts:
            raise ManifestError(f"parameter {name!r}: 'zarr.json' cannot be part of a Zarr path")
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            children.setdefault(parent, set()).add(parts[depth])
            if depth:
                groups.add(parent)
    for group in groups:
        if group in arrays:
            under = next(n for n in arrays if n.startswith(group + "/"))
            raise ManifestError(f"parameters {group!r} and {under!r} cannot both be Zarr "
                                f"nodes: {group!r} is an array and would need to be a group")
    return groups, {g: sorted(c) for g, c in children.items()}


def _grid(entry: ParamEntry) -> tuple[int, ...]:
    return chunking.grid_shape(entry.shape, entry.chunk_shape)


def _zarr_chunk_shape(entry: ParamEntry) -> list[int]:
    # An axis of extent 0 may get chunk extent 0; zarr needs >= 1 (no chunk exists anyway).
    return [max(1, int(c)) for c in entry.chunk_shape]


def _full_chunk_nbytes(entry: ParamEntry) -> int:
    return math.prod(_zarr_chunk_shape(entry)) * entry.itemsize


def _linear_index(entry: ParamEntry, indices: list[str]) -> int | None:
    """The C-order position of chunk (i, j, ...) in the grid, or None if out of it."""
    if not entry.shape:
        return 0 if not indices else None
    grid = _grid(entry)
    if len(indices) != len(grid):
        return None
    index = 0
    for text, extent in zip(indices, grid[:len(indices)], strict=True):
        if not _INDEX_RE.fullmatch(text):
            return None
        i = int(text)
        if i >= extent:
            return None
        index = index * extent + i
    return index


def _chunk_keys(name: str, entry: ParamEntry, transposed: bool = False) -> Iterator[str]:
    if not entry.shape:
        yield f"{name}/c"
        return
    grid = _grid(entry)
    total = math.prod(grid)
    for linear in range(total):
        coords = []
        rest = linear
        for extent in reversed(grid):
            rest, i = divmod(rest, extent)
            coords.append(str(i))
        yield f"{name}/c/" + "/".join(coords if transposed else reversed(coords))


def _fill_value(dtype: str) -> Any:
    kind = BY_NAME[dtype].numpy.kind
    if kind == "b":
        return False
    if kind == "c":
        return [0.0, 0.0]
    return 0


def _transposed(manifest: Manifest) -> set[str]:
    """Parameters a reader gets as the transpose of the stored array (their format's
    tensor view has the reversed shape and Fortran strides)."""
    from .formats import tensor_views
    from .formats.base import FormatError

    try:
        views = tensor_views(manifest)
    except (FormatError, ValueError, KeyError):
        return set()
    return {key for key, view in views.items() if key == view.param and
            key in manifest.params and view.is_transpose_of(tuple(manifest.params[key].shape))}


def _array_metadata(name: str, entry: ParamEntry, transposed: bool = False) -> dict[str, Any]:
    bytes_codec: dict[str, Any] = {"name": "bytes"}
    native = BY_NAME[entry.dtype].native
    if entry.itemsize > 1 and native:
        bytes_codec["configuration"] = {"endian": "little"}
    attributes: dict[str, Any] = {"digests": len(entry.chunks), "inline": entry.inline is not None}
    if native:
        data_type: Any = entry.dtype
        fill: Any = _fill_value(entry.dtype)
    else:  # no NumPy type has these semantics: the elements' bytes, their type named
        data_type = {"name": "raw_bytes", "configuration": {"length_bytes": entry.itemsize}}
        fill = base64.b64encode(bytes(entry.itemsize)).decode("ascii")
        attributes["dtype"] = entry.dtype
    shape, chunk_shape, codecs = list(entry.shape), _zarr_chunk_shape(entry), [bytes_codec]
    if transposed:  # stored as the C-ordered transpose (a Fortran-ordered .npy)
        shape, chunk_shape = shape[::-1], chunk_shape[::-1]
        order = list(range(len(shape)))[::-1]
        codecs = [{"name": "transpose", "configuration": {"order": order}}, bytes_codec]
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk_shape}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": codecs,
        # one name per axis, unique to the array: stock tools (xarray) need them, and
        # tensors' axes are unrelated, so no two arrays share a dimension
        "dimension_names": [f"{name}.dim_{i}" for i in range(len(entry.shape))],
        "attributes": {"theta_zarr": attributes},
    }


def _group_metadata(manifest: Manifest | None) -> dict[str, Any]:
    attributes = {} if manifest is None else {
        "theta_zarr": {"format": manifest.format_name, "params": len(manifest.params)}}
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def _slice(data: bytes | bytearray | memoryview, byte_range: ByteRequest | None
           ) -> bytes | bytearray | memoryview:
    """Apply a zarr byte request; out-of-range requests are clipped, as files clip them."""
    n = len(data)
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        start, end = byte_range.start, byte_range.end
    elif isinstance(byte_range, OffsetByteRequest):
        start, end = byte_range.offset, n
    elif isinstance(byte_range, SuffixByteRequest):
        start, end = max(0, n - byte_range.suffix), n
    else:
        raise TypeError(f"unexpected byte range {byte_range!r}")
    if start < 0 or end < start:
        raise ValueError(f"invalid byte range {byte_range!r}")
    return memoryview(data)[min(start, n):min(end, n)]
