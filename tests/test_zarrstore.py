"""The Zarr view of a manifest (zarrstore.py) and the extension data types (zarrdtypes.py).

Manifests come from real checkpoints cleaned through the real pipeline into a
real cache, so the store is tested on exactly the chunks clean produces (short
last chunks, inline chunks, nested names), not on hand-made ones.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
import zarr
from helpers import cached_object_path
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.dtype import data_type_registry

from theta_zarr import checkpoint, zarrdtypes
from theta_zarr.cache import Cache
from theta_zarr.dtypes import BY_NAME
from theta_zarr.manifest import Manifest, ManifestError, ParamEntry
from theta_zarr.objects import MissingObjectError, ObjectError, ObjectStore, object_key
from theta_zarr.remote import ReadThrough
from theta_zarr.settings import Settings
from theta_zarr.storage import open_store
from theta_zarr.zarrstore import ManifestStore, open_group

PROTO = default_buffer_prototype()
ML_DTYPES = [
    ("bfloat16", ml_dtypes.bfloat16),
    ("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
    ("float8_e5m2", ml_dtypes.float8_e5m2),
]
#: float8 types without a negative zero or a second NaN (their fill values are plain)
MORE_FLOAT8 = [
    ("float8_e4m3fnuz", ml_dtypes.float8_e4m3fnuz),
    ("float8_e5m2fnuz", ml_dtypes.float8_e5m2fnuz),
    ("float8_e8m0fnu", ml_dtypes.float8_e8m0fnu),
]


def _bits(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random bit patterns viewed as ``dtype``: every NaN payload and subnormal included."""
    width = torch.tensor([], dtype=dtype).element_size()
    ints = {1: torch.uint8, 2: torch.int16}[width]
    lo, hi = (0, 256) if width == 1 else (-(2**15), 2**15)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(ints).view(dtype)


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {
        "f32": torch.randn(9, 33, generator=gen),
        "f16": _bits(torch.float16, (300, 3), gen),
        "bf16": _bits(torch.bfloat16, (50, 13), gen),
        "f8_e4m3fn": _bits(torch.float8_e4m3fn, (40, 70), gen),
        "f8_e5m2": _bits(torch.float8_e5m2, (2000,), gen),
        "i8": torch.randint(-128, 128, (100,), generator=gen, dtype=torch.int8),
        "i64": torch.randint(-(2**62), 2**62, (5, 7), generator=gen, dtype=torch.int64),
        "mask": torch.rand(64, 9, generator=gen) > 0.5,
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        # 80-byte rows, 1024-byte chunks: 12 rows a chunk, 5 chunks, the last has 2 rows
        "short": torch.randn(50, 20, generator=gen),
        "encoder/layer.0/attn.w": torch.randn(3, 4, 40, generator=gen),
        "encoder/layer.0/attn.b": torch.randn(40, generator=gen),
        "encoder/norm": torch.randn(8, generator=gen),
    }


def _clean(tmp: Path, tensors: dict[str, torch.Tensor]) -> tuple[Manifest, Cache]:
    path = tmp / "m.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    settings = Settings(cache_dir=str(tmp / "cache"), chunk_bytes=1024)
    cache = checkpoint.open_cache(settings)
    with open(path, "rb") as f:
        src = checkpoint.open_source(f, cache, name="m.safetensors")
        manifest = checkpoint.clean(src, settings, cache).manifest
    # What git stores are the manifest's bytes: read the view from those.
    return Manifest.from_bytes(manifest.to_bytes()), cache


@pytest.fixture
def cleaned(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Manifest, Cache]:
    tensors = _tensors()
    manifest, cache = _clean(tmp_path, tensors)
    return tensors, manifest, cache


