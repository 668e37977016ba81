"""Write a checkpoint file straight from the cache: no pipe, no buffer the file's size.

For formats that give a ``layout`` (safetensors, opaque files), the file is sized first
(``ftruncate``), then every chunk is copied to its offset by the kernel
(``copy_file_range``) after its digest is checked, in a thread pool, so writing
runs at the speed of the disk with memory bounded by chunk size x workers.  Other
formats stream through their own ``smudge`` into the same file.
"""

from __future__ import annotations

import os

from . import formats
from .cache import Cache
from .chunkreader import ChunkReader
from .manifest import Manifest, ManifestError, ParamEntry
from .objects import batched, bounded_map
from .streams import pwrite_all

#: (offset in the file, literal bytes or (digest, length))
Job = tuple[int, bytes | tuple[str, int]]


def _jobs(segments: list[bytes | ParamEntry]) -> tuple[list[Job], int]:
    jobs: list[Job] = []
    pos = 0
    for seg in segments:
        if not isinstance(seg, ParamEntry):
            jobs.append((pos, bytes(seg)))
            pos += len(seg)
            continue
        if seg.inline is not None:
            for raw in seg.inline:
                jobs.append((pos, raw))
                pos += len(raw)
            continue
        spans = seg.spans()
        if len(spans) != len(seg.chunks):
            raise ManifestError(f"{len(seg.chunks)} chunks for {len(spans)} chunk positions")
        for digest, (offset, length) in zip(seg.chunks, spans, strict=True):
            jobs.append((pos + offset, (digest, length)))
        pos += seg.nbytes
    return jobs, pos


def write_checkpoint(manifest: Manifest, fd: int, cache: Cache, workers: int,
                     name: str = "checkpoint") -> int:
    """Write the file ``manifest`` describes into the empty, writable file ``fd``.

    Every chunk must be in ``cache`` already (``checkpoint.ensure_local``).  Returns the
    file's size in bytes.  Raises MissingObjectError / ObjectError (a chunk missing or
    corrupt; nothing of it is written) and ManifestError naming ``name``.  The caller
    writes into a temporary file and renames it into place only on success.
    """
    fmt = formats.get_format(manifest.format_name)
    try:
        segments = fmt.layout(manifest)
        if segments is None:
            with os.fdopen(os.dup(fd), "wb", buffering=1 << 20) as out:
                fmt.smudge(manifest, ChunkReader(cache, workers=workers), out,
                           tmp_dir=cache.tmp_dir)
            return os.fstat(fd).st_size
        jobs, size = _jobs(segments)
    except ManifestError as e:
        raise ManifestError(f"{name}: {e}") from None
    os.ftruncate(fd, size)

    def run(batch: list[Job]) -> None:
        for offset, what in batch:
            if isinstance(what, bytes):
                pwrite_all(fd, what, offset)
            else:
                cache.copy_to(what[0], fd, offset, what[1])

    def size_of(job: Job) -> int:
        what = job[1]
        return len(what) if isinstance(what, bytes) else what[1]

    for _ in bounded_map(run, batched(jobs, size_of), max(1, workers)):
        pass
    return size
