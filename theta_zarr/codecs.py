"""Storage codecs of objects: how one chunk's raw bytes sit in a file or bucket.

An object is ``b"TZO1"``, one byte giving the codec name's length, the codec
name in ASCII, then the payload.  The digest always names the *raw* bytes, so the
codec is the writer's choice per object and never changes a manifest.

Codecs (names as written in the header):

- ``raw``: the chunk itself (the local cache's default: checkouts at disk speed);
- ``zstd``: zstd level 1 of the chunk;
- ``blosc``: a Blosc frame (c-blosc 1.x through numcodecs): the chunk byte-shuffled
  by its dtype's item size (all first bytes of the elements, then all second bytes,
  ...), so the exponent bytes of floats sit together, then zstd level 1.  Blosc
  frames carry their own sizes and filter settings, so decoding needs no side
  information.
- ``expsplit``: for 2- and 4-byte elements (bfloat16, float32): each element is
  rotated left by one bit, so a float's sign moves to its lowest bit and its 8
  exponent bits fill the top byte; the top bytes are entropy-coded by zstd set to
  code literals only (``min_match`` 7, a 64-entry hash table: the exponent plane of
  weights has no long repeats, and the matches zstd level 1 finds cost more bits than
  Huffman-coding the same bytes); the sign and mantissa bytes follow as they are,
  being close to random.  This is the exponent extraction of ZipNN (Hershcovitch et
  al., "ZipNN: Lossless Compression for AI Models", 2024, section 4), with zstd's
  Huffman coder (through python-zstandard, whose parameters numcodecs does not expose)
  in place of ZipNN's own.  Payload: uint32 LE length of the zstd frame, the frame
  (its header records the plane's size), then the other ``elem - 1`` bytes of each
  element, element after element.

``auto`` is not a codec but the remotes' writer policy (:func:`choose`):
``expsplit`` for item sizes 2 and 4 (bf16, fp16, fp32) unless ``blosc`` does better
on that chunk, ``blosc`` for 8 and 16, ``zstd`` for bytes and fp8, and ``raw``
whenever the encoded form would not be smaller.  Measured choice and figures:
docs/benchmarks.md.

``xor-delta`` and ``int-delta`` objects (delta.py) name a base object and cannot
be decoded alone: ObjectStore resolves them.

Objects come from remotes and caches others write, so decoding is bounded: every
``decode`` takes ``limit``, the most raw bytes the chunk may hold (its size from the
manifest where the reader knows it, else ``MAX_RAW``), and refuses a payload that
would decode to more before that memory is used (a few KB of zstd can expand to
gigabytes); ``raw`` expands nothing and takes no limit.  Writers store a chunk over
``MAX_RAW`` raw, so every object theta-zarr writes decodes within that default.
"""

from __future__ import annotations

import functools
import struct
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import zstandard

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"TZO1"
DELTAS = ("xor-delta", "int-delta")
DELTA = DELTAS[0]
AUTO = "auto"
#: Blosc block size: 1 MiB blocks compress the shuffled planes of a 4 MiB chunk best
#: (docs/benchmarks.md), still several blocks per chunk
BLOSC_BLOCK = 1 << 20
#: the largest raw chunk a Blosc frame may claim (c-blosc's BLOSC_MAX_BUFFERSIZE: 2 GiB
#: less its 16-byte overhead), and the most any encoded object may decode to: a larger
#: chunk is stored raw
MAX_RAW = 2**31 - 1 - 16
#: zstd output is read in pieces of this size when a frame does not declare its size
_ZSTD_PIECE = 1 << 22
BLOSC_HEADER = struct.Struct("<4B3I")
#: c-blosc's shuffle filters (blosc.h)
NOSHUFFLE, SHUFFLE, BITSHUFFLE = 0, 1, 2


@functools.lru_cache(maxsize=1)
def numcodecs_blosc():
    """numcodecs' blosc module, loaded on first use (a checkout from a ``raw`` cache never
    needs it), with one process-wide setting: Blosc compresses in the calling thread (a
    context per call, the GIL released, no global lock), so theta-zarr's own thread pool
    keeps every core busy; with its default, calls from the main thread would share one
    global Blosc context behind a lock."""
    from numcodecs import blosc

    blosc.use_threads = False
    return blosc


