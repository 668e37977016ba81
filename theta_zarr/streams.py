"""Small stream helpers shared by the pipe reader, format sources and the chunk writer."""

from __future__ import annotations

from collections.abc import Callable

ReadInto = Callable[[memoryview], int]


def fill(read_into: ReadInto, view: memoryview) -> int:
    """Read into ``view`` until it is full or the stream ends; returns the bytes read.

    Pipes and unbuffered files return short reads, so one call is never enough.
    """
    got = 0
    while got < len(view):
        n = read_into(view[got:])
        if not n:
            break
        got += n
    return got
