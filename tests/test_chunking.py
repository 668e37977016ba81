"""Chunk-shape policy and chunk byte ranges (DESIGN.md section 3, "Chunking")."""

from __future__ import annotations

import math

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theta_zarr import chunking
from theta_zarr.chunking import (
    MIN_CHUNK_BYTES,
    chunk_count,
    chunk_shape_for,
    grid_shape,
    is_contiguous_chunking,
    spans,
)
from theta_zarr.manifest import Manifest, ParamEntry


@pytest.mark.parametrize("shape,itemsize,target,expected", [
    ((1000,), 4, 4096, (1000,)),  # fits whole
    ((5000,), 4, 4096, (1024,)),  # 1-D split
    ((10, 100), 4, 4096, (10, 100)),  # whole tensor fits
    ((100, 100), 4, 4096, (10, 100)),  # leading axis split, rows whole
    ((100, 2000), 4, 4096, (1, 1024)),  # one row is too big: split the last axis
    ((7, 8, 16), 2, 4096, (7, 8, 16)),
    ((64, 8, 64), 2, 4096, (4, 8, 64)),  # 3-D: split axis 0
    ((64, 64, 64), 2, 4096, (1, 32, 64)),  # 3-D: a matrix is too big, split axis 1
    ((4, 4, 4096), 1, 4096, (1, 1, 4096)),
    ((), 4, 4096, ()),  # scalar
    ((0,), 4, 4096, (1,)),  # empty 1-D
    ((0, 16), 4, 4096, (1, 16)),
])
def test_chunk_shape_for(shape, itemsize, target, expected):
    assert chunk_shape_for(shape, itemsize, target) == expected
    assert is_contiguous_chunking(shape, expected)


def test_tiny_targets_are_raised_to_the_minimum():
    assert chunk_shape_for((4096,), 1, 1) == (MIN_CHUNK_BYTES,)
    assert chunk_shape_for((4096,), 1, 0) == chunk_shape_for((4096,), 1, MIN_CHUNK_BYTES)
    assert chunk_shape_for((4096,), 1, -5) == (MIN_CHUNK_BYTES,)
    # an item larger than the target is still one chunk per item, never zero
    assert chunk_shape_for((3, 5), 16, 1) == (3, 5)


def test_default_target_is_four_mib():
    assert chunk_shape_for((4096, 4096), 2) == (512, 4096)  # 512 rows x 8 KiB = 4 MiB


@pytest.mark.parametrize("shape,chunk_shape,ok", [
    ((4, 6), (2, 3), False),
    ((4, 6), (4, 3), False),
    ((4, 6), (1, 3), True),
    ((4, 6), (2, 6), True),
    ((4, 6), (3, 6), True),  # short last chunk
    ((4, 6), (5, 6), False),
    ((4, 6), (4,), False),
    ((4, 6), (0, 6), False),
    ((2, 3, 4), (1, 2, 4), True),
    ((2, 3, 4), (2, 2, 4), False),
    ((2, 3, 4), (1, 1, 2), True),
    ((2, 3, 4), (1, 3, 2), False),
    ((), (), True),
    ((), (1,), False),
])
def test_is_contiguous_chunking(shape, chunk_shape, ok):
    assert is_contiguous_chunking(shape, chunk_shape) is ok


def test_spans_examples():
    assert spans((10,), 4, (4,)) == [(0, 16), (16, 16), (32, 8)]
    assert spans((), 8, ()) == [(0, 8)]
    assert spans((0, 5), 4, (1, 5)) == []
    # (3, 4, 5) int16 split along axis 1 by 3: per leading index two chunks (3 rows, 1 row)
    assert spans((3, 4, 5), 2, (1, 3, 5)) == [
        (0, 30), (30, 10), (40, 30), (70, 10), (80, 30), (110, 10)]
    assert grid_shape((3, 4, 5), (1, 3, 5)) == (3, 2, 1)
    assert chunk_count((3, 4, 5), (1, 3, 5)) == 6