def _raw_torch(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _raw_np(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes()


def _run(coro):
    return asyncio.run(coro)


async def _collect(ait) -> list[str]:
    return [k async for k in ait]


# -- extension data types --------------------------------------------------------------
def test_register_is_idempotent() -> None:
    zarrdtypes.register()
    before = dict(data_type_registry.contents)
    zarrdtypes.register()
    assert data_type_registry.contents == before
    assert data_type_registry.get("bfloat16") is zarrdtypes.BFloat16
    assert data_type_registry.get("float8_e4m3fn") is zarrdtypes.Float8E4M3FN
    assert data_type_registry.get("float8_e5m2") is zarrdtypes.Float8E5M2


@pytest.mark.parametrize(("name", "ml"), ML_DTYPES + MORE_FLOAT8)
def test_plain_zarr_roundtrips_ml_dtypes(name: str, ml: type) -> None:
    zarrdtypes.register()
    store = zarr.storage.MemoryStore()
    arr = zarr.create_array(store=store, shape=(4,), dtype=ml, chunks=(3,))
    width = np.dtype(ml).itemsize
    bits = np.array([0x3F, 0x80, 0x7F, 0x01], dtype=np.uint8) if width == 1 else \
        np.array([0x3FC0, 0x8000, 0x7FC1, 0x0001], dtype=np.uint16)  # 1.5, -0, NaN payload, tiny
    values = bits.view(ml)
    arr[:] = values
    doc = json.loads(store._store_dict["zarr.json"].to_bytes())
    assert doc["data_type"] == name
    back = zarr.open_array(store=store, mode="r")
    out = back[:]
    assert out.dtype == np.dtype(ml)
    assert _raw_np(out) == _raw_np(values)


@pytest.mark.parametrize(("name", "ml"), ML_DTYPES + MORE_FLOAT8)
def test_metadata_json_naming_extension_dtype_is_readable(name: str, ml: type) -> None:
    zarrdtypes.register()
    width = np.dtype(ml).itemsize
    bytes_codec: dict = {"name": "bytes"}
    if width > 1:
        bytes_codec["configuration"] = {"endian": "little"}
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": [6], "data_type": name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": "NaN", "codecs": [bytes_codec], "attributes": {},
    }
    values = np.array([1.0, -2.0, 0.5], dtype=ml)
    buf = default_buffer_prototype().buffer
    store = zarr.storage.MemoryStore({"zarr.json": buf.from_bytes(json.dumps(meta).encode()),
                                      "c/0": buf.from_bytes(values.tobytes())})
    arr = zarr.open_array(store=store, mode="r")
    assert arr.dtype == np.dtype(ml)
    out = arr[:]
    assert _raw_np(out[:3]) == _raw_np(values)
    assert np.isnan(out[3:].astype(np.float32)).all()  # chunk 1 absent: the fill value


@pytest.mark.parametrize(("name", "ml"), ML_DTYPES)
def test_fill_value_json(name: str, ml: type) -> None:
    zdt = data_type_registry.get(name)()
    width = np.dtype(ml).itemsize
    assert zdt.to_json(zarr_format=3) == name
    assert zdt.to_native_dtype() == np.dtype(ml)
    assert zdt.from_json_scalar(1.5, zarr_format=3) == ml(1.5)
    assert np.isnan(zdt.from_json_scalar("NaN", zarr_format=3))
    assert zdt.to_json_scalar(ml(-0.5), zarr_format=3) == -0.5
    assert zdt.to_json_scalar(ml(float("nan")), zarr_format=3) == "NaN"
    # raw bits as hex: one way to name a NaN that is not the canonical one
    odd_nan = np.array(0x7FC1 if width == 2 else 0xFF, dtype=f"<u{width}").view(ml)[()]
    hexed = zdt.to_json_scalar(odd_nan, zarr_format=3)
    assert isinstance(hexed, str) and hexed.startswith("0x") and len(hexed) == 2 + 2 * width
    back = zdt.from_json_scalar(hexed, zarr_format=3)
    assert _raw_np(np.array(back, dtype=ml)) == _raw_np(np.array(odd_nan, dtype=ml))
    with pytest.raises(TypeError):
        zdt.from_json_scalar("0x1", zarr_format=3)
    with pytest.raises(TypeError):
        zdt.from_json_scalar(True, zarr_format=3)
    with pytest.raises(ValueError):
        zdt.to_json(zarr_format=2)


# -- the Zarr view of a manifest -------------------------------------------------------
def test_every_parameter_reads_back_bit_exactly(cleaned) -> None:
    tensors, manifest, cache = cleaned
    group = open_group(manifest, cache)
    assert set(manifest.params) == set(tensors)
    for name, tensor in tensors.items():
        arr = group[name]
        assert arr.shape == tuple(tensor.shape), name
        assert arr.dtype == BY_NAME[manifest.params[name].dtype].numpy, name
        out = arr[...]
        assert out.shape == tuple(tensor.shape), name
        assert _raw_np(out) == _raw_torch(tensor), name


def test_manifest_has_the_cases_the_tests_mean(cleaned) -> None:
    """Guard: the fixture really has inline, short-last-chunk and multi-chunk params."""
    _, manifest, _ = cleaned
    short = manifest.params["short"]
    assert short.chunk_shape == (12, 20) and len(short.chunks) == 5
    assert short.spans()[-1][1] == 2 * 20 * 4  # the last chunk holds 2 rows only
    assert manifest.params["scalar"].is_inline
    assert manifest.params["encoder/norm"].is_inline
    assert manifest.params["empty"].chunks == () and not manifest.params["empty"].is_inline
    assert len(manifest.params["encoder/layer.0/attn.w"].chunks) == 3


def test_slice_reads_only_the_chunks_it_covers(cleaned) -> None:
    tensors, manifest, cache = cleaned
    store = ManifestStore(manifest, cache)
    group = zarr.open_group(store=store, mode="r")
    arr = group["short"]
    assert store.reads == 0  # opening reads metadata only
    out = arr[3:7]  # rows 3..6: chunk 0 alone
    assert store.reads == 1
    assert _raw_np(out) == _raw_torch(tensors["short"][3:7])
    out = arr[10:14]  # rows 10..13: chunks 0 and 1
    assert store.reads == 3
    assert _raw_np(out) == _raw_torch(tensors["short"][10:14])
    out = arr[48:]  # the short last chunk, padded for zarr and cut back by it
    assert store.reads == 4
    assert _raw_np(out) == _raw_torch(tensors["short"][48:])
    group["scalar"][...]  # inline chunks cost no object read
    group["encoder/norm"][2:5]
    assert store.reads == 4


def test_short_last_chunk_is_served_padded(cleaned) -> None:
    tensors, manifest, cache = cleaned
    store = ManifestStore(manifest, cache)
    buf = _run(store.get("short/c/4/0", PROTO))
    data = buf.to_bytes()
    assert len(data) == 12 * 20 * 4  # the full chunk shape, as zarr's grid expects
    assert data[: 2 * 20 * 4] == _raw_torch(tensors["short"][48:])
    assert data[2 * 20 * 4:] == bytes(10 * 20 * 4)  # zeros: the fill value
    assert _run(store.getsize("short/c/4/0")) == len(data)


def test_names_with_slashes_are_nested_groups(cleaned) -> None:
    tensors, manifest, cache = cleaned
    group = open_group(manifest, cache)
    assert group.attrs["theta_zarr"] == {"format": "safetensors", "params": len(tensors)}
    encoder = group["encoder"]
    assert isinstance(encoder, zarr.Group)
    layer = encoder["layer.0"]
    assert sorted(layer.array_keys()) == ["attn.b", "attn.w"]
    assert _raw_np(layer["attn.w"][...]) == _raw_torch(tensors["encoder/layer.0/attn.w"])
    members = dict(group.members(max_depth=None))
    assert {"encoder", "encoder/layer.0", "encoder/norm", "f32"} <= set(members)
    arrays = {k for k, v in members.items() if isinstance(v, zarr.Array)}
    assert arrays == set(tensors)


def test_writes_are_refused(cleaned) -> None:
    _, manifest, cache = cleaned
    store = ManifestStore(manifest, cache)
    assert store.read_only and not store.supports_writes and not store.supports_deletes
    group = zarr.open_group(store=store, mode="r")
    with pytest.raises(ValueError):
        group["f32"][0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        _run(store.set("f32/c/0/0", PROTO.buffer.from_bytes(b"x")))
    with pytest.raises(ValueError, match="read-only"):
        _run(store.delete("f32/zarr.json"))
    with pytest.raises(ValueError):
        group.create_array("new", shape=(2,), dtype="float32")
    with pytest.raises(ValueError):
        store.with_read_only(False)
    assert store.with_read_only(True) == store


def test_corrupt_object_is_an_error_naming_the_digest(cleaned) -> None:
    tensors, manifest, cache = cleaned
    digest = manifest.params["short"].chunks[1]
    path = cached_object_path(cache.root, digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"TZO1\x03raw" + b"\x00" * (12 * 20 * 4))
    group = open_group(manifest, cache)
    assert _raw_np(group["short"][:12]) == _raw_torch(tensors["short"][:12])  # chunk 0 is fine
    with pytest.raises(ObjectError, match=digest):
        group["short"][12:14]
    with pytest.raises(ObjectError, match=digest):
        group["short"][...]


def test_missing_object_is_an_error_not_zeros(cleaned) -> None:
    _, manifest, cache = cleaned
    digest = manifest.params["f8_e4m3fn"].chunks[0]
    cached_object_path(cache.root, digest).unlink()
    group = open_group(manifest, cache)
    with pytest.raises(MissingObjectError, match=digest):
        group["f8_e4m3fn"][0]


def test_a_lazy_read_bounds_the_remote_object_by_its_chunk(cleaned, tmp_path) -> None:
    """A chunk the cache lacks is fetched with its size from the manifest: a remote object
    larger than any storage form of that chunk is refused before it is read (here a
    sparse file of 1 GiB, free to plant in a folder remote)."""
    _, manifest, cache = cleaned
    digest = manifest.params["f8_e4m3fn"].chunks[0]
    cached_object_path(cache.root, digest).unlink()
    remote = ObjectStore(open_store(str(tmp_path / "remote")), retries=0)
    planted = tmp_path / "remote" / object_key(digest)
    planted.parent.mkdir(parents=True)
    with open(planted, "wb") as f:
        f.truncate(1 << 30)
    group = open_group(manifest, ReadThrough(cache, lambda: remote))
    with pytest.raises(ObjectError, match=f"{digest}.*any storage form of its chunk takes"):
        group["f8_e4m3fn"][0]
    assert not cache.has(digest)


def test_store_keys_ranges_and_listing(cleaned) -> None:
    tensors, manifest, cache = cleaned
    store = ManifestStore(manifest, cache)
    meta = json.loads(_run(store.get("short/zarr.json", PROTO)).to_bytes())
    assert meta["data_type"] == "float32" and meta["shape"] == [50, 20]
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [12, 20]
    assert meta["codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}]
    one_byte = json.loads(_run(store.get("mask/zarr.json", PROTO)).to_bytes())
    assert one_byte["codecs"] == [{"name": "bytes"}] and one_byte["fill_value"] is False
    group_meta = json.loads(_run(store.get("encoder/layer.0/zarr.json", PROTO)).to_bytes())
    assert group_meta["node_type"] == "group"

    whole = _run(store.get("short/c/1/0", PROTO)).to_bytes()
    assert whole == _raw_torch(tensors["short"][12:24])
    ranged = [RangeByteRequest(8, 40), OffsetByteRequest(900), SuffixByteRequest(16),
              SuffixByteRequest(10**6), RangeByteRequest(900, 10**6)]
    expect = [whole[8:40], whole[900:], whole[-16:], whole, whole[900:]]
    for req, exp in zip(ranged, expect, strict=True):
        assert _run(store.get("short/c/1/0", PROTO, req)).to_bytes() == exp, req
    parts = _run(store.get_partial_values(
        PROTO, [("short/c/1/0", RangeByteRequest(0, 4)), ("nope/c/0", None),
                ("zarr.json", SuffixByteRequest(2))]))
    assert parts[0].to_bytes() == whole[:4] and parts[1] is None
    assert parts[2].to_bytes() == _run(store.get("zarr.json", PROTO)).to_bytes()[-2:]

    assert _run(store.exists("short/c/4/0")) and _run(store.exists("scalar/c"))
    for absent in ("short/c/5/0", "short/c/0", "short/c/0/1", "short/c/00/0", "short/x",
                   "encoder/c/0", "nope/zarr.json", "empty/c/0/0", "short/c/-1/0"):
        assert not _run(store.exists(absent)), absent
        assert _run(store.get(absent, PROTO)) is None, absent

    keys = _run(_collect(store.list()))
    assert len(keys) == len(set(keys))
    assert {"zarr.json", "encoder/zarr.json", "encoder/layer.0/zarr.json", "scalar/c",
            "short/c/4/0", "encoder/layer.0/attn.w/c/2/0/0"} <= set(keys)
    assert not [k for k in keys if k.startswith("empty/c")]
    assert _run(_collect(store.list_prefix("short/"))) == \
        ["short/zarr.json"] + [f"short/c/{i}/0" for i in range(5)]
    assert sorted(_run(_collect(store.list_prefix("encoder/layer.0/attn.b")))) == \
        ["encoder/layer.0/attn.b/c/0", "encoder/layer.0/attn.b/zarr.json"]
    assert sorted(_run(_collect(store.list_dir("")))) == sorted(
        ["zarr.json", "encoder", *[n for n in tensors if "/" not in n]])
    assert sorted(_run(_collect(store.list_dir("encoder")))) == \
        ["layer.0", "norm", "zarr.json"]
    assert sorted(_run(_collect(store.list_dir("short")))) == ["c", "zarr.json"]
    assert sorted(_run(_collect(store.list_dir("short/c")))) == ["0", "1", "2", "3", "4"]
    assert _run(_collect(store.list_dir("short/c/4"))) == ["0"]
    assert _run(_collect(store.list_dir("empty"))) == ["zarr.json"]
    assert _run(_collect(store.list_dir("nope"))) == []
    # only the 7 chunk gets above read objects (a byte range still reads its whole object);
    # exists, getsize and listing never do
    assert store.reads == 7


def test_store_equality(cleaned) -> None:
    _, manifest, cache = cleaned
    a, b = ManifestStore(manifest, cache), ManifestStore(manifest, cache)
    assert a == b
    other = Manifest(manifest.format, {k: v for k, v in manifest.params.items() if k != "f32"})
    assert a != ManifestStore(other, cache)
    assert a != zarr.storage.MemoryStore()


def test_array_under_array_is_refused(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"))
    entry = ParamEntry((2,), "float32", (2,), (), (b"\x00" * 8,))
    with pytest.raises(ManifestError, match="'a'"):
        ManifestStore(Manifest({"name": "safetensors"}, {"a": entry, "a/b": entry}), cache)


def test_zero_extent_chunk_axis(tmp_path: Path) -> None:
    """Clean gives chunk_shape (4, 0) to a (4, 0) tensor; zarr needs chunk extents >= 1."""
    tensors = {"w": torch.zeros(4, 0), "v": torch.ones(3)}
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    settings = Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=1024)
    cache = checkpoint.open_cache(settings)
    with open(path, "rb") as f:
        src = checkpoint.open_source(f, cache, name="m.safetensors")
        manifest = checkpoint.clean(src, settings, cache).manifest
    group = open_group(manifest, cache)
    assert group["w"].shape == (4, 0) and group["w"][...].shape == (4, 0)
    assert _raw_np(group["v"][...]) == _raw_torch(tensors["v"])


def test_types_numpy_lacks_are_served_as_raw_bytes(tmp_path: Path) -> None:
    import io

    gen = torch.Generator().manual_seed(5)
    tensors = {"fp4": _bits(torch.uint8, (4, 6), gen).view(torch.float4_e2m1fn_x2),
               "c32": torch.randint(-2**31, 2**31 - 1, (3, 5), generator=gen,
                                    dtype=torch.int32).view(torch.complex32)}
    settings = Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=1024)
    cache = checkpoint.open_cache(settings)
    buf = io.BytesIO()
    torch.save(tensors, buf)
    buf.seek(0)
    m = checkpoint.clean(checkpoint.open_source(buf, cache, name="m.pt"), settings,
                         cache).manifest
    group = open_group(Manifest.from_bytes(m.to_bytes()), cache)
    for name, t in tensors.items():
        arr = group[name]
        assert arr.metadata.attributes["theta_zarr"]["dtype"] == str(t.dtype)[6:]
        assert arr.shape == tuple(t.shape) and arr.dtype.itemsize == t.element_size()
        assert arr.metadata.dimension_names == (f"{name}.dim_0", f"{name}.dim_1")
        assert np.ascontiguousarray(arr[:]).tobytes() == _raw_torch(t.view(torch.uint8))
