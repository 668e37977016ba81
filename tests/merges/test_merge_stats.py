"""Streaming statistics: the exact k-th largest magnitude and exactly rounded sums."""

from __future__ import annotations

import math

import numpy as np

from theta_zarr.merges.stats import ExactSum, magnitude_bits, select_ranks


def test_rank_select_equals_sort_over_chunks_with_ties_and_zeros():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(5000).astype(np.float32)
    a[::7] = 0.0
    a[::11] = -a[3]  # many equal magnitudes
    b = (rng.standard_normal(3000) * 1e-30).astype(np.float32)  # subnormals and tiny values
    chunks_a, chunks_b = np.array_split(a, 7), np.array_split(b, 7)
    ranks = [[1, 2, 100, 4999, 5000, 5001, 0], [1, 1500, 3000]]

    def passes():
        for ca, cb in zip(chunks_a, chunks_b, strict=True):
            yield [magnitude_bits(ca), magnitude_bits(cb)]

    got = select_ranks(passes, ranks)
    for arr, want_ranks, found in zip((a, b), ranks, got, strict=True):
        srt = np.sort(np.abs(arr))[::-1]
        for k, bits in zip(want_ranks, found, strict=True):
            if 1 <= k <= arr.size:
                assert np.uint32(bits).view(np.float32) == srt[k - 1]
            else:
                assert bits is None


def test_exact_sum_is_exactly_rounded_per_chunk():
    x = np.array([1e16, 1.0, -1e16, 1.0], np.float64)
    s = ExactSum()
    s.add(x)
    assert s.value == 2.0  # a naive float64 sum gives 0.0 or 1.0
    s.add(np.array([0.5], np.float32))
    assert s.value == math.fsum([2.0, 0.5])
