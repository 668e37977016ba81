"""Chunk-shape policy, chunk byte ranges and digests.

A parameter is split along one axis ``k``: every axis before ``k`` has chunk
extent 1, axis ``k`` has extent ``c``, every axis after ``k`` is kept whole.  With
that shape each chunk is one contiguous byte range of the C-ordered tensor and
the chunks, in C order over the grid, tile the tensor's bytes in sequence.  So a
checkpoint can be hashed straight from a memory map or from git's pipe, without
copies, and the last chunk along ``k`` may simply be short (the Zarr view pads
it; its digest covers only the bytes that exist).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import blake3

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
MIN_CHUNK_BYTES = 1024
INLINE_MAX_BYTES = 512
DIGEST_PREFIX = "blake3:"


def chunk_shape_for(shape: Sequence[int], itemsize: int, target: int = DEFAULT_CHUNK_BYTES
                    ) -> tuple[int, ...]:
    """The chunk shape for a tensor: split the outermost axis that must be split.

    Trailing axes stay whole as long as one slice of them fits ``target`` bytes.
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        return ()
    target = max(int(target), MIN_CHUNK_BYTES)
    # row[k] = bytes of one index along axis k (all axes after k whole)
    row = [itemsize] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        row[k] = row[k + 1] * shape[k + 1]
    for k, extent in enumerate(shape):
        if row[k] <= target or k == len(shape) - 1:
            c = max(1, min(extent, target // max(row[k], 1)))
            # zarr needs extents >= 1: a zero-length trailing axis gets extent 1
            return (1,) * k + (max(c, 1),) + tuple(max(1, s) for s in shape[k + 1:])
    raise AssertionError("unreachable")


def is_contiguous_chunking(shape: Sequence[int], chunk_shape: Sequence[int]) -> bool:
    """True if every chunk of this grid is one contiguous byte range."""
    if len(shape) != len(chunk_shape):
        return False
    if not shape:
        return True
    if any(c < 1 for c in chunk_shape):
        return False
    k = 0
    while k < len(shape) - 1 and chunk_shape[k] == 1:
        k += 1
    # axes before k are 1; axis k is anything <= extent (or 1 if extent is 0);
    # axes after k must be whole.
    return all(chunk_shape[i] == max(shape[i], 1) for i in range(k + 1, len(shape))) and (
        chunk_shape[k] <= max(shape[k], 1))


def grid_shape(shape: Sequence[int], chunk_shape: Sequence[int]) -> tuple[int, ...]:
    """The number of chunks along each axis: ``ceil(shape / chunk_shape)``, 0 on an axis
    of extent 0 (Zarr v3's regular chunk grid).  ValueError when the ranks differ."""
    return tuple(math.ceil(s / c) if s else 0 for s, c in zip(shape, chunk_shape, strict=True))


def chunk_count(shape: Sequence[int], chunk_shape: Sequence[int]) -> int:
    """The number of chunks in the grid: the product of ``grid_shape`` (1 for a scalar's
    empty shape, 0 when any axis has extent 0)."""
    return math.prod(grid_shape(shape, chunk_shape))


def _split_axis(shape: Sequence[int], chunk_shape: Sequence[int]) -> int:
    k = 0
    while k < len(shape) - 1 and chunk_shape[k] == 1:
        k += 1
    return k


def span_length(shape: Sequence[int], itemsize: int, chunk_shape: Sequence[int],
                index: int) -> int:
    """The raw byte length of chunk ``index`` (C order over the grid), computed directly.

    Equal to ``spans(...)[index][1]`` without building the list; the last chunk along
    the split axis may be short.
    """
    if not shape:
        return itemsize
    k = _split_axis(shape, chunk_shape)
    row = itemsize * math.prod(shape[k + 1:])
    c = chunk_shape[k]
    per = math.ceil(shape[k] / c) if shape[k] else 0
    if per == 0:
        raise IndexError(f"chunk {index} of an empty tensor")
    start = (index % per) * c
    return min(c, shape[k] - start) * row


def spans(shape: Sequence[int], itemsize: int, chunk_shape: Sequence[int]
          ) -> list[tuple[int, int]]:
    """(offset, length) in bytes of each chunk, in C order over the chunk grid."""
    return list(iter_spans(shape, itemsize, chunk_shape))


def iter_spans(shape: Sequence[int], itemsize: int, chunk_shape: Sequence[int]
               ) -> Iterator[tuple[int, int]]:
    """(offset, length) in bytes of each chunk, in C order over the chunk grid, made as
    they are asked for (``spans`` without the list).

    ``chunk_shape`` must be contiguous for ``shape`` (``is_contiguous_chunking``); the
    last chunk along the split axis may be short.  A scalar is one span of ``itemsize``
    bytes; a tensor with an axis of extent 0 has none.
    """
    if not shape:
        yield (0, itemsize)
        return
    if math.prod(shape) == 0:
        return
    k = _split_axis(shape, chunk_shape)
    row = itemsize * math.prod(shape[k + 1:])
    block = row * shape[k]
    c = chunk_shape[k]
    for p in range(math.prod(shape[:k])):
        base = p * block
        for start in range(0, shape[k], c):
            yield (base + start * row, min(c, shape[k] - start) * row)


def digest(data: bytes | memoryview) -> str:
    """The digest naming a chunk: blake3 of its raw bytes."""
    return DIGEST_PREFIX + blake3.blake3(data).hexdigest()
