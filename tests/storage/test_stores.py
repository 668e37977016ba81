"""Blob stores: a local folder and any fsspec URL, behind one small interface."""

from __future__ import annotations

import os
import stat
import threading
import uuid

import pytest

from theta_zarr.objects import ObjectStore, object_key
from theta_zarr.storage import BlobNotFound, BlobTooLarge, NotABlob, StorageError, open_store
from theta_zarr.storage.fsspec import FsspecStore
from theta_zarr.storage.local import LocalStore


@pytest.fixture(params=["local", "memory", "s3", "gcs"])
def blobs(request, tmp_path):
    kind = request.param
    if kind == "local":
        yield open_store(str(tmp_path / "root"))
    elif kind == "memory":
        store = open_store(f"memory://tz-test-{uuid.uuid4().hex}")
        yield store
        if store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)
    else:
        backend = request.getfixturevalue(f"{kind}_server")
        yield open_store(backend.new_bucket() + "/some/prefix", backend.storage_options)


def test_blob_round_trip(blobs):
    assert not blobs.exists("objects/ab/cd")
    blobs.put("objects/ab/cd", [b"hello ", memoryview(b"world")])
    assert blobs.exists("objects/ab/cd")
    assert blobs.get("objects/ab/cd") == b"hello world"
    blobs.put("objects/ab/cd", [b"replaced"])
    assert blobs.get("objects/ab/cd") == b"replaced"
    blobs.put("objects/ab/ef", [])
    assert blobs.get("objects/ab/ef") == b""
    blobs.put("refs/main", [b"x"])
    listed = [(i.key, i.size) for i in blobs.list("objects/")]
    assert listed == [("objects/ab/cd", 8), ("objects/ab/ef", 0)]
    assert [i.key for i in blobs.list()] == ["objects/ab/cd", "objects/ab/ef", "refs/main"]
    assert all(i.mtime is None or i.mtime > 1e9 for i in blobs.list())
    blobs.delete("objects/ab/cd")
    blobs.delete("objects/ab/cd")
    assert not blobs.exists("objects/ab/cd")
    assert [i.key for i in blobs.list("objects")] == ["objects/ab/ef"]


def test_a_blob_over_the_readers_bound_is_refused_before_it_is_read(blobs):
    """A ref, a manifest or an object of a known chunk has a most size; a folder remote's
    sparse file of 100 GB at such a key was read whole (`internal error (MemoryError)`).
    Every backend refuses a larger blob (a ranged read of one byte more, or its size)."""
    blobs.put("refs/run/a", [b"x" * 5000])
    blobs.put("refs/run/empty", [])
    with pytest.raises(BlobTooLarge, match="refs/run/a .*more than the 4096 it may"):
        blobs.get("refs/run/a", 4096)
    assert blobs.get("refs/run/a", 5000) == b"x" * 5000
    assert blobs.get("refs/run/empty", 10) == b""
    if blobs.conditional_writes:
        with pytest.raises(BlobTooLarge, match="refs/run/a .*more than the 4096 it may"):
            blobs.get_versioned("refs/run/a", 4096)
        assert blobs.get_versioned("refs/run/a", 5000)[0] == b"x" * 5000
        assert blobs.get_versioned("refs/run/empty", 10)[0] == b""


def test_missing_blob(blobs):
    with pytest.raises(BlobNotFound) as info:
        blobs.get("objects/00/missing")
    assert "objects/00/missing" in str(info.value)
    assert blobs.describe() in str(info.value)
    assert list(blobs.list("nothing/")) == []


