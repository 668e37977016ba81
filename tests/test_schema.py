"""The manifest v1 JSON Schema: a valid schema, true of every manifest clean makes, false of
broken ones, and what Manifest.from_json checks first (with its fast paths equal to it)."""

from __future__ import annotations

import base64
import collections
import copy
import json
import math
import random
import typing

import jsonschema
import msgspec
import numpy as np
import pytest
import torch
from helpers import clean, npy, npz, torch_saved
from safetensors.torch import save as st_save

from theta_zarr import chunking
from theta_zarr import manifest as M
from theta_zarr.demo import ModelShape, write_model
from theta_zarr.dtypes import BY_NAME
from theta_zarr.manifest import Manifest, ManifestError

SOURCE = "models/m.safetensors"
D1 = "blake3:" + "1" * 64
D2 = "blake3:" + "ab" * 32


@pytest.fixture(scope="module")
def schema() -> dict:
    return M.schema()


@pytest.fixture(scope="module")
def plain(schema):
    """The schema as stock jsonschema reads it (no fast paths, $refs resolved by it)."""
    return jsonschema.Draft202012Validator(schema)


# -- the schema file --------------------------------------------------------------------------

def test_schema_is_a_valid_draft_2020_12_schema(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_schema_ships_as_package_data():
    from importlib import resources

    text = resources.files("theta_zarr").joinpath("schema/manifest-v1.json").read_text()
    assert json.loads(text) == M.schema()


def test_schema_agrees_with_the_code(schema):
    defs = schema["$defs"]
    param = defs["param"]["properties"]
    assert param["dtype"]["enum"] == sorted(BY_NAME)
    assert schema["properties"]["theta_zarr"] == {
        "description": schema["properties"]["theta_zarr"]["description"], "const": M.VERSION}
    assert set(defs["param"]["properties"]) == {"shape", "dtype", "chunk_shape", "chunks",
                                                "inline"}
    assert defs["paramName"]["maxLength"] == M.MAX_NAME_LEN
    # base64 of INLINE_MAX_BYTES bytes, padded
    assert param["inline"]["items"]["maxLength"] == 4 * math.ceil(chunking.INLINE_MAX_BYTES / 3)


# -- manifests made by clean validate --------------------------------------------------------

def _safetensors_model(tmp_path) -> bytes:
    path = tmp_path / "model.safetensors"
    write_model(str(path), ModelShape(hidden=64, layers=2, vocab=128),
                metadata={"format": "pt", "step": "3"})
    return path.read_bytes()


def _safetensors_odd_header() -> bytes:
    # scalars, an empty tensor, an inline vector, and a header the library would not write
    tensors = {"scalar": torch.tensor(3.5), "empty": torch.empty(0, 4),
               "bias": torch.arange(8, dtype=torch.float16), "big": torch.ones(70, 33)}
    data = st_save(tensors)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, indent=1).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def _torch_file() -> bytes:
    w = torch.nn.Parameter(torch.randn(40, 30))
    obj = {"model": collections.OrderedDict(w=w, tied=w, b=torch.zeros(3, dtype=torch.bfloat16)),
           "step": 7, "lr": 1e-3, "big": 2**60, "nan": float("nan"), "shape": torch.Size([2]),
           "dtype": torch.float8_e4m3fn, "tags": ("a", None, True), "blob": b"\x00\x01",
           "f8": torch.ones(100, dtype=torch.float8_e5m2)}
    return torch_saved(obj)


def _npz(compressed: bool) -> bytes:
    arrays = {"a": np.arange(3000, dtype=np.int64).reshape(30, 100),
              "f": np.asfortranarray(np.ones((20, 7), np.float32)), "s": np.array(True)}
    return npz(arrays, compressed=compressed)


def _npy() -> bytes:
    return npy(np.linspace(0, 1, 2000).astype(np.complex64))


