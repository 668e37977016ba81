"""NumPy .npz (stored and deflated) and .npy: rebuilt as numpy writes them; pickles refused."""

from __future__ import annotations

import io
import struct
import zipfile

import helpers
import numpy as np
import pytest
from helpers import npz, settings

from theta_zarr import checkpoint
from theta_zarr.formats import FormatError
from theta_zarr.formats.base import NotWeights
from theta_zarr.manifest import Manifest

NAME = "data/arrays.npz"


def clean(data: bytes, tmp_path, name: str = NAME) -> Manifest:
    """``helpers.clean_manifest``, of a file named ``NAME`` unless told."""
    return helpers.clean_manifest(data, tmp_path, name)


def smudge(m: Manifest, tmp_path) -> bytes:
    """``helpers.smudge`` of a file named ``NAME``."""
    return helpers.smudge(m, tmp_path, NAME)


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "weights": rng.standard_normal((60, 50)).astype("<f4"),
        "ids": rng.integers(-(2**40), 2**40, size=(1000,), dtype="<i8"),
        "mask": rng.integers(0, 2, size=(7, 7)).astype(bool),
        "half": rng.standard_normal((33, 3)).astype("<f2"),
        "scalar": np.float64(-0.0),
        "empty": np.zeros((0, 4), dtype="<u2"),
        "fortran": np.asfortranarray(rng.standard_normal((30, 20)).astype("<f8")),
    }


def check_arrays(data: bytes) -> None:
    with np.load(io.BytesIO(data)) as back:
        want = arrays()
        assert list(back.keys()) == list(want)
        for k, a in want.items():
            b = back[k]
            assert b.dtype == a.dtype and b.shape == a.shape, k
            assert b.tobytes(order="A") == a.tobytes(order="A"), k
            assert b.flags.f_contiguous == a.flags.f_contiguous or a.ndim < 2, k


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_round_trips(compressed, tmp_path):
    data = npz(arrays(), compressed=compressed)
    m = clean(data, tmp_path)
    assert m.format["compressed"] is compressed
    assert [x["param"] for x in m.format["members"]] == list(arrays())
    assert m.params["half"].dtype == "float16"
    out = smudge(m, tmp_path)
    assert out == data
    check_arrays(out)
    assert clean(out, tmp_path).to_bytes() == m.to_bytes()


def test_npz_members_in_any_order_and_names(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, np.arange(3), np.ones((2, 2)), **{"z.last": np.zeros(4), "a first": np.eye(3)})
    data = buf.getvalue()
    out = smudge(clean(data, tmp_path), tmp_path)
    assert out == data


@pytest.mark.parametrize("array", [
    np.arange(5000, dtype="<f4").reshape(50, 100),
    np.asfortranarray(np.arange(5000, dtype="<i2").reshape(50, 100)),
    np.asfortranarray(np.arange(24, dtype="<f8").reshape(2, 3, 4)),
    np.array(3.5, dtype="<f8"),
    np.zeros((0,), dtype="<f4"),
    np.arange(12, dtype="<c8").reshape(3, 4),
], ids=["c-order", "fortran", "fortran-3d", "scalar", "empty", "complex"])
def test_npy_round_trips_byte_identically(array, tmp_path):
    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getvalue()
    m = clean(data, tmp_path, name="x.npy")
    assert m.format["name"] == "npy"
    assert m.format["fortran_order"] == (array.flags.f_contiguous and not
                                         array.flags.c_contiguous)
    out = smudge(m, tmp_path)
    assert out == data
    back = np.load(io.BytesIO(out))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes(order="A") == array.tobytes(order="A")
    assert back.flags.f_contiguous == array.flags.f_contiguous


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_format_version_round_trips_byte_identically(version, tmp_path):
    """They came back as version 1.0 (and git status stayed clean)."""
    a = np.asfortranarray(np.arange(12, dtype="<f4").reshape(3, 4))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=version)
    m = clean(buf.getvalue(), tmp_path, name="v.npy")
    assert smudge(m, tmp_path) == buf.getvalue()
    one = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.npy", one)
    out = smudge(clean(buf.getvalue(), tmp_path), tmp_path)
    with zipfile.ZipFile(io.BytesIO(out)) as zf:
        assert zf.read("a.npy") == one  # an .npz member keeps its version too


