"""ObjectStore over every kind of store: verified reads, whole-object writes (invariants 3, 4)."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import zstandard

from theta_zarr import chunking, codecs, objects
from theta_zarr.cache import Cache
from theta_zarr.objects import (
    MissingObjectError,
    ObjectError,
    ObjectStore,
    bounded_map,
    digest_of_key,
    object_key,
)
from theta_zarr.storage import BlobNotFound, StorageError, open_store
from theta_zarr.storage.local import LocalStore


@pytest.fixture(params=["local", "memory", "s3", "gcs"])
def store(request, tmp_path) -> ObjectStore:
    """An empty ObjectStore on a local folder, memory://, S3 and GCS in turn."""
    kind = request.param
    if kind == "local":
        yield ObjectStore(open_store(str(tmp_path / "store")), retries=0)
    elif kind == "memory":
        blobs = open_store(f"memory://tz-test-{uuid.uuid4().hex}/remote")
        yield ObjectStore(blobs, retries=0)
        if blobs.fs.exists(blobs.root):
            blobs.fs.rm(blobs.root, recursive=True)
    else:
        backend = request.getfixturevalue(f"{kind}_server")
        yield ObjectStore(open_store(backend.new_bucket(), backend.storage_options), retries=0)


def chunk(i: int, n: int = 1000) -> tuple[str, bytes]:
    raw = (b"%08d" % i) * (n // 8)
    return chunking.digest(raw), raw


def test_put_get_has_delete(store):
    d, raw = chunk(1)
    assert not store.has(d)
    written = store.put(d, raw)
    assert written == len(codecs.header("raw")) + len(raw)
    assert store.has(d)
    assert bytes(store.get(d)) == raw
    assert store.blobs.exists(object_key(d))
    store.delete(d)
    assert not store.has(d)
    store.delete(d)  # deleting what is gone is fine


def test_many(store):
    items = [chunk(i) for i in range(25)]
    absent = [chunk(i) for i in range(100, 105)]
    total = store.put_many(items)
    assert total == sum(len(codecs.header("raw")) + len(raw) for _, raw in items)
    wanted = [d for d, _ in items] + [d for d, _ in absent]
    assert store.missing(wanted) == {d for d, _ in absent}
    assert store.missing([]) == set()
    got = {d: bytes(raw) for d, raw in store.get_many(d for d, _ in items)}
    assert got == dict(items)
    listed = {d: size for d, size, _ in store.iter_digests()}
    assert listed == {d: len(codecs.header("raw")) + len(raw) for d, raw in items}


@pytest.mark.parametrize("lists", [True, False], ids=["listing", "one-by-one"])
def test_missing_many_by_listing_or_one_by_one_agree(object_store, monkeypatch, lists):
    """Existence of many objects on an object store is answered by one listing (a small
    store) or object by object (a store too large to list); both give the same answer."""
    store = ObjectStore(open_store(object_store.new_bucket(), object_store.storage_options),
                        retries=0)
    items = [chunk(i) for i in range(40)]
    absent = [chunk(i) for i in range(100, 140)]
    store.put_many(items)
    if not lists:
        monkeypatch.setattr(objects, "LIST_MAX_OBJECTS", -1)
    asked = []
    exists = store.blobs.exists
    monkeypatch.setattr(store.blobs, "exists", lambda key: asked.append(key) or exists(key))
    wanted = [d for d, _ in items + absent]
    assert store.missing(wanted) == {d for d, _ in absent}
    assert len(asked) == (0 if lists else len(wanted))
    # below LIST_MIN_CHECKS the objects are always asked one by one
    asked.clear()
    assert store.missing(wanted[:3] + [absent[0][0]]) == {absent[0][0]}
    assert len(asked) == 4


def test_a_local_store_is_never_listed_for_existence(tmp_path, monkeypatch):
    store = ObjectStore(open_store(str(tmp_path / "store")), retries=0)
    items = [chunk(i) for i in range(40)]
    store.put_many(items)
    monkeypatch.setattr(store.blobs, "list", lambda prefix="": pytest.fail("listed"))
    assert store.missing([d for d, _ in items] + [chunk(99)[0]]) == {chunk(99)[0]}


def test_an_object_store_key_with_keys_under_it_is_not_a_blob(object_store):
    """S3 and GCS have no folders: ``exists`` asks for the blob itself (one request),
    so a prefix with blobs under it is absent, as on a local folder store."""
    blobs = open_store(object_store.new_bucket(), object_store.storage_options)
    blobs.put("objects/ab/cdef", [b"x"])
    assert blobs.exists("objects/ab/cdef")
    assert not blobs.exists("objects/ab")
    assert not blobs.exists("objects/ab/cd")


def test_iter_digests_ignores_other_keys(store):
    d, raw = chunk(7)
    store.put(d, raw)
    store.blobs.put("manifests/abc.json", [b"{}"])
    store.blobs.put("refs/main", [b"x\n"])
    store.blobs.put("objects/zz/not-a-digest", [b"x"])
    store.blobs.put("objects/" + d[7:9] + "/" + d[9:30], [b"x"])  # too short
    store.blobs.put("objects/" + d[7:9].upper() + "/" + d[9:], [b"x"])
    assert [x[0] for x in store.iter_digests()] == [d]


def test_codec_is_per_object_and_digest_is_unchanged(store):
    d, raw = chunk(3, 64_000)
    zstore = ObjectStore(store.blobs, codec="zstd", retries=0)
    n = zstore.put(d, raw)
    assert n < len(raw)  # compressed
    assert bytes(store.blobs.get(object_key(d))).startswith(codecs.header("zstd"))
    assert bytes(store.get(d)) == raw  # a raw-codec store reads a zstd object


def test_put_encoded_transfers_objects_as_they_are(store, tmp_path):
    d, raw = chunk(4, 64_000)
    src = ObjectStore(LocalStore(str(tmp_path / "src")), codec="zstd", retries=0)
    src.put(d, raw)
    obj = src.get_encoded(d)
    assert store.put_encoded(d, obj) == len(obj)
    assert store.blobs.get(object_key(d)) == obj
    assert bytes(store.get(d)) == raw


@pytest.mark.parametrize("bad", [b"wrong bytes", b""])
def test_corrupt_object_names_digest_and_store(store, bad):
    d, raw = chunk(5)
    store.put(d, raw)
    store.blobs.put(object_key(d), [codecs.header("raw"), bad])  # same header, wrong content
    with pytest.raises(ObjectError) as info:
        store.get(d)
    msg = str(info.value)
    assert d in msg and store.url in msg and "corrupt" in msg
    assert not isinstance(info.value, MissingObjectError)
    with pytest.raises(ObjectError, match="corrupt"):
        list(store.get_many([d]))


def test_object_with_a_broken_header_is_corrupt(store):
    d, raw = chunk(6)
    store.blobs.put(object_key(d), [raw])  # no header at all
    with pytest.raises(ObjectError) as info:
        store.get(d)
    assert d in str(info.value) and store.url in str(info.value)
    store.blobs.put(object_key(d), [codecs.header("zstd"), b"garbage"])
    with pytest.raises(ObjectError, match="corrupt"):
        store.get(d)


def test_missing_object_names_digest_and_store(store):
    d, _ = chunk(8)
    with pytest.raises(MissingObjectError) as info:
        store.get(d)
    assert d in str(info.value) and store.url in str(info.value)
    with pytest.raises(MissingObjectError):
        list(store.get_many([d]))


@pytest.mark.parametrize("bad", [
    "blake3:../../etc",
    "blake3:" + "0" * 62 + "/.",
    "blake3:" + "A" * 64,
    "sha256:" + "0" * 64,
    "blake3:" + "0" * 63,
    "../../" + "0" * 64,
    "",
    None,
])
def test_malformed_digests_are_refused(tmp_path, bad):
    store = ObjectStore(LocalStore(str(tmp_path / "s")), retries=0)
    with pytest.raises(ObjectError, match="invalid digest"):
        object_key(bad)
    for op in (store.has, store.get, store.delete, lambda d: store.put(d, b"x")):
        with pytest.raises(ObjectError, match="invalid digest"):
            op(bad)
    assert list(store.iter_digests()) == []


def test_object_key_layout():
    d = "blake3:" + "ab" + "c" * 62
    assert object_key(d) == "objects/ab/" + "c" * 62
    assert digest_of_key(object_key(d)) == d
    assert digest_of_key("objects/ab/" + "c" * 61) is None
    assert digest_of_key("objects/AB/" + "c" * 62) is None
    assert digest_of_key("objects/ab/" + "c" * 62 + "/x") is None
    assert digest_of_key("manifests/ab/" + "c" * 62) is None


def test_store_url_is_redacted():
    blobs = open_store(f"memory://user:s3cret@tz-{uuid.uuid4().hex}")
    s = ObjectStore(blobs, retries=0)
    assert "s3cret" not in s.url and "s3cret" not in repr(s)
    with pytest.raises(MissingObjectError) as info:
        s.get(chunk(1)[0])
    assert "s3cret" not in str(info.value)


def test_unknown_codec_is_refused():
    with pytest.raises(codecs.CodecError):
        ObjectStore(LocalStore("/nonexistent"), codec="lz4")


# -- the local cache ---------------------------------------------------------------------------

def test_cache_ensure_writes_once(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    d, raw = chunk(9)
    assert cache.ensure(d, raw) > 0
    path = tmp_path / "cache" / object_key(d)
    before = path.stat().st_mtime_ns, path.stat().st_ino
    assert cache.ensure(d, raw) == 0
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    assert os.path.isdir(cache.tmp_dir)
    assert [x[0] for x in cache.iter_digests()] == [d]


def test_write_failure_is_a_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a folder")
    s = ObjectStore(LocalStore(str(blocker / "store")), retries=0)
    d, raw = chunk(10)
    with pytest.raises(StorageError) as info:
        s.put(d, raw)
    assert str(blocker / "store") in str(info.value)
    cache = Cache(str(blocker / "cache"))
    with pytest.raises(StorageError):
        cache.ensure(d, raw)


class FlakyStore(LocalStore):
    """A real local store whose first ``fail`` puts fail as a flaky network would."""

    def __init__(self, root: str, fail: int):
        super().__init__(root)
        self.fail = fail
        self.calls = 0

    def put(self, key, parts):
        self.calls += 1
        if self.calls <= self.fail:
            raise StorageError("connection reset")
        super().put(key, parts)


def test_transient_errors_are_retried(tmp_path):
    blobs = FlakyStore(str(tmp_path / "s"), fail=1)
    s = ObjectStore(blobs, retries=1)
    d, raw = chunk(11)
    s.put(d, raw)
    assert blobs.calls == 2 and bytes(s.get(d)) == raw
    blobs2 = FlakyStore(str(tmp_path / "s2"), fail=5)
    with pytest.raises(StorageError, match="connection reset"):
        ObjectStore(blobs2, retries=1).put(d, raw)
    assert blobs2.calls == 2


class CountingStore(LocalStore):
    """A real local store that counts its reads."""

    def __init__(self, root: str):
        super().__init__(root)
        self.gets = 0

    def get(self, key, max_bytes=None):
        self.gets += 1
        return super().get(key, max_bytes)


def test_a_manifests_size_never_lifts_the_decoding_bound(tmp_path, monkeypatch):
    """A hostile manifest can give a chunk any size (one chunk of 2^40 bytes): the size
    it gives bounds decoding only below ``MAX_RAW``, which bounds it always."""
    monkeypatch.setattr(codecs, "MAX_RAW", 1 << 20)  # instead of 2 GiB, to keep it cheap
    co = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    bomb = codecs.header("zstd") + co.compress(bytes(4 << 20)) + co.flush()
    store = ObjectStore(LocalStore(str(tmp_path / "s")))
    digest = chunk(1)[0]
    with pytest.raises(ObjectError, match=r"is corrupt \(zstd payload decodes to more "
                                          r"than 1048576 bytes"):
        store.decode(digest, bomb, size=1 << 40)
    with pytest.raises(ObjectError, match="more than the 4096 bytes its manifest gives"):
        store.decode(digest, bomb, size=4096)


def test_missing_is_not_retried(tmp_path):
    blobs = CountingStore(str(tmp_path / "s"))
    s = ObjectStore(blobs, retries=3)
    with pytest.raises(MissingObjectError):
        s.get(chunk(12)[0])
    assert blobs.gets == 1


# -- bounded_map --------------------------------------------------------------------------------

@pytest.mark.parametrize("workers,window", [(8, 3), (2, None), (4, 1), (1, 5)])
def test_bounded_map_limits_items_in_flight(workers, window):
    lock = threading.Lock()
    state = {"drawn": 0, "max_drawn": 0, "running": 0, "max_running": 0}

    def items():
        for i in range(60):
            with lock:
                state["drawn"] += 1
                state["max_drawn"] = max(state["max_drawn"], state["drawn"])
            yield i

    def fn(i):
        with lock:
            state["running"] += 1
            state["max_running"] = max(state["max_running"], state["running"])
        time.sleep(0.001 * (i % 3))
        with lock:
            state["running"] -= 1
        return i * i

    results = {}
    for item, result in bounded_map(fn, items(), workers, window):
        with lock:
            state["drawn"] -= 1
        results[item] = result
    limit = window or workers * 2
    assert results == {i: i * i for i in range(60)}
    assert state["max_drawn"] <= limit
    assert state["max_running"] <= min(workers, limit)
    assert state["max_drawn"] == limit  # the window is actually used


def test_bounded_map_raises_the_error():
    def fn(i):
        if i == 7:
            raise ValueError("boom 7")
        return i

    with pytest.raises(ValueError, match="boom 7"):
        list(bounded_map(fn, range(50), 4))


def test_bounded_map_blob_not_found_is_a_key_error():
    # callers may catch the storage error or KeyError
    assert issubclass(BlobNotFound, KeyError) and issubclass(BlobNotFound, StorageError)


class _Down(LocalStore):
    """A store whose every call fails, as a dead server's would; counts the calls."""

    def __init__(self, root: str):
        super().__init__(root)
        self.calls = 0

    def exists(self, key: str) -> bool:
        self.calls += 1
        raise StorageError(f"cannot check {key} in {self.describe()}: connection refused")


def test_an_outage_costs_one_retry_budget_then_every_call_fails_at_once(tmp_path):
    blobs = _Down(str(tmp_path))
    store = ObjectStore(blobs, retries=50, retry_timeout=0.5)
    digest = chunking.digest(b"x")
    with pytest.raises(StorageError, match="gave up after 0.5 s"):
        store.has(digest)
    first = blobs.calls
    assert 1 < first < 50  # retried, but the budget ended it, not the retry count
    with pytest.raises(StorageError, match="gave up after 0.5 s"):
        store.missing([chunking.digest(bytes([i])) for i in range(20)])
    assert blobs.calls == first  # the store counts as down: no more calls


def test_a_corrupt_cache_object_is_moved_to_quarantine(tmp_path):
    from theta_zarr.cache import QuarantinedError

    cache = Cache(str(tmp_path / "cache"))
    raw = b"a chunk of bytes" * 100
    digest = chunking.digest(raw)
    cache.put(digest, raw)
    path = tmp_path / "cache" / object_key(digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(QuarantinedError, match="quarantine"):
        cache.get(digest)
    assert not cache.has(digest)
    assert (tmp_path / "cache" / "quarantine" / digest[7:]).exists()
    assert cache.ensure(digest, raw) > 0 and cache.get(digest) == raw


@pytest.mark.parametrize("size", [1000, 200_000], ids=["small", "large"])
def test_copy_to_writes_verified_chunks_and_refuses_corrupt_or_short_ones(tmp_path, size):
    """Both paths of copy_to (one read for small objects, memory map + pwrite
    for large ones): the bytes land at the offset; corruption writes nothing."""
    from theta_zarr.cache import QuarantinedError

    cache = Cache(str(tmp_path / "cache"))
    raw = os.urandom(size)
    digest = chunking.digest(raw)
    cache.put(digest, raw)
    target = tmp_path / "out.bin"
    with open(target, "wb+") as f:
        cache.copy_to(digest, f.fileno(), 7, size)
    assert target.read_bytes() == b"\0" * 7 + raw
    assert cache.missing([digest, chunking.digest(b"other")]) == {chunking.digest(b"other")}
    path = tmp_path / "cache" / object_key(digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with open(tmp_path / "out2.bin", "wb+") as f:
        with pytest.raises(QuarantinedError, match="corrupt"):
            cache.copy_to(digest, f.fileno(), 0, size)
        assert os.fstat(f.fileno()).st_size == 0
    assert cache.missing([digest]) == {digest}
    cache.put(digest, raw)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-10])  # cut short
    with open(tmp_path / "out3.bin", "wb+") as f:
        with pytest.raises(ObjectError):
            cache.copy_to(digest, f.fileno(), 0, size)
        assert os.fstat(f.fileno()).st_size == 0


def test_gc_deletes_an_old_object_only_if_no_clean_freshened_it_since(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    (d1, raw1), (d2, raw2) = chunk(1), chunk(2)
    for d, raw in ((d1, raw1), (d2, raw2)):
        cache.put(d, raw)
        old = time.time() - 30 * 86400
        os.utime(tmp_path / "cache" / object_key(d), (old, old))
    cutoff = time.time() - 7 * 86400
    assert cache.ensure(d1, raw1) == 0  # a clean found it again: a new mtime
    assert not cache.delete_unused(d1, cutoff)
    assert cache.delete_unused(d2, cutoff)
    assert cache.missing([d1, d2]) == {d2}
    assert cache.freshen([d1, d2]) == {d2}  # a stat record naming d2 no longer answers
    assert [p.name for p in (tmp_path / "cache").rglob(".tmp-*")] == []


def test_ensure_rewrites_a_truncated_object(tmp_path):
    cache = Cache(str(tmp_path / "cache"))
    raw = bytes(range(256)) * 8
    digest = chunking.digest(raw)
    cache.put(digest, raw)
    path = tmp_path / "cache" / object_key(digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:100])  # a write cut short by a full disk
    assert cache.ensure(digest, raw) > 0
    assert cache.get(digest) == raw
    # a FIFO planted where the object belongs (a shared cache) is no object: it goes to
    # quarantine and the chunk is written again, without blocking on the FIFO
    path.unlink()
    os.mkfifo(path)
    done = []
    worker = threading.Thread(target=lambda: done.append(cache.ensure(digest, raw)),
                              daemon=True)
    worker.start()
    worker.join(60)  # a hang, not a speed: ensure blocked on the FIFO for good
    assert done and done[0] > 0 and cache.get(digest) == raw


def test_a_cache_configured_auto_chooses_by_dtype_and_raw_stays_the_default(tmp_path):
    from theta_zarr import checkpoint
    from theta_zarr.demo import ModelShape, write_model
    from theta_zarr.settings import Settings
    from theta_zarr.sync import clean_file

    path = tmp_path / "m.safetensors"
    write_model(str(path), ModelShape(hidden=64, layers=1, vocab=128))
    for codec, expected in (("raw", {"raw"}), ("auto", {"expsplit"})):
        settings = Settings(cache_dir=str(tmp_path / codec), chunk_bytes=8192,
                            cache_codec=codec)
        cache = checkpoint.open_cache(settings)
        cleaned = clean_file(str(path), settings, cache)
        assert {codecs.split(cache.get_encoded(d))[0] for d in cleaned.sizes} == expected
        assert all(chunking.digest(cache.get(d)) == d for d in cleaned.sizes)


def test_a_read_only_cache_still_serves_reads_with_scratch_files_elsewhere(tmp_path,
                                                                           monkeypatch):
    """A team's pre-filled cache on a read-only mount (objects/ only, no tmp/): a
    checkout failed with "cannot use CACHE as the cache" although it only reads."""
    import errno as errno_
    import tempfile

    cache = Cache(str(tmp_path / "cache"))
    d, raw = chunk(3)
    cache.put(d, raw)
    real = os.makedirs

    def read_only(path, *args, **kw):
        if str(path).startswith((str(tmp_path / "cache"), str(tmp_path / "nowhere"))):
            raise OSError(errno_.EROFS, "Read-only file system", path)
        return real(path, *args, **kw)

    monkeypatch.setattr(os, "makedirs", read_only)
    assert cache.tmp_dir == tempfile.gettempdir()
    assert bytes(cache.get(d)) == raw
    gone = Cache(str(tmp_path / "nowhere" / "cache"))
    with pytest.raises(StorageError, match="cannot use .* as the cache"):
        print(gone.tmp_dir)
