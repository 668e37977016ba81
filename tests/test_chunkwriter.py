"""ChunkWriter: limits checked before any chunk is built; stopping mid-way is quiet;
small chunks go to the pool in batches."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from theta_zarr import chunking
from theta_zarr.cache import Cache
from theta_zarr.chunkwriter import SMALL_CHUNK, ChunkWriter, TruncatedInput
from theta_zarr.dtypes import by_name
from theta_zarr.manifest import Manifest, ManifestError, ParamEntry
from theta_zarr.objects import BATCH_ITEMS


class _Blocking(Cache):
    """A cache whose writes wait for ``release``: chunks pile up in the writer's pool."""

    def __init__(self, root: str):
        super().__init__(root)
        self.release = threading.Event()

    def ensure(self, digest, raw, elem=1, packer=None):
        self.release.wait()
        return super().ensure(digest, raw, elem, packer)


def test_cancelled_chunks_leave_no_callback_traceback(tmp_path, caplog):
    store = _Blocking(str(tmp_path))
    size = SMALL_CHUNK + 1  # a task per chunk (smaller ones go in batches)
    writer = ChunkWriter(store, chunk_bytes=size, workers=1)
    slots: list = []
    for i in range(2):  # one running (blocked in the cache), one queued behind it
        writer._submit(slots, 2, memoryview(bytes([i]) * size))
    with caplog.at_level(logging.ERROR):
        writer._pool.shutdown(wait=False, cancel_futures=True)  # what close() does on error
        store.release.set()
        writer.close()
    assert any(f.cancelled() for f in slots)
    assert not [r for r in caplog.records if "callback" in r.getMessage()]


def test_a_truncated_stream_of_an_enormous_tensor_fails_after_one_chunk(tmp_path):
    writer = ChunkWriter(Cache(str(tmp_path)), chunk_bytes=4096, workers=1)
    chunks_read = []

    def read_into(view):
        chunks_read.append(len(view))
        return 0  # the stream ends at once

    shape = (2**26, 2**20)  # 64 TiB of uint8: never materialised as spans
    with pytest.raises(TruncatedInput):
        writer.add_stream("w", by_name("uint8"), shape, read_into)
    writer.close()
    assert len(chunks_read) == 1


@pytest.mark.parametrize("shape", [(2**62, 4, 0), (2**40, 2**40), (1,) * 33])
def test_shapes_smudge_would_refuse_are_refused_by_clean(tmp_path, shape):
    writer = ChunkWriter(Cache(str(tmp_path)), chunk_bytes=4096, workers=1)
    with pytest.raises(ManifestError, match="out of range|more than"):
        writer.add_stream("w", by_name("uint8"), shape, lambda view: 0)
    writer.close()


def test_span_length_matches_the_spans():
    for shape, chunk in [((10, 7), (3, 7)), ((4, 5, 6), (1, 2, 6)), ((), ()), ((9,), (4,))]:
        spans = chunking.spans(shape, 2, chunk)
        assert [chunking.span_length(shape, 2, chunk, i) for i in range(len(spans))] == \
            [n for _, n in spans]


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_small_chunks_are_stored_in_batches_with_the_same_result(tmp_path, codec):
    """3000 tiny tensors: every chunk stored and named in order; a raw cache stores them
    on the writer's thread (no pool task), a compressing one in a few pool tasks."""
    rng = np.random.default_rng(0)
    tensors = {f"expert.{i}.w": rng.integers(0, 255, 600 + i % 7, dtype=np.uint8)
               for i in range(3000)}
    tensors["dup"] = tensors["expert.0.w"].copy()  # identical chunk: written once
    store = Cache(str(tmp_path / "cache"), codec=codec)
    writer = ChunkWriter(store, chunk_bytes=4096, workers=2)
    submitted = []
    submit = writer._pool.submit
    writer._pool.submit = lambda *a: submitted.append(a) or submit(*a)
    items = list(tensors.items())
    third = len(items) // 3
    for name, arr in items[:third]:
        writer.add_buffer(name, by_name("uint8"), arr.shape, memoryview(arr))
    for name, arr in items[third:2 * third]:
        data = memoryview(arr.tobytes())
        writer.add_stream(name, by_name("uint8"), arr.shape, _reader(data))
    rest = items[2 * third:]
    writer.add_streams([(name, by_name("uint8"), arr.shape) for name, arr in rest],
                       _reader(memoryview(b"".join(arr.tobytes() for _, arr in rest))))
    entries = writer.finish()
    assert list(entries) == list(tensors)
    for name, arr in tensors.items():
        (d,) = entries[name].chunks
        assert d == chunking.digest(arr.tobytes())
        assert bytes(store.get(d)) == arr.tobytes()
    assert entries["dup"].chunks == entries["expert.0.w"].chunks
    assert writer.stats.new_objects == len(tensors) - 1
    if codec == "raw":
        assert submitted == []
    else:
        assert 0 < len(submitted) <= len(tensors) // BATCH_ITEMS + 2