CHECKPOINTS = {
    "safetensors-model": _safetensors_model,
    "safetensors-odd-header": lambda tmp_path: _safetensors_odd_header(),
    "torch": lambda tmp_path: _torch_file(),
    "npz": lambda tmp_path: _npz(False),
    "npz-compressed": lambda tmp_path: _npz(True),
    "npy": lambda tmp_path: _npy(),
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINTS))
def test_manifests_from_real_files_validate(kind, tmp_path, plain):
    m = clean(CHECKPOINTS[kind](tmp_path), tmp_path, f"x.{kind}", workers=2).manifest
    obj = json.loads(m.to_bytes())
    errors = [e.message for e in plain.iter_errors(obj)]
    assert errors == []
    assert M._get_validator().is_valid(obj)
    assert Manifest.from_bytes(m.to_bytes(), SOURCE).to_bytes() == m.to_bytes()
    assert M._decode_typed(m.to_bytes()) == m  # a manifest clean writes takes the fast lane


def test_odd_files_use_every_kind_of_entry(tmp_path):
    m = clean(_safetensors_odd_header(), tmp_path, "odd.safetensors", workers=2).manifest
    assert "header_text" in m.format
    assert m.params["scalar"].shape == () and m.params["scalar"].is_inline
    assert m.params["empty"].chunks == () and not m.params["empty"].is_inline
    assert m.params["bias"].is_inline
    assert len(m.params["big"].chunks) > 1  # the last one short: 70 rows in 4096-byte chunks


# -- broken manifests are rejected -----------------------------------------------------------

def good() -> dict:
    return {
        "theta_zarr": 1,
        "format": {"name": "safetensors", "order": ["w", "b"],
                   "header": {"__metadata__": {"format": "pt"}}},
        "params": {
            "w": {"shape": [8, 4], "dtype": "bfloat16", "chunk_shape": [4, 4],
                  "chunks": [D1, D2]},
            "b": {"shape": [4], "dtype": "float32", "chunk_shape": [4],
                  "inline": [base64.b64encode(b"\x00" * 16).decode()]},
        },
    }


def _set(path: str | tuple, value):
    """A mutation setting (or deleting) the value at a dotted path, or at a tuple of keys."""
    def mutate(obj):
        *parents, last = path.split(".") if isinstance(path, str) else path
        node = obj
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return obj
    return mutate


_DELETE = object()

# (mutation, fragment of the message, JSON path in the message); the schema alone rejects each
SCHEMA_BROKEN = {
    "extra top-level key": (_set("remote", "s3://b"), "unknown top-level keys ['remote']", "$"),
    "no format": (_set("format", _DELETE), "'format' must be an object", "$"),
    "no params": (_set("params", _DELETE), "'params' must be an object", "$"),
    "params a list": (_set("params", []), "'params' must be an object", "$.params"),
    "format a string": (_set("format", "safetensors"), "'format' must be", "$.format"),
    "format name upper": (_set("format.name", "Safe"), "valid 'name'", "$.format.name"),
    "format name newline": (_set("format.name", "safetensors\n"), "valid 'name'",
                            "$.format.name"),
    "format name path": (_set("format.name", "../x"), "valid 'name'", "$.format.name"),
    "safetensors order": (_set("format.order", "w,b"), "'format' is invalid",
                          "$.format.order"),
    "safetensors metadata": (_set("format.header.__metadata__", {"step": 3}),
                             "'format' is invalid", "$.format.header.__metadata__.step"),
    "name with ..": (_set(("params", "../w"), {}), "invalid parameter name '../w'", "$.params"),
    "name with empty segment": (_set("params.a//b", {}), "invalid parameter name", "$.params"),
    "name zarr.json": (_set(("params", "g/zarr.json"), {}), "invalid parameter name", "$.params"),
    "name with newline": (_set("params.w\n", {}), "invalid parameter name 'w\\n'", "$.params"),
    "empty name": (_set(("params", ""), {}), "empty or non-string parameter name", "$.params"),
    "name too long": (_set("params." + "x" * 4097, {}), "invalid parameter name", "$.params"),
    "entry a list": (_set("params.w", [1]), "w: parameter entry is not an object",
                     "$.params.w"),
    "entry extra key": (_set("params.w.url", "s3://x"), "w: unknown keys ['url']",
                        "$.params.w"),
    "both chunks and inline": (_set("params.w.inline", []), "needs exactly one of",
                               "$.params.w"),
    "neither chunks nor inline": (_set("params.w.chunks", _DELETE), "needs exactly one of",
                                  "$.params.w"),
    "no shape": (_set("params.w.shape", _DELETE), "w: shape must be a list", "$.params.w"),
    "negative extent": (_set("params.w.shape.0", -8), "shape must be a list of integers >= 0",
                        "$.params.w.shape[0]"),
    "bool extent": (_set("params.w.shape.0", True), "shape must be", "$.params.w.shape[0]"),
    "huge extent": (_set("params.w.shape.0", 2**53), "shape must be", "$.params.w.shape[0]"),
    "zero chunk extent": (_set("params.w.chunk_shape.0", 0),
                          "chunk_shape must be a list of integers >= 1",
                          "$.params.w.chunk_shape[0]"),
    "rank 33": (_set("params.w.shape", [1] * 33), "shape must be", "$.params.w.shape"),
    "unknown dtype": (_set("params.w.dtype", "float128"), "unknown dtype 'float128'",
                      "$.params.w.dtype"),
    "digest upper case": (_set("params.w.chunks.1", "blake3:" + "A" * 64), "invalid digest",
                          "$.params.w.chunks[1]"),
    "digest other hash": (_set("params.w.chunks.1", "sha256:" + "a" * 64), "invalid digest",
                          "$.params.w.chunks[1]"),
    "digest with path": (_set("params.w.chunks.0", "blake3:../../etc/passwd"),
                         "invalid digest", "$.params.w.chunks[0]"),
    "digest trailing newline": (_set("params.w.chunks.0", D1 + "\n"), "invalid digest",
                                "$.params.w.chunks[0]"),
    "digest not a string": (_set("params.w.chunks.0", 17), "invalid digest '17'",
                            "$.params.w.chunks[0]"),
    "chunks a string": (_set("params.w.chunks", D1), "chunks is not a list",
                        "$.params.w.chunks"),
    "inline not base64": (_set("params.b.inline.0", "@@@@"), "inline chunk is not base64",
                          "$.params.b.inline[0]"),
    "inline unpadded": (_set("params.b.inline.0", "AAA"), "not base64",
                        "$.params.b.inline[0]"),
    "inline too long": (_set("params.b.inline.0", "AAAA" * 200),
                        "inline chunk is longer than 512 bytes", "$.params.b.inline[0]"),
}

