"""Storage codecs of objects: how one chunk's raw bytes sit in a file or bucket.

An object is ``b"TZO1"``, one byte giving the codec name's length, the codec
name in ASCII, then the payload.  The digest always names the *raw* bytes, so the
codec is the writer's choice per object and never changes a manifest.

``xor-delta`` objects (delta.py) name a base object and cannot be decoded alone:
ObjectStore resolves them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from numcodecs import Zstd

MAGIC = b"TZO1"
DELTA = "xor-delta"


class CodecError(ValueError):
    """An object whose header or payload cannot be decoded."""


class Codec(ABC):
    name: str

    @abstractmethod
    def encode(self, raw: memoryview) -> bytes | memoryview: ...

    @abstractmethod
    def decode(self, payload: memoryview) -> bytes | memoryview: ...


class RawCodec(Codec):
    """The payload is the raw chunk: the clean path's default (no CPU spent)."""

    name = "raw"

    def encode(self, raw: memoryview) -> memoryview:
        return raw

    def decode(self, payload: memoryview) -> memoryview:
        return payload


class ZstdCodec(Codec):
    """zstd at a low level: for remotes, where bytes cost more than CPU."""

    name = "zstd"

    def __init__(self, level: int = 1):
        self._zstd = Zstd(level=level)

    def encode(self, raw: memoryview) -> bytes:
        # numcodecs cannot decode the frame it writes for empty input: empty stays empty
        return bytes(self._zstd.encode(raw)) if len(raw) else b""

    def decode(self, payload: memoryview) -> bytes:
        if not len(payload):
            return b""
        try:
            return bytes(self._zstd.decode(payload))
        except Exception as e:  # numcodecs raises RuntimeError/ValueError on bad frames
            raise CodecError(f"zstd payload does not decode ({e})") from None


CODECS: dict[str, Codec] = {c.name: c for c in (RawCodec(), ZstdCodec())}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        if name == DELTA:
            raise CodecError("an xor-delta object needs its base: read it through an "
                             "object store") from None
        raise CodecError(f"unknown storage codec {name!r}") from None


def header(codec: str) -> bytes:
    name = codec.encode("ascii")
    return MAGIC + bytes([len(name)]) + name


def encode(raw: bytes | memoryview, codec: str = "raw") -> list[bytes | memoryview]:
    """The object for a raw chunk, as parts to write in order (no copy for raw)."""
    c = get_codec(codec)
    return [header(c.name), c.encode(memoryview(raw))]


def encode_bytes(raw: bytes | memoryview, codec: str = "raw") -> bytes:
    return b"".join(encode(raw, codec))


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


def decode(obj: bytes | memoryview) -> bytes | memoryview:
    """The raw chunk bytes of an object (to be checked against its digest by the caller)."""
    name, payload = split(obj)
    return get_codec(name).decode(payload)
