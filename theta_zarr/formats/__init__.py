"""Checkpoint format plug-ins, found through the entry-point group ``theta_zarr.formats``.

The built-in ones (safetensors, torch, numpy) are registered the same way in
pyproject.toml; they are also listed here so a source checkout works without
an install.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from .base import Format, FormatError, NotWeights, Source

__all__ = ["Format", "FormatError", "NotWeights", "Source", "all_formats", "detect", "get_format"]

ENTRY_POINT_GROUP = "theta_zarr.formats"


def _builtins() -> list[Format]:
    from .dcp import DcpFormat
    from .numpy import NpyFormat, NpzFormat
    from .opaque import OpaqueFormat
    from .safetensors import SafetensorsFormat
    from .torch import TorchFormat

    # dcp first: its files are safetensors files that it alone recognises
    return [DcpFormat(), SafetensorsFormat(), TorchFormat(), NpzFormat(), NpyFormat(),
            OpaqueFormat()]


@functools.lru_cache(maxsize=1)
def all_formats() -> tuple[Format, ...]:
    found: dict[str, Format] = {f.name: f for f in _builtins()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken plug-in must not break every checkout
            raise FormatError(f"format plug-in {ep.name!r} failed to load: {e}") from None
        fmt = cls() if isinstance(cls, type) else cls
        found.setdefault(fmt.name, fmt)
    return tuple(found.values())


def get_format(name: str) -> Format:
    for fmt in all_formats():
        if fmt.name == name:
            return fmt
    raise FormatError(f"no format plug-in named {name!r} is installed")


def detect(head: bytes, name: str = "checkpoint") -> Format:
    """The format whose ``sniff`` claims these first bytes."""
    for fmt in all_formats():
        if fmt.sniff(head):
            return fmt
    kinds = ", ".join(f.name for f in all_formats() if f.name != "opaque")
    raise NotWeights(f"{name}: not a checkpoint theta-zarr can read (known formats: {kinds})")
