"""Storage codecs of objects: one header format, the digest independent of the codec."""

from __future__ import annotations

import os

import pytest

from theta_zarr import chunking, codecs
from theta_zarr.codecs import CodecError

PAYLOADS = [b"x", os.urandom(5000), b"\x00" * 100_000, bytes(range(256)) * 64]


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("raw", PAYLOADS, ids=lambda b: f"{len(b)}B")
def test_round_trip(codec, raw):
    obj = codecs.encode_bytes(raw, codec)
    assert bytes(codecs.decode(obj)) == raw
    assert bytes(codecs.decode(memoryview(obj))) == raw
    name, payload = codecs.split(obj)
    assert name == codec
    assert obj.startswith(b"TZO1" + bytes([len(codec)]) + codec.encode())


@pytest.mark.parametrize("codec", [
    "raw",
    "zstd",
])
def test_round_trip_empty(codec):
    assert bytes(codecs.decode(codecs.encode_bytes(b"", codec))) == b""


def test_raw_payload_is_the_chunk_itself_without_copy():
    raw = bytearray(b"abcdef" * 100)
    parts = codecs.encode(raw, "raw")
    assert parts[0] == codecs.header("raw") == b"TZO1\x03raw"
    assert isinstance(parts[1], memoryview) and parts[1].obj is raw


def test_zstd_compresses_redundant_data():
    raw = b"\x00" * 100_000
    assert len(codecs.encode_bytes(raw, "zstd")) < 1000


def test_digest_does_not_depend_on_codec():
    raw = os.urandom(3000)
    d = chunking.digest(raw)
    for codec in ("raw", "zstd"):
        assert chunking.digest(codecs.decode(codecs.encode_bytes(raw, codec))) == d
    assert codecs.encode_bytes(raw, "raw") != codecs.encode_bytes(raw, "zstd")


@pytest.mark.parametrize("obj,fragment", [
    (b"", "no theta-zarr header"),
    (b"TZO", "no theta-zarr header"),
    (b"TZO2\x03rawdata", "no theta-zarr header"),
    (b"XXXX\x03rawdata", "no theta-zarr header"),
    (b"TZO1\x09raw", "truncated"),
    (b"TZO1\x04ra\xffwdata", "names no codec"),
    (b"TZO1\x03lz4data", "unknown storage codec 'lz4'"),
    (b"TZO1\x00data", "unknown storage codec ''"),
    (b"TZO1\x04zstd" + b"not a zstd frame", "zstd payload does not decode"),
])
def test_bad_objects_raise_codec_error(obj, fragment):
    with pytest.raises(CodecError) as info:
        codecs.decode(obj)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_zstd_payload_raises_codec_error():
    obj = codecs.encode_bytes(os.urandom(10_000), "zstd")
    with pytest.raises(CodecError):
        codecs.decode(obj[:-10])
    with pytest.raises(CodecError):
        codecs.decode(obj[:len(codecs.header("zstd")) + 4])


def test_unknown_codec_for_encode():
    with pytest.raises(CodecError, match="unknown storage codec 'gzip'"):
        codecs.encode(b"x", "gzip")
    with pytest.raises(CodecError):
        codecs.get_codec("gzip")
