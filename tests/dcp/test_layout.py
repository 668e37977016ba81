"""Chunk shapes for sharded tensors: every chunk inside one shard, contiguous, and the
chunks of all shards tile the tensor; boxes reassemble bit-exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theta_zarr import chunking
from theta_zarr.dcp import layout


def row_shards(shape, world, axis=0):
    """torch.chunk-style shards along ``axis`` (uneven last one, as FSDP2 makes)."""
    step = -(-shape[axis] // world)
    out = []
    for start in range(0, shape[axis], step):
        off = [0] * len(shape)
        size = list(shape)
        off[axis], size[axis] = start, min(step, shape[axis] - start)
        out.append((tuple(off), tuple(size)))
    return out


def region(box):
    return tuple(slice(o, o + s) for o, s in zip(*box, strict=True))


CASES = [
    ((4096, 512), 4, row_shards((4096, 512), 4), 1 << 20),   # FSDP rows, policy fits
    ((66, 32), 4, row_shards((66, 32), 4), 1024),            # uneven rows, small chunks
    ((24, 400), 4, row_shards((24, 400), 4, axis=1), 4096),  # tensor-parallel columns
    ((8, 6, 10), 2, row_shards((8, 6, 10), 2, axis=1), 64),  # middle axis split
    ((128,), 1, [((0,), (128,))], 256),                      # one shard
]


@pytest.mark.parametrize("shape,world,shards,target", CASES)
def test_every_chunk_lies_in_one_shard_and_all_tile_the_tensor(shape, world, shards, target):
    itemsize = 4
    cs = layout.chunk_shape_for_shards(shape, itemsize, shards, target)
    assert chunking.is_contiguous_chunking(shape, cs)
    total = chunking.chunk_count(shape, cs)
    seen: dict[int, int] = {}
    whole = np.arange(math.prod(shape), dtype=np.uint32).reshape(shape)
    for box in shards:
        part = np.ascontiguousarray(whole[region(box)])
        raw = part.tobytes()
        for gi, off, n in layout.shard_chunks(shape, itemsize, cs, box):
            assert gi not in seen
            seen[gi] = n
            # the chunk's bytes are the global tensor's bytes of that chunk
            origin, extent = layout.chunk_box(shape, cs, gi)
            want = whole[region((origin, extent))].tobytes()
            assert raw[off:off + n] == want
    assert sorted(seen) == list(range(total))
    assert sum(seen.values()) == math.prod(shape) * itemsize


def test_row_shards_keep_the_policy_chunk_shape():
    shape = (4096, 512)
    assert layout.chunk_shape_for_shards(shape, 4, row_shards(shape, 4), 1 << 20) == \
        chunking.chunk_shape_for(shape, 4, 1 << 20)


def test_tiny_tensors_are_one_chunk_to_inline():
    assert layout.chunk_shape_for_shards((8, 4), 4, row_shards((8, 4), 4), 4096) == (8, 4)


def test_any_box_reassembles_from_the_chunks_it_overlaps():
    shape, cs = (30, 7), (4, 7)
    whole = np.arange(30 * 7 * 2, dtype=np.uint8).reshape(30, 7, 2)
    box = ((5, 2), (13, 4))
    out = np.zeros((13, 4, 2), dtype=np.uint8)
    hit = []
    for gi, cbox in layout.overlapping_chunks(shape, cs, box):
        hit.append(gi)
        src = whole[region(cbox)]
        layout.copy_box(src, cbox, out, box)
    assert hit == [1, 2, 3, 4]  # rows 4..19: only the chunks the box overlaps
    assert np.array_equal(out, whole[5:18, 2:6])