# rules the schema cannot express: rejected by the checks after it
SEMANTIC_BROKEN = {
    "extent written 4.0": (_set("params.w.shape.1", 4.0), "shape must be a list"),
    "too few chunks": (_set("params.w.chunks", [D1]), "1 chunks listed, shape needs 2"),
    "too many chunks": (_set("params.w.chunks", [D1, D2, D1]), "shape needs 2"),
    "two split axes": (_set("params.w.chunk_shape", [4, 2]), "does not fit shape"),
    "chunk rank": (_set("params.w.chunk_shape", [4]), "does not fit shape"),
    "inline short": (_set("params.b.inline.0", base64.b64encode(b"\x00" * 15).decode()),
                     "inline chunk has 15 bytes, expected 16"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_BROKEN))
def test_broken_manifest_is_rejected_by_the_schema(case, plain):
    mutate, fragment, path = SCHEMA_BROKEN[case]
    obj = mutate(good())
    assert not plain.is_valid(obj)
    assert not M._get_validator().is_valid(obj)
    with pytest.raises(ManifestError) as info:
        Manifest.from_json(obj, SOURCE)
    msg = str(info.value)
    assert msg.startswith(SOURCE + ": ") and "\n" not in msg and "\r" not in msg, msg
    assert fragment in msg, msg
    assert msg.endswith(f"(at {path})"), msg


@pytest.mark.parametrize("case", sorted(SEMANTIC_BROKEN))
def test_semantic_rules_hold_after_the_schema(case, plain):
    mutate, fragment = SEMANTIC_BROKEN[case]
    obj = mutate(good())
    assert plain.is_valid(obj)  # nothing a schema can say is wrong ...
    with pytest.raises(ManifestError, match=fragment.replace(".", r"\.")):
        Manifest.from_json(obj, SOURCE)  # ... yet the manifest is refused


def test_good_manifest_passes(plain):
    assert plain.is_valid(good())
    assert Manifest.from_json(good(), SOURCE).params["w"].chunks == (D1, D2)


def test_version_is_checked_before_the_schema():
    obj = good()
    obj["theta_zarr"] = 2
    obj["params"] = "a future layout"
    with pytest.raises(ManifestError, match="unsupported manifest version 2"):
        Manifest.from_json(obj, SOURCE)


