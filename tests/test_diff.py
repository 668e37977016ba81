"""Manifest diffs: digest-only summaries, statistics from the differing chunks only."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
from helpers import BF16, clean_manifest, manifest, rng_arr, torch_saved

from theta_zarr.diff import describe, diff, format_text, plot, summarize, textconv_lines
from theta_zarr.manifest import ManifestError


def test_summary_statuses_read_nothing(store):
    a = manifest(store, {"same": rng_arr(0, (4, 64)), "gone": rng_arr(1, (8,)),
                         "grow": rng_arr(2, (3,)), "edit": rng_arr(3, (64, 16))})
    b = manifest(store, {"same": rng_arr(0, (4, 64)), "new": rng_arr(4, (2, 2)),
                         "grow": rng_arr(2, (4,)), "edit": rng_arr(3, (64, 16)) * 2})
    store.cache.reads.clear()
    fd = summarize(a, b, "m.safetensors")
    assert {p.name: p.status for p in fd.params} == {
        "gone": "removed", "new": "added", "grow": "reshaped", "edit": "changed"}
    assert fd.counts()["unchanged"] == 1 and store.cache.reads == []
    edit = next(p for p in fd.params if p.name == "edit")
    assert edit.chunks_changed == edit.chunks == 4


def test_parameters_are_listed_in_natural_order(store):
    """``layers.2`` before ``layers.10``, as a model's own modules come (byte order put
    ``layers.10`` first), in the diff and in its textconv lines."""
    names = ["layers.10.w", "layers.2.w", "layers.1.w", "head"]
    a = manifest(store, {n: rng_arr(i, (4, 64)) for i, n in enumerate(names)})
    b = manifest(store, {n: rng_arr(i, (4, 64)) * 2 for i, n in enumerate(names)})
    want = ["head", "layers.1.w", "layers.2.w", "layers.10.w"]
    assert [p.name for p in summarize(a, b, "m.safetensors").params] == want
    assert [line.split()[0] for line in list(textconv_lines(a))[1:]] == want


def test_statistics_equal_numpy_and_read_only_changed_chunks(store):
    x = rng_arr(0, (64, 16), BF16)  # 2 KiB in 1 KiB chunks: 2 chunks
    y = x.copy()
    y[40:44] = (y[40:44].astype(np.float32) * 1.5).astype(BF16)
    a = manifest(store, {"x": x, "other": rng_arr(9, (256, 16))})
    b = manifest(store, {"x": y, "other": rng_arr(9, (256, 16))})
    store.cache.reads.clear()
    fd = diff(a, b, store, "m")
    (p,) = fd.params
    assert p.chunks == 2 and p.chunks_changed == 1
    changed = set(b.params["x"].chunks) - set(a.params["x"].chunks)
    assert len(store.cache.reads) == 2 and changed <= set(store.cache.reads)
    assert fd.read.chunks == 2 and fd.read.bytes == 2048
    d = y.astype(np.float64) - x.astype(np.float64)
    assert math.isclose(p.l2, float(np.linalg.norm(d)), rel_tol=1e-12)
    assert math.isclose(p.max_abs, float(np.abs(d).max()), rel_tol=1e-12)
    assert p.elements_changed == int(np.count_nonzero(x.view(np.uint16) != y.view(np.uint16)))
    assert p.norm_scope == "changed-chunks"
    norm_changed = float(np.linalg.norm(x[32:].astype(np.float64)))
    assert math.isclose(p.rel_change, p.l2 / norm_changed, rel_tol=1e-12)
    full = diff(a, b, store, "m", full_norm=True).params[0]
    assert full.norm_scope == "tensor"
    assert math.isclose(full.rel_change, p.l2 / float(np.linalg.norm(x.astype(np.float64))),
                        rel_tol=1e-12)
    text = "\n".join(format_text(fd))
    assert "~ x" in text and "chunks 1/2" in text


def _typed(store, arrays: dict[str, tuple[str, np.ndarray]]):
    """A manifest of raw arrays under theta-zarr dtype names (complex32 has no NumPy type)."""
    from theta_zarr.chunkwriter import ChunkWriter
    from theta_zarr.dtypes import by_name
    from theta_zarr.manifest import Manifest

    with ChunkWriter(store.cache, 1024) as w:
        for name, (dtype, arr) in arrays.items():
            dt = by_name(dtype)
            raw = memoryview(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))
            w.add_buffer(name, dt, (len(raw) // dt.itemsize,), raw)
        params = w.finish()
    return Manifest({"name": "safetensors", "order": list(arrays)}, params)


def test_statistics_of_non_finite_integer_and_complex32_tensors_are_exact(store):
    """Unchanged inf/NaN made every statistic NaN or 0; int64 differences were taken in
    float64 (2**62 -> 2**62 + 1 was 0); complex32 lost its imaginary part."""
    f = np.array([1.0, np.inf, 3.0, np.nan], np.float32)
    f2 = f.copy()
    f2[0] += 1
    big = np.array([2**62, 5], np.int64)
    big2 = np.array([2**62 + 1, 5], np.int64)
    wide = np.array([-(2**63)], np.int64)
    wide2 = np.array([2**63 - 1], np.int64)
    u = np.array([0, 2**64 - 1], np.uint64)
    u2 = np.array([2**64 - 1, 0], np.uint64)
    c = np.array([1, 1, 2, 2], np.float16)  # complex32 1+1j, 2+2j as float16 halves
    c2 = np.array([1, 2, 2, 2], np.float16)  # imaginary part of the first + 1
    to_nan = np.array([1.0, 2.0], np.float32)
    to_nan2 = np.array([np.nan, 2.0], np.float32)
    a = _typed(store, {"f": ("float32", f), "i": ("int64", big), "w": ("int64", wide),
                       "u": ("uint64", u),
                       "c": ("complex32", c), "n": ("float32", to_nan)})
    b = _typed(store, {"f": ("float32", f2), "i": ("int64", big2), "w": ("int64", wide2),
                       "u": ("uint64", u2),
                       "c": ("complex32", c2), "n": ("float32", to_nan2)})
    got = {p.name: p for p in diff(a, b, store, "m").params}
    assert (got["f"].max_abs, got["f"].l2, got["f"].elements_changed) == (1.0, 1.0, 1)
    assert (got["i"].max_abs, got["i"].l2, got["i"].elements_changed) == (1.0, 1.0, 1)
    assert got["w"].max_abs == float(2**64 - 1)
    assert got["u"].max_abs == float(2**64 - 1)
    assert (got["c"].max_abs, got["c"].l2, got["c"].elements_changed) == (1.0, 1.0, 1)
    assert got["n"].max_abs == math.inf and got["n"].elements_changed == 1


@pytest.mark.parametrize("regrid", [False, True], ids=["same-grid", "other-grid"])
def test_a_chunk_of_another_size_than_the_manifest_says_is_refused(store, regrid):
    """A dtype edited without its chunks (float32 bytes, float16 claimed) gives an error
    naming the object, never statistics over the wrong bytes (both comparison paths)."""
    x = rng_arr(0, (64, 16))
    a, b = manifest(store, {"x": x}), manifest(store, {"x": x * 2})
    for m in (a, b):
        m.params["x"] = msgspec.structs.replace(m.params["x"], dtype="float16")
    if regrid:
        b.params["x"] = msgspec.structs.replace(b.params["x"], chunk_shape=(32, 16),
                                            chunks=b.params["x"].chunks[:2])
    with pytest.raises(ManifestError, match="object blake3:.*: chunk 0 holds 1024 bytes"):
        diff(a, b, store, "m.safetensors")


def test_different_chunkings_still_compare(store):
    x = rng_arr(0, (64, 16))
    a = manifest(store, {"x": x}, chunk_bytes=1024)
    b = manifest(store, {"x": x + 1}, chunk_bytes=2048)
    p = diff(a, b, store, "m").params[0]
    assert p.chunks_changed == p.chunks == 2
    assert p.elements_changed == x.size and math.isclose(p.max_abs, 1.0, rel_tol=1e-6)
    assert not p.rechunked


def test_the_same_values_in_chunks_of_another_shape_are_said_to_be_so(store):
    """One checkpoint saved with two chunk sizes (or by jobs of two world sizes): every
    chunk digest differs, and the line read '|B-A| 0 ... elements 0.0%' as a change."""
    x = rng_arr(0, (64, 16))
    fd = diff(manifest(store, {"x": x}, chunk_bytes=1024),
              manifest(store, {"x": x}, chunk_bytes=2048), store, "m")
    p = fd.params[0]
    assert (p.status, p.elements_changed, p.rechunked) == ("changed", 0, True)
    assert fd.to_json()["params"][0]["rechunked"] is True
    assert format_text(fd)[1] == "  ~ x  float32[64, 16]  chunks 2/2  same values, in chunks " \
        "of another shape"


def test_json_is_finite_and_documented_keys(store):
    z = np.zeros((16, 16), np.float32)
    a, b = manifest(store, {"z": z}), manifest(store, {"z": z + 1})
    obj = diff(a, b, store, "m").to_json()
    text = json.dumps(obj, allow_nan=False)
    p = json.loads(text)["params"][0]
    assert p["rel_change"] is None  # ||A|| = 0: infinite, written as null
    assert set(p) >= {"name", "status", "old", "new", "chunks", "chunks_changed", "numel",
                      "elements_changed", "fraction_changed", "l2", "norm_old", "rel_change",
                      "max_abs", "norm_scope"}
    assert set(obj) == {"path", "format", "summary", "params", "other", "foreign", "read"}


def test_textconv_is_stable_and_per_parameter(store):
    m = manifest(store, {"b": rng_arr(0, (8, 64)), "a": rng_arr(1, (4,))})
    lines = list(textconv_lines(m))
    assert lines[0].startswith("# theta-zarr safetensors checkpoint: 2 parameters")
    assert lines[1].startswith("a float32[4] inline ")
    assert lines[2].startswith("b float32[8, 64] 2 chunks ")
    assert list(textconv_lines(manifest(store, {"a": rng_arr(1, (4,)),
                                                "b": rng_arr(0, (8, 64))}))) == lines


def test_the_documented_textconv_output_is_what_textconv_prints(store):
    """diff-merge.md's textconv example, rebuilt from what its lines name (each tensor's
    name, dtype and shape; the metadata entry): every line but the header and the hashes
    is printed as shown.  It showed '1 chunks' where textconv says '1 chunk'."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "diff-merge.md").read_text()
    block = page.split("## textconv output\n\n```\n", 1)[1].split("```", 1)[0]
    shown = block.splitlines()[1:]
    tensors, metadata = {}, {}
    for line in shown:
        if line.startswith("@ __metadata__."):
            key, value = line[len("@ __metadata__."):].split(" = ")
            metadata[key] = json.loads(value)
        else:
            name, dtype, shape = re.match(r"(\S+) (\w+)\[([\d, ]*)\] ", line).groups()
            tensors[name] = rng_arr(0, tuple(int(n) for n in shape.split(",")),
                                    BF16 if dtype == "bfloat16" else np.dtype(dtype))
    fmt = {"name": "safetensors", "order": list(tensors),
           "header": {"__metadata__": metadata}}
    printed = list(textconv_lines(manifest(store, tensors, chunk_bytes=4 << 20, fmt=fmt)))[1:]
    hashless = re.compile(r" [0-9a-f]{12}$")
    assert [hashless.sub("", x) for x in printed] == [hashless.sub("", x) for x in shown]


