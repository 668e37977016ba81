"""ChunkWriter: tensors in, manifest entries out; chunks hashed and stored in a thread pool.

Format plug-ins hand over each tensor either as a buffer (a memory map: chunks
are hashed straight from it, no copy) or as a stream (git's pipe: each chunk is
read into its own buffer).  At most ``2 x workers`` tasks are in flight, so
memory is bounded by the chunk size, not the checkpoint (invariant 5).  Chunks of
at most ``SMALL_CHUNK`` bytes (the biases, norms and experts of a checkpoint with
10^4 to 10^5 tensors) are stored in batches of up to ``BATCH_BYTES`` or
``BATCH_ITEMS``: one task per chunk would cost more than hashing and storing it.
Into a raw cache (the default) a batch is stored on the caller's thread: blake3 holds
the GIL for short inputs, so a pool adds no parallelism there, only hand-offs.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from . import chunking
from .cache import Cache
from .dtypes import DType
from .manifest import (
    Manifest,
    ManifestError,
    ParamEntry,
    check_chunking,
    check_name,
    check_shape,
)
from .objects import BATCH_BYTES, BATCH_ITEMS
from .streams import ReadInto, fill

#: chunks of at most this many bytes are stored in batches (one pool task per batch, of
#: objects.BATCH_BYTES or BATCH_ITEMS chunks, as the readers batch them)
SMALL_CHUNK = 64 << 10
#: ``add_streams`` reads runs of small tensors of up to this many bytes in one call
RUN_BYTES = 1 << 20


class TruncatedInput(ValueError):
    """The input ended before the bytes its header promised."""


@dataclass
class WriteStats:
    """What a ``ChunkWriter`` stored: ``params`` tensors of ``total_bytes`` raw bytes in
    all; ``chunks`` stored (non-inline) chunks hashed, repeats included; ``new_objects``
    objects the store lacked and got, ``new_bytes`` bytes written for them (encoded)."""

    params: int = 0
    chunks: int = 0
    total_bytes: int = 0
    new_objects: int = 0
    new_bytes: int = 0  # bytes written to the store (encoded form)


class ChunkWriter:
    """Tensors in, manifest entries out: each tensor is cut into chunks, hashed, and the
    chunks ``store`` lacks are written, in a pool of ``workers`` threads (module doc).

    Chunk shapes: ``chunk_shapes`` (recorded in the file itself) first, else the one the
    parameter has in ``previous`` (same shape and dtype), else ``chunking.chunk_shape_for``
    with ``chunk_bytes`` (bytes, raw).  A parameter that is one chunk of at most
    ``chunking.INLINE_MAX_BYTES`` goes inline.  ``source`` names the file in errors.
    ``add_buffer`` / ``add_stream`` raise ManifestError for a bad or repeated name, a
    shape out of range or a recorded chunk shape that does not fit, ValueError for a
    buffer of the wrong length, TruncatedInput for a stream that ends early, and the
    first error a storing thread met.  Use it as a context manager: ``finish`` or leaving
    the block stops the pool.
    """

    def __init__(self, store: Cache, chunk_bytes: int = chunking.DEFAULT_CHUNK_BYTES,
                 workers: int = 2, source: str = "checkpoint",
                 previous: Manifest | None = None,
                 chunk_shapes: dict[str, tuple[int, ...]] | None = None):
        self.store = store
        self.chunk_bytes = chunk_bytes
        self.previous = previous
        # chunk shapes a format recorded in the file itself, by parameter name: they win
        # over ``previous`` and the policy (see ``_chunk_shape``)
        self.chunk_shapes: dict[str, tuple[int, ...]] = dict(chunk_shapes or {})
        self.source = source
        self.stats = WriteStats()
        # new small chunks go to a pack where one clean stores many (packs.py)
        self._packer = store.packer()
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tz-clean")
        self._slots = threading.BoundedSemaphore(workers * 2)
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[DType, tuple[int, ...], tuple[int, ...], list]] = {}
        self._error: BaseException | None = None
        self._claimed: set[str] = set()
        self._buffers: dict[int, list[memoryview]] = {}
        # small chunks waiting for a task: (chunk, elem, pooled, its parameter's slots, index)
        self._batch: list[tuple[memoryview, int, bool, list, int]] = []
        self._batch_bytes = 0
        # per geometry, checked once (an MoE checkpoint repeats a few shapes 10^4 times):
        # (shape, item size) -> the policy's chunk shape; (that, chunk shape) -> chunk count
        self._policy: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
        self._counts: dict[tuple[tuple[tuple[int, ...], int], tuple[int, ...]], int] = {}

    # -- input ---------------------------------------------------------------------
    def add_buffer(self, name: str, dtype: DType, shape: tuple[int, ...],
                   buf: memoryview) -> None:
        """A tensor whose raw bytes are in ``buf`` (C order, little-endian)."""
        buf = memoryview(buf).cast("B")
        spans, count = self._begin(name, dtype, shape, len(buf))
        slots = self._entries[name][3]
        for off, length in spans:
            self._submit(slots, count, buf[off:off + length], elem=dtype.itemsize)

    def add_stream(self, name: str, dtype: DType, shape: tuple[int, ...],
                   read_into: ReadInto) -> None:
        """A tensor whose raw bytes are read, in order, with ``read_into(view) -> n``."""
        nbytes = _nbytes(dtype, shape)
        spans, count = self._begin(name, dtype, shape, nbytes)
        slots = self._entries[name][3]
        for _, length in spans:
            view = self._buffer(length)
            got = fill(read_into, view)
            if got < length:
                raise TruncatedInput(f"{self.source}: truncated inside tensor {name!r} "
                                     f"(expected {length - got} more bytes)")
            self._submit(slots, count, view, pooled=True, elem=dtype.itemsize)

    def add_streams(self, tensors: Sequence[tuple[str, DType, tuple[int, ...]]],
                    read_into: ReadInto) -> None:
        """Tensors whose raw bytes follow one another in a stream, in this order, each
        as ``add_stream`` takes it.  Runs of small tensors (at most ``SMALL_CHUNK`` bytes
        each, up to ``RUN_BYTES`` together) are read with one call and added as buffers:
        a file of 10^5 tensors of 1 KiB made 10^5 reads of git's pipe."""
        run: list[tuple[str, DType, tuple[int, ...], int]] = []
        run_bytes = 0
        for name, dtype, shape in tensors:
            nbytes = _nbytes(dtype, shape)
            if nbytes > SMALL_CHUNK:
                self._add_run(run, run_bytes, read_into)
                run, run_bytes = [], 0
                self.add_stream(name, dtype, shape, read_into)
                continue
            run.append((name, dtype, shape, nbytes))
            run_bytes += nbytes
            if run_bytes >= RUN_BYTES:
                self._add_run(run, run_bytes, read_into)
                run, run_bytes = [], 0
        self._add_run(run, run_bytes, read_into)

    def _add_run(self, run: list[tuple[str, DType, tuple[int, ...], int]], run_bytes: int,
                 read_into: ReadInto) -> None:
        if not run:
            return
        buf = memoryview(bytearray(run_bytes))
        got = fill(read_into, buf)
        offset = 0
        for name, dtype, shape, nbytes in run:
            if offset + nbytes > got:
                raise TruncatedInput(f"{self.source}: truncated inside tensor {name!r} "
                                     f"(expected {offset + nbytes - got} more bytes)")
            self.add_buffer(name, dtype, shape, buf[offset:offset + nbytes])
            offset += nbytes

    def _buffer(self, length: int) -> memoryview:
        """A chunk buffer, reused once its chunk is stored: fresh memory is slow to
        fault in, and at most ``2 x workers`` buffers are ever in use."""
        with self._lock:
            free = self._buffers.get(length)
            if free:
                return free.pop()
        return memoryview(bytearray(length))

    def _begin(self, name: str, dtype: DType, shape: tuple[int, ...], nbytes: int):
        check_name(name, self.source)
        if name in self._entries:
            raise ManifestError(f"{self.source}: parameter {name!r} appears twice")
        shape = tuple(map(int, shape))
        geometry = (shape, dtype.itemsize)
        if geometry not in self._policy:
            # the limits smudge applies, checked before anything is built per chunk
            check_shape(shape, dtype.itemsize, f"{self.source}: tensor {name[:80]!r}")
            self._policy[geometry] = chunking.chunk_shape_for(shape, dtype.itemsize,
                                                              self.chunk_bytes)
        if nbytes != _nbytes(dtype, shape):
            raise ValueError(f"{self.source}: tensor {name!r} has {nbytes} bytes, "
                             f"shape {list(shape)} of {dtype.name} needs {_nbytes(dtype, shape)}")
        chunk_shape = tuple(self._chunk_shape(name, dtype, shape))
        count = self._counts.get((geometry, chunk_shape))
        if count is None:
            count = check_chunking(shape, chunk_shape, f"{self.source}: tensor {name[:80]!r}")
            self._counts[(geometry, chunk_shape)] = count
        self._entries[name] = (dtype, shape, chunk_shape, [])
        self.stats.params += 1
        self.stats.total_bytes += nbytes
        if chunk_shape == shape and nbytes:  # one chunk: most tensors
            return ((0, nbytes),), count
        # spans are generated as the data comes: a truncated stream stops after one chunk
        return chunking.iter_spans(shape, dtype.itemsize, chunk_shape), count

    def _chunk_shape(self, name: str, dtype: DType, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The chunk shape recorded for this parameter (in ``chunk_shapes``, else in
        ``previous`` for the same shape and dtype), else the policy's.

        Keeping a parameter's recorded chunking makes clean independent of the
        machine's chunk-size setting (clean(smudge(m)) == m anywhere) and keeps
        chunk boundaries, hence deduplication, stable across versions. A shape from
        ``chunk_shapes`` is checked against the tensor by ``_begin`` like any other.
        """
        recorded = self.chunk_shapes.get(name)
        if recorded is not None:
            return recorded
        old = self.previous.params.get(name) if self.previous else None
        if old is not None and old.shape == shape and old.dtype == dtype.name:
            return old.chunk_shape
        return self._policy[(shape, dtype.itemsize)]

    def _submit(self, slots: list, count: int, view: memoryview, pooled: bool = False,
                elem: int = 1) -> None:
        """Hash and store one chunk (appended to ``slots``) of a parameter of ``count``;
        ``elem`` is the item size of the chunk's dtype."""
        if self._error is not None:
            raise self._error
        # A parameter that is one chunk of at most 512 bytes goes inline in the manifest.
        if count == 1 and len(view) <= chunking.INLINE_MAX_BYTES:
            slots.append(bytes(view))
            return
        if len(view) <= SMALL_CHUNK:
            self._batch.append((view, elem, pooled, slots, len(slots)))
            slots.append(None)  # filled when the batch is submitted
            self._batch_bytes += len(view)
            if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_ITEMS:
                self._flush_batch()
            return
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._store_chunk, view, elem)
        except BaseException:
            self._slots.release()
            raise
        if pooled:
            fut.add_done_callback(lambda _f, v=view: self._recycle(v))
        fut.add_done_callback(self._done)
        slots.append(fut)

    def _flush_batch(self) -> None:
        """Send the pending small chunks to the pool as one task; into a raw cache, store
        them here instead: blake3 holds the GIL for short inputs (blake3-py 0.3.1's
        release notes), so a thread would add no parallelism, only GIL hand-offs that
        stall this thread's reads of git's pipe (10^5 tensors: about 2 s)."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self.store.codec == "raw":
            digests = self._store_batch(batch)
            for digest, (_, _, _, slots, index) in zip(digests, batch, strict=True):
                slots[index] = digest
            return
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._store_batch, batch)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(self._done)
        for i, (_, _, _, slots, index) in enumerate(batch):
            slots[index] = _Batched(fut, i)

    def _store_batch(self, batch: list[tuple[memoryview, int, bool, list, int]]) -> list[str]:
        """Hash and store a batch of small chunks (``_store_chunk`` of each, the locks
        taken once); their digests."""
        try:
            digests = [chunking.digest(view) for view, *_ in batch]
            with self._lock:
                self.stats.chunks += len(batch)
                first = []
                for d, (view, elem, *_) in zip(digests, batch, strict=True):
                    if d not in self._claimed:  # identical chunks are written once
                        self._claimed.add(d)
                        first.append((d, view, elem))
            written = [n for n in self.store.ensure_small(first, self._packer) if n]
            with self._lock:
                self.stats.new_objects += len(written)
                self.stats.new_bytes += sum(written)
            return digests
        finally:
            for view, _, pooled, *_ in batch:
                if pooled:
                    self._recycle(view)

    def _recycle(self, view: memoryview) -> None:
        with self._lock:
            self._buffers.setdefault(len(view), []).append(view)

    def _store_chunk(self, view: memoryview, elem: int = 1) -> str:
        """Hash a chunk and store it unless the store has it; ``elem`` (the dtype's item
        size) lets a store configured with the ``auto`` codec choose by dtype."""
        d = chunking.digest(view)
        with self._lock:
            self.stats.chunks += 1
            first = d not in self._claimed  # identical chunks (zeros, ties) are written once
            self._claimed.add(d)
        if first:
            written = self.store.ensure(d, view, elem)
            if written:
                with self._lock:
                    self.stats.new_objects += 1
                    self.stats.new_bytes += written
        return d

    def _done(self, fut: cf.Future) -> None:
        # a future cancelled by close() has no exception to ask for: asking raises
        # CancelledError inside the callback, which concurrent.futures prints as a traceback
        self._slots.release()
        if fut.cancelled():
            return
        error = fut.exception()
        if error is not None and self._error is None:
            self._error = error

    # -- output --------------------------------------------------------------------
    def finish(self) -> dict[str, ParamEntry]:
        """Wait for every chunk; the entries in the order the tensors came."""
        try:
            self._flush_batch()
            out = {}
            for name, (dtype, shape, chunk_shape, slots) in self._entries.items():
                if slots and all(isinstance(s, bytes) for s in slots):
                    out[name] = ParamEntry(shape, dtype.name, chunk_shape, (), tuple(slots))
                else:
                    digests = tuple(s if isinstance(s, str) else s.result() for s in slots)
                    out[name] = ParamEntry(shape, dtype.name, chunk_shape, digests, None)
            self._packer.commit()  # stored before the manifest naming them is given out
            return out
        finally:
            self.close()

    def close(self) -> None:
        """Stop the pool: wait for the running tasks, cancel those not started."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._packer.abort()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Batched:
    """A chunk's place in a batch: ``result()`` is its digest once the batch is stored."""

    __slots__ = ("future", "index")

    def __init__(self, future: cf.Future, index: int):
        self.future, self.index = future, index

    def result(self) -> str:
        return self.future.result()[self.index]


def _nbytes(dtype: DType, shape: tuple[int, ...]) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= int(s)
    return n
