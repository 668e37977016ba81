"""One-line messages of errors.py: what a user reads when a command fails."""

from __future__ import annotations

import errno

from theta_zarr.errors import one_line
from theta_zarr.storage import StorageError


def test_running_out_of_open_files_says_what_to_change():
    """A node's low ``ulimit -n`` under a push's connections: EMFILE from the OS, or only
    in the words of a storage library's wrapped socket error."""
    def wrapped() -> StorageError:
        try:
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError as e:
                raise StorageError("cannot write objects/ab/cd to s3://b/m: connection "
                                   "failed") from e
        except StorageError as e:
            return e

    for exc in (OSError(errno.EMFILE, "Too many open files", "/cache/objects/ab/cd"),
                StorageError("cannot read objects/ab to s3://b: [Errno 24] Too many open files"),
                wrapped()):
        text = one_line(exc)
        assert "ulimit -n" in text and "concurrency" in text and "\n" not in text, text
        assert "internal error" not in text
    assert "ulimit" not in one_line(OSError(errno.ENOENT, "No such file", "/x"))
