"""The data types theta-zarr stores, under their Zarr v3 names.

One table maps each Zarr name to its NumPy dtype (ml_dtypes supplies bfloat16 and
float8), its torch dtype and its safetensors code, so every layer translates
through the same place and bytes are never cast: a tensor's raw little-endian
bytes are what is hashed, stored and rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


class DTypeError(ValueError):
    """A data type theta-zarr cannot store bit-exactly."""


@dataclass(frozen=True)
class DType:
    name: str  # Zarr v3 data type name (or torch's name where Zarr has none)
    numpy: np.dtype
    torch_name: str | None  # attribute of the torch module; torch is imported only on use
    safetensors: str | None
    #: False where ``numpy`` only carries the bytes (no NumPy type has these semantics):
    #: such arrays are served to Zarr as ``raw_bytes`` and never inferred from NumPy
    native: bool = True

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def torch(self):  # -> torch.dtype | None
        import torch

        return getattr(torch, self.torch_name, None) if self.torch_name else None


_TABLE = [
    DType("bool", np.dtype(np.bool_), "bool", "BOOL"),
    DType("int8", np.dtype("<i1"), "int8", "I8"),
    DType("int16", np.dtype("<i2"), "int16", "I16"),
    DType("int32", np.dtype("<i4"), "int32", "I32"),
    DType("int64", np.dtype("<i8"), "int64", "I64"),
    DType("uint8", np.dtype("<u1"), "uint8", "U8"),
    DType("uint16", np.dtype("<u2"), "uint16", "U16"),
    DType("uint32", np.dtype("<u4"), "uint32", "U32"),
    DType("uint64", np.dtype("<u8"), "uint64", "U64"),
    DType("float16", np.dtype("<f2"), "float16", "F16"),
    DType("float32", np.dtype("<f4"), "float32", "F32"),
    DType("float64", np.dtype("<f8"), "float64", "F64"),
    DType("bfloat16", np.dtype(ml_dtypes.bfloat16), "bfloat16", "BF16"),
    DType("float8_e4m3fn", np.dtype(ml_dtypes.float8_e4m3fn), "float8_e4m3fn", "F8_E4M3"),
    DType("float8_e5m2", np.dtype(ml_dtypes.float8_e5m2), "float8_e5m2", "F8_E5M2"),
    DType("float8_e4m3fnuz", np.dtype(ml_dtypes.float8_e4m3fnuz), "float8_e4m3fnuz",
          "F8_E4M3FNUZ"),
    DType("float8_e5m2fnuz", np.dtype(ml_dtypes.float8_e5m2fnuz), "float8_e5m2fnuz",
          "F8_E5M2FNUZ"),
    DType("float8_e8m0fnu", np.dtype(ml_dtypes.float8_e8m0fnu), "float8_e8m0fnu", "F8_E8M0"),
    # two float4_e2m1fn values packed in a byte (torch.float4_e2m1fn_x2); safetensors
    # writes these as F4 counting 4-bit elements, which its plug-in carries as raw bytes
    DType("float4_e2m1fn_x2", np.dtype("<u1"), "float4_e2m1fn_x2", None, native=False),
    DType("complex32", np.dtype(ml_dtypes.complex32), "complex32", None, native=False),
    DType("complex64", np.dtype("<c8"), "complex64", "C64"),
    DType("complex128", np.dtype("<c16"), "complex128", None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}
_BY_SAFETENSORS = {d.safetensors: d for d in _TABLE if d.safetensors is not None}
_BY_NUMPY = {d.numpy: d for d in _TABLE if d.native}

#: safetensors element types narrower than a byte (bits per element): their tensors'
#: shapes count elements, not bytes, so the safetensors plug-in keeps them as raw bytes
SAFETENSORS_SUBBYTE = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def by_name(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise DTypeError(f"unknown dtype {name!r}") from None


def from_torch(dtype) -> DType:
    """The DType of a ``torch.dtype``."""
    name = str(dtype).removeprefix("torch.")
    for d in _TABLE:
        if d.torch_name == name:
            return d
    raise DTypeError(f"unsupported torch dtype {dtype}")


def from_safetensors(code: str) -> DType:
    try:
        return _BY_SAFETENSORS[code]
    except KeyError:
        raise DTypeError(f"unsupported safetensors dtype {code!r}") from None


def from_numpy(dtype: np.dtype) -> DType:
    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        raise DTypeError(f"big-endian dtype {dt} is not supported; store little-endian data")
    dt = dt.newbyteorder("<") if dt.byteorder == "=" and dt.itemsize > 1 else dt
    try:
        return _BY_NUMPY[dt]
    except KeyError:
        raise DTypeError(f"unsupported numpy dtype {dt}") from None
