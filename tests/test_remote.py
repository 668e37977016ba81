"""Object transfers between a remote and the cache (theta_zarr.remote)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from theta_zarr import chunking, codecs
from theta_zarr import remote as remote_module
from theta_zarr.cache import Cache
from theta_zarr.objects import ObjectError, ObjectStore, object_key
from theta_zarr.remote import fetch_objects, push_objects
from theta_zarr.storage import open_store


class Overlap:
    """Counts how many calls of a method run at once (``most``); ``barrier`` makes the
    wrapped calls wait until that many are in flight (BrokenBarrierError otherwise)."""

    def __init__(self, fn, barrier: threading.Barrier | None = None):
        self.fn, self.barrier = fn, barrier
        self.lock, self.now, self.most = threading.Lock(), 0, 0

    def __call__(self, *args, **kwargs):
        if self.barrier is not None:
            self.barrier.wait()
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.01)  # give other calls the chance to overlap
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


def chunks_on(store: ObjectStore, n: int = 40) -> tuple[list[bytes], list[str]]:
    raws = [os.urandom(1000) * 50 for _ in range(n)]
    digests = [chunking.digest(r) for r in raws]
    for d, r in zip(digests, raws, strict=True):
        store.put(d, r)
    return raws, digests


def remote_at(path) -> ObjectStore:
    return ObjectStore(open_store(str(path)), codec="zstd", concurrency=8, retries=0)


def test_fetch_keeps_requests_in_flight_and_decodes_one_thread_per_core(tmp_path, monkeypatch):
    """A fetch keeps the remote's ``concurrency`` requests in flight (they meet at a
    barrier only that many can pass) while decoding, verifying and storing run in at most
    one thread per core: 16 decoders on 2 cores cost twice the CPU time."""
    remote = remote_at(tmp_path / "remote")
    raws, digests = chunks_on(remote)
    gets = Overlap(remote.get_encoded, threading.Barrier(remote.concurrency, timeout=20))
    decodes = Overlap(remote.decode)
    monkeypatch.setattr(remote, "get_encoded", gets)
    monkeypatch.setattr(remote, "decode", decodes)
    cache = Cache(str(tmp_path / "cache"))
    stats = fetch_objects(remote, cache, digests)
    assert stats.objects == len(digests) and stats.raw_bytes == sum(map(len, raws))
    assert [cache.get(d) for d in digests] == raws
    assert gets.most == remote.concurrency
    assert 1 <= decodes.most <= remote_module.CPU_WORKERS < remote.concurrency


def test_push_encodes_one_thread_per_core_and_keeps_uploads_in_flight(tmp_path, monkeypatch):
    """The mirror of the fetch: reading and encoding run in at most one thread per core,
    uploads in the remote's pool of ``concurrency``."""
    cache = Cache(str(tmp_path / "cache"))
    raws, digests = chunks_on(cache)
    remote = remote_at(tmp_path / "remote")
    puts = Overlap(remote.put_parts, threading.Barrier(remote.concurrency, timeout=20))
    encodes = Overlap(codecs.encode)
    monkeypatch.setattr(remote, "put_parts", puts)
    monkeypatch.setattr(remote_module.codecs, "encode", encodes)
    stats = push_objects(cache, remote, digests)
    assert stats.objects == len(digests) and stats.raw_bytes == sum(map(len, raws))
    assert stats.stored_bytes == sum(len(remote.get_encoded(d)) for d in digests)
    assert [remote.get(d) for d in digests] == raws
    assert puts.most == remote.concurrency
    assert 1 <= encodes.most <= remote_module.CPU_WORKERS < remote.concurrency


def test_an_endpoint_that_does_not_answer_is_an_outage_from_the_first_call(monkeypatch):
    """Opening a remote asks whether its bucket exists; no answer used to count as "no
    permission to ask" and the first transfer spent a second retry budget."""
    import socket

    from theta_zarr.remote import RemoteSpec, open_remote
    from theta_zarr.storage import StorageError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for scheme in ("s3", "gs"):
        spec = RemoteSpec("origin", f"{scheme}://bucket/models", {
            "endpoint-url": f"http://127.0.0.1:{port}", "retry-timeout": "1"})
        try:
            open_remote(spec, need="write")
        except StorageError as e:
            assert "cannot reach bucket bucket" in str(e) and "gave up after 1 s" in str(e)
        else:
            raise AssertionError(f"{scheme}: opened a remote whose endpoint does not answer")


def test_s3_reads_skip_botocores_response_crc_and_still_refuse_a_corrupt_object(
        s3_server, monkeypatch):
    """Every chunk read is checked against its blake3 digest, so botocore's CRC32 of each
    response (CPU a fetch spends twice) is not asked for; a damaged object is still
    refused, by the digest."""
    from botocore.httpchecksum import Crc32Checksum

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    spec = remote_module.RemoteSpec("origin", s3_server.new_bucket() + "/m",
                                    {"endpoint-url": s3_server.endpoint})
    remote = remote_module.open_remote(spec, 4)
    raw = os.urandom(200_000)
    digest = chunking.digest(raw)
    remote.put(digest, raw)
    crcs: list[int] = []
    real = Crc32Checksum.update
    monkeypatch.setattr(Crc32Checksum, "update",
                        lambda self, chunk: (crcs.append(len(chunk)), real(self, chunk))[1])
    assert bytes(remote.get(digest)) == raw
    assert crcs == []
    remote.blobs.put(object_key(digest), [codecs.header("raw"), raw[:-1] + b"?"])
    with pytest.raises(ObjectError, match="corrupt"):
        remote.get(digest)


def test_single_chunk_reads_bound_the_remote_object_by_the_chunks_size(tmp_path):
    """A lazy read (ReadThrough) and the repair of a corrupt cache object (Healing) fetch
    one object with its chunk's size from the manifest: an object larger than any storage
    form of that chunk is refused before it is read (a sparse file of 1 GiB here)."""
    from theta_zarr.checkpoint import Healing
    from theta_zarr.remote import ReadThrough

    raw = os.urandom(4096)
    digest = chunking.digest(raw)
    remote = remote_at(tmp_path / "remote")
    planted = tmp_path / "remote" / object_key(digest)
    planted.parent.mkdir(parents=True)
    with open(planted, "wb") as f:
        f.truncate(1 << 30)
    cache = Cache(str(tmp_path / "cache"))
    lazy = ReadThrough(cache, lambda: remote)
    with pytest.raises(ObjectError, match="any storage form of its chunk takes"):
        lazy.get(digest, size=len(raw))
    cache.put(digest, raw)
    held = tmp_path / "cache" / object_key(digest)
    os.chmod(held, 0o644)
    held.write_bytes(held.read_bytes()[:-1] + b"!")  # corrupt: quarantined on read
    with pytest.raises(ObjectError, match="any storage form of its chunk takes"):
        Healing(cache, lazy.fetch).get(digest, size=len(raw))
    assert not cache.has(digest)