@functools.lru_cache(maxsize=8)
def numcodecs_zstd(level: int):
    """A numcodecs Zstd codec of ``level``, loaded on first use."""
    from numcodecs import Zstd

    return Zstd(level=level)


class CodecError(ValueError):
    """An object whose header or payload cannot be decoded."""


class Codec(ABC):
    """A storage codec: how one chunk's raw bytes become an object's payload and back.

    ``name`` is what the object header records (ASCII, at most 255 bytes: ``header``);
    one instance of each lives in ``CODECS``.  ``decode(encode(raw, elem))`` gives ``raw``'s
    bytes back exactly, and a payload decodes without ``elem`` (it carries what it needs);
    no codec checks the digest (the object store does).
    """

    name: str

    @abstractmethod
    def encode(self, raw: memoryview, elem: int = 1) -> bytes | memoryview:
        """The payload for ``raw``; ``elem`` is the dtype's item size in bytes (a hint)."""

    @abstractmethod
    def decode(self, payload: memoryview, limit: int = MAX_RAW
               ) -> bytes | bytearray | memoryview:
        """The raw chunk a payload of this codec holds; CodecError when it cannot be
        decoded, or would decode to more than ``limit`` bytes (checked before that
        much is allocated)."""


class RawCodec(Codec):
    """The payload is the raw chunk: the clean path's default (no CPU spent)."""

    name = "raw"

    def encode(self, raw: memoryview, elem: int = 1) -> memoryview:
        return raw

    def decode(self, payload: memoryview, limit: int = MAX_RAW) -> memoryview:
        return payload  # nothing expands: the bytes are already read (no limit applies)


def encoded_bound(raw_size: int) -> int:
    """The most bytes an object of a chunk of ``raw_size`` raw bytes can take, in any
    storage form theta-zarr writes (a header, then at worst zstd's own bound: a 1/256
    growth plus a block's overhead; a delta adds its base's digest): what a reader may
    fetch before it judges the object."""
    return 5 + 255 + 34 + raw_size + (raw_size >> 7) + (1 << 16)


class TooLarge(CodecError):
    """A payload decodes (or says it decodes) to more than the reader allows."""

    def __init__(self, what: str, n: int, limit: int):
        super().__init__(f"{what} payload decodes to more than {limit} bytes (at least {n})")
        self.limit = limit


def zstd_decode(payload: bytes | memoryview, limit: int, what: str = "zstd"
                ) -> bytes | bytearray:
    """The bytes of one or more zstd frames, at most ``limit`` of them: a frame that
    declares its size is checked before anything is allocated, one that does not is
    read in pieces and refused as soon as it passes ``limit`` (a decompression bomb
    costs ``limit`` bytes at most, not what it expands to).  CodecError otherwise."""
    view = memoryview(payload)
    out: list[bytes] = []
    total = 0
    try:
        while len(view):
            n = zstandard.frame_content_size(view)
            if n < 0:  # no size in the header: stream what is left, bounded
                rest = bytearray(b"".join(out))
                reader = zstandard.ZstdDecompressor().stream_reader(
                    view, read_across_frames=True)
                while piece := reader.read(min(_ZSTD_PIECE, limit - len(rest) + 1)):
                    rest += piece
                    if len(rest) > limit:
                        raise TooLarge(what, len(rest), limit)
                return bytes(rest) if len(rest) <= _ZSTD_PIECE else rest
            if total + n > limit:
                raise TooLarge(what, total + n, limit)
            frame = zstandard.ZstdDecompressor().decompressobj()
            out.append(frame.decompress(view))  # zstd holds a frame to its declared size
            if not frame.eof:
                raise CodecError(f"{what} payload is truncated")
            total += n
            view = view[len(view) - len(frame.unused_data):]
    except zstandard.ZstdError as e:
        raise CodecError(f"{what} payload does not decode ({e})") from None
    return out[0] if len(out) == 1 else b"".join(out)


