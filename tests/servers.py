"""Pytest plugin: real S3 (moto) and GCS (fake-gcs-server) servers on loopback.

Load it with ``tests`` on ``sys.path`` (``pythonpath = ["tests"]`` in the
pytest configuration) and ``pytest_plugins = ["servers"]`` in the root
``conftest.py``; it needs no ``tests/__init__.py``.

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

gcsfs reads ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` once, when it is first
imported; left at its default (true), every new bucket is first probed over
gRPC, which stalls for about a minute against fake-gcs-server.  This module
therefore sets it to ``false`` at import time (plugins are imported before
test modules), unless the environment already sets it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS_DIR = REPO_ROOT / "backends"

#: Seconds to wait for a server to print its endpoint line.
START_TIMEOUT = float(os.environ.get("TZ_TEST_SERVER_START_TIMEOUT", "60"))

S3_KEY = "testing"
S3_SECRET = "testing"
S3_REGION = "us-east-1"
GCS_PROJECT = "test"


@dataclass(frozen=True)
class Backend:
    """A running object-storage server and how to reach it.

    ``name``: ``"s3"`` or ``"gcs"``.  ``scheme``: URL scheme (``s3`` /
    ``gs``).  ``endpoint``: ``http://127.0.0.1:PORT``.  ``storage_options``:
    exactly the fsspec keyword arguments to reach the server.  ``env``: the
    environment variables a subprocess needs to reach it without
    ``storage_options`` (add them to ``os.environ``).
    """

    name: str
    scheme: str
    endpoint: str
    storage_options: dict[str, Any]
    env: dict[str, str]
    _make_bucket: Callable[[str], None] = field(repr=False, compare=False)

    def url(self, bucket: str, prefix: str = "") -> str:
        """``scheme://bucket`` or ``scheme://bucket/prefix``."""
        prefix = prefix.strip("/")
        return f"{self.scheme}://{bucket}/{prefix}" if prefix else f"{self.scheme}://{bucket}"

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error if this server already has it)."""
        self._make_bucket(name)

    def new_bucket(self) -> str:
        """Create a uniquely named bucket and return its base URL."""
        name = unique_bucket_name()
        self.make_bucket(name)
        return self.url(name)

    def filesystem(self):
        """A new fsspec filesystem (no instance cache) for this server."""
        import fsspec

        return fsspec.filesystem(self.scheme, skip_instance_cache=True, **self.storage_options)

    def objects(self, url: str) -> dict[str, int]:
        """Map ``bucket/key`` -> size for every object under ``url``.

        Cheap way to count what was uploaded (objects and bytes) below a
        bucket or prefix.
        """
        fs = self.filesystem()
        found = fs.find(url, detail=True)
        return {path: int(info["size"]) for path, info in found.items()}


def unique_bucket_name() -> str:
    """A bucket name valid on S3 and GCS: ``tz-`` + 32 hex digits."""
    return f"tz-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------
# Server processes


class ServerProcess:
    """A ``backends/<name>/serve`` subprocess."""

    def __init__(self, name: str, args: list[str] = ()):
        self.name = name
        script = BACKENDS_DIR / name / "serve"
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.endpoint = self._read_endpoint(START_TIMEOUT)

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def _read_endpoint(self, timeout: float) -> str:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout).strip()
        except queue.Empty:
            line = ""
            why = f"printed no endpoint within {timeout:g} s"
        else:
            why = "exited before printing its endpoint"
        if line.startswith("http://") or line.startswith("https://"):
            return line
        if line:
            why = f"printed {line!r} instead of an endpoint URL"
        self._terminate()
        stderr = self._stderr_text()
        self.stop()
        pytest.fail(
            f"{self.name} test server (backends/{self.name}/serve) {why}; "
            f"exit status {self.proc.returncode}; stderr:\n{stderr}",
            pytrace=False,
        )

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        """Terminate (SIGTERM), wait up to 15 s, then kill."""
        self._terminate()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def _http(method: str, url: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _s3_make_bucket(endpoint: str, name: str) -> None:
    # moto does not check signatures: an unsigned PUT creates the bucket.
    status, body = _http("PUT", f"{endpoint}/{urllib.parse.quote(name)}", b"")
    if status == 200 or (status == 409 and b"BucketAlreadyOwnedByYou" in body):
        return
    raise RuntimeError(f"cannot create S3 bucket {name!r}: HTTP {status}: {body[:500]!r}")


def _gcs_make_bucket(endpoint: str, name: str) -> None:
    status, body = _http(
        "POST",
        f"{endpoint}/storage/v1/b?project={GCS_PROJECT}",
        json.dumps({"name": name}).encode(),
        {"Content-Type": "application/json"},
    )
    if status == 200 or status == 409:
        return
    raise RuntimeError(f"cannot create GCS bucket {name!r}: HTTP {status}: {body[:500]!r}")


def s3_backend(endpoint: str) -> Backend:
    return Backend(
        name="s3",
        scheme="s3",
        endpoint=endpoint,
        storage_options={
            "key": S3_KEY,
            "secret": S3_SECRET,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_REGION},
        },
        env={
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        _make_bucket=lambda name: _s3_make_bucket(endpoint, name),
    )


def gcs_backend(endpoint: str) -> Backend:
    return Backend(
        name="gcs",
        scheme="gs",
        endpoint=endpoint,
        storage_options={
            "endpoint_url": endpoint,
            "token": "anon",
            "project": GCS_PROJECT,
        },
        env={
            "STORAGE_EMULATOR_HOST": endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # fsspec default kwarg for gs:// -> no credential lookup at all.
            "FSSPEC_GS_TOKEN": "anon",
            "GCSFS_DEFAULT_PROJECT": GCS_PROJECT,
            "NO_GCE_CHECK": "true",
        },
        _make_bucket=lambda name: _gcs_make_bucket(endpoint, name),
    )


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


@pytest.fixture(params=["s3", "gcs"])
def object_store(request) -> Backend:
    """Each server in turn (parametrized ``s3`` / ``gcs``)."""
    return request.getfixturevalue(f"{request.param}_server")