def test_json_path_quotes_names_with_dots():
    assert M.json_path(["params", "a.b", "chunks", 3]) == '$.params["a.b"].chunks[3]'
    assert M.json_path(["params", "x\ny"]) == '$.params["x\\ny"]'


# -- variants of a good manifest, one value changed ----------------------------------------------

def _variants():
    values = [None, True, False, 0, 1, -1, 4.0, 4.5, 2**53, 2**53 - 1, "", "x", "4", D1,
              D1 + "\n", D1.upper(), "AAAA", "AAA=", "AA==", "A===", "AAAA\n", [], [1], [4, 4],
              [D1], [D1, 3], ["AAAA"], {}, {"a": 1}, "float32", "float32\n", "bfloat16"]
    paths = ["params.w.shape", "params.w.shape.0", "params.w.chunk_shape.1", "params.w.dtype",
             "params.w.chunks", "params.w.chunks.0", "params.b.inline", "params.b.inline.0",
             "format.name", "format.order", "format.header", "params.w.inline", "theta_zarr"]
    for path in paths:
        for value in values:
            yield path, value


def _variant_objects():
    for path, value in _variants():
        yield _set(path, copy.deepcopy(value))(good())
    for name in ["ok", "a//b", "..", "g/zarr.json", "x\x7f", "x\ny", "x" * 4097]:
        obj = good()
        obj["params"] = {name: obj["params"]["w"]}
        yield obj
    for extra in [{"url": "x"}, {"inline": []}]:
        obj = good()
        obj["params"]["w"].update(extra)
        yield obj


def test_large_manifest_round_trips_through_the_fast_lane():
    params = {f"layers.{i // 64}.experts.{i % 64}.w": M.ParamEntry(
        (8, 16), "bfloat16", (8, 16), (chunking.digest(str(i).encode()),))
        for i in range(2000)}
    params["odd"] = M.ParamEntry((3,), "float32", (3,), (), (b"\0" * 12,))
    manifest = Manifest({"name": "safetensors"}, params)
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest


# -- the typed fast lane of from_bytes decides as the schema does ----------------------------

def _bytes(obj) -> bytes:
    return json.dumps(obj).encode()


def test_typed_lane_spells_the_schema(schema):
    """The msgspec types carry the schema's own patterns, enum and built-in format keys."""
    defs = schema["$defs"]
    assert M.DIGEST_PATTERN == defs["param"]["properties"]["chunks"]["items"]["pattern"]
    assert M.NAME_PATTERN == defs["paramName"]["pattern"]
    assert M.FORMAT_NAME_PATTERN == defs["format"]["properties"]["name"]["pattern"]
    assert list(typing.get_args(M.DTypeName)) == defs["param"]["properties"]["dtype"]["enum"]
    typed = {}
    for rule in defs["format"]["allOf"]:
        name = rule["if"]["properties"]["name"]["const"]
        keys = {k for k, v in rule["then"]["properties"].items() if set(v) != {"description"}}
        typed[name] = keys, set(rule["then"].get("required", ()))
    for name, (keys, required) in typed.items():
        if not keys:
            assert name not in M.FORMAT_TYPES  # nothing to check (opaque)
            continue
        info = msgspec.inspect.type_info(M.FORMAT_TYPES[name])
        assert {f.encode_name for f in info.fields} == keys, name
        assert {f.encode_name for f in info.fields if f.required} == required, name


