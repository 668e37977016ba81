"""The manifest: deterministic bytes and strict, one-line validation (DESIGN.md section 3)."""

from __future__ import annotations

import base64
import json

import pytest
from helpers import run_python

from theta_zarr import chunking
from theta_zarr.manifest import (
    Manifest,
    ManifestError,
    ParamEntry,
    check_digest,
    check_name,
    looks_like_manifest,
)

SOURCE = "models/bert.safetensors"
D1 = "blake3:" + "1" * 64
D2 = "blake3:" + "ab" * 32


def sample() -> Manifest:
    # params given out of name order: the bytes must not depend on insertion order
    return Manifest(
        {"name": "safetensors", "order": ["w", "b"],
         "header": {"__metadata__": {"z": "1", "a": "2"}}},
        {
            "w": ParamEntry((8, 4), "bfloat16", (4, 4), (D1, D2)),
            "b": ParamEntry((4,), "float32", (4,), (), (b"\x00" * 16,)),
        },
    )


def sample_json() -> dict:
    return json.loads(sample().to_bytes())


def dumps(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def assert_one_line_error(data: bytes, *fragments: str) -> str:
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(data, SOURCE)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg
    assert msg.startswith(SOURCE + ":"), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# -- deterministic bytes --------------------------------------------------------------------------

def test_bytes_are_deterministic_and_start_with_the_magic():
    a = sample().to_bytes()
    m2 = sample()
    m2.params = dict(reversed(list(m2.params.items())))
    m2.format = dict(reversed(list(m2.format.items())))
    assert m2.to_bytes() == a
    assert a.startswith(b'{"theta_zarr": 1,')
    assert a.endswith(b"}\n")
    assert looks_like_manifest(a)
    # one parameter a line, sorted by name
    lines = a.decode().splitlines()
    assert lines[3].startswith('  "b":') and lines[4].startswith('  "w":')
    # ascii only, sorted keys inside
    a.decode("ascii")
    assert '"header":{"__metadata__":{"a":"2","z":"1"}}' in a.decode()


def test_round_trip_is_identical():
    data = sample().to_bytes()
    m = Manifest.from_bytes(data, SOURCE)
    assert m.to_bytes() == data
    assert m.params["w"] == sample().params["w"]
    assert m.params["b"].inline == (b"\x00" * 16,)
    assert m.digests() == {D1, D2}
    assert list(m.iter_chunks()) == [("w", 0, D1), ("w", 1, D2)]
    assert m.nbytes == 8 * 4 * 2 + 16


def test_empty_manifest_round_trips():
    m = Manifest({"name": "numpy"}, {})
    data = m.to_bytes()
    assert Manifest.from_bytes(data).to_bytes() == data


@pytest.mark.parametrize("name", ["w", "a b.c-d_e/f:g", 'q"uote', "back\\slash", "tab\there",
                                  "del\x7f", "\u00e4\u4e2d", "\U0001f600", "~!@#$%^&*()"])
def test_entries_and_names_are_written_as_json_would_write_them(name):
    """The manifest writes entries without json (speed); the bytes must be the ones json
    gives, for any name and every kind of entry."""
    entries = [ParamEntry((8, 4), "bfloat16", (4, 4), (D1, D2)),
               ParamEntry((4,), "float32", (4,), (), (b"\x00" * 16,)),
               ParamEntry((), "int8", (), (), (b"\x01",)),
               ParamEntry((0, 3), "float16", (1, 3), ())]
    for entry in entries:
        want = json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":"))
        assert entry.to_json_text() == want
    m = Manifest({"name": "numpy"}, {name: entries[0], "z" + name: entries[1]})
    data = m.to_bytes()
    assert f"  {json.dumps(name)}: ".encode() in data  # the names' check is not the writer's
    try:
        check_name(name, SOURCE)
    except ManifestError:
        return
    assert Manifest.from_bytes(data).params.keys() == {name, "z" + name}


def test_non_ascii_names_stay_ascii_bytes():
    entry = ParamEntry((), "int8", (), (), (b"\x01",))
    m = Manifest({"name": "torch"}, {"gewicht.\u00e4\u4e2d": entry})
    data = m.to_bytes()
    data.decode("ascii")
    assert Manifest.from_bytes(data).params.keys() == {"gewicht.\u00e4\u4e2d"}


def test_non_finite_float_in_format_is_refused_when_writing():
    m = Manifest({"name": "torch", "x": float("nan")}, {})
    with pytest.raises(ValueError):
        m.to_bytes()