class ZstdCodec(Codec):
    """zstd at a low level: bytes that byte-shuffling cannot help (int8, fp8, files)."""

    name = "zstd"

    def __init__(self, level: int = 1):
        self.level = level

    def encode(self, raw: memoryview, elem: int = 1) -> bytes:
        # numcodecs cannot decode the frame it writes for empty input: empty stays empty
        return bytes(numcodecs_zstd(self.level).encode(raw)) if len(raw) else b""

    def decode(self, payload: memoryview, limit: int = MAX_RAW) -> bytes | bytearray:
        return zstd_decode(payload, limit) if len(payload) else b""


def typed(data: bytes | memoryview | np.ndarray, elem: int) -> np.ndarray:
    """``data`` as a 1-d array of unsigned ints of ``elem`` bytes (bytes when it does not
    divide or ``elem`` is not 1, 2, 4 or 8): Blosc takes its shuffle width from it."""
    import numpy as np  # here, not at import: a checkout from a raw cache never needs it

    a = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    a = a.reshape(-1).view(np.uint8)
    if elem in (2, 4, 8) and a.size % elem == 0:
        return a.view(f"<u{elem}")
    return a


def blosc_encode(data: bytes | memoryview | np.ndarray, elem: int,
                 shuffle: int = SHUFFLE) -> bytes:
    """A Blosc frame of ``data`` (zstd level 1, 1 MiB blocks, ``shuffle`` by ``elem``)."""
    arr = typed(data, elem)
    from numcodecs import Blosc

    numcodecs_blosc()
    return bytes(Blosc(cname="zstd", clevel=1, shuffle=shuffle, blocksize=BLOSC_BLOCK)
                 .encode(arr))


def blosc_decode(payload: bytes | memoryview, what: str = "blosc", limit: int = MAX_RAW
                 ) -> bytes:
    """The bytes of a Blosc frame, after checking its header against the payload's size
    (a hostile frame cannot make the reader allocate more than it says, or over
    ``limit``)."""
    view = memoryview(payload)
    if len(view) < BLOSC_HEADER.size:
        raise CodecError(f"{what} payload is truncated")
    # c-blosc 1.x frame header: version, lz version, flags, typesize, then uint32 LE
    # nbytes (raw), blocksize, cbytes (the frame, header included)
    _, _, _, _, nbytes, _, cbytes = BLOSC_HEADER.unpack_from(view)
    if cbytes != len(view) or not 0 <= nbytes <= MAX_RAW:
        raise CodecError(f"{what} frame header claims {cbytes} bytes compressed and "
                         f"{nbytes} raw, the payload has {len(view)}")
    if nbytes > limit:
        raise TooLarge(what, nbytes, limit)
    try:
        return bytes(numcodecs_blosc().decompress(view))
    except Exception as e:  # numcodecs raises RuntimeError on bad frames
        raise CodecError(f"{what} payload does not decode ({e})") from None


class BloscCodec(Codec):
    """Byte-shuffle by the dtype's item size, then zstd level 1 (c-blosc via numcodecs)."""

    name = "blosc"

    def encode(self, raw: memoryview, elem: int = 1) -> bytes:
        return blosc_encode(raw, elem) if len(raw) else b""

    def decode(self, payload: memoryview, limit: int = MAX_RAW) -> bytes:
        return blosc_decode(payload, limit=limit) if len(payload) else b""


