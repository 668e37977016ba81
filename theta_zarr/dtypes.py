"""The data types theta-zarr stores, under their Zarr v3 names.

One table maps each Zarr name to its NumPy dtype (ml_dtypes supplies bfloat16 and
float8), its torch dtype and its safetensors code, so every layer translates
through the same place and bytes are never cast: a tensor's raw little-endian
bytes are what is hashed, stored and rebuilt.

NumPy and ml_dtypes are imported when a NumPy dtype is first asked for: clean and
smudge of a safetensors file need only names and item sizes, and the filter process
git starts in every ``status``, ``add`` and ``checkout`` would otherwise spend about
40 ms importing them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class DTypeError(ValueError):
    """A data type theta-zarr cannot store bit-exactly."""


@dataclass(frozen=True)
class DType:
    """One data type theta-zarr stores bit-exactly, under all the names it goes by.

    ``name`` is the manifest's dtype (the Zarr v3 data-type registry's name; torch's
    name where Zarr has none, e.g. bfloat16, the float8 types, complex32, which
    theta-zarr registers as Zarr extension data types: zarrdtypes.py); ``itemsize`` is
    in bytes; ``safetensors`` is the ``dtype`` code of the safetensors header
    (huggingface/safetensors format spec), None where that format has none.  Every
    instance lives in the module's table: ``by_name``, ``from_torch``,
    ``from_safetensors`` and ``from_numpy`` look it up.
    """

    name: str  # Zarr v3 data type name (or torch's name where Zarr has none)
    #: NumPy's type string (``"<f4"``), or the name of an ml_dtypes type (``"bfloat16"``)
    spec: str
    itemsize: int  # bytes per element
    torch_name: str | None  # attribute of the torch module; torch is imported only on use
    safetensors: str | None
    #: False where ``numpy`` only carries the bytes (no NumPy type has these semantics):
    #: such arrays are served to Zarr as ``raw_bytes`` and never inferred from NumPy
    native: bool = True

    @functools.cached_property
    def numpy(self) -> np.dtype:
        """The NumPy dtype (imports NumPy, and ml_dtypes for the types it supplies)."""
        import numpy as np

        if self.spec[0] in "<|":
            return np.dtype(self.spec)
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, self.spec))

    @property
    def torch(self):  # -> torch.dtype | None
        """The ``torch.dtype`` (imports torch), or None where this torch has no such type."""
        import torch

        return getattr(torch, self.torch_name, None) if self.torch_name else None


_TABLE = [
    DType("bool", "|b1", 1, "bool", "BOOL"),
    DType("int8", "|i1", 1, "int8", "I8"),
    DType("int16", "<i2", 2, "int16", "I16"),
    DType("int32", "<i4", 4, "int32", "I32"),
    DType("int64", "<i8", 8, "int64", "I64"),
    DType("uint8", "|u1", 1, "uint8", "U8"),
    DType("uint16", "<u2", 2, "uint16", "U16"),
    DType("uint32", "<u4", 4, "uint32", "U32"),
    DType("uint64", "<u8", 8, "uint64", "U64"),
    DType("float16", "<f2", 2, "float16", "F16"),
    DType("float32", "<f4", 4, "float32", "F32"),
    DType("float64", "<f8", 8, "float64", "F64"),
    DType("bfloat16", "bfloat16", 2, "bfloat16", "BF16"),
    DType("float8_e4m3fn", "float8_e4m3fn", 1, "float8_e4m3fn", "F8_E4M3"),
    DType("float8_e5m2", "float8_e5m2", 1, "float8_e5m2", "F8_E5M2"),
    DType("float8_e4m3fnuz", "float8_e4m3fnuz", 1, "float8_e4m3fnuz", "F8_E4M3FNUZ"),
    DType("float8_e5m2fnuz", "float8_e5m2fnuz", 1, "float8_e5m2fnuz", "F8_E5M2FNUZ"),
    DType("float8_e8m0fnu", "float8_e8m0fnu", 1, "float8_e8m0fnu", "F8_E8M0"),
    # two float4_e2m1fn values packed in a byte (torch.float4_e2m1fn_x2); safetensors
    # writes these as F4 counting 4-bit elements, which its plug-in carries as raw bytes
    DType("float4_e2m1fn_x2", "|u1", 1, "float4_e2m1fn_x2", None, native=False),
    DType("complex32", "complex32", 4, "complex32", None, native=False),
    DType("complex64", "<c8", 8, "complex64", "C64"),
    DType("complex128", "<c16", 16, "complex128", None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}
_BY_SAFETENSORS = {d.safetensors: d for d in _TABLE if d.safetensors is not None}

#: safetensors element types narrower than a byte (bits per element): their tensors'
#: shapes count elements, not bytes, so the safetensors plug-in keeps them as raw bytes
SAFETENSORS_SUBBYTE = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


def by_name(name: str) -> DType:
    """The DType of a manifest dtype name (``"bfloat16"``); DTypeError for any other."""
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
    """The DType of a safetensors header's ``dtype`` code (``"BF16"``, ``"F8_E4M3"``: the
    huggingface/safetensors format spec); DTypeError for a code with no bit-exact DType
    here (the sub-byte types of ``SAFETENSORS_SUBBYTE`` among them: their plug-in keeps
    them as raw bytes)."""
    try:
        return _BY_SAFETENSORS[code]
    except KeyError:
        raise DTypeError(f"unsupported safetensors dtype {code!r}") from None


@functools.cache
def _by_numpy() -> dict[np.dtype, DType]:
    return {d.numpy: d for d in _TABLE if d.native}


def from_numpy(dtype: np.dtype) -> DType:
    """The DType of a NumPy dtype (anything ``np.dtype()`` takes, ml_dtypes' included).

    Native byte order counts as little-endian.  Raises DTypeError for a big-endian dtype
    (bytes are never swapped) and for one no stored type matches (strings, objects,
    structured dtypes); the ``native=False`` types are never inferred from NumPy.
    """
    import numpy as np

    dt = np.dtype(dtype)
    if dt.byteorder == ">":
        raise DTypeError(f"big-endian dtype {dt} is not supported; store little-endian data")
    dt = dt.newbyteorder("<") if dt.byteorder == "=" and dt.itemsize > 1 else dt
    try:
        return _by_numpy()[dt]
    except KeyError:
        raise DTypeError(f"unsupported numpy dtype {dt}") from None
