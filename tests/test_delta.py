"""Delta objects (xor-delta, int-delta): bit-exact in every dtype, resolved and verified
by every reader, written only where they pay, chains bounded, kept alive by gc and
checked by fsck."""

from __future__ import annotations

import os
import re
import time

import ml_dtypes
import numpy as np
import pytest
import zstandard

from theta_zarr import chunking, codecs, delta, gc
from theta_zarr.cache import Cache
from theta_zarr.delta import Base, DeltaPolicy
from theta_zarr.manifest import Manifest, ParamEntry
from theta_zarr.objects import MissingBaseError, ObjectError, ObjectStore, object_key
from theta_zarr.remote import fetch_objects, push_objects
from theta_zarr.storage import open_store

RNG = np.random.default_rng(7)


def nudge(x: np.ndarray, rel: float, rng=RNG) -> np.ndarray:
    """x plus a relative step of about ``rel``, computed in float32, cast back."""
    f = x.astype(np.float32)
    return (f + f * rng.standard_normal(f.shape).astype(np.float32) * np.float32(rel)
            ).astype(x.dtype)


def special_values(dtype) -> np.ndarray:
    """NaNs with payloads, -0.0, subnormals, infinities: for 1- and 2-byte floats every bit
    pattern there is; for float32 a list of them."""
    dt = np.dtype(dtype)
    if dt.itemsize == 1:
        return np.arange(256, dtype=np.uint8).view(dt)
    if dt.itemsize == 2:
        return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dt)
    bits = [0x7FC00000, 0x7F800001, 0xFFC00001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FA5A5A5,
            0x7F800000, 0xFF800000, 0x80000000, 0x00000000, 0x00000001, 0x807FFFFF,
            0x00400000, 0x80000001]
    return np.array(bits, dtype=np.uint32).view(dt)


FLOATS = [np.float32, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn]
INTS = [np.int8, np.int32]


def pairs(dtype):
    """(old, new) arrays of a dtype: a small step, specials, random and adversarial bytes."""
    dt = np.dtype(dtype)
    n = 4096
    if dt.kind in "iu":
        old = RNG.integers(np.iinfo(dt).min, np.iinfo(dt).max, n, dtype=dt, endpoint=True)
        new = old.copy()
        new[::3] += 1
        yield "step", old, new
    else:
        old = (RNG.standard_normal(n) * 0.02).astype(np.float32).astype(dt)
        yield "step", old, nudge(old, 1e-3)
        spec = special_values(dt)
        yield "specials", spec, spec[::-1].copy()
        yield "specials-vs-step", np.resize(spec, n), old
    raw = np.frombuffer(os.urandom(n * dt.itemsize), dtype=dt)
    yield "random", raw, np.frombuffer(os.urandom(n * dt.itemsize), dtype=dt)
    yield "identical", raw, raw.copy()
    yield "inverted", raw, (~raw.view(np.uint8)).view(dt)


CASES = [(dt, label, old, new) for dt in FLOATS + INTS for label, old, new in pairs(dt)]


@pytest.mark.parametrize("dtype,label,old,new", CASES,
                         ids=[f"{np.dtype(c[0]).name}-{c[1]}" for c in CASES])
def test_bit_exact_in_every_dtype(dtype, label, old, new):
    base_raw, raw = old.tobytes(), new.tobytes()
    base_d = chunking.digest(base_raw)
    for form in delta.NAMES:
        for elem in (1, np.dtype(dtype).itemsize, 3):
            obj = delta.encode(raw, base_raw, base_d, elem, form=form)
            name, payload = codecs.split(obj)
            # int-delta takes whole 1/2/4/8-byte elements; anything else is xor-delta
            assert name == (form if elem in delta.INT_ELEMS else "xor-delta")
            header, body = delta.parse(payload, name)
            assert header.base == base_d and header.depth == 1 and header.form == name
            assert delta.apply(header, body, base_raw) == raw