def test_looks_like_manifest_allows_leading_whitespace():
    data = sample().to_bytes()
    assert looks_like_manifest(b"  \n\t\r\n" + data)
    assert Manifest.from_bytes(b" \n" + data).to_bytes() == data
    assert not looks_like_manifest(b'{"theta": 1}')
    assert not looks_like_manifest(b"\x00\x00\x00\x00" + data)
    assert not looks_like_manifest(b"")


# -- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [2, 0, "1", True, None, [1]])
def test_unknown_version_is_refused(version):
    obj = sample_json()
    obj["theta_zarr"] = version  # stays the first key, so the magic is still there
    data = dumps(obj)
    assert looks_like_manifest(data)
    msg = assert_one_line_error(data, "unsupported manifest version", repr(version))
    assert "upgrade" in msg


def test_unknown_version_via_from_json():
    with pytest.raises(ManifestError, match="unsupported manifest version 2"):
        Manifest.from_json({"theta_zarr": 2, "format": {"name": "x"}, "params": {}}, SOURCE)


@pytest.mark.parametrize("marker_at", ["start", "middle"])
def test_conflict_markers_are_refused(marker_at):
    ours = sample().to_bytes()
    theirs = ours.replace(D1.encode(), ("blake3:" + "2" * 64).encode())
    if marker_at == "start":
        data = b"<<<<<<< ours\n" + ours + b"=======\n" + theirs + b">>>>>>> theirs\n"
    else:
        lines = ours.splitlines(keepends=True)
        data = b"".join(lines[:3]) + b"<<<<<<< HEAD\n" + lines[3] + b"=======\n" + \
            theirs.splitlines(keepends=True)[3] + b">>>>>>> branch\n" + b"".join(lines[4:])
    assert_one_line_error(data, "conflict")


@pytest.mark.parametrize("data", [
    b"\x00\x01\x02garbage",
    b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n",
    b"",
])
def test_garbage_is_refused(data):
    assert_one_line_error(data, "not a theta-zarr manifest")


@pytest.mark.parametrize("data", [
    b'{"theta_zarr": 1, "format": ',
    b'{"theta_zarr": 1,\n "format": {"name": "x"},\n "params": {}\n}\n}',
    b'{"theta_zarr": 1, "format": {"name": "x"}, "params": {"a": \xff}}',
    # not JSON numbers, and nothing a manifest could be written back with
    b'{"theta_zarr": 1, "format": {"name": "x", "v": NaN}, "params": {}}',
    b'{"theta_zarr": 1, "format": {"name": "x", "v": -Infinity}, "params": {}}',
    b'{"theta_zarr": 1, "format": {"name": "x", "v": 1e400}, "params": {}}',
    # an integer Python will not convert (over 4,300 digits)
    b'{"theta_zarr": 1, "format": {"name": "x", "v": 1' + b"0" * 4300 + b'}, "params": {}}',
])
def test_non_json_is_refused(data):
    assert_one_line_error(data, "not valid JSON")


def with_param(entry: dict, name: str = "p") -> bytes:
    obj = sample_json()
    obj["params"] = {name: entry}
    return dumps(obj)


def good_entry() -> dict:
    return {"shape": [8, 4], "dtype": "float32", "chunk_shape": [4, 4], "chunks": [D1, D2]}


def test_good_entry_parses():
    m = Manifest.from_bytes(with_param(good_entry()), SOURCE)
    assert m.params["p"].nchunks == 2
    assert m.params["p"].spans() == [(0, 64), (64, 64)]


@pytest.mark.parametrize("bad", [
    "blake3:" + "A" * 64,  # uppercase hex
    "blake3:" + "a" * 63,  # short
    "blake3:" + "a" * 65,  # long
    "sha256:" + "a" * 64,  # other algorithm
    "blake3:" + "g" * 64,  # not hex
    "blake3:../../etc/passwd",
    "a" * 64,
    "",
    17,
    None,
])
def test_bad_digest_syntax_is_refused(bad):
    entry = good_entry()
    entry["chunks"] = [D1, bad]
    assert_one_line_error(with_param(entry), "invalid digest", "p")
    with pytest.raises(ManifestError):
        check_digest(bad)


def test_check_digest_accepts_a_real_digest():
    d = chunking.digest(b"hello")
    assert check_digest(d) == d


@pytest.mark.parametrize("chunks", [[D1], [D1, D2, D1], []])
def test_wrong_chunk_count_is_refused(chunks):
    entry = good_entry()
    entry["chunks"] = chunks
    assert_one_line_error(with_param(entry), "shape needs 2")


def test_chunks_and_inline_are_exclusive():
    entry = good_entry()
    entry["inline"] = []
    assert_one_line_error(with_param(entry), "exactly one of")
    entry = good_entry()
    del entry["chunks"]
    assert_one_line_error(with_param(entry), "exactly one of")


