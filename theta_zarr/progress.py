"""Progress bars for long operations: on a terminal only, quiet in batch jobs and pipes."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

#: Below this many bytes an operation is quick enough to need no bar.
MIN_BYTES = 64 << 20


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "B") -> Iterator[Any]:
    """A tqdm bar on stderr when it is a terminal and the work is large, else a no-op.

    ``total``: bytes when ``unit`` is "B" (shown in KiB/MiB/GiB; no bar below
    ``MIN_BYTES``), else a count of ``unit`` (objects), shown as whole numbers."""
    show = sys.stderr.isatty() and (total is None or total >= MIN_BYTES or unit != "B")
    if not show:
        yield _Null()
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=shorten(desc), unit=unit, unit_scale=unit == "B", unit_divisor=1024,
              leave=False, file=sys.stderr, dynamic_ncols=True) as t:
        yield t


#: the longest description a bar gets: the rest of a line is the bar and its figures
MAX_DESC = 40


def shorten(desc: str, width: int = MAX_DESC) -> str:
    """``desc`` cut in the middle to ``width`` characters ("push s3://bu…/models"): a long
    bucket URL or path left no room for the figures on an 80-column terminal."""
    if len(desc) <= width:
        return desc
    head = (width - 1) // 2
    return desc[:head] + "…" + desc[len(desc) - (width - 1 - head):]


class _Null:
    def update(self, n: int = 1) -> None:
        pass


class CountingStream:
    """Wraps a binary stream and reports the bytes that pass through to a bar."""

    def __init__(self, stream: Any, progress: Any):
        self.stream = stream
        self.progress = progress

    def readinto(self, view: Any) -> int:
        n = self.stream.readinto(view) or 0
        self.progress.update(n)
        return n

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.progress.update(len(data))
        return data

    def write(self, data: Any) -> int:
        n = self.stream.write(data)
        self.progress.update(len(memoryview(data).cast("B")))
        return n

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush:
            flush()
