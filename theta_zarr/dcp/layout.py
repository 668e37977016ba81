"""Where the shards of a distributed checkpoint meet theta-zarr's chunk grid (no torch here).

A ``torch.distributed.checkpoint`` save hands every rank boxes of global tensors
(its shards: ``offsets`` and ``sizes`` per axis).  theta-zarr stores every global
tensor as one manifest parameter whose chunks are contiguous byte ranges
(chunking.py), so a rank can hash and upload its chunks alone only if no chunk
straddles two shards.  ``chunk_shape_for_shards`` picks such a chunk shape: the
policy's own when its chunks already fall inside single shards (the usual
FSDP case, shards of whole rows), else chunks along the last axis the shards
split, as long as the policy allows and dividing every shard boundary on it.

The shape depends only on the global layout (shape, dtype, every shard's box),
so it is the same on every rank and the same at every step of a run: unchanged
chunks keep their digests and are not uploaded again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from .. import chunking

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offsets, sizes), one int per axis


def _policy_axis(shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> int:
    """The axis a contiguous chunk shape splits (the first one not kept at extent 1)."""
    for k in range(len(shape)):
        if all(chunk_shape[i] == max(shape[i], 1) for i in range(k + 1, len(shape))):
            return k
    return len(shape) - 1


def _largest_divisor_at_most(n: int, limit: int) -> int:
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for cand in (d, n // d):
                if best < cand <= limit:
                    best = cand
    return best


def chunk_shape_for_shards(shape: Sequence[int], itemsize: int, shards: Sequence[Box],
                           target: int = chunking.DEFAULT_CHUNK_BYTES) -> tuple[int, ...]:
    """A contiguous chunk shape for ``shape`` whose chunks each lie inside one shard.

    ``shards`` are the boxes the ranks save (together they tile the tensor);
    ``target`` is the policy's chunk size in bytes.  Tiny tensors (at most
    ``chunking.INLINE_MAX_BYTES``) are one chunk: the coordinator inlines them.
    """
    shape = tuple(int(s) for s in shape)
    policy = chunking.chunk_shape_for(shape, itemsize, target)
    if not shape or math.prod(shape) == 0 or \
            math.prod(shape) * itemsize <= chunking.INLINE_MAX_BYTES:
        return tuple(max(1, s) for s in shape) if shape else ()
    split = -1
    for _offsets, sizes in shards:
        for i in range(len(shape)):
            if sizes[i] != shape[i]:
                split = max(split, i)
    if _policy_axis(shape, policy) > split:
        return policy
    k = split
    row = itemsize * math.prod(shape[k + 1:])
    bounds = [b[0][k] for b in shards]
    bounds += [b[0][k] + b[1][k] for b in shards if b[0][k] + b[1][k] != shape[k]]
    g = 0
    for b in bounds:
        g = math.gcd(g, b)
    limit = min(shape[k], max(1, target // max(row, 1)))
    c = _largest_divisor_at_most(g, limit) if g else limit
    return (1,) * k + (c,) + tuple(max(1, s) for s in shape[k + 1:])


def shard_chunks(shape: Sequence[int], itemsize: int, chunk_shape: Sequence[int],
                 box: Box) -> Iterator[tuple[int, int, int]]:
    """(global chunk index, byte offset, byte length) of every chunk inside a shard.

    Offsets are into the shard's own C-ordered bytes.  The chunk shape must come
    from ``chunk_shape_for_shards`` over a layout holding ``box``.
    """
    offsets, sizes = box
    if math.prod(sizes) == 0:
        return
    grid = chunking.grid_shape(shape, chunk_shape) if shape else ()
    local_grid = chunking.grid_shape(sizes, chunk_shape) if sizes else ()
    start = tuple(o // c for o, c in zip(offsets, chunk_shape, strict=True))
    spans = chunking.spans(sizes, itemsize, chunk_shape)
    for i, (off, length) in enumerate(spans):
        if not shape:
            yield 0, off, length
            continue
        local = np.unravel_index(i, local_grid)
        coord = tuple(int(s + g) for s, g in zip(start, local, strict=True))
        yield int(np.ravel_multi_index(coord, grid)), off, length


def overlapping_chunks(shape: Sequence[int], chunk_shape: Sequence[int], box: Box
                       ) -> Iterator[tuple[int, Box]]:
    """(global chunk index, the chunk's box) of every chunk a box overlaps, C order."""
    offsets, sizes = box
    if not shape:
        yield 0, ((), ())
        return
    if math.prod(sizes) == 0:
        return
    grid = chunking.grid_shape(shape, chunk_shape)
    ranges = [range(o // c, (o + s - 1) // c + 1)
              for o, s, c in zip(offsets, sizes, chunk_shape, strict=True)]
    for coord in np.ndindex(*(len(r) for r in ranges)):
        g = tuple(r[i] for r, i in zip(ranges, coord, strict=True))
        index = int(np.ravel_multi_index(g, grid))
        yield index, chunk_box(shape, chunk_shape, index)


def chunk_box(shape: Sequence[int], chunk_shape: Sequence[int], index: int) -> Box:
    """The box (origin, extent) of global chunk ``index`` (C order over the grid)."""
    if not shape:
        return (), ()
    g = np.unravel_index(index, chunking.grid_shape(shape, chunk_shape))
    origin = tuple(int(gi) * c for gi, c in zip(g, chunk_shape, strict=True))
    extent = tuple(min(c, s - o) for c, s, o in zip(chunk_shape, shape, origin, strict=True))
    return origin, extent


def copy_box(src: np.ndarray, src_box: Box, dst: np.ndarray, dst_box: Box) -> None:
    """Copy the overlap of two boxes of one global tensor from ``src`` into ``dst``.

    ``src`` and ``dst`` are uint8 arrays of shape ``box sizes + (itemsize,)``.
    """
    lo = [max(a, b) for a, b in zip(src_box[0], dst_box[0], strict=True)]
    hi = [min(a + s, b + t) for a, s, b, t in zip(src_box[0], src_box[1], dst_box[0],
                                                  dst_box[1], strict=True)]
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return
    s_sel = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, src_box[0], strict=True))
    d_sel = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, dst_box[0], strict=True))
    dst[d_sel] = src[s_sel]
