"""Which exceptions are the user's to read, and how to say them in one line."""

from __future__ import annotations

import errno
import os
import traceback

from .codecs import CodecError
from .dtypes import DTypeError
from .formats.base import FormatError
from .manifest import ManifestError
from .objects import ObjectError
from .redact import redact
from .storage import StorageError


class UserError(Exception):
    """A mistake in the user's input (a revision, a path, a config value, an option).

    The message names the input and where it came from; no traceback is needed.
    """

#: Errors whose message is complete for a user: no traceback needed.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ManifestError, FormatError, ObjectError, StorageError, DTypeError, CodecError,
    OSError, ValueError,
)


def one_line(exc: BaseException) -> str:
    """A one-line message with secrets redacted (redact.py); the traceback too when
    GIT_THETA_ZARR_DEBUG is set."""
    if os.environ.get("GIT_THETA_ZARR_DEBUG"):
        traceback.print_exception(exc)
    text = redact(str(exc).strip().replace("\n", " ")) or type(exc).__name__
    # a file system error naming its path (IsADirectoryError, FileExistsError and the other
    # subclasses too: they read "[Errno 21] Is a directory: '…'" before)
    if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.filename:
        where = redact(str(exc.filename))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            text = f"cannot write {where}: disk full"
        else:
            text = f"{where}: {exc.strerror}"
    if _too_many_open_files(exc, text):
        text += ("; the process ran out of open files: raise the limit (ulimit -n) or "
                 "lower the transfers in flight (theta-zarr.concurrency, or the remote "
                 "option concurrency=N)")
    if not isinstance(exc, USER_ERRORS):
        text = (f"internal error ({type(exc).__name__}: {text}); "
                "set GIT_THETA_ZARR_DEBUG=1 for details")
    return text


def _too_many_open_files(exc: BaseException, text: str) -> bool:
    """EMFILE anywhere in ``exc``'s chain, or in its text (a storage library's wrapped
    socket error says it only in words)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno == errno.EMFILE:
            return True
        seen = seen.__cause__ or seen.__context__
    return "Too many open files" in text


def opaque_note(reason: str) -> str:
    """The one line that says a file was kept as opaque bytes, and why."""
    return (f"stored as opaque bytes, not as weights ({reason}); it is rebuilt "
            "byte-identically (set theta-zarr.opaque=false to refuse such files)")
