"""Three-way merge of manifests: digest rules, chunk-level merges, strategies, plug-ins."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path

import msgspec
import numpy as np
import pytest
from helpers import BF16, manifest, read, rng_arr, table

from theta_zarr.manifest import Manifest
from theta_zarr.merge import (
    MergeError,
    Rule,
    StrategyTable,
    execute,
    merge_formats,
    merge_manifests,
    plan,
)
from theta_zarr.merges import (
    BUILTINS,
    METHODS,
    StrategyError,
    available,
    get_strategy,
)


def test_one_sided_and_identical_changes_merge_by_digest(store):
    a, b, c = rng_arr(0, (8, 64)), rng_arr(1, (64,)), rng_arr(2, (4, 4))
    base = manifest(store, {"a": a, "b": b, "c": c})
    ours = manifest(store, {"a": a + 1, "b": b, "c": c, "new": rng_arr(3, (3,))})
    theirs = manifest(store, {"a": a + 1, "b": b * 2})  # same change to a; c removed
    store.cache.reads.clear()
    merged, p = merge_manifests(base, ours, theirs, table(), store)
    assert merged is not None and not p.conflicts
    assert merged.params["a"] == ours.params["a"]
    assert merged.params["b"] == theirs.params["b"]
    assert "c" not in merged.params and "new" in merged.params
    assert merged.format["order"] == ["a", "b", "new"]
    assert store.cache.reads == []  # digests decided everything


def test_chunk_level_merge_is_bit_exact(store):
    emb = rng_arr(0, (64, 16))  # 4 KiB, 1 KiB chunks -> 4 chunks of 16 rows
    ours_e, theirs_e = emb.copy(), emb.copy()
    ours_e[0:3] += 1
    theirs_e[40:42] -= 1
    base = manifest(store, {"emb": emb})
    ours = manifest(store, {"emb": ours_e})
    theirs = manifest(store, {"emb": theirs_e})
    assert len(base.params["emb"].chunks) == 4
    merged, p = merge_manifests(base, ours, theirs, table(), store)
    assert merged is not None and p.chunk_merged == ["emb"]
    expect = emb.copy()
    expect[0:3] += 1
    expect[40:42] -= 1
    assert read(store, merged, "emb").tobytes() == expect.tobytes()


def test_same_chunks_conflict_with_fail(store):
    x = rng_arr(0, (64, 16))
    base = manifest(store, {"x": x})
    ours = manifest(store, {"x": x + 1})
    theirs = manifest(store, {"x": x * 3})
    merged, p = merge_manifests(base, ours, theirs, table("fail"), store)
    assert merged is None
    c = p.conflicts["x"]
    assert c.kind == "chunks" and c.chunks == [0, 1, 2, 3]
    assert "4 of 4" in c.describe()
    with pytest.raises(MergeError, match="strategy 'fail'"):
        execute(p, table("fail"), store)


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float16), np.dtype(np.float32)])
def test_average_equals_numpy(store, dtype):
    base_a = rng_arr(0, (64, 24), dtype)
    o, t = rng_arr(1, (64, 24), dtype), rng_arr(2, (64, 24), dtype)
    m = [manifest(store, {"w": x}) for x in (base_a, o, t)]
    merged, _ = merge_manifests(*m, table("average"), store)
    wide = np.float64 if dtype.itemsize >= 4 else np.float32
    expect = ((o.astype(wide) + t.astype(wide)) / 2).astype(dtype)
    assert read(store, merged, "w").tobytes() == expect.tobytes()
    merged, _ = merge_manifests(*m, table("average", alpha=0.25), store)
    expect = (wide(0.75) * o.astype(wide) + wide(0.25) * t.astype(wide)).astype(dtype)
    assert read(store, merged, "w").tobytes() == expect.tobytes()


@pytest.mark.parametrize("strategy, values, words", [
    ("average", {"alpha": 1.5}, "average: 'alpha' must be in [0, 1], from ours (0) to "
                                "theirs (1), not 1.5"),
    ("average", {"alpha": -0.1}, "'alpha' must be in [0, 1]"),
    ("average", {"alpha": float("nan")}, "average: 'alpha' must be a finite number, not nan"),
    ("task-arithmetic", {"scale": float("inf")}, "'scale' must be a finite number, not inf"),
])
def test_a_weight_out_of_its_range_is_refused_through_the_api(store, strategy, values, words):
    """``merge_manifests`` with ``alpha=1.5`` extrapolated past theirs, and a NaN weight
    wrote NaN into every merged element."""
    m = [manifest(store, {"w": np.full(16, x, np.float32)}) for x in (0, 2, 1)]
    with pytest.raises(MergeError) as e:
        merge_manifests(*m, table(strategy, **values), store)
    assert str(e.value).startswith("merge: parameter 'w': ") and words in str(e.value)


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float32)])
def test_task_arithmetic_equals_numpy(store, dtype):
    b, o, t = (rng_arr(i, (32, 40), dtype) for i in range(3))
    m = [manifest(store, {"w": x}) for x in (b, o, t)]
    merged, _ = merge_manifests(*m, table("task-arithmetic", scale=0.7), store)
    wide = np.float64 if dtype.itemsize >= 4 else np.float32
    bw, ow, tw = (x.astype(wide) for x in (b, o, t))
    expect = (bw + wide(0.7) * ((ow - bw) + (tw - bw))).astype(dtype)
    assert read(store, merged, "w").tobytes() == expect.tobytes()


def test_strategies_read_only_conflicting_chunks(store):
    x = rng_arr(0, (64, 16))
    o, t = x.copy(), x.copy()
    o[0] += 1
    o[20] += 1
    t[0] -= 1
    t[50] -= 1
    m = [manifest(store, {"x": a}) for a in (x, o, t)]
    store.cache.reads.clear()
    merged, p = merge_manifests(*m, table("ours"), store)
    assert store.cache.reads == []  # takes a side by digest
    assert p.conflicts["x"].chunks == [0]
    merged, _ = merge_manifests(*m, table("average"), store)
    assert len(store.cache.reads) == 2  # chunk 0 of ours and of theirs
    got = read(store, merged, "x")
    assert got[20].tobytes() == o[20].tobytes() and got[50].tobytes() == t[50].tobytes()
    assert got[0].tobytes() == ((o[0].astype(np.float64) + t[0]) / 2).astype(
        np.float32).tobytes()


def test_integer_params_refuse_numeric_strategies(store):
    i = np.arange(600, dtype=np.int32)
    m = [manifest(store, {"steps": a}) for a in (i, i + 1, i + 2)]
    with pytest.raises(MergeError, match="floating-point"):
        merge_manifests(*m, table("average"), store)
    merged, _ = merge_manifests(*m, table("theirs"), store)
    assert merged.params["steps"] == m[2].params["steps"]


def test_inline_params_merge(store):
    v = rng_arr(0, (8,))  # 32 bytes: inline
    m = [manifest(store, {"v": a}) for a in (v, v + 1, v + 2)]
    assert m[0].params["v"].is_inline
    merged, _ = merge_manifests(*m, table("average"), store)
    expect = (((v + 1).astype(np.float64) + (v + 2)) / 2).astype(np.float32)
    assert merged.params["v"].inline == (expect.tobytes(),)


def test_shape_and_delete_conflicts_need_a_side(store):
    x = rng_arr(0, (8, 8))
    base = manifest(store, {"x": x, "y": x})
    ours = manifest(store, {"x": rng_arr(1, (9, 8)), "y": x + 1})
    theirs = manifest(store, {"x": x + 1})
    p = plan(base, ours, theirs)
    assert p.conflicts["x"].kind == "shape" and p.conflicts["y"].kind == "delete-modify"
    with pytest.raises(MergeError, match="only ours, theirs or base"):
        execute(p, table("average"), store)
    merged = execute(p, table("theirs"), store)
    assert merged.params["x"] == theirs.params["x"] and "y" not in merged.params


def test_add_add_without_base(store):
    m = [manifest(store, {"n": rng_arr(i, (32, 8))}) for i in (1, 2)]
    with pytest.raises(MergeError, match="needs the base"):
        merge_manifests(None, *m, table("task-arithmetic"), store)
    merged, _ = merge_manifests(None, *m, table("average"), store)
    assert merged is not None


def test_missing_chunk_error_names_it(store, tmp_path):
    x = rng_arr(0, (64, 16))
    m = [manifest(store, {"x": a}) for a in (x, x + 1, x + 2)]
    gone = m[2].params["x"].chunks[1]
    store.cache.delete(gone)
    with pytest.raises(MergeError, match=f"'x': chunk 1 of theirs \\({gone}\\)"):
        merge_manifests(*m, table("average"), store)


def test_rules_last_match_wins():
    t = StrategyTable([Rule("*", "ours"), Rule("enc.*", "average"), Rule("enc.b", "theirs")])
    assert t.lookup("dec.a")[0].name == "ours"
    assert t.lookup("enc.a")[0].name == "average"
    assert t.lookup("enc.b")[0].name == "theirs"
    assert StrategyTable().lookup("x")[0].name == "fail"


def test_registry_and_entry_points():
    names = set(available())
    assert {"fail", "ours", "theirs", "base", "average", "task-arithmetic"} <= names
    registered = {ep.name for ep in entry_points(group="theta_zarr.merges")}
    assert "average" in registered
    assert {"linear", "ties", "dare", "dare_ties", "slerp", "breadcrumbs", "model_stock"} <= \
        registered
    with pytest.raises(StrategyError, match="unknown merge strategy 'tiez'"):
        get_strategy("tiez")


def test_every_built_in_strategy_is_registered_and_listed():
    """pyproject.toml registers every built-in strategy in the entry-point group, as
    plugins.md says, and plugins.md lists each; task_arithmetic was missing from both."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    registered = project["entry-points"]["theta_zarr.merges"]
    assert set(registered) == set(BUILTINS) | set(METHODS)
    for name, target in registered.items():
        module, cls = target.split(":")
        assert getattr(importlib.import_module(module), cls).name == name
    page = (root / "docs" / "plugins.md").read_text()
    listed = page.split("Built-in:", 1)[1].split(". A strategy", 1)[0]
    assert set(re.findall(r"`([\w-]+)`", listed)) == set(registered)