def test_odd_lengths_and_empty():
    for n in (1, 3, 7, 9, 1001):
        a, b = os.urandom(n), os.urandom(n)
        obj = delta.encode(a, b, chunking.digest(b), 2)
        header, body = delta.parse(codecs.split(obj)[1])
        assert delta.apply(header, body, b) == a
    obj = delta.encode(b"", b"", chunking.digest(b""), 1)
    assert delta.apply(*delta.parse(codecs.split(obj)[1]), b"") == b""
    for n in (1, 3, 1001):  # lengths 2 does not divide fall back to xor-delta
        a, b = os.urandom(n), os.urandom(n)
        obj = delta.encode(a, b, chunking.digest(b), 2, form=delta.INT)
        name, payload = codecs.split(obj)
        assert name == ("xor-delta" if n % 2 else "int-delta")
        assert delta.apply(*delta.parse(payload, name), b) == a
    obj = delta.encode(b"", b"", chunking.digest(b""), 2, form=delta.INT)
    assert delta.apply(*delta.parse(codecs.split(obj)[1], delta.INT), b"") == b""


@pytest.mark.parametrize("dtype,elem", [(ml_dtypes.bfloat16, 2), (np.float32, 4)])
def test_int_delta_beats_xor_delta_on_a_fine_tune_step(dtype, elem):
    """The writer's form: a 1e-3 step costs fewer bytes as int-delta than as xor-delta,
    and well under zstd of the XOR (the old reference point)."""
    old = (RNG.standard_normal(1 << 18) * 0.02).astype(np.float32).astype(dtype)
    new = nudge(old, 1e-3)
    base_d = chunking.digest(old.tobytes())
    xor_obj = delta.encode(new.tobytes(), old.tobytes(), base_d, elem)
    int_obj = delta.encode(new.tobytes(), old.tobytes(), base_d, elem, form=delta.INT)
    zstd_xor = codecs.encode_bytes(delta.xor(new.tobytes(), old.tobytes()), "zstd")
    assert len(int_obj) < len(xor_obj)
    assert len(int_obj) <= 0.8 * len(zstd_xor)
    assert delta.best_form(elem) == delta.INT and delta.best_form(3) == delta.NAME


def test_corrupt_int_delta_body_is_an_error_not_data():
    old = np.arange(4096, dtype=np.float32)
    new = old + 1
    base_d = chunking.digest(old.tobytes())
    obj = delta.encode(new.tobytes(), old.tobytes(), base_d, 4, form=delta.INT)
    header, body = delta.parse(codecs.split(obj)[1], delta.INT)
    for bad in (bytes(body[:10]), bytes(body[:-5]), bytes(body) + b"x"):
        with pytest.raises(codecs.CodecError):
            delta.apply(header, bad, old.tobytes())
    with pytest.raises(codecs.CodecError, match="int-delta"):
        delta.apply(header, body, old.tobytes()[:-4])  # base of another length


def test_a_delta_body_decodes_to_its_bases_size_at_most():
    """An xor-delta body is zstd: a few KB without a declared size expanded whole before
    its length was compared with the base's.  It now stops at the base's size."""
    old = np.arange(4096, dtype=np.float32)
    obj = delta.encode((old + 1).tobytes(), old.tobytes(), chunking.digest(old.tobytes()), 4)
    header, _ = delta.parse(codecs.split(obj)[1])
    co = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    bomb = co.compress(bytes(8 << 20)) + co.flush()
    with pytest.raises(codecs.TooLarge, match=f"more than {old.nbytes} bytes"):
        delta.apply(header, bomb, old.tobytes())


def test_delta_of_small_bf16_step_is_much_smaller_than_zstd():
    old = (RNG.standard_normal(1 << 20) * 0.02).astype(ml_dtypes.bfloat16)
    new = nudge(old, 1e-3)
    plain = codecs.encode_bytes(new.tobytes(), "zstd")
    obj = delta.encode(new.tobytes(), old.tobytes(), chunking.digest(old.tobytes()), 2)
    assert len(obj) < 0.5 * len(plain)


