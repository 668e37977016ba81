"""xor-delta objects: a chunk stored as the difference from another chunk's raw bytes.

A fine-tune or a training step changes every weight a little.  In most weights
only the low mantissa bits move, so the XOR of the new chunk's raw bytes with
the previous version's chunk is mostly zero bits; byte-shuffled by the dtype's
item size (all low bytes together, then all high bytes) it compresses far
better than the chunk itself.  XOR works on bit patterns, never arithmetic, so
reconstruction is bit-exact in every dtype (NaN payloads, -0.0, subnormals).

Object layout (the TZO1 header of codecs.py, codec name ``xor-delta``)::

    b"TZO1" 0x09 b"xor-delta"
    32 bytes   the base's digest (the blake3 of its raw bytes, as raw bytes)
    1 byte     shuffle element size (the dtype's item size, 1 to 16)
    1 byte     chain depth: 1 over a full object, base depth + 1 over a delta
    rest       zstd(shuffle(raw XOR base_raw)); raw and base have the same length

The digest of a delta object is still the digest of the raw chunk; manifests
never change.  Readers resolve the base through the same store (objects.py),
verify it, apply the delta and verify the result against the object's digest.
Writers (remote.push_objects) choose a delta only where it pays and only over a
base the destination already has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numcodecs import Zstd

from . import codecs
from .codecs import CodecError

NAME = "xor-delta"
HEADER = codecs.header(NAME)
DIGEST_BYTES = 32
#: bytes of an object that say everything about its delta form (header + base + elem + depth)
PREFIX_BYTES = len(HEADER) + DIGEST_BYTES + 2
DEFAULT_RATIO = 0.8
DEFAULT_DEPTH = 8
#: readers refuse chains deeper than this whatever the writer's setting (a loop is corruption)
MAX_DEPTH = 64
MAX_ELEM = 16


@dataclass(frozen=True)
class DeltaPolicy:
    """When a writer stores a delta: ``theta-zarr.delta``, ``delta-ratio``, ``delta-depth``."""

    enabled: bool = True
    ratio: float = DEFAULT_RATIO
    max_depth: int = DEFAULT_DEPTH
    level: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"delta ratio {self.ratio} must be in (0, 1]")
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"delta depth {self.max_depth} must be between 1 and {MAX_DEPTH}")


@dataclass(frozen=True)
class DeltaHeader:
    base: str  # digest of the base's raw bytes
    elem: int  # shuffle element size
    depth: int  # 1 over a full base


@dataclass(frozen=True)
class Base:
    """A delta candidate for a chunk: the same chunk of the parent version."""

    digest: str
    elem: int = 1


def _zstd(level: int) -> Zstd:
    return Zstd(level=level)


def xor(raw: bytes | memoryview, base: bytes | memoryview) -> np.ndarray:
    a = np.frombuffer(raw, dtype=np.uint8)
    b = np.frombuffer(base, dtype=np.uint8)
    if a.shape != b.shape:
        raise CodecError(f"delta needs equal lengths (chunk {a.size} bytes, base {b.size})")
    # XOR 8 bytes at a time where the length allows: numpy's uint8 loop is slower
    if a.size % 8 == 0:
        return np.bitwise_xor(a.view(np.uint64), b.view(np.uint64)).view(np.uint8)
    return np.bitwise_xor(a, b)


def shuffle(data: np.ndarray, elem: int) -> np.ndarray:
    if elem <= 1 or data.size % elem:
        return data
    return np.ascontiguousarray(data.reshape(-1, elem).T).reshape(-1)


def unshuffle(data: np.ndarray, elem: int) -> np.ndarray:
    if elem <= 1 or data.size % elem:
        return data
    return np.ascontiguousarray(data.reshape(elem, -1).T).reshape(-1)


def encode(raw: bytes | memoryview, base_raw: bytes | memoryview, base_digest: str,
           elem: int = 1, depth: int = 1, level: int = 1) -> bytes:
    """The xor-delta object of ``raw`` over ``base_raw`` (whose digest is ``base_digest``)."""
    if not 1 <= depth <= 255:
        raise CodecError(f"delta depth {depth} out of range")
    elem = elem if 1 <= elem <= MAX_ELEM else 1
    diff = shuffle(xor(raw, base_raw), elem)
    body = bytes(_zstd(level).encode(diff)) if diff.size else b""
    return b"".join((HEADER, _digest_bytes(base_digest), bytes([elem, depth]), body))


def with_depth(obj: bytes, depth: int) -> bytes:
    """The same delta object with another chain depth in its header."""
    if not 1 <= depth <= 255 or not obj.startswith(HEADER):
        raise CodecError(f"cannot set delta depth {depth}")
    return obj[:PREFIX_BYTES - 1] + bytes([depth]) + obj[PREFIX_BYTES:]


def _digest_bytes(digest: str) -> bytes:
    if not digest.startswith("blake3:") or len(digest) != 71:
        raise CodecError(f"invalid base digest {digest[:80]!r}")
    return bytes.fromhex(digest[7:])


def parse(payload: bytes | memoryview) -> tuple[DeltaHeader, memoryview]:
    """(header, zstd body) of an xor-delta object's payload (after the TZO1 header)."""
    view = memoryview(payload)
    if len(view) < DIGEST_BYTES + 2:
        raise CodecError("xor-delta header is truncated")
    base = "blake3:" + bytes(view[:DIGEST_BYTES]).hex()
    elem, depth = view[DIGEST_BYTES], view[DIGEST_BYTES + 1]
    if not 1 <= elem <= MAX_ELEM or depth < 1:
        raise CodecError(f"xor-delta header is invalid (element size {elem}, depth {depth})")
    return DeltaHeader(base, elem, depth), view[DIGEST_BYTES + 2:]


