"""Empty archives, metadata-only files and zero-size tensors round-trip in every format."""

from __future__ import annotations

import collections
import io

import numpy as np
import pytest
import torch
from helpers import npy, npz, torch_saved
from safetensors.numpy import save as np_st_save
from safetensors.torch import save as st_save

from theta_zarr import checkpoint
from theta_zarr.manifest import Manifest
from theta_zarr.settings import Settings

NAME = "empty-checkpoint"


CASES = {
    # format name, file bytes
    "npz with no arrays": ("numpy", lambda: npz({})),
    "compressed npz with no arrays": ("numpy", lambda: npz({}, compressed=True)),
    "npz of zero-size arrays": ("numpy", lambda: npz({"a": np.empty((0,), np.float32),
                                                     "b": np.empty((3, 0), np.int8)})),
    "npy of a zero-size array": ("npy", lambda: npy(np.empty((0, 4), np.float16))),
    "safetensors with no tensors": ("safetensors", lambda: st_save({})),
    "safetensors with only metadata": (
        "safetensors", lambda: st_save({}, metadata={"format": "pt", "step": "3"})),
    "safetensors of zero-size tensors": (
        "safetensors", lambda: np_st_save({"a": np.empty((0, 2), np.float32),
                                           "b": np.empty((0,), np.int64)})),
    "torch empty dict": ("torch", lambda: torch_saved({})),
    "torch metadata only": ("torch", lambda: torch_saved({"step": 3, "lr": [1e-3], "name": "run"})),
    "torch empty state dict": ("torch", lambda: torch_saved(collections.OrderedDict())),
    "torch zero-size tensors": ("torch", lambda: torch_saved({"a": torch.empty(0),
                                                     "b": torch.empty(2, 0, 3)})),
    "legacy torch metadata only": (
        "torch", lambda: torch_saved({"step": 1}, _use_new_zipfile_serialization=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trips(case, tmp_path):
    fmt, make = CASES[case]
    data = make()
    s = Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=4096, workers=2)
    cache = checkpoint.open_cache(s)
    res = checkpoint.clean(checkpoint.open_source(io.BytesIO(data), cache, name=NAME), s, cache)
    assert res.manifest.format_name == fmt and res.opaque_reason is None
    m = Manifest.from_bytes(res.manifest.to_bytes(), NAME)
    out = io.BytesIO()
    checkpoint.smudge(m, out, s, name=NAME, cache=cache)
    rebuilt = out.getvalue()
    if fmt == "torch":  # tensor-identical: compare what torch.load returns
        a = torch.load(io.BytesIO(data), weights_only=True)
        b = torch.load(io.BytesIO(rebuilt), weights_only=True)
        assert type(a) is type(b) and list(a) == list(b)
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype
            else:
                assert a[k] == b[k]
        res2 = checkpoint.clean(checkpoint.open_source(io.BytesIO(rebuilt), cache, name=NAME),
                                s, cache)
        assert res2.manifest.to_bytes() == m.to_bytes()
    else:
        assert rebuilt == data
