"""Stock tools read a version: xarray and dask over theta_zarr.open(...).store."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

import theta_zarr

xr = pytest.importorskip("xarray")
da = pytest.importorskip("dask.array")


@pytest.fixture
def committed(repo):
    g = torch.Generator().manual_seed(3)
    sd = {
        "embed.weight": torch.randn(96, 32, generator=g).to(torch.bfloat16),
        "head.weight": torch.randn(32, 96, generator=g),  # same sizes, other axes
        "head.bias": torch.zeros(96),  # all zeros: the fill value must not mask it
        "scale": torch.tensor(2.0),
        "steps": torch.arange(10, dtype=torch.int64),
        "mx_scale": torch.frombuffer(bytearray(range(100, 116)), dtype=torch.uint8).view(
            torch.float8_e8m0fnu),
        "fp4": torch.frombuffer(bytearray(range(16)), dtype=torch.uint8).view(
            torch.float4_e2m1fn_x2).reshape(2, 8),
    }
    repo.git("config", "theta-zarr.chunk-size", "4KiB")
    safetensors.torch.save_file(sd, str(repo.path / "model.safetensors"))
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "base")
    return repo, sd


def test_xarray_open_zarr_reads_every_parameter(committed):
    repo, sd = committed
    group = theta_zarr.open(str(repo.path / "model.safetensors"))
    ds = xr.open_zarr(group.store, consolidated=False)
    assert set(ds.data_vars) == set(sd)
    for name, t in sd.items():
        var = ds[name]
        # safetensors' F4 counts 4-bit elements: theta-zarr keeps those tensors as bytes
        assert var.shape == ((t.numel(),) if name == "fp4" else tuple(t.shape)), name
        assert len(set(var.dims)) == len(var.dims)  # one dimension per axis
        if t.dim():  # lazy: dask reads chunks on compute (xarray loads scalars eagerly)
            assert isinstance(var.data, da.Array)
        got = var.values
        want = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        assert np.ascontiguousarray(got).tobytes() == want, name
    assert ds["embed.weight"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert ds["mx_scale"].dtype == np.dtype(ml_dtypes.float8_e8m0fnu)
    assert not np.isnan(ds["head.bias"].values).any()  # zeros stay zeros
    assert ds["embed.weight"].dims != ds["head.weight"].dims


def test_dask_computes_over_chunks(committed):
    repo, sd = committed
    group = theta_zarr.open(str(repo.path / "model.safetensors"))
    arr = da.from_zarr(group["head.weight"])
    assert arr.numblocks[0] > 1  # more than one chunk of 4 KiB
    assert np.allclose(arr.astype("float64").sum(axis=0).compute(),
                       sd["head.weight"].double().sum(dim=0).numpy())
    ds = xr.open_zarr(group.store, consolidated=False)
    mean = ds["head.weight"].astype("float64").mean().compute()
    assert float(mean) == pytest.approx(float(sd["head.weight"].double().mean()))


def test_the_documented_example_runs_on_a_bf16_parameter(committed):
    """docs/lazy-and-api.md: its xarray line failed on bf16 (xarray's mean refuses
    extension dtypes); it now casts first."""
    repo, sd = committed
    ds = xr.open_zarr(theta_zarr.open(str(repo.path / "model.safetensors")).store,
                      consolidated=False)
    assert ds["embed.weight"].dtype == np.dtype(ml_dtypes.bfloat16)
    mean = ds["embed.weight"].astype("float32").mean().compute()
    assert float(mean) == pytest.approx(float(sd["embed.weight"].float().mean()), rel=1e-4)