def test_header_layout_and_errors():
    base = os.urandom(64)
    bd = chunking.digest(base)
    obj = delta.encode(os.urandom(64), base, bd, 2, depth=3)
    assert obj.startswith(b"TZO1\x09xor-delta" + bytes.fromhex(bd[7:]) + bytes([2, 3]))
    assert delta.read_header(obj[:delta.PREFIX_BYTES]) == delta.DeltaHeader(bd, 2, 3)
    assert delta.read_header(codecs.encode_bytes(b"abc", "zstd")) is None
    assert delta.read_header(delta.with_depth(obj, 5)).depth == 5
    with pytest.raises(codecs.CodecError, match="truncated"):
        delta.parse(obj[len(delta.HEADER):len(delta.HEADER) + 10])
    with pytest.raises(codecs.CodecError, match="equal lengths"):
        delta.encode(b"abc", b"ab", bd)
    with pytest.raises(codecs.CodecError, match="needs its base"):
        codecs.decode(obj)


# -- stores ---------------------------------------------------------------------------------
def store_at(path) -> ObjectStore:
    return ObjectStore(open_store(str(path)), codec="zstd", retries=0)


def put_delta(store: ObjectStore, raw: bytes, base_raw: bytes, depth: int = 1) -> str:
    d = chunking.digest(raw)
    store.put_encoded(d, delta.encode(raw, base_raw, chunking.digest(base_raw), 2, depth))
    return d