def test_format_merge_keeps_both_additions():
    b = {"name": "safetensors", "order": ["a"], "header": {"__metadata__": {"v": "1"}}}
    o = {"name": "safetensors", "order": ["a", "o"], "header": {"__metadata__": {"v": "2"}}}
    t = {"name": "safetensors", "order": ["t", "a"], "header_text": "x"}
    params = {n: None for n in ("a", "o", "t")}
    out = merge_formats(b, [o, t], params)
    assert out["order"] == ["a", "o", "t"]
    assert out["header"] == o["header"] and "header_text" not in out


def test_a_non_tensor_value_changed_differently_is_a_conflict(store, caplog):
    """It used to merge silently to ours (the whole tree, dropping theirs's other changes)."""
    w = rng_arr(0, (8,))

    def side(lr: float, step: int) -> Manifest:
        fmt = {"name": "torch", "tree": {"__dict__": [["w", {"__tensor__": "w"}], ["lr", lr],
                                                      ["step", step]]}}
        return manifest(store, {"w": w}, fmt=fmt)

    base, ours, theirs = side(0.1, 1), side(0.3, 1), side(0.2, 7)
    merged, p = merge_manifests(base, ours, theirs, table(), store)
    assert merged is None and list(p.conflicts) == ["lr"]
    assert p.conflicts["lr"].describe() == \
        "a non-tensor value changed differently: ours 0.3, theirs 0.2, base 0.1"
    values = {"theirs": (0.2, 7), "base": (0.1, 7), "ours": (0.3, 7), "average": (0.3, 7)}
    for strategy, (lr, step) in values.items():
        pairs = execute(p, table(strategy), store).format["tree"]["__dict__"]
        assert pairs[1:] == [["lr", lr], ["step", step]], strategy
    # a value strategy combines tensors only: ours's value, said in a line
    assert "lr: a non-tensor value changed differently" in caplog.text
    assert "kept ours's (strategy 'average' combines tensors only)" in caplog.text


