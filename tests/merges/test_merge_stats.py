"""Streaming statistics: the exact k-th largest magnitude and exactly rounded sums."""

from __future__ import annotations

import math

import numpy as np

from theta_zarr.merges.stats import BLOCK, BlockSum, magnitude_bits, select_ranks


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


def test_block_sum_order_is_fixed_and_blocks_add_exactly():
    x = np.zeros(3 * BLOCK, np.float64)
    x[0], x[BLOCK], x[2 * BLOCK] = 1e16, 1.0, -1e16
    s = BlockSum()
    s.add(x)
    assert s.value == 1.0  # block sums 1e16, 1, -1e16 add exactly (a plain sum gives 0)
    y = np.random.default_rng(1).standard_normal(3 * BLOCK + 5)
    s = BlockSum()
    s.add(y)
    blocks = [float(np.add.reduce(y[i:i + BLOCK])) for i in range(0, y.size, BLOCK)]
    assert s.value == math.fsum(blocks)
