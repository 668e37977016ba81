"""Delta objects: a chunk stored as its difference from another chunk's raw bytes.

A fine-tune or a training step changes every weight a little.  In most weights
only the low mantissa bits move, so the difference between the new chunk's bit
patterns and the previous version's is mostly zero bits; byte-shuffled by the
dtype's item size it compresses far better than the chunk itself.  Both forms
work on bit patterns, never on float arithmetic, so reconstruction is bit-exact
in every dtype (NaN payloads, -0.0, subnormals).

Two forms, one layout (the TZO1 header of codecs.py, then)::

    32 bytes   the base's digest (the blake3 of its raw bytes, as raw bytes)
    1 byte     element size (the dtype's item size, 1 to 16)
    1 byte     chain depth: 1 over a full object, base depth + 1 over a delta
    rest       the body

- ``xor-delta``: body = zstd(byte_shuffle(raw XOR base_raw)).  Any item size.
- ``int-delta`` (the writer's choice for item sizes 1, 2, 4, 8): the elements'
  bit patterns read as unsigned integers, ``d = raw - base`` modulo 2**bits,
  zigzag-mapped (0, -1, 1, -2... to 0, 1, 2, 3...) so small steps either way have
  leading zero bits, in a Blosc frame (codecs.blosc_encode: bit-shuffled for item
  sizes 1 and 2, byte-shuffled for 4 and 8, then zstd level 1).  For a weight
  nudged by a relative step, ``d`` is its step in units in the last place, a small
  number; XOR also flips every bit below a carry, so the difference compresses
  better (docs/benchmarks.md: 30% fewer bytes than zstd of the XOR on fp32 at a
  1e-3 step).  Modular arithmetic is a bijection, so ``raw = base + d`` exactly.

The digest of a delta object is still the digest of the raw chunk; manifests
never change.  Readers resolve the base through the same store (objects.py),
verify it, apply the delta and verify the result against the object's digest.
Writers (remote.push_objects) choose a delta only where it pays and only over a
base the destination already has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import codecs
from .codecs import CodecError

if TYPE_CHECKING:
    import numpy as np

NAME = "xor-delta"
INT = "int-delta"
NAMES = (NAME, INT)
HEADER = codecs.header(NAME)
HEADERS = {codecs.header(n): n for n in NAMES}
assert len({len(h) for h in HEADERS}) == 1  # one prefix length for both forms
DIGEST_BYTES = 32
#: bytes of an object that say everything about its delta form (header + base + elem + depth)
PREFIX_BYTES = len(HEADER) + DIGEST_BYTES + 2
DEFAULT_RATIO = 0.8
DEFAULT_DEPTH = 8
#: readers refuse chains deeper than this whatever the writer's setting (a loop is corruption)
MAX_DEPTH = 64
MAX_ELEM = 16
#: item sizes int-delta takes (unsigned integer widths)
INT_ELEMS = (1, 2, 4, 8)
# int-delta bodies: bit-shuffle suits narrow items (bf16's changed bits sit in a few
# bit planes), byte-shuffle wide ones (measured, docs/benchmarks.md)
_INT_SHUFFLE = {1: codecs.BITSHUFFLE, 2: codecs.BITSHUFFLE,
                4: codecs.SHUFFLE, 8: codecs.SHUFFLE}


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
    """What a delta object's payload says before its body (module doc, ``parse``).

    ``base``: the digest of the base's raw bytes (``blake3:<64 hex>``); ``elem``: the
    chunk dtype's item size in bytes, 1 to ``MAX_ELEM`` (one of ``INT_ELEMS`` for
    int-delta); ``depth``: the chain length, 1 over a full object, at least 1; ``form``:
    ``xor-delta`` or ``int-delta``.
    """

    base: str  # digest of the base's raw bytes
    elem: int  # element size
    depth: int  # 1 over a full base
    form: str = NAME  # xor-delta or int-delta


@dataclass(frozen=True)
class Base:
    """A delta candidate for a chunk: the same chunk of the parent version."""

    digest: str
    elem: int = 1


def xor(raw: bytes | memoryview, base: bytes | memoryview) -> np.ndarray:
    """``raw XOR base`` byte by byte: a 1-d uint8 array of their common length.

    Its own inverse: ``xor(xor(raw, base), base)`` is ``raw``.  Raises CodecError when the
    lengths differ.
    """
    import numpy as np

    a = np.frombuffer(raw, dtype=np.uint8)
    b = np.frombuffer(base, dtype=np.uint8)
    if a.shape != b.shape:
        raise CodecError(f"delta needs equal lengths (chunk {a.size} bytes, base {b.size})")
    # XOR 8 bytes at a time where the length allows: numpy's uint8 loop is slower
    if a.size % 8 == 0:
        return np.bitwise_xor(a.view(np.uint64), b.view(np.uint64)).view(np.uint8)
    return np.bitwise_xor(a, b)


def shuffle(data: np.ndarray, elem: int) -> np.ndarray:
    """Byte-shuffle a 1-d uint8 array by item size ``elem``: every element's first byte,
    then every second byte, and so on (Blosc's shuffle filter; ``unshuffle`` undoes it).

    ``data`` is returned unchanged when ``elem`` is 1 or does not divide its length.
    """
    import numpy as np

    if elem <= 1 or data.size % elem:
        return data
    return np.ascontiguousarray(data.reshape(-1, elem).T).reshape(-1)


def unshuffle(data: np.ndarray, elem: int) -> np.ndarray:
    """The inverse of ``shuffle``: the elements' bytes back in order (1-d uint8); ``data``
    unchanged when ``elem`` is 1 or does not divide its length."""
    import numpy as np

    if elem <= 1 or data.size % elem:
        return data
    return np.ascontiguousarray(data.reshape(elem, -1).T).reshape(-1)


def best_form(elem: int) -> str:
    """The form a writer uses for item size ``elem``: int-delta where it applies."""
    return INT if elem in INT_ELEMS else NAME


def zigzag_diff(raw: bytes | memoryview, base_raw: bytes | memoryview, elem: int
                ) -> np.ndarray:
    """zigzag(raw - base) over ``elem``-byte unsigned integers, modulo 2**(8*elem)."""
    a, b = codecs.typed(raw, elem), codecs.typed(base_raw, elem)
    if a.shape != b.shape:
        raise CodecError(f"delta needs equal lengths (chunk {a.nbytes} bytes, "
                         f"base {b.nbytes})")
    signed = (a - b).view(a.dtype.str.replace("u", "i"))
    return ((signed << 1) ^ (signed >> (8 * a.itemsize - 1))).view(a.dtype)


def unzigzag_add(zz: np.ndarray, base_raw: bytes | memoryview, elem: int) -> bytes:
    """base + unzigzag(zz), the inverse of :func:`zigzag_diff`."""
    import numpy as np

    b = codecs.typed(base_raw, elem)
    z = codecs.typed(zz, elem)
    if z.shape != b.shape:
        raise CodecError(f"int-delta decodes to {z.nbytes} bytes, its base has {b.nbytes}")
    return (b + ((z >> 1) ^ np.negative(z & 1))).tobytes()


def encode(raw: bytes | memoryview, base_raw: bytes | memoryview, base_digest: str,
           elem: int = 1, depth: int = 1, level: int = 1, form: str = NAME) -> bytes:
    """The delta object of ``raw`` over ``base_raw`` (whose digest is ``base_digest``).

    ``form`` is ``xor-delta`` or ``int-delta`` (an item size int-delta does not take,
    or a length ``elem`` does not divide, gets xor-delta).  Raises CodecError when the
    lengths differ or ``depth`` is not 1..255.
    """
    if not 1 <= depth <= 255:
        raise CodecError(f"delta depth {depth} out of range")
    elem = elem if 1 <= elem <= MAX_ELEM else 1
    if form == INT and elem in INT_ELEMS and len(memoryview(raw)) % elem == 0:
        zz = zigzag_diff(raw, base_raw, elem)
        body = codecs.blosc_encode(zz, elem, _INT_SHUFFLE[elem]) if zz.size else b""
        head = codecs.header(INT)
    else:
        diff = shuffle(xor(raw, base_raw), elem)
        body = bytes(codecs.numcodecs_zstd(level).encode(diff)) if diff.size else b""
        head = HEADER
    return b"".join((head, _digest_bytes(base_digest), bytes([elem, depth]), body))


def with_depth(obj: bytes, depth: int) -> bytes:
    """The same delta object with another chain depth in its header."""
    if not 1 <= depth <= 255 or bytes(obj[:len(HEADER)]) not in HEADERS:
        raise CodecError(f"cannot set delta depth {depth}")
    return obj[:PREFIX_BYTES - 1] + bytes([depth]) + obj[PREFIX_BYTES:]


def _digest_bytes(digest: str) -> bytes:
    if not digest.startswith("blake3:") or len(digest) != 71:
        raise CodecError(f"invalid base digest {digest[:80]!r}")
    return bytes.fromhex(digest[7:])


def parse(payload: bytes | memoryview, form: str = NAME) -> tuple[DeltaHeader, memoryview]:
    """(header, body) of a delta object's payload (after the TZO1 header naming ``form``)."""
    view = memoryview(payload)
    if len(view) < DIGEST_BYTES + 2:
        raise CodecError(f"{form} header is truncated")
    base = "blake3:" + bytes(view[:DIGEST_BYTES]).hex()
    elem, depth = view[DIGEST_BYTES], view[DIGEST_BYTES + 1]
    if not 1 <= elem <= MAX_ELEM or depth < 1:
        raise CodecError(f"{form} header is invalid (element size {elem}, depth {depth})")
    if form == INT and elem not in INT_ELEMS:
        raise CodecError(f"int-delta header is invalid (element size {elem})")
    return DeltaHeader(base, elem, depth, form), view[DIGEST_BYTES + 2:]


def read_header(obj: bytes | memoryview) -> DeltaHeader | None:
    """The delta header of an object (or of its first PREFIX_BYTES), None for a full object."""
    view = memoryview(obj)
    form = HEADERS.get(bytes(view[:len(HEADER)]))
    if form is None:
        return None
    return parse(view[len(HEADER):], form)[0]


def apply(header: DeltaHeader, body: bytes | memoryview, base_raw: bytes | memoryview
          ) -> bytes:
    """The raw chunk from a delta's body and its base (to be checked against its digest):
    unshuffle(unzstd(body)) XOR base, or base + unzigzag(blosc body)."""
    import numpy as np

    base = np.frombuffer(base_raw, dtype=np.uint8)
    if not len(body):
        if base.size:
            raise CodecError(f"{header.form} body is empty")
        return b""
    if header.form == INT:
        if base.size % header.elem:
            raise CodecError(f"int-delta base of {base.size} bytes is not whole elements "
                             f"of {header.elem}")
        zz = np.frombuffer(codecs.blosc_decode(body, "int-delta", base.size), dtype=np.uint8)
        return unzigzag_add(zz, base_raw, header.elem)
    # a body decodes to its base's size: no more is ever allocated (a bomb is refused)
    diff = np.frombuffer(codecs.zstd_decode(body, base.size, "xor-delta"), dtype=np.uint8)
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