def test_streamed_runs_of_small_tensors_give_what_one_by_one_gives(tmp_path):
    """``add_streams`` reads small tensors in runs and large ones chunk by chunk; the
    entries equal ``add_stream``'s of each tensor in turn."""
    rng = np.random.default_rng(1)
    sizes = [10, 700, SMALL_CHUNK, SMALL_CHUNK + 1, 3, 0, 5 * SMALL_CHUNK, 2000] * 3
    tensors = {f"t{i}": rng.integers(0, 255, n, dtype=np.uint8) for i, n in enumerate(sizes)}
    data = memoryview(b"".join(a.tobytes() for a in tensors.values()))
    one_by_one = ChunkWriter(Cache(str(tmp_path / "a")), chunk_bytes=8192, workers=2)
    read = _reader(data)
    for name, arr in tensors.items():
        one_by_one.add_stream(name, by_name("uint8"), arr.shape, read)
    runs = ChunkWriter(Cache(str(tmp_path / "b")), chunk_bytes=8192, workers=2)
    runs.add_streams([(n, by_name("uint8"), a.shape) for n, a in tensors.items()],
                     _reader(data))
    assert runs.finish() == one_by_one.finish()


def test_a_stream_ending_inside_a_run_names_the_tensor_it_ends_in(tmp_path):
    writer = ChunkWriter(Cache(str(tmp_path)), chunk_bytes=4096, workers=1)
    tensors = [(name, by_name("uint8"), (1000,)) for name in ("a", "b", "c")]
    with pytest.raises(TruncatedInput, match=r"inside tensor 'b' \(expected 500 more"):
        writer.add_streams(tensors, _reader(memoryview(bytes(1500))))
    writer.close()


def test_an_error_inside_a_batch_fails_the_writer(tmp_path):
    class Failing(Cache):
        def ensure(self, digest, raw, elem=1, packer=None):
            raise OSError("disk on fire")

    writer = ChunkWriter(Failing(str(tmp_path)), chunk_bytes=4096, workers=1)
    arr = np.arange(1000, dtype=np.uint8)
    writer.add_buffer("w", by_name("uint8"), arr.shape, memoryview(arr))
    with pytest.raises(OSError, match="disk on fire"):
        writer.finish()


def _reader(data: memoryview):
    pos = [0]

    def read_into(view):
        n = min(len(view), len(data) - pos[0])
        view[:n] = data[pos[0]:pos[0] + n]
        pos[0] += n
        return n
    return read_into


def test_recorded_chunk_shapes_win_over_previous_and_the_policy(tmp_path):
    """``chunk_shapes`` (a format's own record) beats ``previous``; ``previous`` still
    serves the names it does not list; the rest get the policy's shape."""
    arr = np.arange(64, dtype=np.float32).reshape(8, 8)
    previous = Manifest({"name": "safetensors"}, {
        "a": ParamEntry((8, 8), "float32", (4, 8)),
        "b": ParamEntry((8, 8), "float32", (4, 8)),
    })
    writer = ChunkWriter(Cache(str(tmp_path / "cache")), chunk_bytes=1 << 20,
                         previous=previous, chunk_shapes={"a": (2, 8)})
    for name in ("a", "b", "c"):
        writer.add_buffer(name, by_name("float32"), arr.shape, memoryview(arr))
    entries = writer.finish()
    writer.close()
    assert entries["a"].chunk_shape == (2, 8)
    assert entries["b"].chunk_shape == (4, 8)
    assert entries["c"].chunk_shape == (8, 8)
    assert entries["a"].chunks != entries["b"].chunks
