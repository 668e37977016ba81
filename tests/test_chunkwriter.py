"""ChunkWriter: limits checked before any chunk is built; stopping mid-way is quiet."""

from __future__ import annotations

import logging
import threading

import pytest

from theta_zarr import chunking
from theta_zarr.cache import Cache
from theta_zarr.chunkwriter import ChunkWriter, TruncatedInput
from theta_zarr.dtypes import by_name
from theta_zarr.manifest import ManifestError


class _Blocking(Cache):
    """A cache whose writes wait for ``release``: chunks pile up in the writer's pool."""

    def __init__(self, root: str):
        super().__init__(root)
        self.release = threading.Event()

    def ensure(self, digest, raw, elem=1):
        self.release.wait()
        return super().ensure(digest, raw, elem)


def test_cancelled_chunks_leave_no_callback_traceback(tmp_path, caplog):
    store = _Blocking(str(tmp_path))
    writer = ChunkWriter(store, chunk_bytes=1024, workers=1)
    slots: list = []
    for i in range(2):  # one running (blocked in the cache), one queued behind it
        writer._submit(slots, 2, memoryview(bytes([i]) * 1024))
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