def refused(data: bytes, tmp_path, name: str = NAME) -> str:
    """The reason a file is not weights: refused with theta-zarr.opaque=false, and kept
    as opaque bytes by default."""
    with pytest.raises(NotWeights) as info:
        helpers.clean(data, tmp_path, name, opaque=False)
    assert clean(data, tmp_path, name).format_name == "opaque"
    assert "\n" not in str(info.value)
    return str(info.value)


def test_object_arrays_are_not_weights(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    reason = refused(buf.getvalue(), tmp_path, name="obj.npy")
    assert "object arrays" in reason and "obj.npy" in reason
    buf = io.BytesIO()
    np.savez(buf, good=np.zeros(3), bad=np.array(["x", 1], dtype=object))
    reason = refused(buf.getvalue(), tmp_path)
    assert "object arrays" in reason and NAME in reason


def test_big_endian_and_strings_are_not_weights(tmp_path):
    for array, words in ((np.arange(4, dtype=">f4"), "big-endian"),
                         (np.array(["cat", "dog"]), "unsupported numpy dtype <U3")):
        buf = io.BytesIO()
        np.save(buf, array)
        reason = refused(buf.getvalue(), tmp_path, name="a.npy")
        assert words in reason and "a.npy" in reason


def test_bad_npy_files_are_refused(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.arange(1000, dtype="<f4"))
    data = buf.getvalue()
    for bad, fragment in [(data[:-3], "truncated"), (data + b"x", "continues past"),
                          (data[:20], "truncated"),
                          (data[:8] + struct.pack("<H", 10) + b"{'descr':}", "bad .npy header"),
                          # a version-3 header (UTF-8) that is not UTF-8
                          (b"\x93NUMPY\x03\x00" + struct.pack("<I", 4) + b"\xff\xfe{}",
                           "bad .npy header")]:
        with pytest.raises(FormatError) as info:
            clean(bad, tmp_path, name="a.npy")
        assert fragment in str(info.value) and "a.npy" in str(info.value)
        assert "\n" not in str(info.value)


def test_npz_with_a_foreign_member_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.npy", npy_bytes(np.zeros(3)))
        zf.writestr("README.txt", "hello")
    with pytest.raises(FormatError, match="README.txt"):
        clean(buf.getvalue(), tmp_path)


def test_broken_npz_is_refused(tmp_path):
    data = npz(arrays())
    with pytest.raises(FormatError) as info:
        clean(data[: len(data) // 2], tmp_path)
    assert NAME in str(info.value) and "\n" not in str(info.value)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_a_fortran_ordered_array_is_described_by_its_own_shape(tmp_path):
    """Stored as its C-ordered transpose, a Fortran-ordered array was shown as reversed
    (5, 3) by diff, ls-files and textconv; the same values saved C-ordered, then
    Fortran-ordered, diffed as "reshaped"."""
    from theta_zarr.diff import diff, format_text, textconv_lines
    from theta_zarr.remote import ReadThrough

    a = np.arange(15, dtype="<f4").reshape(3, 5)
    buf_c, buf_f = io.BytesIO(), io.BytesIO()
    np.save(buf_c, a)
    np.save(buf_f, np.asfortranarray(a))
    mc = clean(buf_c.getvalue(), tmp_path, name="a.npy")
    mf = clean(buf_f.getvalue(), tmp_path, name="a.npy")
    assert tuple(mf.params["array"].shape) == (5, 3)  # as stored
    assert "array float32[3, 5]" in "\n".join(textconv_lines(mf))
    store = ReadThrough(checkpoint.open_cache(settings(tmp_path)), None)
    fd = diff(mc, mf, store, "a.npy")
    (p,) = fd.params
    assert (p.status, p.old["shape"], p.new["shape"], p.relaid) == ("changed", [3, 5], [3, 5],
                                                                    True)
    assert p.l2 is None  # not compared in the wrong element order
    text = "\n".join(format_text(fd))
    assert "stored in the other order now (C <-> Fortran)" in text
    assert "fortran_order: false -> true" in text
