"""Small stream helpers shared by the pipe reader, format sources and the chunk writer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

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


def write_atomic(dest: str, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through ``write(f)`` under a temporary name, then rename it into place:
    readers never see half a file, and a failure leaves the old one as it was."""
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".theta-zarr-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a pulled file should get
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
