"""Helpers shared by the merge tests: a real cache that counts reads, manifests of arrays."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from theta_zarr.cache import Cache
from theta_zarr.chunkreader import ChunkReader
from theta_zarr.chunkwriter import ChunkWriter
from theta_zarr.dtypes import by_name, from_numpy
from theta_zarr.manifest import Manifest
from theta_zarr.remote import ReadThrough

BF16 = np.dtype(ml_dtypes.bfloat16)


class CountingCache(Cache):
    """A real cache that counts the chunks read from it."""

    def __init__(self, root: str):
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, digest: str):
        self.reads.append(digest)
        return super().get(digest)


def make_store(tmp_path) -> ReadThrough:
    """A ReadThrough over a CountingCache in ``tmp_path`` (no remote)."""
    return ReadThrough(CountingCache(str(tmp_path / "cache")), None)


def manifest(store, tensors: dict[str, np.ndarray], chunk_bytes: int = 1024,
             fmt: dict | None = None) -> Manifest:
    """The manifest of ``tensors``, chunks written to ``store``'s cache."""
    with ChunkWriter(store.cache, chunk_bytes) as w:
        for name, arr in tensors.items():
            arr = np.ascontiguousarray(arr)
            raw = memoryview(arr.view(np.uint8).reshape(-1))
            w.add_buffer(name, from_numpy(arr.dtype), arr.shape, raw)
        params = w.finish()
    return Manifest(fmt or {"name": "safetensors", "order": list(tensors)}, params)


def read(store, m: Manifest, name: str) -> np.ndarray:
    """Parameter ``name`` of ``m`` as an array, read from the cache."""
    e = m.params[name]
    out = bytearray(e.nbytes)
    ChunkReader(store.cache).read_into(e, memoryview(out))
    return np.frombuffer(bytes(out), dtype=by_name(e.dtype).numpy).reshape(e.shape)


def rng_arr(seed: int, shape, dtype=np.float32) -> np.ndarray:
    """Standard normal numbers (drawn in float32) in ``dtype``."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).astype(dtype)