def chain(store: ObjectStore, length: int, n: int = 8192) -> list[tuple[str, bytes]]:
    """A full object then ``length`` deltas, each over the one before."""
    x = (RNG.standard_normal(n // 2) * 0.02).astype(ml_dtypes.bfloat16)
    out = [(chunking.digest(x.tobytes()), x.tobytes())]
    store.put(*out[0])
    for i in range(length):
        x = nudge(x, 1e-2)
        out.append((put_delta(store, x.tobytes(), out[-1][1], i + 1), x.tobytes()))
    return out


def test_store_resolves_chains_and_verifies(tmp_path):
    store = store_at(tmp_path / "s")
    versions = chain(store, 5)
    fresh = store_at(tmp_path / "s")  # no LRU state
    for d, raw in reversed(versions):
        assert bytes(fresh.get(d)) == raw
    assert fresh.delta_header(versions[-1][0]).depth == 5
    assert fresh.delta_header(versions[0][0]) is None


def test_missing_base_names_both_digests(tmp_path):
    store = store_at(tmp_path / "s")
    (base_d, _), (d1, _), (d2, _) = chain(store, 2)
    store.delete(base_d)
    with pytest.raises(MissingBaseError) as e:
        store_at(tmp_path / "s").get(d1)
    assert d1 in str(e.value) and base_d in str(e.value)
    with pytest.raises(MissingBaseError) as e:
        store_at(tmp_path / "s").get(d2)
    assert d2 in str(e.value) and base_d in str(e.value)


def corrupt(store: ObjectStore, digest: str) -> None:
    path = os.path.join(store.blobs.root, *object_key(digest).split("/"))
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)


def test_corrupt_delta_or_base_is_detected_and_named(tmp_path):
    store = store_at(tmp_path / "s")
    (base_d, _), (d1, _), (d2, _) = chain(store, 2)
    corrupt(store, d2)
    with pytest.raises(ObjectError, match=d2):
        store_at(tmp_path / "s").get(d2)
    corrupt(store, base_d)
    with pytest.raises(ObjectError) as e:
        store_at(tmp_path / "s").get(d1)
    assert d1 in str(e.value) and base_d in str(e.value) and "base" in str(e.value)


def test_reader_depth_bound_stops_a_loop(tmp_path):
    store = store_at(tmp_path / "s")
    a, b = os.urandom(64), os.urandom(64)
    da, db = chunking.digest(a), chunking.digest(b)
    store.put_encoded(da, delta.encode(a, b, db))
    store.put_encoded(db, delta.encode(b, a, da))
    with pytest.raises(ObjectError, match="deeper than"):
        store.get(da)


# -- writer ---------------------------------------------------------------------------------
def versions_in_cache(cache: Cache, count: int, n: int = 1 << 15, rel: float = 1e-3):
    x = (RNG.standard_normal(n) * 0.02).astype(ml_dtypes.bfloat16)
    out = []
    for _ in range(count):
        raw = x.tobytes()
        d = chunking.digest(raw)
        cache.put(d, raw)
        out.append(d)
        x = nudge(x, rel)
    return out


def test_a_push_line_says_how_many_bytes_deltas_of_a_few_kilobytes_took(tmp_path):
    """A fine-tune step whose deltas took a few KB (here about 100 bytes) read "2.6 MB
    raw -> 0.0 MB (2 deltas 2.6 -> 0.0 MB)", as if nothing had been sent."""
    cache, remote = Cache(str(tmp_path / "cache")), store_at(tmp_path / "remote")
    x = RNG.standard_normal(1 << 16).astype(np.float32)
    v = []
    for i in range(2):
        x[7] = i  # one element changes: a delta of a few bytes
        raw = x.tobytes()
        v.append(chunking.digest(raw))
        cache.put(v[-1], raw)
    push_objects(cache, remote, [v[0]])
    stats = push_objects(cache, remote, [v[1]], {v[1]: Base(v[0], 4)})
    assert stats.deltas == 1 and 0 < stats.stored_bytes < 5_000
    m = re.fullmatch(r"0\.3 MB raw -> ([\d.]+) MB \(1 delta 0\.3 -> \1 MB\)", stats.wire())
    assert m, stats.wire()
    assert abs(float(m[1]) * 1e6 - stats.stored_bytes) <= 0.05 * stats.stored_bytes


def test_push_writes_deltas_only_over_bases_the_remote_has(tmp_path):
    cache, remote = Cache(str(tmp_path / "cache")), store_at(tmp_path / "remote")
    v = versions_in_cache(cache, 3)
    bases = {v[1]: Base(v[0], 2), v[2]: Base(v[1], 2)}
    stats = push_objects(cache, remote, [v[1]], bases)  # v0 is not on the remote
    assert stats.deltas == 0 and remote.delta_header(v[1]) is None
    push_objects(cache, remote, [v[0]])
    remote.delete(v[1])
    # v1 and v2 together: v2 waits for v1 (its base) and both become deltas
    stats = push_objects(cache, remote, [v[1], v[2]], bases)
    assert stats.deltas == 2 and stats.delta_saved > 0
    assert remote.delta_header(v[1]).base == v[0]
    assert remote.delta_header(v[2]) == delta.DeltaHeader(v[1], 2, 2, delta.INT)
    fresh = Cache(str(tmp_path / "fresh"))
    got = fetch_objects(store_at(tmp_path / "remote"), fresh, v)
    # the fetch line counts the bytes read (two deltas and a full object), then raw
    assert got.raw_bytes == 3 * len(fresh.get(v[0])) and got.read_bytes < got.raw_bytes
    assert f"{got.read_bytes / 1e6:.1f} MB read -> " in got.summary("fetched", "from r")
    for d in v:
        assert codecs.split(fresh.get_encoded(d))[0] == "raw"  # the cache keeps raw objects
        assert chunking.digest(bytes(fresh.get(d))) == d


def test_push_respects_ratio_and_disabled_policy(tmp_path):
    cache, remote = Cache(str(tmp_path / "cache")), store_at(tmp_path / "remote")
    v = versions_in_cache(cache, 2)
    push_objects(cache, remote, [v[0]])
    bases = {v[1]: Base(v[0], 2)}
    push_objects(cache, remote, [v[1]], bases, DeltaPolicy(enabled=False))
    assert remote.delta_header(v[1]) is None
    remote.delete(v[1])
    push_objects(cache, remote, [v[1]], bases, DeltaPolicy(ratio=0.01))
    assert remote.delta_header(v[1]) is None
    remote.delete(v[1])
    # random bytes: the delta is no smaller, so the object stays plain
    a, b = os.urandom(50_000), os.urandom(50_000)
    da, db = chunking.digest(a), chunking.digest(b)
    cache.put(da, a)
    cache.put(db, b)
    push_objects(cache, remote, [da])
    stats = push_objects(cache, remote, [db], {db: Base(da, 1)})
    assert stats.deltas == 0 and remote.delta_header(db) is None


@pytest.mark.parametrize("max_depth", [1, 3, 8])
def test_depth_limit(tmp_path, max_depth):
    cache, remote = Cache(str(tmp_path / "cache")), store_at(tmp_path / "remote")
    v = versions_in_cache(cache, 12, n=4096)
    bases = {v[i]: Base(v[i - 1], 2) for i in range(1, len(v))}
    policy = DeltaPolicy(max_depth=max_depth)
    for d in v:  # one push per step, as a training job does
        push_objects(cache, remote, [d], bases, policy)
    depths = [(remote.delta_header(d) or delta.DeltaHeader("", 1, 0)).depth for d in v]
    assert max(depths) == max_depth
    assert depths[0] == 0 and depths[max_depth + 1] == 0  # full again after the limit
    fresh = store_at(tmp_path / "remote")
    for d in v:
        assert chunking.digest(bytes(fresh.get(d))) == d


def test_candidates_match_name_shape_dtype_chunk_shape():
    def entry(digests, shape=(4, 256), dtype="bfloat16", chunk=(2, 256)):
        return ParamEntry(shape, dtype, chunk, tuple(digests))

    d = [chunking.digest(bytes([i])) for i in range(10)]
    fmt = {"name": "numpy", "names": []}
    old = Manifest(fmt, {"a": entry(d[0:2]), "b": entry(d[2:4]), "c": entry(d[4:6]),
                         "e": entry(d[8:10])})
    new = Manifest(fmt, {"a": entry([d[6], d[1]]), "b": entry(d[2:4], dtype="float16"),
                         "c": entry([d[7]], shape=(2, 256)), "e": entry([d[9], d[8]])})
    found = delta.candidates(new, old)
    assert found == {d[6]: Base(d[0], 2), d[9]: Base(d[8], 2), d[8]: Base(d[9], 2)}
    assert delta.candidates(new, None) == {}


# -- gc and fsck --------------------------------------------------------------------------
def test_gc_keeps_every_base_of_a_kept_delta(tmp_path):
    store = store_at(tmp_path / "s")
    versions = chain(store, 4)
    unrelated = chunking.digest(b"unrelated")
    store.put(unrelated, b"unrelated")
    tip = versions[-1][0]
    future = time.time() + 3600
    sweep = gc.plan_objects(store, {tip}, future)
    doomed = {k for k, _ in sweep.keys}
    assert doomed == {object_key(unrelated)}
    gc.delete(store, sweep)
    assert chunking.digest(bytes(store_at(tmp_path / "s").get(tip))) == tip
    assert gc.with_bases(store, {tip}) == {d for d, _ in versions}


def test_fsck_names_broken_chains(tmp_path):
    store = store_at(tmp_path / "s")
    (base_d, _), (d1, _), (d2, _) = chain(store, 2)
    roots = gc.Roots()
    roots.add_chunks([d2], "model.safetensors")
    assert gc.check_objects(store, roots) == []
    corrupt(store, d1)
    problems = gc.check_objects(store_at(tmp_path / "s"), roots)
    assert len(problems) == 1 and d2 in problems[0] and d1 in problems[0]
    store.delete(d1)
    problems = gc.check_objects(store_at(tmp_path / "s"), roots)
    assert len(problems) == 1 and "broken delta chain" in problems[0]
    assert d2 in problems[0] and d1 in problems[0]
