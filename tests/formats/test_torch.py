"""PyTorch torch.save files: structure, ties and dtypes kept; unsafe pickles refused."""

from __future__ import annotations

import collections
import io
import math
import os

import pytest
import torch

from theta_zarr import checkpoint
from theta_zarr.formats import FormatError
from theta_zarr.manifest import Manifest
from theta_zarr.settings import Settings

NAME = "runs/step-300.pt"


def settings(tmp_path) -> Settings:
    return Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=4096, workers=4)


def saved(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def clean(data: bytes, tmp_path, name: str = NAME, path: str | None = None) -> Manifest:
    s = settings(tmp_path)
    cache = checkpoint.open_cache(s)
    src = checkpoint.open_source(io.BytesIO(data), cache, name=name, path=path)
    text = checkpoint.clean(src, s, cache).manifest.to_bytes()
    return Manifest.from_bytes(text, name)


def smudge(m: Manifest, tmp_path) -> bytes:
    s = settings(tmp_path)
    out = io.BytesIO()
    checkpoint.smudge(m, out, s, name=NAME, cache=checkpoint.open_cache(s))
    return out.getvalue()


def load(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def round_trip(obj, tmp_path):
    m = clean(saved(obj), tmp_path)
    out = smudge(m, tmp_path)
    # cleaning the rebuilt file gives the same manifest, byte for byte (git status is clean)
    assert clean(out, tmp_path).to_bytes() == m.to_bytes()
    return m, load(out)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().view(-1).view(torch.uint8),
                       b.contiguous().view(-1).view(torch.uint8))


def test_nested_structure_and_leaves(tmp_path):
    g = torch.Generator().manual_seed(0)
    obj = {
        "model": collections.OrderedDict([
            ("encoder.weight", torch.randn(64, 48, generator=g)),
            ("encoder.bias", torch.randn(48, generator=g)),
            ("table", torch.randint(0, 1000, (40, 40), generator=g)),
        ]),
        "optimizer": {"state": {0: {"step": torch.tensor(12.0), "exp_avg": torch.zeros(3)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
        "epoch": 7,
        "big": 2**60,
        "loss": float("nan"),
        "inf": float("-inf"),
        "neg_zero": -0.0,
        "name": "run-\u00e9",
        "nothing": None,
        "flag": True,
        "size": torch.Size([3, 4]),
        "dtype": torch.bfloat16,
        "blob": b"\x00\x01bytes",
        "tuple": (1, "two", [3.5, None]),
        "empty": {}, "empty_list": [], "empty_tensor": torch.empty(0, 3),
        5: "int key",
    }
    m, back = round_trip(obj, tmp_path)
    assert isinstance(back["model"], collections.OrderedDict)
    assert list(back["model"]) == ["encoder.weight", "encoder.bias", "table"]
    assert list(back) == list(obj)
    for k, t in obj["model"].items():
        assert same_bits(back["model"][k], t)
    assert same_bits(back["optimizer"]["state"][0]["step"], obj["optimizer"]["state"][0]["step"])
    assert back["optimizer"]["param_groups"] == obj["optimizer"]["param_groups"]
    assert type(back["optimizer"]["param_groups"][0]["betas"]) is tuple
    assert back["epoch"] == 7 and type(back["epoch"]) is int
    assert back["big"] == 2**60
    assert math.isnan(back["loss"]) and back["inf"] == float("-inf")
    assert math.copysign(1.0, back["neg_zero"]) == -1.0
    assert back["name"] == "run-\u00e9" and back["nothing"] is None and back["flag"] is True
    assert back["size"] == torch.Size([3, 4]) and isinstance(back["size"], torch.Size)
    assert back["dtype"] is torch.bfloat16
    assert back["blob"] == b"\x00\x01bytes"
    assert back["tuple"] == (1, "two", [3.5, None])
    assert back["empty"] == {} and back["empty_list"] == []
    assert back["empty_tensor"].shape == (0, 3)
    assert back[5] == "int key"
    assert "model.encoder.weight" in m.params
    assert m.format["name"] == "torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16,
                                   torch.float8_e4m3fn, torch.float8_e5m2, torch.float64,
                                   torch.int8, torch.int16, torch.int32, torch.int64,
                                   torch.uint8, torch.bool, torch.complex64], ids=str)
def test_dtypes_round_trip_bit_exactly(dtype, tmp_path):
    raw = bytearray(os.urandom(33 * 70 * torch.empty((), dtype=dtype).element_size()))
    if dtype == torch.bool:
        raw = bytearray(b % 2 for b in raw)
    t = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(33, 70)
    m, back = round_trip({"w": t, "s": t[0, 0].clone()}, tmp_path)
    assert same_bits(back["w"], t) and same_bits(back["s"], t[0, 0])
    assert m.params["w"].dtype == str(dtype).removeprefix("torch.")


def test_parameters_and_tied_tensors(tmp_path):
    w = torch.nn.Parameter(torch.randn(50, 40))
    frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)
    base = torch.randn(30, 30)
    obj = {"embed": w, "lm_head": w, "frozen": frozen, "a": base, "b": base,
           "list": [base, w]}
    m, back = round_trip(obj, tmp_path)
    assert len(m.params) == 3  # one copy of each tied tensor
    assert isinstance(back["embed"], torch.nn.Parameter) and back["embed"].requires_grad
    assert isinstance(back["frozen"], torch.nn.Parameter) and not back["frozen"].requires_grad
    assert back["embed"] is back["lm_head"]
    assert back["a"].untyped_storage().data_ptr() == back["b"].untyped_storage().data_ptr()
    assert back["list"][0].untyped_storage().data_ptr() == back["a"].untyped_storage().data_ptr()
    assert back["list"][1] is back["embed"]
    back["a"][0, 0] = 123.0
    assert back["b"][0, 0] == 123.0  # still one storage
    assert same_bits(back["embed"].detach(), w.detach())


def test_non_contiguous_tensors_keep_their_values(tmp_path):
    x = torch.randn(40, 70)
    obj = {"t": x.t(), "stride": x[:, ::3], "slice": x[5:9], "expand": torch.randn(1, 8).expand(
        16, 8), "orig": x}
    _, back = round_trip(obj, tmp_path)
    for k, t in obj.items():
        assert torch.equal(back[k], t), k
        assert back[k].shape == t.shape


def test_module_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.BatchNorm1d(20),
                                torch.nn.Linear(20, 5))
    sd = model.state_dict()
    _, back = round_trip(sd, tmp_path)
    fresh = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.BatchNorm1d(20),
                                torch.nn.Linear(20, 5))
    fresh.load_state_dict(back)
    for k, v in sd.items():
        assert same_bits(fresh.state_dict()[k], v), k