@pytest.mark.parametrize("length", [0, 15, 17])
def test_inline_chunk_of_wrong_length_is_refused(length):
    entry = {"shape": [4], "dtype": "float32", "chunk_shape": [4],
             "inline": [base64.b64encode(b"\x00" * length).decode()]}
    assert_one_line_error(with_param(entry), "inline chunk has", "expected 16")


def test_inline_chunk_larger_than_inline_limit_is_refused():
    n = chunking.INLINE_MAX_BYTES + 4
    entry = {"shape": [n], "dtype": "uint8", "chunk_shape": [n],
             "inline": [base64.b64encode(b"\x00" * n).decode()]}
    assert_one_line_error(with_param(entry), "inline chunk")


def test_inline_chunk_not_base64_is_refused():
    entry = {"shape": [4], "dtype": "float32", "chunk_shape": [4], "inline": ["@@@@"]}
    assert_one_line_error(with_param(entry), "not base64")


@pytest.mark.parametrize("name", [
    "../escape", "a/../b", "a/./b", "/abs", "trailing/", "a//b", "with\nnewline", "tab\tname",
    "nul\x00", "del\x7f", "back\\slash", "zarr.json", "deep/zarr.json", ".", "..", "",
    "x" * 5000, "lone\ud800surrogate", "low\udfff",
])
def test_bad_names_are_refused(name):
    msg = assert_one_line_error(with_param(good_entry(), name))
    assert "name" in msg
    with pytest.raises(ManifestError):
        check_name(name)


@pytest.mark.parametrize("name", ["encoder.layer.0.weight", "a/b/c", "model.\u00e9", "w~1",
                                  "emoji.\U0001f600"])
def test_good_names_are_accepted(name):
    assert check_name(name) == name
    assert name in Manifest.from_bytes(with_param(good_entry(), name), SOURCE).params


def test_unknown_top_level_keys_are_refused():
    obj = sample_json()
    obj["remote"] = "s3://bucket"
    assert_one_line_error(dumps(obj), "unknown top-level keys", "remote")


def test_unknown_entry_keys_are_refused():
    entry = good_entry()
    entry["url"] = "s3://x"
    assert_one_line_error(with_param(entry), "unknown keys", "url")


@pytest.mark.parametrize("key,value", [
    ("shape", [-1, 4]),
    ("shape", [8, 4.0]),
    ("shape", [True, 4]),
    ("shape", "8,4"),
    ("shape", None),
    ("shape", [2**60, 4]),
    ("chunk_shape", [0, 4]),
    ("chunk_shape", [-4, 4]),
    ("dtype", "float128"),
    ("dtype", None),
    ("chunks", "blake3:" + "1" * 64),
])
def test_bad_geometry_is_refused(key, value):
    entry = good_entry()
    entry[key] = value
    assert_one_line_error(with_param(entry), "p")


@pytest.mark.parametrize("shape,chunk_shape", [
    ([4, 6], [2, 3]),  # splits two axes: not one byte range
    ([4, 6], [4, 3]),
    ([4, 6], [8, 6]),  # larger than the axis
    ([4, 6], [4]),  # wrong rank
    ([2, 3, 4], [1, 3, 2]),
])
def test_non_contiguous_chunk_shape_is_refused(shape, chunk_shape):
    entry = {"shape": shape, "dtype": "uint8", "chunk_shape": chunk_shape, "chunks": [D1]}
    assert_one_line_error(with_param(entry), "does not fit shape")


@pytest.mark.parametrize("fmt", [None, "safetensors", {}, {"name": ""}, {"name": "Bad Name"},
                                 {"name": "../x"}, {"name": 3}])
def test_bad_format_is_refused(fmt):
    obj = sample_json()
    obj["format"] = fmt
    assert_one_line_error(dumps(obj), "format")


@pytest.mark.parametrize("params", [None, [], "x"])
def test_bad_params_is_refused(params):
    obj = sample_json()
    obj["params"] = params
    assert_one_line_error(dumps(obj), "params")


def test_entry_that_is_not_an_object_is_refused():
    assert_one_line_error(with_param([1, 2]), "not an object")  # type: ignore[arg-type]


def test_a_shape_needing_a_billion_chunks_is_refused_arithmetically():
    entry = good_entry()
    entry.update(shape=[2**30, 1], chunk_shape=[1, 1], chunks=[D1])
    assert_one_line_error(with_param(entry), "1 chunks listed, shape needs 1073741824")


