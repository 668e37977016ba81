"""Whole-tensor statistics computed from a stream of chunks, deterministically.

* :class:`RankSelect` finds the exact k-th largest magnitude of a float32 tensor in
  two streaming passes (a radix select on the IEEE-754 bits: for non-negative
  floats the bit pattern, read as an unsigned integer, orders like the value), so
  no pass ever holds more than one chunk and a 65,536-bin histogram.
* :class:`BlockSum` adds float64 numbers in a fixed order: numpy's pairwise sum over
  blocks of 4,096 consecutive elements, then the block sums with ``math.fsum``
  (Shewchuk's correctly rounded summation).  The products of float32 numbers are
  exact in float64, and every addition's order is fixed by the chunk grid, so norms
  and dot products come out the same on every machine, whatever its SIMD width or
  BLAS (no BLAS is used), at numpy's speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

HI_BINS = 1 << 15  # |x| has its sign bit clear: the top 16 bits are below 2**15
LO_BINS = 1 << 16


def magnitude_bits(x: np.ndarray) -> np.ndarray:
    """|x| of a float32 array as uint32 bit patterns (ordered like the magnitudes)."""
    return np.abs(x.astype(np.float32, copy=False)).view(np.uint32)


class RankSelect:
    """The k-th largest of several streams of magnitudes, for several k, in two passes.

    ``ranks[s]`` lists the ranks wanted of stream ``s`` (1 = the largest).  Feed
    every chunk of every stream to :meth:`first`, then call :meth:`between`, feed
    every chunk again to :meth:`second`, and read :meth:`result`: the bit pattern
    (uint32) of the k-th largest magnitude, or None for a rank of 0 or beyond the
    element count.
    """

    def __init__(self, ranks: Sequence[Sequence[int]]):
        self.ranks = [list(r) for r in ranks]
        self.hi = [np.zeros(HI_BINS, np.int64) for _ in ranks]
        self.lo: list[dict[int, np.ndarray]] = [{} for _ in ranks]
        self.where: list[list[tuple[int, int] | None]] = []

    def first(self, stream: int, bits: np.ndarray) -> None:
        """Pass one: count the top 16 bits."""
        self.hi[stream] += np.bincount(bits >> 16, minlength=HI_BINS)[:HI_BINS]

    def between(self) -> None:
        """Find, for every rank, its top-16-bit bin and its rank inside that bin."""
        self.where = []
        for s, ranks in enumerate(self.ranks):
            above = np.cumsum(self.hi[s][::-1])  # above[j]: count in bins >= HI_BINS-1-j
            total = int(above[-1])
            found: list[tuple[int, int] | None] = []
            for k in ranks:
                if k <= 0 or k > total:
                    found.append(None)
                    continue
                j = int(np.searchsorted(above, k))  # first j with above[j] >= k
                b = HI_BINS - 1 - j
                before = int(above[j - 1]) if j > 0 else 0
                found.append((b, k - before))
                self.lo[s].setdefault(b, np.zeros(LO_BINS, np.int64))
            self.where.append(found)

    def second(self, stream: int, bits: np.ndarray) -> None:
        """Pass two: count the low 16 bits inside the bins that hold a wanted rank."""
        if not self.lo[stream]:
            return
        hi = bits >> 16
        for b, counts in self.lo[stream].items():
            sel = bits[hi == b]
            if sel.size:
                counts += np.bincount(sel & 0xFFFF, minlength=LO_BINS)

    def result(self, stream: int) -> list[int | None]:
        """The bit pattern of each wanted rank of ``stream`` (None: no such element)."""
        out: list[int | None] = []
        for found in self.where[stream]:
            if found is None:
                out.append(None)
                continue
            b, k = found
            above = np.cumsum(self.lo[stream][b][::-1])
            j = int(np.searchsorted(above, k))
            out.append((b << 16) | (LO_BINS - 1 - j))
        return out


def select_ranks(passes: Callable[[], Iterable[list[np.ndarray]]],
                 ranks: Sequence[Sequence[int]]) -> list[list[int | None]]:
    """Run a :class:`RankSelect` over ``passes()`` (each item: one chunk's bits per stream)."""
    sel = RankSelect(ranks)
    for chunk in passes():
        for s, bits in enumerate(chunk):
            sel.first(s, bits)
    sel.between()
    if any(sel.lo):
        for chunk in passes():
            for s, bits in enumerate(chunk):
                sel.second(s, bits)
    return [sel.result(s) for s in range(len(ranks))]


BLOCK = 4096


class BlockSum:
    """A sum of float64 numbers in a fixed order: pairwise within blocks of ``BLOCK``
    consecutive elements of each chunk, then every block sum with ``math.fsum``."""

    def __init__(self) -> None:
        self.parts: list[float] = []

    def add(self, values: np.ndarray) -> None:
        """Add every element of ``values`` (converted to float64), in C order."""
        flat = values.astype(np.float64, copy=False).ravel()
        whole = flat.size - flat.size % BLOCK
        if whole:
            self.parts.extend(np.add.reduce(flat[:whole].reshape(-1, BLOCK), axis=1).tolist())
        if whole < flat.size:
            self.parts.append(float(np.add.reduce(flat[whole:])))

    @property
    def value(self) -> float:
        """The sum so far (the block sums added correctly rounded)."""
        return math.fsum(self.parts)


def products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise products of two float32 arrays, exact in float64."""
    return a.astype(np.float64) * b.astype(np.float64)
