"""bfloat16 and the float8 types as Zarr v3 extension data types for zarr-python 3.1.

Zarr-python 3.1 knows no bfloat16 or float8, yet checkpoints are full of them and
a manifest names them by their Zarr v3 names (DESIGN.md section 3).  Registering
them here, backed by ml_dtypes, lets the Zarr view of a manifest (zarrstore.py)
and stock zarr code read such arrays bit-exactly, and lets
``zarr.create_array(..., dtype=ml_dtypes.bfloat16)`` write them.

The JSON follows the zarr-extensions data-type documents: the data type is the
bare name (``"bfloat16"``, ``"float8_e4m3fn"``, ``"float8_e5m2"``); a fill value is
a JSON number, ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` or ``"0x…"`` with the raw
bits (big-endian hex, two digits per byte), which is the only way to name a
particular NaN payload.  These types have no Zarr v2 representation (NumPy calls
them ``<V2``/``<V1``, which would be read back as raw bytes), so v2 is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeGuard

import ml_dtypes
import numpy as np
from zarr.core.dtype import data_type_registry
from zarr.core.dtype.common import DataTypeValidationError, HasEndianness, HasItemSize
from zarr.core.dtype.npy.common import get_endianness_from_numpy_dtype
from zarr.core.dtype.wrapper import TBaseDType, ZDType

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.common import JSON, ZarrFormat
    from zarr.core.dtype.common import DTypeJSON

__all__ = ["BFloat16", "Float8E4M3FN", "Float8E5M2", "Float8E4M3FNUZ", "Float8E5M2FNUZ",
           "Float8E8M0FNU", "EXTENSION_DTYPES", "register"]

_SPECIAL = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_UINT_OF_SIZE = {1: np.dtype("<u1"), 2: np.dtype("<u2")}


@dataclass(frozen=True, kw_only=True)
class _MLFloat(ZDType[np.dtype[Any], np.generic], HasItemSize):
    """A Zarr data type wrapping one ml_dtypes floating-point type (little-endian bytes)."""

    _ml_type: ClassVar[type]

    # -- native dtypes ---------------------------------------------------------------
    @classmethod
    def _native(cls) -> np.dtype[Any]:
        return np.dtype(cls._ml_type)

    @classmethod
    def _check_native_dtype(cls, dtype: TBaseDType) -> TypeGuard[np.dtype[Any]]:
        # ml_dtypes makes one dtype class per type; a big-endian request degrades to a
        # void dtype in NumPy, so it never reaches here as "ours".
        return type(dtype) is cls.dtype_cls

    @classmethod
    def from_native_dtype(cls, dtype: TBaseDType) -> Self:
        """The Zarr data type for this ml_dtypes NumPy dtype (how zarr infers ours)."""
        if cls._check_native_dtype(dtype):
            return cls()
        raise DataTypeValidationError(
            f"Invalid data type: {dtype}. Expected an instance of {cls.dtype_cls}")

    def to_native_dtype(self) -> np.dtype[Any]:
        """The ml_dtypes NumPy dtype: what arrays read through zarr carry."""
        return self._native()

    @property
    def item_size(self) -> int:
        return self._native().itemsize

    # -- data type JSON ---------------------------------------------------------------
    @classmethod
    def _from_json_v2(cls, data: DTypeJSON) -> Self:
        raise DataTypeValidationError(
            f"{cls._zarr_v3_name} has no Zarr v2 representation (got {data!r})")

    @classmethod
    def _from_json_v3(cls, data: DTypeJSON) -> Self:
        if data == cls._zarr_v3_name:
            return cls()
        raise DataTypeValidationError(
            f"Invalid JSON representation of {cls.__name__}. Got {data!r}, "
            f"expected {cls._zarr_v3_name!r}.")

    def to_json(self, zarr_format: ZarrFormat) -> Any:
        """The v3 JSON name; v2 is refused (its ``<V2`` would read back as raw bytes)."""
        if zarr_format == 3:
            return self._zarr_v3_name
        raise ValueError(f"{self._zarr_v3_name} can only be stored in Zarr format 3, "
                         f"not {zarr_format}")

    # -- scalars ----------------------------------------------------------------------
    def _check_scalar(self, data: object) -> bool:
        if isinstance(data, str):
            try:
                self._native().type(data)
            except (ValueError, OverflowError, TypeError):
                return False
            return True
        return isinstance(data, int | float | np.generic) or hasattr(data, "__float__")

    def cast_scalar(self, data: object) -> np.generic:
        """A scalar of this type from a Python or NumPy value (rounding as ml_dtypes does)."""
        if self._check_scalar(data):
            return self._native().type(data)
        raise TypeError(f"Cannot convert object {data!r} with type {type(data)} to a scalar "
                        f"compatible with the data type {self}.")

    def default_scalar(self) -> np.generic:
        return self._native().type(0)

    def _from_bits(self, bits: int) -> np.generic:
        raw = np.array(bits, dtype=_UINT_OF_SIZE[self.item_size])
        return raw.view(self._native())[()]

    def _bits(self, value: np.generic) -> int:
        return int(np.array(value, dtype=self._native()).view(_UINT_OF_SIZE[self.item_size]))

    def from_json_scalar(self, data: JSON, *, zarr_format: ZarrFormat) -> np.generic:
        """A fill value from JSON: a number, a special float string, or ``0x`` raw bits."""
        if isinstance(data, bool):
            raise TypeError(f"Invalid fill value {data!r} for {self._zarr_v3_name}")
        if isinstance(data, int | float):
            return self.cast_scalar(data)
        if isinstance(data, str):
            if data in _SPECIAL:
                return self.cast_scalar(_SPECIAL[data])
            digits = 2 * self.item_size
            if data.startswith("0x") and len(data) == 2 + digits:
                try:
                    return self._from_bits(int(data[2:], 16))
                except ValueError:
                    pass
        raise TypeError(f"Invalid fill value {data!r} for {self._zarr_v3_name}: expected a "
                        f"number, 'NaN', 'Infinity', '-Infinity' or '0x' and "
                        f"{2 * self.item_size} hex digits")

    def to_json_scalar(self, data: object, *, zarr_format: ZarrFormat) -> float | str:
        """JSON for a fill value; a NaN other than the canonical one keeps its bits as hex."""
        value = self.cast_scalar(data)
        as_float = float(value)
        if np.isnan(as_float):
            if self._bits(value) == self._bits(self._native().type(float("nan"))):
                return "NaN"
            return f"0x{self._bits(value):0{2 * self.item_size}x}"
        if np.isinf(as_float):
            return "Infinity" if as_float > 0 else "-Infinity"
        return as_float


@dataclass(frozen=True, kw_only=True)
class BFloat16(_MLFloat, HasEndianness):
    """bfloat16: two bytes, so the bytes codec records its (little) endianness."""

    _ml_type = ml_dtypes.bfloat16
    dtype_cls = type(np.dtype(ml_dtypes.bfloat16))
    _zarr_v3_name: ClassVar[Literal["bfloat16"]] = "bfloat16"

    @classmethod
    def from_native_dtype(cls, dtype: TBaseDType) -> Self:
        if cls._check_native_dtype(dtype):
            return cls(endianness=get_endianness_from_numpy_dtype(dtype))
        raise DataTypeValidationError(
            f"Invalid data type: {dtype}. Expected an instance of {cls.dtype_cls}")

    def to_native_dtype(self) -> np.dtype[Any]:
        # NumPy cannot byte-swap ml_dtypes types (a swapped bfloat16 becomes ">V2"), so
        # only little-endian storage is readable; refuse the rest instead of misreading.
        if self.endianness != "little":
            raise ValueError("bfloat16 is supported only with little-endian storage")
        return self._native()


@dataclass(frozen=True, kw_only=True)
class Float8E4M3FN(_MLFloat):
    """float8_e4m3fn (one byte: no endianness, like int8)."""

    _ml_type = ml_dtypes.float8_e4m3fn
    dtype_cls = type(np.dtype(ml_dtypes.float8_e4m3fn))
    _zarr_v3_name: ClassVar[Literal["float8_e4m3fn"]] = "float8_e4m3fn"


@dataclass(frozen=True, kw_only=True)
class Float8E5M2(_MLFloat):
    """float8_e5m2 (one byte: no endianness, like int8)."""

    _ml_type = ml_dtypes.float8_e5m2
    dtype_cls = type(np.dtype(ml_dtypes.float8_e5m2))
    _zarr_v3_name: ClassVar[Literal["float8_e5m2"]] = "float8_e5m2"


@dataclass(frozen=True, kw_only=True)
class Float8E4M3FNUZ(_MLFloat):
    """float8_e4m3fnuz (one byte; no negative zero, one NaN)."""

    _ml_type = ml_dtypes.float8_e4m3fnuz
    dtype_cls = type(np.dtype(ml_dtypes.float8_e4m3fnuz))
    _zarr_v3_name: ClassVar[Literal["float8_e4m3fnuz"]] = "float8_e4m3fnuz"


@dataclass(frozen=True, kw_only=True)
class Float8E5M2FNUZ(_MLFloat):
    """float8_e5m2fnuz (one byte; no negative zero, one NaN)."""

    _ml_type = ml_dtypes.float8_e5m2fnuz
    dtype_cls = type(np.dtype(ml_dtypes.float8_e5m2fnuz))
    _zarr_v3_name: ClassVar[Literal["float8_e5m2fnuz"]] = "float8_e5m2fnuz"


@dataclass(frozen=True, kw_only=True)
class Float8E8M0FNU(_MLFloat):
    """float8_e8m0fnu (one byte: an exponent only, the MX block scale)."""

    _ml_type = ml_dtypes.float8_e8m0fnu
    dtype_cls = type(np.dtype(ml_dtypes.float8_e8m0fnu))
    _zarr_v3_name: ClassVar[Literal["float8_e8m0fnu"]] = "float8_e8m0fnu"


EXTENSION_DTYPES: tuple[type[_MLFloat], ...] = (BFloat16, Float8E4M3FN, Float8E5M2,
                                                Float8E4M3FNUZ, Float8E5M2FNUZ, Float8E8M0FNU)


def register() -> None:
    """Add the extension data types to zarr's registry (idempotent: safe to call often).

    Called when zarrstore is imported, so that any code reading a manifest as Zarr,
    or writing ml_dtypes arrays with stock zarr, finds them.
    """
    for cls in EXTENSION_DTYPES:
        if data_type_registry.contents.get(cls._zarr_v3_name) is not cls:
            data_type_registry.register(cls._zarr_v3_name, cls)  # type: ignore[arg-type]