def test_open_store_picks_the_class(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    s = open_store("file://" + str(tmp_path / "x"))
    assert isinstance(s, LocalStore) and s.root == str(tmp_path / "x")
    assert isinstance(open_store("memory://tz-x"), FsspecStore)
    rel = open_store("relative/dir")
    assert isinstance(rel, LocalStore) and os.path.isabs(rel.root)


def test_unknown_protocol_is_a_storage_error():
    with pytest.raises(StorageError, match="nosuchproto"):
        open_store("nosuchproto://bucket/x")


# -- the local folder ------------------------------------------------------------------------------

def test_local_writes_are_atomic_and_read_only(tmp_path):
    store = LocalStore(str(tmp_path / "root"))
    for i in range(20):
        store.put(f"objects/ab/{i:04d}", [b"x" * 1000, b"y" * i])
    store.put("objects/ab/0000", [b"again"])  # replacing a read-only object works
    leftovers = [p for p in (tmp_path / "root").rglob("*") if p.name.startswith(".tmp")]
    assert leftovers == []
    path = tmp_path / "root" / "objects" / "ab" / "0003"
    assert path.read_bytes() == b"x" * 1000 + b"yyy"
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    assert (tmp_path / "root" / "objects" / "ab" / "0000").read_bytes() == b"again"


def test_local_readers_never_see_half_a_blob(tmp_path):
    store = LocalStore(str(tmp_path / "root"))
    big_a, big_b = b"a" * (1 << 20), b"b" * (1 << 20)
    store.put("k/blob", [big_a])
    seen = set()
    stop = threading.Event()

    def read():
        while not stop.is_set():
            seen.add(store.get("k/blob")[::4096])

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(30):
            store.put("k/blob", [big_b if i % 2 == 0 else big_a])
    finally:
        stop.set()
        t.join()
    assert seen <= {big_a[::4096], big_b[::4096]}


def test_local_temp_files_are_not_listed(tmp_path):
    store = LocalStore(str(tmp_path / "root"))
    store.put("objects/ab/cd", [b"x"])
    (tmp_path / "root" / "objects" / "ab" / ".tmp-crashed").write_bytes(b"half")
    assert [i.key for i in store.list("objects/")] == ["objects/ab/cd"]


def test_local_write_failure_is_a_storage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    store = LocalStore(str(blocker / "root"))
    with pytest.raises(StorageError) as info:
        store.put("objects/ab/cd", [b"data"])
    msg = str(info.value)
    assert "objects/ab/cd" in msg and str(blocker / "root") in msg and "\n" not in msg
    assert not isinstance(info.value, BlobNotFound)
    assert not store.exists("objects/ab/cd")
    assert blocker.read_bytes() == b""


def test_local_read_failure_is_a_storage_error(tmp_path, monkeypatch):
    import builtins
    import errno

    store = LocalStore(str(tmp_path / "root"))
    (tmp_path / "root" / "objects" / "ab").mkdir(parents=True)
    (tmp_path / "root" / "objects" / "ab" / "cd").write_bytes(b"x")

    def failing_open(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(StorageError, match="Input/output error") as info:
        store.get("objects/ab/cd")
    assert not isinstance(info.value, BlobNotFound)


def test_a_local_key_that_is_a_folder_or_under_a_file_is_absent(tmp_path):
    """As an object store answers for a key that is only a prefix (refs ``run7`` beside
    ``run7/step-1``): not found, not a read failure."""
    store = LocalStore(str(tmp_path / "root"))
    (tmp_path / "root" / "refs" / "run7").mkdir(parents=True)
    (tmp_path / "root" / "refs" / "run7" / "step-1").write_bytes(b"x")
    for key in ("refs/run7", "refs/run7/step-1/eval"):
        with pytest.raises(BlobNotFound):
            store.get(key)


def test_a_local_key_that_is_a_device_is_refused_at_once_not_read(tmp_path):
    """A link to /dev/zero at an object's name (a shared folder remote) was read until
    the memory ran out; it is refused before a byte is read, and not retried."""
    store = LocalStore(str(tmp_path / "root"))
    digest = "blake3:" + "ab" * 32
    path = tmp_path / "root" / object_key(digest)
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/zero")
    for read in (lambda: store.get(object_key(digest)),
                 lambda: store.read_head(object_key(digest), 8),
                 lambda: ObjectStore(store, retry_timeout=60).get(digest)):
        with pytest.raises(NotABlob, match="it is a device, not a file; remove it"):
            read()
    path.unlink()
    path.write_bytes(b"0123456789")
    assert store.read_head(object_key(digest), 4) == b"0123"


def test_local_list_of_a_missing_root_is_empty(tmp_path):
    assert list(LocalStore(str(tmp_path / "nothing")).list("objects/")) == []


def test_a_ref_write_that_hits_a_full_disk_says_so_and_leaves_no_temp_file(tmp_path,
                                                                           monkeypatch):
    import errno

    store = LocalStore(str(tmp_path))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="disk full") as info:
        store.put_if("refs/a", b"x", None)
    assert "refs/a" in str(info.value)
    assert list(store.debris()) == [] and not (tmp_path / "refs" / "a").exists()


def test_write_atomic_names_the_path_when_the_disk_is_full(tmp_path):
    import errno

    from theta_zarr.errors import one_line
    from theta_zarr.streams import write_atomic

    def write(out):
        raise OSError(errno.ENOSPC, "No space left on device")

    dest = tmp_path / "out" / "model.safetensors"
    with pytest.raises(OSError) as info:
        write_atomic(str(dest), write)
    assert one_line(info.value) == f"cannot write {dest}: disk full"
    assert list((tmp_path / "out").iterdir()) == []


def test_write_atomic_names_a_file_where_a_folder_belongs(tmp_path):
    """pull -o notes/model.safetensors (materialize -o too) where notes is a file said
    "notes: File exists"."""
    from theta_zarr.errors import one_line
    from theta_zarr.streams import write_atomic

    (tmp_path / "notes").write_text("mine")
    for dest in (tmp_path / "notes" / "model.safetensors",
                 tmp_path / "notes" / "sub" / "model.safetensors"):
        with pytest.raises(OSError) as info:
            write_atomic(str(dest), lambda out: out.write(b"x"))
        assert one_line(info.value) == (f"{tmp_path / 'notes'}: a file where a folder of "
                                        f"{dest} belongs")
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_lock_file_removed_by_gc_is_not_locked_twice(tmp_path):
    """A locker that got the lock on a file gc unlinked locks the new file instead."""
    store = LocalStore(str(tmp_path))
    store.put_if("refs/a", b"1", None)
    token = store.get_versioned("refs/a")[1]
    lock = tmp_path / "refs" / ".tmp-lock.a"
    store.put_if("refs/a", b"2", token)
    assert lock.exists()
    assert store.delete_debris("refs/.tmp-lock.a") and not lock.exists()
    store.put_if("refs/a", b"3", store.get_versioned("refs/a")[1])
    assert store.get("refs/a") == b"3" and lock.exists()


def test_move_is_atomic_and_reports_a_missing_source(blobs):
    blobs.put("objects/ab/cd", [b"data"])
    blobs.move("objects/ab/cd", "trash/run/objects/ab/cd")
    assert not blobs.exists("objects/ab/cd") and blobs.get("trash/run/objects/ab/cd") == b"data"
    with pytest.raises(BlobNotFound):
        blobs.move("objects/ab/cd", "trash/x")


@pytest.mark.parametrize("url, where", [("s3://b/m", "AWS_ACCESS_KEY_ID"),
                                        ("gs://b/m", "GOOGLE_APPLICATION_CREDENTIALS")])
def test_no_credentials_at_all_says_where_the_library_looks(url, where):
    """botocore's "Unable to locate credentials" (google-auth's "default credentials were
    not found") was passed on alone, with nothing on where credentials go."""
    from botocore.exceptions import NoCredentialsError
    from google.auth.exceptions import DefaultCredentialsError

    from theta_zarr.storage.fsspec import fail

    class Store:
        def describe(self) -> str:
            return url

    e = NoCredentialsError() if url.startswith("s3") else DefaultCredentialsError("none found")
    err = str(fail(Store(), "read", "refs/run7/step-1", e))
    assert err.startswith(f"cannot read refs/run7/step-1 in {url}: {e}")
    assert where in err, err


def test_an_s3_read_is_one_get_object(s3_server, monkeypatch):
    """s3fs's ``cat_file`` asks HeadObject for the size before the GetObject unless told
    to read in one request: a fetch of N chunks must cost N requests, not 2N."""
    store = open_store(s3_server.new_bucket() + "/p", s3_server.storage_options)
    store.put("objects/ab/cd", [b"x" * 100_000])
    calls: list[str] = []
    real = store.fs._call_s3

    async def counting(method, *args, **kwargs):
        calls.append(method)
        return await real(method, *args, **kwargs)

    monkeypatch.setattr(store.fs, "_call_s3", counting)
    assert store.get("objects/ab/cd") == b"x" * 100_000
    assert calls == ["get_object"]
