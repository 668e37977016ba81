"""Fixtures of the cluster-sync tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Case, make_case


@pytest.fixture(params=["local", "s3", "gcs"])
def case(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """Each remote in turn: a folder, a bucket on the S3 server, one on the GCS server."""
    return make_case(request.param, request, tmp_path, monkeypatch)