def test_a_parameter_larger_than_any_reader_accepts_is_refused():
    entry = good_entry()
    entry.update(shape=[2**40, 2**40], chunk_shape=[1, 2**40], chunks=[D1])
    assert_one_line_error(with_param(entry), "more than")


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deep_nesting_is_one_line_not_a_recursion_error(depth):
    data = b'{"theta_zarr": 1, "format": ' + b"[" * depth + b"]" * depth + b"}"
    assert_one_line_error(data, "nested more than 64 levels")


@pytest.mark.parametrize("old, new, key", [
    # the second "w" overwrote "b": the rebuilt file lacked a tensor, and exit 0
    ('"b":', '"w":', "w"),
    # a field given twice: a reviewer reads one dtype, the reader used the other
    ('"dtype":"bfloat16"', '"dtype":"float16","dtype":"bfloat16"', "dtype"),
    # the same, with an escaped key, which the fast lane cannot count
    ('"dtype":"bfloat16"', '"dtype":"float16","dt\\u0079pe":"bfloat16"', "dtype"),
    # in the format section: the rebuilt file's metadata or format would differ by parser
    ('"name":"safetensors"', '"name":"torch","name":"safetensors"', "name"),
    ('"z":"1"', '"a":"0","z":"1"', "a"),
    # at the top level: an empty params object first, the real one after it
    ('"params": ', '"params": {}, "params": ', "params"),
    ('"format": ', '"format": {"name": "npy"}, "format": ', "format"),
    ('"theta_zarr": 1', '"theta_zarr": 1, "theta_zarr": 1', "theta_zarr"),
])
def test_a_key_given_twice_is_refused(old, new, key):
    from theta_zarr.manifest import _decode_typed

    data = sample().to_bytes().decode()
    assert old in data
    bad = data.replace(old, new, 1).encode()
    assert _decode_typed(bad) is None  # both lanes refuse it, not only the exact one
    assert_one_line_error(bad, f"the key '{key}' twice")


def test_the_fast_lane_still_takes_what_the_writer_writes():
    from theta_zarr.manifest import _decode_typed

    assert _decode_typed(sample().to_bytes()) == sample()
    # transformers writes {"format": "pt"} into every safetensors file's metadata; the
    # word "format" in the format section must not send each such manifest down the slow lane
    hf = Manifest({"name": "safetensors", "header": {"__metadata__": {"format": "pt"}}},
                  sample().params)
    assert _decode_typed(hf.to_bytes()) == hf


def test_chunk_sizes_are_checked_against_dtype_and_chunk_shape():
    from theta_zarr.manifest import ParamEntry

    entry = ParamEntry((10, 4), "float32", (3, 4), (D1,) * 4)
    assert [entry.chunk_nbytes(i) for i in range(4)] == [48, 48, 48, 16]
    entry.check_chunk(3, b"x" * 16, "t")
    with pytest.raises(ManifestError, match="chunk 0 holds 24 bytes .* needs 48"):
        entry.check_chunk(0, b"x" * 24, "t")


@pytest.mark.parametrize("shape,chunk_shape", [
    ((), ()), ((0,), (1,)), ((3, 0), (3, 1)), ((5,), (5,)), ((1, 1, 7), (1, 1, 7)),
    ((8, 4), (4, 4)), ((2, 3, 4), (1, 3, 4)), ((2, 3), (2, 3)), ((1,), (1,))])
def test_entry_spans_are_the_chunk_grids(shape, chunk_shape):
    """ParamEntry.spans answers a one-chunk tensor without walking the grid: the same
    spans as chunking.spans for every geometry."""
    entry = ParamEntry(shape, "bfloat16", chunk_shape)
    assert entry.spans() == chunking.spans(shape, 2, chunk_shape)


def test_threads_decoding_their_first_manifests_together_all_succeed(tmp_path):
    """``ls`` of several refs decodes their manifests in threads: the second thread saw
    the first decoder made and the second still None ('NoneType' object has no attribute
    'decode', an internal error).  The second decoder's construction is slowed here so
    that the threads meet in that window every time."""
    m = Manifest({"name": "opaque", "size": 3}, {})
    (tmp_path / "m.json").write_bytes(m.to_bytes())
    proc = run_python("""
        import threading, time
        import msgspec
        from theta_zarr import manifest
        real = msgspec.json.Decoder

        def slow(kind, *a, **kw):
            if kind is manifest._TypedParams:
                time.sleep(0.3)
            return real(kind, *a, **kw)

        msgspec.json.Decoder = slow
        data = open("m.json", "rb").read()
        errors = []

        def read():
            try:
                manifest.Manifest.from_bytes(data)
            except Exception as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.1)
        for t in threads:
            t.join()
        print(errors)
        """, cwd=tmp_path)
    assert proc.stdout.decode().strip() == "[]", (proc.stdout, proc.stderr)
