"""theta-zarr's log lines: ``theta-zarr: ...`` on stderr, storage libraries kept quiet.

Set up by every face that talks to a user (the CLI, the filter process git starts), so a
notice logged by the core (a repaired cache object, a retried request) reads the same
wherever it happens, and a storage library's own warnings never reach git's output.
"""

from __future__ import annotations

import logging
import os
import sys

from .redact import redact

#: Loggers of the storage libraries: silent unless GIT_THETA_ZARR_DEBUG is set (gcsfs
#: alone logs a traceback per retry; theta-zarr reports the outcome in one line).
LIBRARY_LOGGERS = ("gcsfs", "s3fs", "fsspec", "botocore", "aiobotocore", "boto3", "urllib3",
                   "google", "google.auth", "aiohttp", "asyncio")


def setup_logging() -> None:
    """theta-zarr's own notices go to stderr as ``theta-zarr: ...`` lines; the storage
    libraries' loggers and every library's Python warnings stay quiet unless
    GIT_THETA_ZARR_DEBUG is set (then everything, at DEBUG, with tracebacks)."""
    debug = bool(os.environ.get("GIT_THETA_ZARR_DEBUG"))
    ours = logging.getLogger("theta_zarr")
    _add_handler(ours, "theta-zarr: %(message)s")
    ours.setLevel(logging.DEBUG if debug else logging.INFO)
    ours.propagate = False
    if debug:  # botocore logs request headers at DEBUG: redacted like everything else
        _add_handler(logging.getLogger(), logging.BASIC_FORMAT)
        logging.getLogger().setLevel(logging.DEBUG)
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.setLevel(logging.DEBUG if debug else logging.CRITICAL + 1)
        lib.propagate = debug
    # the libraries' warnings (torch: "ComplexHalf support is experimental") go the same
    # way: through the "py.warnings" logger, shown only when debugging
    logging.captureWarnings(True)
    warned = logging.getLogger("py.warnings")
    warned.setLevel(logging.DEBUG if debug else logging.CRITICAL + 1)
    warned.propagate = debug


def _add_handler(logger: logging.Logger, fmt: str) -> None:
    """Give ``logger`` one stderr handler of ours (once), formatting with ``fmt`` and
    redacting every message."""
    if not any(getattr(h, "_theta_zarr", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt))
        handler.addFilter(_redacting)
        handler._theta_zarr = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def _redacting(record: logging.LogRecord) -> bool:
    """A handler filter: the record's message with credentials masked (``redact``)."""
    record.msg, record.args = redact(record.getMessage()), None
    return True
