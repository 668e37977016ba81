"""Pytest plugin: real S3 (moto) and GCS (fake-gcs-server) servers on loopback, and a
static HTTP server.

Load it with ``tests`` on ``sys.path`` (``pythonpath = ["tests"]`` in the
pytest configuration) and ``pytest_plugins = ["servers"]`` in the root
``conftest.py``; it needs no ``tests/__init__.py``.

The servers themselves (:class:`Backend`, :class:`ServerProcess`) are plain
helpers in ``helpers``.

Fixtures
--------
``s3_server``, ``gcs_server`` (session)
    Start ``backends/s3/serve`` / ``backends/gcs/serve`` as subprocesses on
    free ports and return a :class:`Backend`.  Stopped at session end.
``s3_bucket``, ``gcs_bucket`` (function)
    A fresh, uniquely named, empty bucket on that server; the value is its
    base URL, e.g. ``s3://tz-0123abcd...`` / ``gs://tz-0123abcd...``.
``object_store`` (function, parametrized ``s3`` / ``gcs``)
    The :class:`Backend` of each server in turn, for tests that should run
    against both.
``http_folder`` (function)
    An :class:`HttpFolder`: the empty folder ``tmp_path/served`` served read-only
    over loopback HTTP (Python's ``http.server``), recording every request.

gcsfs reads ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` once, when it is first
imported; left at its default (true), every new bucket is first probed over
gRPC, which stalls for about a minute against fake-gcs-server.  This module
therefore sets it to ``false`` at import time (plugins are imported before
test modules), unless the environment already sets it.
"""

from __future__ import annotations

import os
import sys

import pytest
from helpers import Backend, HttpFolder, ServerProcess, gcs_backend, s3_backend

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _check_gcsfs_mode() -> None:
    gcsfs = sys.modules.get("gcsfs")
    cls = getattr(gcsfs, "GCSFileSystem", None)
    if getattr(cls, "__name__", "") == "ExtendedGcsFileSystem":
        import warnings

        warnings.warn(
            "gcsfs was imported with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT enabled; "
            "against fake-gcs-server each new bucket then stalls about 60 s. "
            "Set GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before gcsfs is imported.",
            stacklevel=2,
        )


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def s3_server():
    """Session-wide moto S3 server: a :class:`Backend`."""
    server = ServerProcess("s3")
    try:
        yield s3_backend(server.endpoint)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server():
    """Session-wide fake-gcs-server: a :class:`Backend`."""
    _check_gcsfs_mode()
    server = ServerProcess("gcs")
    try:
        yield gcs_backend(server.endpoint)
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: Backend) -> str:
    """A fresh empty bucket on the S3 server: ``s3://tz-<hex>``."""
    return s3_server.new_bucket()


@pytest.fixture
def gcs_bucket(gcs_server: Backend) -> str:
    """A fresh empty bucket on the GCS server: ``gs://tz-<hex>``."""
    return gcs_server.new_bucket()


@pytest.fixture
def http_folder(tmp_path):
    """``tmp_path/served``, served read-only over loopback HTTP: an :class:`HttpFolder`."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = HttpFolder(folder)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["s3", "gcs"])
def object_store(request) -> Backend:
    """Each server in turn (parametrized ``s3`` / ``gcs``)."""
    return request.getfixturevalue(f"{request.param}_server")