def test_rebuilt_file_is_stable(tmp_path):
    obj = {"w": torch.randn(100, 100, dtype=torch.bfloat16), "step": 3}
    m = clean(saved(obj), tmp_path)
    first = smudge(m, tmp_path)
    assert smudge(m, tmp_path) == first  # smudge is deterministic
    assert clean(first, tmp_path).to_bytes() == m.to_bytes()


def test_clean_from_a_path_and_from_a_stream_agree(tmp_path):
    p = tmp_path / "ckpt.pt"
    obj = {"w": torch.randn(64, 64)}
    torch.save(obj, p)
    from_path = clean(p.read_bytes(), tmp_path, path=str(p))
    from_stream = clean(p.read_bytes(), tmp_path)
    assert from_path.to_bytes() == from_stream.to_bytes()
    assert not any(f.name.startswith("spool-") for f in (tmp_path / "cache" / "tmp").iterdir())


class Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    data = saved({"w": torch.zeros(3), "evil": Exploit(str(marker))})
    with pytest.raises(FormatError) as info:
        clean(data, tmp_path)
    msg = str(info.value)
    assert "weights_only" in msg and NAME in msg and "\n" not in msg
    assert not marker.exists()


def test_legacy_file_gets_the_legacy_message(tmp_path):
    data = saved({"w": torch.zeros(3)}, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError) as info:
        clean(data, tmp_path)
    msg = str(info.value)
    assert "legacy" in msg and NAME in msg and "\n" not in msg


def test_truncated_zip_is_refused(tmp_path):
    data = saved({"w": torch.randn(100, 100)})
    with pytest.raises(FormatError) as info:
        clean(data[: len(data) // 2], tmp_path)
    assert NAME in str(info.value) and "\n" not in str(info.value)


def test_unsupported_leaf_is_refused(tmp_path):
    data = saved({"w": torch.zeros(2), "s": {1, 2}})  # a set loads under weights_only
    try:
        load(data)
    except Exception:
        pytest.skip("this torch refuses sets under weights_only")
    with pytest.raises(FormatError, match="cannot store a set"):
        clean(data, tmp_path)


def test_sparse_tensor_is_refused(tmp_path):
    data = saved({"w": torch.eye(4).to_sparse()})
    with pytest.raises(FormatError) as info:
        clean(data, tmp_path)
    assert NAME in str(info.value)


def test_keys_that_are_zarr_paths_keep_their_nesting(tmp_path):
    obj = {"enc/layer_0/kernel": torch.ones(3), "": torch.zeros(2)}
    m, back = round_trip(obj, tmp_path)
    assert list(back) == ["enc/layer_0/kernel", ""]
    assert torch.equal(back[""], torch.zeros(2))


@pytest.mark.parametrize("key", ["a\\b", "..", "a/", "x//y", "zarr.json", "line\nbreak"])
def test_any_string_key_round_trips(key, tmp_path):
    _, back = round_trip({key: torch.arange(3.0)}, tmp_path)
    assert list(back) == [key] and torch.equal(back[key], torch.arange(3.0))
