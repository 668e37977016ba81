"""Which exceptions are the user's to read, and how to say them in one line."""

from __future__ import annotations

import os
import traceback

from .codecs import CodecError
from .dtypes import DTypeError
from .formats.base import FormatError
from .manifest import ManifestError
from .objects import ObjectError
from .storage import StorageError

#: Errors whose message is complete for a user: no traceback needed.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ManifestError, FormatError, ObjectError, StorageError, DTypeError, CodecError, OSError,
    ValueError,
)


def one_line(exc: BaseException) -> str:
    """A one-line message; the traceback too when GIT_THETA_ZARR_DEBUG is set."""
    if os.environ.get("GIT_THETA_ZARR_DEBUG"):
        traceback.print_exception(exc)
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    if not isinstance(exc, USER_ERRORS):
        text = (f"internal error ({type(exc).__name__}: {text}); "
                "set GIT_THETA_ZARR_DEBUG=1 for details")
    return text


def opaque_note(reason: str) -> str:
    """The one line that says a file was kept as opaque bytes, and why."""
    return (f"stored as opaque bytes, not as weights ({reason}); it is rebuilt "
            "byte-identically (set theta-zarr.opaque=false to refuse such files)")
