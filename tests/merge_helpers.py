"""Helpers shared by the merge tests: a real cache that counts reads, manifests of arrays."""

from __future__ import annotations

import blake3
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


# -- numpy references of the model-merging methods (whole tensors, float32) ------------
def f32(*xs):
    return [x.astype(np.float32) for x in xs]


def topk_mask(tau: np.ndarray, density: float) -> np.ndarray:
    """TIES's trim: the top int(density * n) magnitudes (ties at the threshold kept)."""
    if density >= 1:
        return np.ones(tau.shape, bool)
    k = int(density * tau.size)
    if k == 0:
        return np.zeros(tau.shape, bool)
    thr = np.sort(np.abs(tau).ravel())[::-1][k - 1]
    return np.abs(tau) >= thr


def ties_ref(base, tunes, weights, density, lam=1.0, normalize=True, masks=None, taus=None):
    """TIES (or, given sparsified ``taus``, any sign-consensus merge) in float32."""
    b, *ms = f32(base, *tunes)
    ws = [np.float32(w) for w in weights]
    if taus is None:
        taus = [m - b for m in ms]
    if masks is None:
        masks = [topk_mask(t, density) for t in taus]
    tvs = [w * (t * mk.astype(np.float32)) for w, t, mk in zip(ws, taus, masks, strict=True)]
    total = tvs[0]
    for tv in tvs[1:]:
        total = total + tv
    sign = np.where(total >= 0, np.float32(1), np.float32(-1))
    agree = [(np.sign(tv) == sign).astype(np.float32) for tv in tvs]
    mixed = sum((tv * a for tv, a in zip(tvs, agree, strict=True)), np.zeros_like(b))
    div = sum((w * a for w, a in zip(ws, agree, strict=True)), np.zeros_like(b))
    div[div == 0] = 1
    if normalize:
        mixed = mixed / div
    return b + mixed * np.float32(lam)


def dare_mask(base_key, model_key, n, density):
    """The documented DARE mask: blake3(seed) read as little-endian uint32 < density*2**32."""
    seed = b"theta-zarr dare 1\0" + base_key.encode() + b"\0" + model_key.encode()
    u = np.frombuffer(blake3.blake3(seed).digest(length=4 * n), "<u4")
    return u < np.uint32(int(density * 2**32))
