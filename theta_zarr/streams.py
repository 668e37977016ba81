"""Small stream helpers shared by the pipe reader, format sources and the chunk writer."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from . import interrupts

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


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd``: ``pwrite`` may write less than asked
    (a signal, a nearly full disk), and the rest must not be left as the zeros of a
    pre-sized file."""
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_atomic(dest: str, write: Callable[[BinaryIO], object],
                 mode: int | None = None) -> None:
    """Write a file through ``write(f)`` under a temporary name, then rename it into place:
    readers never see half a file, and a failure leaves the old one as it was.  ``mode``:
    the file's permission bits (None: 0666 less the umask, as a new file gets)."""
    folder = os.path.dirname(os.path.abspath(dest))
    with named(dest):
        os.makedirs(folder, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".theta-zarr-", dir=folder)
        except OSError as e:  # names its random temporary file, which says nothing to a user
            if e.errno is None:
                raise
            raise OSError(e.errno, e.strerror, dest) from None
    try:
        with named(dest, tmp), interrupts.removed_on_signal(tmp):
            with os.fdopen(fd, "wb") as out:
                write(out)
            if mode is None:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.chmod(tmp, mode)  # mkstemp's 0600 is not what a pulled file gets
            os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def named(path: str, *stand_ins: str) -> Iterator[None]:
    """Give an OSError raised without a file name (a ``write`` that hit a full disk says
    only "[Errno 28] No space left on device") the path being written, so the one-line
    message says where.  An error naming one of ``stand_ins`` (the temporary file written
    in ``path``'s place) names ``path`` instead: a random name says nothing to a user."""
    try:
        yield
    except OSError as e:
        if e.errno is not None and (e.filename is None and type(e) in (OSError,)
                                    or e.filename is not None and e.filename in stand_ins):
            raise OSError(e.errno, e.strerror or str(e), path) from None
        raise
