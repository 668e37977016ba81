"""Object transfers between a remote and the cache (theta_zarr.remote)."""

from __future__ import annotations

import os
import threading
import time

from theta_zarr import chunking
from theta_zarr import remote as remote_module
from theta_zarr.cache import Cache
from theta_zarr.objects import ObjectStore
from theta_zarr.remote import fetch_objects
from theta_zarr.storage import open_store


def test_fetch_keeps_requests_in_flight_and_decodes_one_thread_per_core(tmp_path, monkeypatch):
    """A fetch keeps the remote's ``concurrency`` requests in flight while decoding,
    verifying and storing run in at most one thread per core: 16 decoders on 2 cores
    cost twice the CPU time.  The reads meet at a barrier that only that many requests
    in flight can pass; the decoders count how many run at once."""
    remote = ObjectStore(open_store(str(tmp_path / "remote")), codec="zstd", concurrency=8,
                         retries=0)
    raws = [os.urandom(1000) * 50 for _ in range(40)]
    digests = [chunking.digest(r) for r in raws]
    for d, r in zip(digests, raws, strict=True):
        remote.put(d, r)
    barrier = threading.Barrier(remote.concurrency, timeout=20)
    get_encoded, decode = remote.get_encoded, remote.decode
    lock, decoding, most = threading.Lock(), [0], [0]

    def get_at_barrier(digest: str) -> bytes:
        barrier.wait()  # BrokenBarrierError: fewer requests in flight than the remote allows
        return get_encoded(digest)

    def counted_decode(*args, **kwargs):
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
        try:
            time.sleep(0.01)  # give other decoders the chance to overlap
            return decode(*args, **kwargs)
        finally:
            with lock:
                decoding[0] -= 1

    monkeypatch.setattr(remote, "get_encoded", get_at_barrier)
    monkeypatch.setattr(remote, "decode", counted_decode)
    cache = Cache(str(tmp_path / "cache"))
    stats = fetch_objects(remote, cache, digests)
    assert stats.objects == len(digests) and stats.raw_bytes == sum(map(len, raws))
    assert [cache.get(d) for d in digests] == raws
    assert 1 <= most[0] <= remote_module.CPU_WORKERS < remote.concurrency