class ExponentSplitCodec(Codec):
    """Exponent bytes apart and entropy-coded, sign and mantissa bytes raw (module doc).

    Applies to chunks of 2- or 4-byte elements; anything else raises CodecError."""

    name = "expsplit"
    ELEMS = (2, 4)
    _LENGTH = struct.Struct("<I")

    def __init__(self) -> None:
        self._local = threading.local()  # python-zstandard objects are not thread-safe

    def _coders(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        coders = getattr(self._local, "coders", None)
        if coders is None:
            params = zstandard.ZstdCompressionParameters(
                compression_level=1, strategy=zstandard.STRATEGY_FAST, min_match=7,
                hash_log=6, search_log=1, write_content_size=True)
            coders = self._local.coders = (zstandard.ZstdCompressor(compression_params=params),
                                           zstandard.ZstdDecompressor())
        return coders

    def encode(self, raw: memoryview, elem: int = 1) -> bytes:
        if elem not in self.ELEMS or len(raw) % elem:
            raise CodecError(f"expsplit needs 2- or 4-byte elements, not {elem}")
        import numpy as np

        words = typed(raw, elem)
        top = np.array(8 * elem - 9, words.dtype)
        exponents = (words >> top).astype(np.uint8)  # sign dropped: it is the low bit below
        rotated = words << np.array(1, words.dtype)
        rotated |= words >> top + np.array(8, words.dtype)
        planes = rotated.view(np.uint8).reshape(-1, elem)  # little-endian: top byte last
        rest = np.empty((len(words), elem - 1), np.uint8)
        for k in range(elem - 1):  # column by column: numpy copies these fastest
            rest[:, k] = planes[:, k]
        frame = self._coders()[0].compress(exponents.data)
        return b"".join((self._LENGTH.pack(len(frame)), frame, rest.data))

    def _parts(self, payload: memoryview) -> tuple[memoryview, memoryview, int, int]:
        """(exponent frame, other bytes, element count, element size) of a payload; the
        frame's header gives the count, the other bytes' length then the element size.
        Raises CodecError when the sizes disagree (checked before anything is allocated)."""
        view = memoryview(payload)
        if len(view) >= self._LENGTH.size:
            (flen,) = self._LENGTH.unpack_from(view)
            frame = view[self._LENGTH.size:self._LENGTH.size + flen]
            rest = view[self._LENGTH.size + flen:]
            try:
                n = zstandard.frame_content_size(frame) if len(frame) == flen else -1
            except zstandard.ZstdError:
                n = -1
            for elem in self.ELEMS:
                if n >= 0 and n * elem <= MAX_RAW and len(rest) == n * (elem - 1):
                    return frame, rest, n, elem
        raise CodecError("expsplit payload is truncated or its sizes disagree")

    def exponent_bytes(self, payload: bytes | memoryview) -> int:
        """The size of an encoded payload's exponent frame (what the weights' exponents
        cost: 2 to 3 bits per element for trained or initialised weights)."""
        return self._LENGTH.unpack_from(payload)[0]

    def decode(self, payload: memoryview, limit: int = MAX_RAW) -> memoryview:
        import numpy as np

        frame, rest, n, elem = self._parts(payload)
        if n * elem > limit:
            raise TooLarge("expsplit", n * elem, limit)
        try:
            exponents = np.frombuffer(self._coders()[1].decompress(frame, max_output_size=n),
                                      np.uint8)
        except zstandard.ZstdError as e:
            raise CodecError(f"expsplit payload does not decode ({e})") from None
        if exponents.size != n:
            raise CodecError("expsplit payload is truncated or its sizes disagree")
        out = np.empty((n, elem), np.uint8)
        out[:, elem - 1] = exponents
        planes = np.frombuffer(rest, np.uint8).reshape(n, elem - 1)
        for k in range(elem - 1):
            out[:, k] = planes[:, k]
        words = out.view(f"<u{elem}").reshape(-1)
        sign = words << np.array(8 * elem - 1, words.dtype)
        words >>= np.array(1, words.dtype)
        words |= sign
        return memoryview(out.reshape(-1))


EXPSPLIT = ExponentSplitCodec()
CODECS: dict[str, Codec] = {c.name: c for c in (RawCodec(), ZstdCodec(), BloscCodec(),
                                                EXPSPLIT)}
#: names a writer may be configured with (``theta-zarr.cache-compression``, remote
#: ``compression``): the codecs that apply to any chunk, and ``auto`` (which alone picks
#: ``expsplit``, where the chunk's item size allows it)
WRITER_NAMES = (*(n for n in CODECS if n != EXPSPLIT.name), AUTO)


def get_codec(name: str) -> Codec:
    """The codec an object header names.

    Raises CodecError for a delta codec (``xor-delta``, ``int-delta``: the object needs its
    base, which only an ObjectStore resolves) and for any unknown name.
    """
    try:
        return CODECS[name]
    except KeyError:
        if name in DELTAS:
            raise CodecError(f"an {name} object needs its base: read it through an "
                             "object store") from None
        raise CodecError(f"unknown storage codec {name!r}") from None


def check_writer(name: str) -> str:
    """``name`` if a writer may use it (a codec or ``auto``), else CodecError."""
    if name not in WRITER_NAMES:
        get_codec(name)  # the reason: unknown, or a delta
        raise CodecError(f"storage codec {name!r} is chosen by 'auto' only "
                         f"(configure one of {', '.join(WRITER_NAMES)})")
    return name


def header(codec: str) -> bytes:
    """An object's header for ``codec``: ``b"TZO1"``, one byte giving the name's length,
    then the name in ASCII (module doc).  The name is not checked against ``CODECS``."""
    name = codec.encode("ascii")
    return MAGIC + bytes([len(name)]) + name


def choose(raw: memoryview, elem: int) -> tuple[str, bytes | memoryview]:
    """The ``auto`` policy: (codec name, payload) for one chunk of item size ``elem``."""
    if not len(raw):
        return "raw", raw
    if elem in EXPSPLIT.ELEMS and len(raw) % elem == 0:
        name, payload = EXPSPLIT.name, EXPSPLIT.encode(raw, elem)
        # Weights' exponents cost 2 to 3 bits each; under one bit, or no gain overall,
        # the chunk is not float weights (integers, masks) and byte-shuffling may do better
        if EXPSPLIT.exponent_bytes(payload) * 8 < len(raw) // elem or \
                len(payload) * 1.05 > len(raw):
            other = CODECS["blosc"].encode(raw, elem)
            if len(other) < len(payload):
                name, payload = "blosc", other
    else:
        name = "blosc" if elem > 1 else "zstd"
        payload = CODECS[name].encode(raw, elem)
    if len(payload) >= len(raw):
        return "raw", raw  # does not pay (random bytes, already compressed data)
    return name, payload


def encode(raw: bytes | memoryview, codec: str = "raw", elem: int = 1
           ) -> list[bytes | memoryview]:
    """The object for a raw chunk, as parts to write in order (no copy for raw).

    ``codec`` is a codec name or ``auto`` (:func:`choose`); ``elem`` is the item size
    in bytes of the chunk's dtype (1 when unknown).
    """
    view = memoryview(raw)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    if len(view) > MAX_RAW and codec != "raw":
        codec = "raw"  # no encoded object decodes to more than MAX_RAW (module doc)
    if codec == AUTO:
        name, payload = choose(view, elem)
        return [header(name), payload]
    c = get_codec(codec)
    return [header(c.name), c.encode(view, elem)]


def encode_bytes(raw: bytes | memoryview, codec: str = "raw", elem: int = 1) -> bytes:
    """``encode``'s parts joined into one object (a copy, even for ``raw``); CodecError
    for an unknown codec or a delta."""
    return b"".join(encode(raw, codec, elem))


def split(obj: bytes | memoryview) -> tuple[str, memoryview]:
    """(codec name, payload) of an object, checking the header."""
    view = memoryview(obj)
    if len(view) < 5 or view[:4] != MAGIC:
        raise CodecError("object has no theta-zarr header")
    n = view[4]
    if len(view) < 5 + n:
        raise CodecError("object header is truncated")
    try:
        name = bytes(view[5:5 + n]).decode("ascii")
    except UnicodeDecodeError:
        raise CodecError("object header names no codec") from None
    return name, view[5 + n:]


def decode(obj: bytes | memoryview, limit: int = MAX_RAW) -> bytes | bytearray | memoryview:
    """The raw chunk bytes of an object (to be checked against its digest by the caller),
    at most ``limit`` of them (else CodecError)."""
    name, payload = split(obj)
    return get_codec(name).decode(payload, limit)