def test_plot_writes_png(store, tmp_path):
    x = rng_arr(0, (16, 16))
    fd = diff(manifest(store, {"x": x}), manifest(store, {"x": x * 1.1}), store, "m")
    out = tmp_path / "change.png"
    assert plot([fd], str(out)) == 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a name that is not UTF-8 (os.fsdecode's surrogates) in the title and the labels
    # crashed matplotlib: "internal error (TypeError: set_text() ...)"
    odd = diff(manifest(store, {"x": x}), manifest(store, {"x": x * 2}), store,
               "\udce9t\udce9 a\tb.safetensors")
    assert plot([fd, odd], str(tmp_path / "odd.png")) == 2


def test_plot_writes_the_path_given_or_names_why_not(store, tmp_path):
    """matplotlib appended ".png" to a name without an extension (and to a folder's name)
    while the command said it wrote the name given."""
    fd = diff(manifest(store, {"x": rng_arr(0, (4,))}), manifest(store, {"x": rng_arr(1, (4,))}),
              store, "m")
    plot([fd], str(tmp_path / "change"))
    assert (tmp_path / "change").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot([fd], str(tmp_path / "change.SVG"))
    assert b"<svg" in (tmp_path / "change.SVG").read_bytes()[:400]
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="folder: is a folder"):
        plot([fd], str(tmp_path / "folder"))
    with pytest.raises(ValueError, match=r"change\.xyz: --plot cannot write a '\.xyz' image"):
        plot([fd], str(tmp_path / "change.xyz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change", "change.SVG", "folder"]


def test_plot_without_matplotlib_says_how(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"theta-zarr\[plot\]"):
        plot([], str(tmp_path / "x.png"))


def test_torch_describe_lists_non_tensor_leaves_and_aliases():
    from theta_zarr.formats import get_format

    tree = {"__dict__": [
        ["model", {"__odict__": [["w", {"__tensor__": "model.w"}],
                                 ["head", {"__tensor__": "model.w"}]]}],
        ["step", 7], ["opt", {"__dict__": [["betas", {"__tuple__": [0.9, 0.99]}],
                                           ["state", {"__dict__": []}]]}],
        ["big", {"__int__": "123456789012345678901"}]]}
    described = get_format("torch").describe({"name": "torch", "tree": tree})
    assert described == {"model.head": {"tensor": "model.w"}, "step": 7,
                         "opt.betas.0": 0.9, "opt.betas.1": 0.99, "opt.state": {},
                         "big": {"__int__": "123456789012345678901"}}


def test_torch_describe_follows_views_devices_and_state_dict_attrs():
    from theta_zarr.formats import get_format

    tree = {"__dict__": [
        ["model", {"__odict__": [["qkv", {"__tensor__": "model.qkv"}],
                                 ["q", {"__tensor__": "model.qkv", "view": [0, [2], [1]]}],
                                 ["b", {"__tensor__": "model.b", "device": "cuda:1"}]],
                   "attrs": {"__dict__": [["_metadata", {"__odict__": [
                       ["", {"__dict__": [["version", 1]]}]]}]]}}],
        ["state", {"__dict__": [[0, {"__dict__": [["m", {"__tensor__": "state.0.m"}]]}]]}],
        ["z", {"__complex__": ["1.0", "2.0"]}]]}
    described = get_format("torch").describe({"name": "torch", "tree": tree})
    assert described == {
        "model.q": {"tensor": "model.qkv", "view": [0, [2], [1]]},
        "model.b": {"tensor": "model.b", "device": "cuda:1"},
        "model.(attrs)._metadata..version": 1,
        "z": {"__complex__": ["1.0", "2.0"]}}


def test_format_only_change_is_reported(store):
    a = manifest(store, {"w": rng_arr(0, (4,))})
    b = manifest(store, {"w": rng_arr(0, (4,))})
    a.format = {"name": "safetensors", "order": ["w"], "header": {"__metadata__": {"e": "1"}}}
    b.format = {"name": "safetensors", "order": ["w"], "header": {"__metadata__": {"e": "2"}}}
    fd = summarize(a, b, "m.safetensors")
    assert fd.counts()["other_changed"] == 1 and fd.counts()["unchanged"] == 1
    assert '  * __metadata__.e: "1" -> "2"' in format_text(fd)
    assert '@ __metadata__.e = "2"' in list(textconv_lines(b))


def test_a_file_that_only_reorders_its_tensors_is_a_change(store):
    """Same tensors, data in another order: another file (git sees it), but the diff said
    nothing changed and --exit-code exited 0."""
    a = manifest(store, {"a": rng_arr(0, (4,)), "b": rng_arr(1, (4,))})
    b = manifest(store, {"b": rng_arr(1, (4,)), "a": rng_arr(0, (4,))})
    fd = summarize(a, b, "m.safetensors")
    assert fd.counts()["unchanged"] == 2 and fd.counts()["other_changed"] == 1
    assert '  * (order of the tensors in the file): "a at 0" -> "b at 0"' in format_text(fd)


def test_an_added_or_reshaped_tensor_is_no_layout_change(store):
    """The format's order list and a torch file's tree follow the tensors: adding one or
    reshaping one changed them, and the diff added "(file layout) changed (same tensors,
    same values)", a non-tensor change that was not there."""
    a = manifest(store, {"a": rng_arr(0, (4,)), "b": rng_arr(1, (4,))})
    b = manifest(store, {"a": rng_arr(0, (4,)), "b": rng_arr(1, (4,)), "c": rng_arr(2, (2,))})
    fd = summarize(a, b, "m.safetensors")
    assert fd.counts()["added"] == 1 and fd.other == []
    def torch_file(tensors):
        leaves = [[n, {"__tensor__": n}] for n in tensors]
        return manifest(store, tensors, fmt={"name": "torch", "tree": {"__dict__": leaves}})

    a = torch_file({"a": rng_arr(0, (4,)), "b": rng_arr(1, (4,))})
    b = torch_file({"b": rng_arr(1, (2, 2))})
    fd = summarize(a, b, "m.pt")
    assert fd.counts()["reshaped"] == fd.counts()["removed"] == 1 and fd.other == []


def test_a_tensor_cast_to_another_dtype_is_no_reordering_of_the_file(tmp_path):
    """safetensors lays tensors out by dtype, then name: one tensor cast to bf16 moves to
    the end of the file.  The diff listed it reshaped and also invented a non-tensor
    change, ``(order of the tensors in the file): "l0 at 0" -> "l1 at 0"``."""
    import torch
    from safetensors.torch import save

    tensors = {f"l{i}": torch.full((8, 8), float(i)) for i in range(3)}
    a = clean_manifest(save(tensors), tmp_path, "m.safetensors")
    b = clean_manifest(save({**tensors, "l0": tensors["l0"].to(torch.bfloat16)}), tmp_path,
                       "m.safetensors")
    assert a.format["order"][0] == "l0" and b.format["order"][-1] == "l0"
    fd = summarize(a, b, "m.safetensors")
    assert fd.counts()["reshaped"] == 1 and fd.other == []
    assert format_text(fd)[1:] == ["  ! l0  float32[8, 8] -> bfloat16[8, 8]"]


def test_a_renamed_parameter_is_paired_with_its_old_name(tmp_path):
    """A parameter renamed with its values kept (``fc.weight`` -> ``proj.weight``) was a
    removal and an unrelated addition; git pairs a renamed file with its old name, so the
    added one now names the removed one whose values it holds (digests only).  A new
    parameter with other values is not paired."""
    import torch
    from safetensors.torch import save

    w, b = torch.arange(256.0).reshape(16, 16), torch.ones(4)
    a = clean_manifest(save({"fc.weight": w, "fc.bias": b}), tmp_path, "m.safetensors")
    m = clean_manifest(save({"proj.weight": w, "proj.bias": b * 2}), tmp_path, "m.safetensors")
    fd = summarize(a, m, "m.safetensors")
    assert {p.name: p.same_as for p in fd.params if p.status == "added"} == {
        "proj.weight": "fc.weight", "proj.bias": None}
    assert "  + proj.weight  float32[16, 16]  same values as removed fc.weight" in format_text(fd)
    assert {p["name"]: p["same_as"] for p in fd.to_json()["params"]}["proj.weight"] == "fc.weight"


def test_module_versions_are_left_out_against_another_format_or_no_file(tmp_path):
    """A state dict saved from a module carries ``_metadata`` (one version per module).
    Diffed against its safetensors conversion, or deleted, it listed one
    ``(attrs)._metadata.<module>.version: 1 -> (none)`` line per module, burying the tied
    alias the conversion lost.  Those attributes are left out there; the alias stays."""
    import torch
    from safetensors.torch import save

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    state = net.state_dict()
    state["head.weight"] = state["0.weight"]  # tied
    bin_ = clean_manifest(torch_saved(state), tmp_path, "pytorch_model.bin")
    assert any("(attrs)" in k for k in describe(bin_))  # kept within the format
    st = clean_manifest(save({k: v for k, v in state.items() if k != "head.weight"}), tmp_path,
                        "model.safetensors")
    fd = summarize(bin_, st, "m")
    assert [(o.key, o.status) for o in fd.other] == [("head.weight", "removed")]
    gone = summarize(bin_, None, "pytorch_model.bin")
    assert [(o.key, o.status) for o in gone.other] == [("head.weight", "removed")]


def test_a_reorder_beside_an_added_tensor_is_still_reported(store):
    a = manifest(store, {"a": rng_arr(0, (4,)), "b": rng_arr(1, (4,))})
    b = manifest(store, {"c": rng_arr(2, (2,)), "b": rng_arr(1, (4,)), "a": rng_arr(0, (4,))})
    fd = summarize(a, b, "m.safetensors")
    assert '  * (order of the tensors in the file): "a at 0" -> "b at 0"' in format_text(fd)


def test_a_layout_change_the_plug_in_does_not_describe_is_still_a_change(store, monkeypatch):
    import theta_zarr.diff as diff_module

    monkeypatch.setattr(diff_module, "describe", lambda m: {})
    a = manifest(store, {"a": rng_arr(0, (4,))})
    b = manifest(store, {"a": rng_arr(0, (4,))},
                 fmt={"name": "safetensors", "order": ["a"], "padding": 8})
    fd = summarize(a, b, "m.safetensors")
    assert fd.counts()["other_changed"] == 1
    assert "  * (file layout) changed (same tensors, same values)" in format_text(fd)
