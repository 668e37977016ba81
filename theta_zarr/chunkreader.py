"""ChunkReader: a manifest's chunks back, in order, verified, read ahead concurrently.

Smudge, materialize, diff and the Python API all read parameters through this:
the next chunks are fetched and checked in a thread pool while the current one
is being written out, and only a bounded window is held in memory.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .manifest import ParamEntry
from .objects import ObjectStore, batched

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                window: int | None = None, pool: cf.Executor | None = None) -> Iterator[R]:
    """Results of ``fn`` in input order, computed ahead in a thread pool (bounded to
    ``window`` in flight).  ``pool``: an executor the caller keeps across many calls (a
    pool per call would start threads for every one of 10^5 small parameters); else one
    of ``workers`` threads for this call, or none when there is a single item."""
    window = window or workers * 2
    if pool is None:
        it = iter(items)
        head = list(itertools.islice(it, 2))
        if len(head) < 2:  # one task (a small parameter): this thread, no pool to start
            yield from map(fn, head)
            return
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tz-read") as own:
            yield from ordered_map(fn, itertools.chain(head, it), workers, window, own)
        return
    queue: deque[cf.Future] = deque()
    try:
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) >= window:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:
        for fut in queue:
            fut.cancel()


class ChunkReader:
    """Reads parameters' raw chunks from ``store``, verified, with ``workers`` threads
    reading ahead.

    ``store`` is anything with ``get(digest, size=...)`` returning verified raw bytes (an
    ObjectStore, a Cache, or checkpoint.Healing, which fetches a good copy of a corrupt
    cache object again), handed each chunk's raw size from its entry to bound what a
    remote's object may decode to; the errors its ``get`` raises pass through.  At most
    ``2 x workers`` reads are in flight, so memory is bounded by the chunk size.
    """

    def __init__(self, store: ObjectStore, workers: int = 4):
        self.store = store
        self.workers = workers

    def iter_entry(self, entry: ParamEntry) -> Iterator[bytes | memoryview]:
        """The raw chunks of one parameter, in order."""
        return self.iter_entries([entry])

    def iter_entries(self, entries: Iterable[ParamEntry]) -> Iterator[bytes | memoryview]:
        """The raw chunks of several parameters, back to back, in order (small chunks
        read in batches, one pool task each).

        Every chunk's length is checked against the entry's dtype x chunk shape before
        it is handed out (ManifestError otherwise): a manifest whose dtype or shape was
        edited without its chunks never yields a byte.
        """
        def jobs():
            for entry in entries:
                items = entry.inline if entry.inline is not None else entry.chunks
                for index, item in enumerate(items):
                    yield entry, index, item

        def load(batch):
            out = []
            for entry, index, item in batch:
                raw = item if isinstance(item, bytes) else \
                    self.store.get(item, size=entry.chunk_nbytes(index))
                where = "inline chunk" if isinstance(item, bytes) else f"object {item}"
                entry.check_chunk(index, raw, where)
                out.append(raw)
            return out

        def size_of(job) -> int:  # about: the entry's bytes over its chunks
            entry, _, _ = job
            return entry.nbytes // max(1, len(entry.inline or entry.chunks))

        for raws in ordered_map(load, batched(jobs(), size_of), self.workers):
            yield from raws

    def read_into(self, entry: ParamEntry, out: memoryview) -> None:
        """Fill ``out`` (entry.nbytes long) with the parameter's raw bytes."""
        out = memoryview(out).cast("B")
        pos = 0
        for chunk in self.iter_entry(entry):
            out[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        if pos != entry.nbytes:
            raise ValueError(f"chunks hold {pos} bytes, parameter needs {entry.nbytes}")
