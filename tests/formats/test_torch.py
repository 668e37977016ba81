"""PyTorch torch.save files: structure, ties and dtypes kept; unsafe pickles refused."""

from __future__ import annotations

import collections
import io
import math
import os
import re
import zipfile

import helpers
import pytest
import torch
from helpers import same_bits, torch_saved

from theta_zarr import checkpoint
from theta_zarr.formats import FormatError
from theta_zarr.manifest import Manifest

NAME = "runs/step-300.pt"


def clean(data: bytes, tmp_path, name: str = NAME, path: str | None = None) -> Manifest:
    """``helpers.clean_manifest``, of a file named ``NAME`` unless told."""
    return helpers.clean_manifest(data, tmp_path, name, path=path)


def smudge(m: Manifest, tmp_path) -> bytes:
    """``helpers.smudge`` of a file named ``NAME``."""
    return helpers.smudge(m, tmp_path, NAME)


def load(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def round_trip(obj, tmp_path):
    m = clean(torch_saved(obj), tmp_path)
    out = smudge(m, tmp_path)
    # cleaning the rebuilt file gives the same manifest, byte for byte (git status is clean)
    assert clean(out, tmp_path).to_bytes() == m.to_bytes()
    return m, load(out)


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
    m = clean(torch_saved(obj), tmp_path)
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


def test_pickle_with_code_is_kept_opaque_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    data = torch_saved({"w": torch.zeros(3), "evil": Exploit(str(marker))})
    result = helpers.clean(data, tmp_path, NAME)
    assert result.manifest.format_name == "opaque"
    assert "GLOBAL posix.system" in result.opaque_reason
    assert smudge(result.manifest, tmp_path) == data  # the same bytes, never unpickled
    assert not marker.exists()


def test_refused_pickle_names_the_refused_global_when_weights_are_required(tmp_path):
    marker = tmp_path / "pwned"
    data = torch_saved({"w": torch.zeros(3), "evil": Exploit(str(marker))})
    with pytest.raises(FormatError) as info:
        helpers.clean(data, tmp_path, NAME, opaque=False)
    msg = str(info.value)
    assert "weights_only" in msg and NAME in msg and "\n" not in msg
    assert "GLOBAL posix.system" in msg
    assert not marker.exists()


def test_legacy_file_round_trips_in_the_legacy_format(tmp_path):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(20, 30, generator=g)
    obj = {"w": w, "wt": w.t(), "step": 4}
    data = torch_saved(obj, _use_new_zipfile_serialization=False)
    m = clean(data, tmp_path)
    assert m.format["serialization"] == "legacy"
    out = smudge(m, tmp_path)
    assert not out.startswith(b"PK")  # still a pre-1.6 file
    assert clean(out, tmp_path).to_bytes() == m.to_bytes()
    back = load(out)
    assert torch.equal(back["w"], w) and torch.equal(back["wt"], w.t())
    assert back["wt"].stride() == (1, 30) and back["step"] == 4


def test_truncated_zip_is_refused(tmp_path):
    data = torch_saved({"w": torch.randn(100, 100)})
    with pytest.raises(FormatError) as info:
        clean(data[: len(data) // 2], tmp_path)
    assert NAME in str(info.value) and "\n" not in str(info.value)


def test_a_distributed_checkpoint_data_file_is_kept_opaque(tmp_path):
    """A ``.distcp`` file (accelerate's ``pytorch_model_fsdp_0/__0_0.distcp``) is one
    ``torch.save`` archive per item, one after another: it starts like a PyTorch file but
    torch.load cannot read it.  It used to be refused as a damaged PyTorch file, failing
    ``git add`` of the folder; it is kept as opaque bytes, byte-identically, since DCP's
    ``.metadata`` points at offsets inside it.  The file is built as DCP's
    ``FileSystemWriter`` writes one (``torch.save`` of each item, back to back), without
    the 3 s import of torch.distributed.checkpoint."""
    items = [5, torch.randn(64, 64), torch.randn(64)]  # "step" (bytes item), two tensors
    data = b"".join(torch_saved(item) for item in items)
    file = tmp_path / "__0_0.distcp"
    file.write_bytes(data)
    name = "pytorch_model_fsdp_0/__0_0.distcp"
    for path in (None, str(file)):  # the filter's stream, a file on disk
        result = helpers.clean(data, tmp_path, name, path=path)
        assert result.manifest.format_name == "opaque"
        assert "several zip archives" in result.opaque_reason
        assert helpers.smudge(result.manifest, tmp_path, name) == data
    with pytest.raises(FormatError) as info:
        helpers.clean(data, tmp_path, name, opaque=False)
    assert name in str(info.value) and "\n" not in str(info.value)
    # cut short, it is no longer several archives: still opaque bytes, as any file torch
    # cannot read whose name says no PyTorch; the same bytes named model.pt are a damaged
    # checkpoint, refused
    cut = data[:len(data) // 2]
    result = helpers.clean(cut, tmp_path, name)
    assert "starts like a PyTorch file, but torch cannot read it" in result.opaque_reason
    assert helpers.smudge(result.manifest, tmp_path, name) == cut
    with pytest.raises(FormatError, match="model.pt: not a readable PyTorch file"):
        helpers.clean(cut, tmp_path, "model.pt")


def test_a_damaged_record_says_what_failed_without_torchs_advice_cut_short(tmp_path):
    """The reason is torch's first sentence; it was 200 characters of torch's message,
    its advice cut mid-word (``... there is a high likelihood that your checkpoint f)``)."""
    plain = torch_saved({"w": torch.randn(100, 100)})
    with pytest.raises(FormatError, match="not a readable PyTorch file") as info:
        clean(plain[:100] + bytes(1000) + plain[1100:], tmp_path)
    msg = str(info.value)
    assert "If you are seeing this error" not in msg and msg.endswith(")") and len(msg) < 250


def test_unsupported_leaf_is_refused(tmp_path):
    data = torch_saved({"w": torch.zeros(2), "s": {1, 2}})  # a set loads under weights_only
    try:
        load(data)
    except Exception:
        pytest.skip("this torch refuses sets under weights_only")
    with pytest.raises(FormatError, match="cannot store a set"):
        clean(data, tmp_path)


def test_sparse_tensor_is_refused(tmp_path):
    data = torch_saved({"w": torch.eye(4).to_sparse()})
    with pytest.raises(FormatError) as info:
        clean(data, tmp_path)
    assert NAME in str(info.value)


def test_a_meta_tensor_is_refused_in_one_line(tmp_path):
    """A state dict saved from a model built on the meta device (``init_empty_weights``)
    holds tensors with a shape and no data; its clean ended in ``internal error
    (TypeError: can't convert meta device type tensor to numpy …)``."""
    data = torch_saved({"w": torch.ones(8, 8), "model": {"m": torch.empty(64, 64, device="meta")}})
    with pytest.raises(FormatError) as info:
        clean(data, tmp_path)
    msg = str(info.value)
    assert msg.startswith(NAME) and "model.m" in msg and "meta device" in msg
    assert "\n" not in msg


def test_keys_that_are_zarr_paths_keep_their_nesting(tmp_path):
    obj = {"enc/layer_0/kernel": torch.ones(3), "": torch.zeros(2)}
    m, back = round_trip(obj, tmp_path)
    assert list(back) == ["enc/layer_0/kernel", ""]
    assert torch.equal(back[""], torch.zeros(2))


@pytest.mark.parametrize("key", ["a\\b", "..", "a/", "x//y", "zarr.json", "line\nbreak"])
def test_any_string_key_round_trips(key, tmp_path):
    _, back = round_trip({key: torch.arange(3.0)}, tmp_path)
    assert list(back) == [key] and torch.equal(back[key], torch.arange(3.0))


def on_device(obj, device: str) -> bytes:
    """``torch.save(obj)`` as a machine with ``device`` writes it: the same zip, with the
    storages' location tags (``cpu``) in data.pkl replaced by ``device``."""
    src = zipfile.ZipFile(io.BytesIO(torch_saved(obj)))
    out = io.BytesIO()
    cpu = b"X\x03\x00\x00\x00cpu"
    tag = b"X" + len(device).to_bytes(4, "little") + device.encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert cpu in data
                data = data.replace(cpu, tag)
            z.writestr(info.filename, data)
    return out.getvalue()


def saved_locations(data: bytes) -> list[str]:
    found: list[str] = []

    def remember(storage, location):
        found.append(location)
        return storage

    torch.load(io.BytesIO(data), map_location=remember, weights_only=True)
    return found


@pytest.mark.parametrize("device", ["cuda:0", "cuda:7"])
def test_saved_device_is_kept(device, tmp_path):
    data = on_device({"w": torch.randn(4, 5), "b": torch.randn(5)}, device)
    m = clean(data, tmp_path)
    out = smudge(m, tmp_path)
    assert saved_locations(out) == [device, device]
    assert clean(out, tmp_path).to_bytes() == m.to_bytes()
    back = torch.load(io.BytesIO(out), map_location="cpu", weights_only=True)
    ref = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert torch.equal(back["w"], ref["w"]) and torch.equal(back["b"], ref["b"])
    if not torch.cuda.is_available():  # loading it as saved needs that device, as before
        with pytest.raises(RuntimeError):
            torch.load(io.BytesIO(out), weights_only=True)


def test_views_of_one_storage_come_back_sharing_it(tmp_path):
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(3 * 8, 16, generator=g)  # a fused projection saved as three slices
    obj = {"q": qkv[:8], "k": qkv[8:16], "v": qkv[16:], "t": torch.randn(6, 4).t(),
           "every_other": torch.arange(20.0)[::2], "own": torch.randn(3)}
    m, back = round_trip(obj, tmp_path)
    ptr = back["q"].untyped_storage().data_ptr()
    assert back["k"].untyped_storage().data_ptr() == ptr == back["v"].untyped_storage().data_ptr()
    assert back["q"].untyped_storage().nbytes() == qkv.untyped_storage().nbytes()
    assert [back[k].storage_offset() for k in "qkv"] == [0, 8 * 16, 16 * 16]
    for k, t in obj.items():
        assert torch.equal(back[k], t) and back[k].stride() == t.stride(), k
    assert back["every_other"].untyped_storage().nbytes() == 20 * 4
    # the parameter holds the whole storage once; the plain tensor is its own parameter
    assert sum(e.nbytes for e in m.params.values()) == (24 * 16 + 24 + 20 + 3) * 4
    assert m.params["own"].shape == (3,)


def test_alias_keys_and_views_through_tensors(tmp_path):
    from theta_zarr.formats import get_format

    w = torch.randn(10, 4)
    qkv = torch.randn(6, 2)
    obj = collections.OrderedDict([("wte.weight", w), ("lm_head.weight", w),
                                   ("q", qkv[:3]), ("k", qkv[3:])])
    m = clean(torch_saved(obj), tmp_path)
    views = get_format("torch").tensors(m.format, m.params)
    assert list(views) == list(obj)
    assert views["lm_head.weight"].param == views["wte.weight"].param == "wte.weight"
    assert views["k"].param == "q" and views["k"].offset == 6 and views["k"].shape == (3, 2)


@pytest.mark.parametrize("dtype", ["float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
                                   "float4_e2m1fn_x2", "uint16", "uint32", "uint64",
                                   "complex32", "bits8", "bits16"])
def test_every_torch_dtype_round_trips_bit_exactly(dtype, tmp_path):
    dt = getattr(torch, dtype)
    raw = bytearray(os.urandom(6 * 10 * dt.itemsize))
    t = torch.frombuffer(raw, dtype=torch.uint8).view(dt).reshape(6, 10)
    _, back = round_trip({"w": t, "col": t[:, 1:3]}, tmp_path)
    assert back["w"].dtype == dt and back["w"].shape == (6, 10)
    assert back["w"].view(torch.uint8).tolist() == t.view(torch.uint8).tolist()
    assert back["col"].view(torch.uint8).tolist() == t[:, 1:3].view(torch.uint8).tolist()


def test_zero_size_tensors_and_complex_leaves(tmp_path):
    obj = {"empty": torch.empty(0), "rows": torch.empty(0, 7), "cols": torch.empty(3, 0),
           "odd": torch.empty(0, 5).t(), "z": 1 + 2j, "w": torch.ones(2)}
    _, back = round_trip(obj, tmp_path)
    for k in ("empty", "rows", "cols", "odd"):
        assert back[k].shape == obj[k].shape and back[k].stride() == obj[k].stride(), k
    assert back["z"] == 1 + 2j


def test_plain_state_dict_rebuild_is_byte_identical(tmp_path):
    sd = torch.nn.Linear(8, 4).state_dict()
    data = torch_saved(sd)
    assert smudge(clean(data, tmp_path), tmp_path) == data


def test_selection_by_alias_keeps_views_and_devices(tmp_path):
    w = torch.randn(10, 4)
    qkv = torch.randn(6, 2)
    obj = collections.OrderedDict([("wte.weight", w), ("lm_head.weight", w),
                                   ("q", qkv[:3]), ("k", qkv[3:]), ("other", torch.ones(2))])
    m = clean(on_device(obj, "cuda:1"), tmp_path)
    picked = checkpoint.select(m, checkpoint.matching_params(m, ["lm_head.*", "k"]))
    assert sorted(picked.params) == ["q", "wte.weight"]
    out = smudge(picked, tmp_path)
    back = torch.load(io.BytesIO(out), map_location="cpu", weights_only=True)
    assert list(back) == ["wte.weight", "lm_head.weight", "q", "k"]
    assert torch.equal(back["k"], qkv[3:]) and torch.equal(back["lm_head.weight"], w)
    assert back["k"].untyped_storage().data_ptr() == back["q"].untyped_storage().data_ptr()
    assert set(saved_locations(out)) == {"cuda:1"}


def test_a_plain_tensor_keeps_requires_grad(tmp_path):
    """Only nn.Parameter kept the flag; a plain tensor saved with requires_grad came back
    without it (and git status stayed clean)."""
    w = torch.randn(3).requires_grad_()
    obj = {"w": w, "frozen": torch.randn(2), "p": torch.nn.Parameter(torch.randn(2))}
    _, back = round_trip(obj, tmp_path)
    assert back["w"].requires_grad and not isinstance(back["w"], torch.nn.Parameter)
    assert not back["frozen"].requires_grad and back["p"].requires_grad
    assert same_bits(back["w"].detach(), w.detach())


def test_a_key_longer_than_a_parameter_name_may_be_round_trips(tmp_path):
    """git add refused it ("invalid parameter name 'tensor~kkkk…'", a name the user never
    wrote); the parameter's name is now cut and made unique, the tree keeps the key."""
    long_a, long_b = "k" * 5000, "k" * 4999 + "j"
    obj = {long_a: torch.randn(3), long_b: torch.randn(2), "w": torch.ones(1)}
    m, back = round_trip(obj, tmp_path)
    assert set(back) == set(obj)
    for k, t in obj.items():
        assert same_bits(back[k], t)
    assert len(m.params) == 3 and all(len(n) <= 4096 for n in m.params)


@pytest.mark.parametrize("leaf, words", [
    ({"__device__": "bogus:99"}, "bad node {'__device__': 'bogus:99'}"),
    ({"__size__": "x"}, "bad node {'__size__': 'x'}"),
    ({"__complex__": [1]}, "bad node {'__complex__': [1]}"),
    ({"__dict__": [[{"__list__": [1]}, 2]]}, "bad node {'__dict__'"),
    ({"__dict__": "pairs"}, "bad node {'__dict__': 'pairs'}"),
    ({"__tensor__": "w", "view": [0, [2**40, 2**40], [0, 0]]}, "more elements than a tensor"),
])
def test_a_hand_edited_tree_node_is_one_line(leaf, words, tmp_path):
    """A device string torch rejects, a Size of strings, a list as a dict key, a view of
    2^80 elements: internal errors (RuntimeError, TypeError, IndexError) at checkout."""
    m = clean(torch_saved({"w": torch.ones(4), "step": 3}), tmp_path)
    m.format["tree"]["__dict__"][1][1] = leaf
    edited = Manifest.from_bytes(m.to_bytes(), NAME)
    with pytest.raises(ValueError, match=re.escape(words)):
        smudge(edited, tmp_path)


def test_the_api_refuses_a_tree_naming_an_unknown_tensor(tmp_path):
    """The checkout refused it; the API's tensors left the leaf out silently."""
    from theta_zarr.formats import get_format
    from theta_zarr.manifest import ManifestError

    m = clean(torch_saved({"w": torch.ones(4), "v": torch.zeros(4)}), tmp_path)
    m.format["tree"]["__dict__"][1][1]["__tensor__"] = "nope"
    with pytest.raises(ManifestError, match="unknown tensor 'nope'"):
        get_format("torch").tensors(m.format, m.params)


def test_a_file_rewritten_while_it_is_cleaned_is_one_line_not_sigbus(tmp_path):
    """A trainer's torch.save to the path a clean (git add, publish) reads truncates it
    first.  Storages were hashed straight from torch.load's memory map, and a read past
    the new end of the file killed the process with SIGBUS ("Bus error" through git, no
    line); the storages are now read with pread, which reads short instead."""
    path = tmp_path / "model.pt"
    torch.save({"w": torch.arange(64 * 1024, dtype=torch.float32)}, path)
    proc = helpers.run_python(f"""
        import os
        from theta_zarr import checkpoint
        from theta_zarr.formats import torch as tf
        from theta_zarr.formats.base import FormatError
        from theta_zarr.settings import Settings
        from theta_zarr.sync import clean_file

        real = tf._load
        def load_then_rewrite(path, *args):
            obj = real(path, *args)
            os.truncate(path, 1000)  # torch.save of the next step opens it with O_TRUNC
            return obj
        tf._load = load_then_rewrite
        settings = Settings(cache_dir={str(tmp_path / "cache")!r}, chunk_bytes=65536)
        try:
            clean_file({str(path)!r}, settings, checkpoint.open_cache(settings))
        except FormatError as e:
            print(e)
    """)
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    assert proc.stdout.decode().strip() == (
        "model.pt: the file changed while it was read (another process writing it?); "
        "try again once it is complete")


def test_scratch_space_is_the_tensors_once_and_a_shortage_says_where(tmp_path):
    """A .pt file is rebuilt on a spool of its tensors' bytes in the cache's tmp/.  A
    file-size limit or a full disk there was a bare "[Errno 27] File too large" (no path);
    the spool was a sparse file, so on a full disk the stores through its map killed the
    process with SIGBUS (its blocks are now allocated first).  torch.save's output also
    went through a second scratch file before it was copied out: a checkout needed twice
    the file's size of scratch space, and when only that copy did not fit the line was
    "internal error (RuntimeError: [enforce fail at inline_container.cc] unexpected pos
    ...)".  Now a limit the spool fits in (256 KiB + 200 bytes, under the file's 257.5
    KiB) is enough."""
    import resource

    from theta_zarr.errors import one_line

    data = torch_saved({"w": torch.randn(256, 256)})
    m = helpers.clean_manifest(data, tmp_path, name="opt.pt")
    tmp = tmp_path / "cache" / "tmp"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def smudge_under(limit: int) -> bytes:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # Python ignores SIGXFSZ
        try:
            return helpers.smudge(m, tmp_path)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    with pytest.raises(OSError) as e:
        smudge_under(1000)
    assert one_line(e.value) == f"a scratch file in {tmp}: File too large"
    assert list(tmp.iterdir()) == []
    assert len(data) > (256 << 10) + 200
    assert smudge_under((256 << 10) + 200) == data


def test_a_shortage_while_git_streams_a_file_in_names_the_file_not_the_copy(tmp_path):
    """git hands the filter a .pt file as a stream, copied to the cache's tmp/ for torch's
    random access.  A full disk (here a file-size limit) there named the copy by its
    random name (".tmp-spool-k3j9x2"); it names the checkpoint and the folder."""
    import resource

    from theta_zarr.errors import one_line

    data = torch_saved({"w": torch.randn(256, 256)})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises(OSError) as e:
            helpers.clean(data, tmp_path, name="model.pt", opaque=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    tmp = tmp_path / "cache" / "tmp"
    assert one_line(e.value) == f"a copy of model.pt in {tmp}: File too large"
    assert list(tmp.iterdir()) == []