def _format_variants():
    dcp = {"name": "dcp", "shards": {"w": [[[0, 0], [4, 4]]]}, "bytes": ["opt"],
           "planner_data": {"w": ["model", "w", 0]}, "version": "1.0.0"}
    formats = [
        {"name": "safetensors", "order": ["w"], "header": {"__metadata__": {"a": "b"}, "x": 1},
         "header_text": "{}", "raw": {"w": ["F4", [2, 3]]}},
        {"name": "torch", "tree": {"__dict__": [["w", {"__tensor__": "w"}]]},
         "serialization": "legacy"},
        {"name": "numpy", "compressed": True,
         "members": [{"param": "w", "fortran_order": False, "extra": 1}]},
        {"name": "npy", "fortran_order": True}, dcp, {"name": "opaque"},
        {"name": "plugin-x", "anything": [1, {"deep": None}]}]
    values = [None, True, 0, -1, 4.0, "x", [], ["x"], [1], {}, {"a": 1}, {"a": "b"},
              [[[0], [1]]], [["F4", [2]]], [["F4", [-2]]], {"w": [[[0, 0], [4, 4]]]},
              {"w": [[[0], [4], [5]]]}, {"w": ["F4", [2, 3], 1]}, {"w": ["x", 1]},
              {"w": [1, "a", True]}, [{"param": 3}], [{"fortran_order": True}], "legacy",
              "Legacy"]
    for fmt in formats:
        yield fmt
        for key in [k for k in fmt if k != "name"] + ["order", "members", "shards", "bytes"]:
            for value in values:
                yield {**copy.deepcopy(fmt), key: copy.deepcopy(value)}
            yield {k: v for k, v in fmt.items() if k != key}
        yield {**fmt, "header": {"__metadata__": {"a": 1}}}
        yield {**fmt, "header": {"__metadata__": {"a": "b"}}}


def _typed_cases():
    for obj in _variant_objects():
        yield obj
    for fmt in _format_variants():
        obj = good()
        obj["format"] = fmt
        yield obj
    for case in (*SCHEMA_BROKEN.values(), *SEMANTIC_BROKEN.values()):
        yield case[0](good())
    # an empty tensor has no chunks: "chunks": [] and "inline": [] must not both pass
    empty = {"shape": [0, 4], "dtype": "float32", "chunk_shape": [1, 4]}
    for keys in ({"chunks": []}, {"inline": []}, {"chunks": [], "inline": []}, {}):
        obj = good()
        obj["params"]["e"] = {**empty, **keys}
        yield obj
    alphabet = "AQw+/=\n-_ "
    rng = random.Random(7)
    for _ in range(300):  # base64 spellings: the schema's pattern, not msgspec's, is the rule
        text = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 2, 3, 4, 8, 24])))
        obj = good()
        obj["params"]["b"] = {"shape": [len(text) // 4 * 3], "dtype": "uint8",
                              "chunk_shape": [max(1, len(text) // 4 * 3)], "inline": [text]}
        yield obj


def _accepted(obj) -> bool:
    try:
        Manifest.from_json(obj, SOURCE)
    except ManifestError:
        return False
    return True


def test_typed_lane_is_never_more_lenient(plain):
    """Every manifest the fast lane accepts, the schema and the semantic rules accept,
    into the same Manifest; and it takes most valid ones (it is really used)."""
    lenient, taken, valid = [], 0, 0
    for obj in _typed_cases():
        fast = M._decode_typed(_bytes(obj))
        ok = plain.is_valid(obj) and _accepted(obj)
        valid += ok
        if fast is not None:
            taken += 1
            if not ok or fast != Manifest.from_json(obj, SOURCE):
                lenient.append(obj)
    assert lenient == []
    assert taken > valid * 0.9


@pytest.mark.parametrize("case", sorted(SCHEMA_BROKEN) + sorted(SEMANTIC_BROKEN))
def test_from_bytes_words_errors_as_from_json(case):
    """A manifest the fast lane refuses reaches the checks that word the error."""
    mutate = (SCHEMA_BROKEN.get(case) or SEMANTIC_BROKEN[case])[0]
    obj = mutate(good())
    with pytest.raises(ManifestError) as expected:
        Manifest.from_json(obj, SOURCE)
    with pytest.raises(ManifestError) as got:
        Manifest.from_bytes(_bytes(obj), SOURCE)
    assert str(got.value) == str(expected.value)


def test_json_depth_check_counts_brackets():
    def reference(data: bytes, limit: int) -> bool:
        depth = 0
        for c in data:
            depth += (c in b"[{") - (c in b"]}")
            if depth > limit:
                return False
        return True
    rng = random.Random(3)
    for _ in range(500):
        data = bytes(rng.choice(b'[]{}" a') for _ in range(rng.randrange(0, 200)))
        limit = rng.randrange(1, 12)
        assert M.json_depth_ok(data, limit) == reference(data, limit), (data, limit)
    assert not M.json_depth_ok(b"[" * 65 + b"]" * 65)
    assert M.json_depth_ok(b"[" * 64 + b"]" * 64)