def test_opaque_files_never_mix_chunks(store):
    base = np.zeros(4096, np.uint8)
    ours, theirs = base.copy(), base.copy()
    ours[0] = 1  # different chunks changed on each side
    theirs[-1] = 2
    fmt = {"name": "opaque"}
    b, o, t = (manifest(store, {"bytes": a}, fmt=fmt) for a in (base, ours, theirs))
    p = plan(b, o, t)
    assert p.conflicts["bytes"].kind == "opaque"
    with pytest.raises(MergeError, match="opaque file"):
        execute(p, table("average"), store)
    assert execute(p, table("theirs"), store).params["bytes"] == t.params["bytes"]


def test_packed_float4_refuses_numeric_strategies(store):
    from theta_zarr.chunkwriter import ChunkWriter
    from theta_zarr.dtypes import by_name
    from theta_zarr.manifest import Manifest

    def fp4(values: np.ndarray) -> Manifest:
        with ChunkWriter(store.cache, 1024) as w:
            w.add_buffer("w", by_name("float4_e2m1fn_x2"), values.shape,
                         memoryview(values.astype(np.uint8)))
            return Manifest({"name": "torch"}, w.finish())

    codes = np.arange(600, dtype=np.uint8)
    m = [fp4(a) for a in (codes, codes + 1, codes + 2)]  # bytes of packed pairs, not numbers
    with pytest.raises(MergeError, match="floating-point"):
        merge_manifests(*m, table("average"), store)


def test_a_chunk_of_another_size_than_the_manifest_says_is_refused(store):
    """A dtype edited without its chunks (float32 bytes, float16 claimed) is an error
    naming the side and chunk, never a merge computed over the wrong bytes."""
    x = rng_arr(0, (64, 16))
    m = [manifest(store, {"x": a}) for a in (x, x + 1, x + 2)]
    for side in m:
        side.params["x"] = msgspec.structs.replace(side.params["x"], dtype="float16")
    with pytest.raises(MergeError, match="'x': ours: chunk 0 holds 1024 bytes .* needs 512"):
        merge_manifests(*m, table("average"), store)
