"""Opaque files are written straight from the cache (``layout``) like safetensors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import clean_manifest, settings, smudge

from theta_zarr import checkpoint
from theta_zarr.filewriter import write_checkpoint
from theta_zarr.formats import get_format
from theta_zarr.manifest import Manifest, ManifestError, ParamEntry


@pytest.mark.parametrize("size", [0, 300, 10_000], ids=["empty", "inline", "chunks"])
def test_the_direct_writer_rebuilds_the_same_bytes_as_smudge(size, tmp_path):
    data = b"not a checkpoint\n" + np.random.default_rng(size).bytes(size)
    m = clean_manifest(data, tmp_path, name="rng_state.pth")
    assert m.format_name == "opaque"
    assert get_format("opaque").layout(m) == [m.params["bytes"]]
    assert smudge(m, tmp_path) == data
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        cache = checkpoint.open_cache(settings(tmp_path))
        assert write_checkpoint(m, fd, cache, workers=2, name="rng_state.pth") == len(data)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_a_manifest_that_is_not_one_bytes_parameter_is_refused_naming_the_file(tmp_path):
    m = Manifest({"name": "opaque"}, {"bytes": ParamEntry((2, 2), "uint8", (2, 2))})
    fd = os.open(tmp_path / "out.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(ManifestError, match="^rng_state.pth: an opaque manifest holds"):
            write_checkpoint(m, fd, checkpoint.open_cache(settings(tmp_path)), workers=1,
                             name="rng_state.pth")
    finally:
        os.close(fd)
    assert os.path.getsize(tmp_path / "out.bin") == 0
