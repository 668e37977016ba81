"""The model-merging strategies against numpy references written from the papers' formulas.

Every reference works on the whole tensors at once (np.sort for magnitude ranks, one
dot product for norms); the strategies stream chunk by chunk (1 KiB chunks here, so
every parameter has several), so agreement also checks the streamed statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import (
    BF16,
    dare_mask,
    f32,
    manifest,
    read,
    rng_arr,
    table,
    ties_ref,
    topk_mask,
)

from theta_zarr.chunking import digest
from theta_zarr.merge import MergeError, merge_manifests, merge_models

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), BF16]
SHAPE = (48, 32)  # 6 KiB in float32: 6 chunks; 3 in 16-bit dtypes


def models(dtype, n=2, seed=0):
    """A base and n fine-tunes of it (small task vectors), in ``dtype``."""
    base = rng_arr(seed, SHAPE, dtype)
    tunes = [(base.astype(np.float32) + 0.1 * rng_arr(seed + 1 + i, SHAPE)).astype(dtype)
             for i in range(n)]
    return base, tunes


def run(store, strategy, base, tunes, **values):
    ms = [manifest(store, {"w": x}) for x in (base, *tunes)]
    labels = ["ours", "theirs"] if len(tunes) == 2 else [f"m{i}" for i in range(len(tunes))]
    merged, _ = merge_models(ms[0], ms[1:], labels, table(strategy, **values), store)
    assert merged is not None
    return read(store, merged, "w")


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(store, dtype):
    base, tunes = models(dtype)
    got = run(store, "linear", base, tunes, weight=(0.3, 0.9))
    o, t = f32(*tunes)
    want = (np.float32(0.3) * o + np.float32(0.9) * t) / (np.float32(0.3) + np.float32(0.9))
    assert got.tobytes() == want.astype(dtype).tobytes()
    got = run(store, "linear", base, tunes, weight=0.5, normalize=0.0)
    assert got.tobytes() == (np.float32(0.5) * o + np.float32(0.5) * t).astype(dtype).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_task_arithmetic_weighs_each_task_vector(store, dtype):
    """mergekit's task_arithmetic: B + lambda * sum(w_i * tau_i); the built-in
    task-arithmetic is the case of unit weights."""
    base, tunes = models(dtype)
    b, o, t = f32(base, *tunes)
    w1, w2, lam = np.float32(0.3), np.float32(0.9), np.float32(1.5)
    got = run(store, "task_arithmetic", base, tunes, weight=(0.3, 0.9), **{"lambda": 1.5})
    want = ((o - b) * w1 + (t - b) * w2) * lam + b
    assert got.tobytes() == want.astype(dtype).tobytes()
    got = run(store, "task_arithmetic", base, tunes, weight=(0.3, 0.9), normalize=1.0)
    want = ((o - b) * w1 + (t - b) * w2) / (w1 + w2) + b
    assert got.tobytes() == want.astype(dtype).tobytes()
    unit = run(store, "task_arithmetic", base, tunes)
    assert np.allclose(f32(unit), f32(run(store, "task-arithmetic", base, tunes)), atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ties(store, dtype):
    base, tunes = models(dtype)
    got = run(store, "ties", base, tunes, density=0.2, weight=(1.0, 0.5), **{"lambda": 1.5})
    want = ties_ref(base, tunes, [1.0, 0.5], 0.2, lam=1.5)
    assert got.tobytes() == want.astype(dtype).tobytes()
    # TIES really trims: with density 0.2 most elements of the result stay at the base
    assert np.mean(got == base) > 0.5


def test_ties_three_models_per_model_density(store):
    base, tunes = models(np.dtype(np.float32), n=3, seed=4)
    got = run(store, "ties", base, tunes, density=(0.1, 0.5, 1.0))
    b = base.astype(np.float32)
    masks = [topk_mask(t - b, d) for t, d in zip(tunes, (0.1, 0.5, 1.0), strict=True)]
    want = ties_ref(base, tunes, [1, 1, 1], None, masks=masks)
    assert got.tobytes() == want.tobytes()


def dare_masks(store, base, tunes, density):
    """The per-chunk masks of each tune, laid out over the whole tensor."""
    mb = manifest(store, {"w": base}).params["w"]
    out = []
    for t in tunes:
        mt = manifest(store, {"w": t}).params["w"]
        per_chunk = t.size // len(mt.chunks)
        out.append(np.concatenate([dare_mask(kb, kt, per_chunk, density) for kb, kt in
                                   zip(mb.chunks, mt.chunks, strict=True)]).reshape(t.shape))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_dare_linear_and_dare_ties(store, dtype):
    base, tunes = models(dtype, seed=7)
    masks = dare_masks(store, base, tunes, 0.3)
    b, o, t = f32(base, *tunes)
    d = np.float32(0.3)
    rescaled = [(m - b) * mk.astype(np.float32) / d for m, mk in zip((o, t), masks, strict=True)]
    got = run(store, "dare", base, tunes, density=0.3)
    want = b + (rescaled[0] + rescaled[1]) * np.float32(1.0)
    assert got.tobytes() == want.astype(dtype).tobytes()
    assert run(store, "dare_linear", base, tunes, density=0.3).tobytes() == got.tobytes()
    # the mask keeps about `density` of the elements
    assert 0.2 < masks[0].mean() < 0.4
    got = run(store, "dare_ties", base, tunes, density=0.3)
    want = ties_ref(base, tunes, [1, 1], 1.0, normalize=False, taus=rescaled)
    assert got.tobytes() == want.astype(dtype).tobytes()


def test_dare_is_seeded_by_digests(store):
    base, tunes = models(np.dtype(np.float32), seed=9)
    a = run(store, "dare", base, tunes, density=0.5)
    b = run(store, "dare", base, tunes, density=0.5)
    assert a.tobytes() == b.tobytes()
    other = run(store, "dare", base, [tunes[0], tunes[1] * np.float32(1.01)], density=0.5)
    changed = (other != a).mean()
    assert changed > 0.4  # another model chunk gives another mask, not a shifted copy


@pytest.mark.parametrize("dtype", DTYPES)
def test_breadcrumbs(store, dtype):
    base, tunes = models(dtype, seed=11)
    got = run(store, "breadcrumbs", base, tunes, density=0.5, gamma=0.1)
    b, *ms = f32(base, *tunes)
    n = b.size
    keep, top = int(0.5 * n), int(0.1 * n)
    out = np.zeros_like(b)
    for m in ms:
        tau = m - b
        srt = np.sort(np.abs(tau).ravel())[::-1]
        mask = (np.abs(tau) >= srt[top + keep - 1]) & (np.abs(tau) < srt[top - 1])
        assert mask.sum() == keep or dtype != np.float32  # 16-bit values tie more often
        out = out + np.float32(1.0) * (tau * mask.astype(np.float32))
    want = b + out * np.float32(1.0)
    assert got.tobytes() == want.astype(dtype).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp(store, dtype):
    base, tunes = models(dtype, seed=13)
    got = run(store, "slerp", base, tunes, t=0.3)
    v0, v1 = (x.astype(np.float64) for x in f32(*tunes))
    n0 = math.sqrt(math.fsum((v0 * v0).ravel()))
    n1 = math.sqrt(math.fsum((v1 * v1).ravel()))
    cos = math.fsum((v0 * v1).ravel()) / (n0 * n1)
    theta = math.acos(cos)
    s0 = math.sin(theta * 0.7) / math.sin(theta)
    s1 = math.sin(theta * 0.3) / math.sin(theta)
    o, t = f32(*tunes)
    want = np.float32(s0) * o + np.float32(s1) * t
    assert got.tobytes() == want.astype(dtype).tobytes()


def test_slerp_falls_back_to_linear_for_parallel_vectors(store):
    base = rng_arr(0, SHAPE)
    tunes = [base * np.float32(2), base * np.float32(3)]  # parallel: |cos| > 0.9995
    got = run(store, "slerp", base, tunes, t=0.25)
    want = np.float32(0.75) * tunes[0] + np.float32(0.25) * tunes[1]
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_stock(store, dtype):
    base, tunes = models(dtype, n=3, seed=17)
    got = run(store, "model_stock", base, tunes)
    b, *ms = f32(base, *tunes)
    taus = [(m - b).astype(np.float64).ravel() for m in ms]
    coss = [math.fsum(taus[i] * taus[j]) / math.sqrt(math.fsum(taus[i] ** 2)
                                                     * math.fsum(taus[j] ** 2))
            for i in range(3) for j in range(i + 1, 3)]
    cos = math.fsum(coss) / 3
    t = np.float32(3 * cos / (1 + 2 * cos))
    want = t * ((ms[0] + ms[1] + ms[2]) / np.float32(3)) + (np.float32(1) - t) * b
    assert got.tobytes() == want.astype(dtype).tobytes()


def test_one_sided_chunks_stay_exact_and_stats_cover_the_whole_tensor(store):
    """Only chunks both sides changed are combined; TIES's threshold is the whole tensor's."""
    base = rng_arr(0, SHAPE)
    o, t = base.copy(), base.copy()
    o[:8] += rng_arr(1, (8, 32)) * 0.1     # chunk 0 (8 rows of 128 bytes = 1 KiB)
    o[16:24] += rng_arr(2, (8, 32)) * 0.1  # chunk 2: ours only
    t[:8] += rng_arr(3, (8, 32)) * 0.1     # chunk 0: both
    t[40:48] += rng_arr(4, (8, 32)) * 5.0  # chunk 5: theirs only, large: moves the threshold
    m = [manifest(store, {"w": x}) for x in (base, o, t)]
    store.cache.reads.clear()
    merged, p = merge_manifests(*m, table("ties", density=0.3), store)
    assert p.conflicts["w"].chunks == [0]
    got = read(store, merged, "w")
    assert got[16:24].tobytes() == o[16:24].tobytes()
    assert got[40:48].tobytes() == t[40:48].tobytes()
    assert got[8:16].tobytes() == base[8:16].tobytes()
    want = ties_ref(base, [o, t], [1, 1], 0.3)
    assert got[:8].tobytes() == want[:8].tobytes()
    merged2, _ = merge_manifests(*m, table("linear"), store)
    assert merged2.params["w"].chunks[1:] == merged.params["w"].chunks[1:]


def test_no_statistics_read_for_linear(store):
    base = rng_arr(0, SHAPE)
    o, t = base.copy(), base.copy()
    o[:8] += 1
    t[:8] -= 2
    m = [manifest(store, {"w": x}) for x in (base, o, t)]
    store.cache.reads.clear()
    merge_manifests(*m, table("linear"), store)
    assert len(store.cache.reads) == 2  # chunk 0 of each side, nothing else


def test_bad_values_and_dtypes_are_one_line_errors(store):
    base, tunes = models(np.dtype(np.float32))
    with pytest.raises(MergeError, match=r"parameter 'w': ties: 'density' must be in \[0, 1\]"):
        run(store, "ties", base, tunes, density=1.5)
    with pytest.raises(MergeError, match="'weight' has 3 values for 2 models"):
        run(store, "linear", base, tunes, weight=(1.0, 2.0, 3.0))
    with pytest.raises(MergeError, match="'lambda' takes one value"):
        run(store, "ties", base, tunes, **{"lambda": (1.0, 2.0)})
    with pytest.raises(MergeError, match="merges 2 models, not 3"):
        run(store, "slerp", base, [*tunes, tunes[0] * 2])
    i = np.arange(600, dtype=np.int32)
    with pytest.raises(MergeError, match="needs real floating-point"):
        run(store, "ties", i, [i + 1, i + 2])
    with pytest.raises(MergeError, match="needs the base"):
        merge_manifests(None, *(manifest(store, {"w": x}) for x in tunes), table("ties"),
                        store)


def test_float64_is_computed_in_float64(store):
    base, tunes = models(np.dtype(np.float64))
    got = run(store, "linear", base, tunes)
    assert got.tobytes() == ((tunes[0] + tunes[1]) / 2).tobytes()


def test_inline_parameters(store):
    """Tiny tensors live inline in the manifest; the methods merge them the same way."""
    base = rng_arr(0, (16,), BF16)
    tunes = [(base.astype(np.float32) + rng_arr(i, (16,)) * 0.1).astype(BF16) for i in (1, 2)]
    ms = [manifest(store, {"w": x}) for x in (base, *tunes)]
    assert ms[0].params["w"].is_inline
    merged, _ = merge_manifests(*ms, table("ties", density=0.5), store)
    want = ties_ref(base, tunes, [1, 1], 0.5).astype(BF16)
    assert merged.params["w"].inline == (want.tobytes(),)
    merged, _ = merge_manifests(*ms, table("dare", density=0.5), store)
    b, o, t = f32(base, *tunes)
    keys = [digest(m.params["w"].inline[0]) for m in ms]
    mo, mt = (dare_mask(keys[0], k, 16, 0.5).astype(np.float32) for k in keys[1:])
    d = np.float32(0.5)
    want = (b + ((o - b) * mo / d + (t - b) * mt / d) * np.float32(1)).astype(BF16)
    assert merged.params["w"].inline == (want.tobytes(),)