def read_header(obj: bytes | memoryview) -> DeltaHeader | None:
    """The delta header of an object (or of its first PREFIX_BYTES), None for a full object."""
    view = memoryview(obj)
    if bytes(view[:len(HEADER)]) != HEADER:
        return None
    return parse(view[len(HEADER):])[0]


def apply(header: DeltaHeader, body: bytes | memoryview, base_raw: bytes | memoryview
          ) -> bytes:
    """The raw chunk: unshuffle(unzstd(body)) XOR base (to be checked against its digest)."""
    base = np.frombuffer(base_raw, dtype=np.uint8)
    if not len(body):
        if base.size:
            raise CodecError("xor-delta body is empty")
        return b""
    try:
        diff = np.frombuffer(bytes(_zstd(1).decode(body)), dtype=np.uint8)
    except Exception as e:  # numcodecs raises RuntimeError/ValueError on bad frames
        raise CodecError(f"xor-delta payload does not decode ({e})") from None
    if diff.size != base.size:
        raise CodecError(f"xor-delta decodes to {diff.size} bytes, its base has {base.size}")
    return xor(unshuffle(diff, header.elem), base).tobytes()


# -- which chunk is a candidate base for which -----------------------------------------------
def candidates(new, old) -> dict[str, Base]:
    """{new chunk digest: Base} for chunks of ``new`` whose parameter existed in ``old``
    (a Manifest each) with the same shape, dtype and chunk shape, at the same index."""
    out: dict[str, Base] = {}
    if old is None:
        return out
    for name, entry in new.params.items():
        prev = old.params.get(name)
        if (prev is None or entry.inline is not None or prev.inline is not None
                or entry.shape != prev.shape or entry.dtype != prev.dtype
                or entry.chunk_shape != prev.chunk_shape):
            continue
        try:
            elem = entry.itemsize
        except KeyError:  # an unknown dtype name: shuffle bytes singly
            elem = 1
        for digest, base in zip(entry.chunks, prev.chunks, strict=True):
            if digest != base:
                out.setdefault(digest, Base(base, elem))
    return out
