"""The dtype table: names, item sizes and NumPy dtypes agree (NumPy loads only when asked)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from theta_zarr import dtypes


@pytest.mark.parametrize("dt", dtypes.BY_NAME.values(), ids=lambda d: d.name)
def test_item_size_is_the_numpy_dtypes(dt):
    """``itemsize`` is written in the table so clean and smudge need no NumPy; it must be
    the NumPy dtype's, and a native type must map back to itself."""
    assert dt.itemsize == dt.numpy.itemsize
    if dt.native:
        assert dtypes.from_numpy(dt.numpy) is dt
        if dt.torch is not None:
            assert dt.itemsize == dt.torch.itemsize


def test_ml_dtypes_and_byte_orders_are_found():
    assert dtypes.by_name("bfloat16").numpy == np.dtype(ml_dtypes.bfloat16)
    assert dtypes.from_numpy(np.dtype("=f4")).name == "float32"
    assert dtypes.from_torch(torch.bfloat16).name == "bfloat16"
    with pytest.raises(dtypes.DTypeError, match="big-endian"):
        dtypes.from_numpy(np.dtype(">f4"))
    with pytest.raises(dtypes.DTypeError, match="unsupported"):
        dtypes.from_numpy(np.dtype(object))