def test_spans_match_the_bytes_of_a_real_chunk_grid():
    np = pytest.importorskip("numpy")
    a = np.arange(3 * 7 * 5, dtype="<i4").reshape(3, 7, 5)
    cs = (1, 3, 5)
    raw = a.tobytes()
    got = [raw[o:o + n] for o, n in spans(a.shape, 4, cs)]
    want = []
    for i in range(3):
        for j in range(0, 7, 3):
            want.append(a[i:i + 1, j:j + 3, :].tobytes())
    assert got == want


def test_digest_is_blake3_of_raw_bytes():
    data = bytes(range(256)) * 10
    assert chunking.digest(data) == "blake3:" + blake3.blake3(data).hexdigest()
    assert chunking.digest(memoryview(data)) == chunking.digest(data)
    assert chunking.digest(b"a") != chunking.digest(b"b")


shapes = st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=4)


@settings(max_examples=300, deadline=None)
@given(shape=shapes, itemsize=st.sampled_from([1, 2, 4, 8, 16]),
       target=st.integers(min_value=0, max_value=20_000))
def test_spans_tile_the_tensor_bytes(shape, itemsize, target):
    shape = tuple(shape)
    cs = chunk_shape_for(shape, itemsize, target)
    assert len(cs) == len(shape)
    nbytes = math.prod(shape) * itemsize
    sp = spans(shape, itemsize, cs)
    # contiguous, non-overlapping, in order, covering exactly nbytes
    pos = 0
    for off, length in sp:
        assert off == pos
        assert length > 0
        pos += length
    assert pos == nbytes
    if shape:
        assert len(sp) == chunk_count(shape, cs)
    else:
        assert len(sp) == 1
    # each chunk fits the target (an item is never split)
    limit = max(target, MIN_CHUNK_BYTES, itemsize)
    assert all(length <= limit for _, length in sp)
    if nbytes:
        assert is_contiguous_chunking(shape, cs)
        assert all(c >= 1 for c in cs)
        # full chunks and at most one shorter size (the last one along the split axis)
        assert len({length for _, length in sp}) <= 2
        assert sp[0][1] == max(length for _, length in sp)


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=4),
       data=st.data())
def test_any_contiguous_chunking_tiles_and_matches_numpy(shape, data):
    np = pytest.importorskip("numpy")
    shape = tuple(shape)
    k = data.draw(st.integers(min_value=0, max_value=len(shape) - 1))
    c = data.draw(st.integers(min_value=1, max_value=shape[k]))
    cs = (1,) * k + (c,) + shape[k + 1:]
    assert is_contiguous_chunking(shape, cs)
    a = np.arange(math.prod(shape), dtype="<u2").reshape(shape)
    raw = a.tobytes()
    got = b"".join(raw[o:o + n] for o, n in spans(shape, 2, cs))
    assert got == raw
    assert len(spans(shape, 2, cs)) == chunk_count(shape, cs)


@pytest.mark.parametrize("shape,expected", [
    ((3, 0), (3, 1)),
    ((2, 0, 3), (2, 1, 3)),
    ((0, 0), (1, 1)),
    ((0,), (1,)),
])
def test_zero_size_chunk_shape_is_valid(shape, expected):
    cs = chunk_shape_for(shape, 4, 4096)
    assert cs == expected  # zarr needs chunk extents >= 1
    assert is_contiguous_chunking(shape, cs)
    assert not is_contiguous_chunking(shape, tuple(shape))
    assert spans(shape, 4, cs) == [] and chunk_count(shape, cs) == 0


@pytest.mark.parametrize("shape", [(3, 0), (2, 0, 3), (0, 5)])
def test_zero_size_tensor_gives_a_readable_manifest(shape):
    cs = chunk_shape_for(shape, 4, 4096)
    m = Manifest({"name": "safetensors"}, {"t": ParamEntry(shape, "float32", cs, ())})
    back = Manifest.from_bytes(m.to_bytes()).params["t"]
    assert back.shape == shape and back.chunks == () and back.nbytes == 0
