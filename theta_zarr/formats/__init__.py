"""Checkpoint format plug-ins, found through the entry-point group ``theta_zarr.formats``.

The built-in ones (safetensors, torch, numpy) are registered the same way in
pyproject.toml; they are also listed here so a source checkout works without
an install.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .base import Format, FormatError, NotWeights, Source, TensorView

if TYPE_CHECKING:
    from ..manifest import Manifest

__all__ = ["Format", "FormatError", "NotWeights", "Source", "TensorView", "all_formats",
           "detect", "get_format", "tensor_views", "transposed", "view_json"]

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
def _builtin_formats() -> dict[str, Format]:
    return {f.name: f for f in _builtins()}


@functools.lru_cache(maxsize=1)
def all_formats() -> tuple[Format, ...]:
    """Every format plug-in, in detection order: the built-ins (``dcp`` before
    ``safetensors``), then those of the ``theta_zarr.formats`` entry points (an entry
    point is a Format class or instance; a name already taken keeps its first holder).

    Computed once per process.  Raises FormatError naming the plug-in when an entry point
    fails to load.
    """
    from importlib.metadata import entry_points  # 10 ms: only when a plug-in is looked for

    found: dict[str, Format] = dict(_builtin_formats())
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken plug-in must not break every checkout
            raise FormatError(f"format plug-in {ep.name!r} failed to load: {e}") from None
        fmt = cls() if isinstance(cls, type) else cls
        found.setdefault(fmt.name, fmt)
    return tuple(found.values())


def get_format(name: str) -> Format:
    """The plug-in a manifest's ``format.name`` names (built-ins without scanning entry
    points); FormatError when none of that name is installed (or ``all_formats`` fails)."""
    builtin = _builtin_formats().get(name)  # built-ins win: no entry-point scan for them
    if builtin is not None:
        return builtin
    for fmt in all_formats():
        if fmt.name == name:
            return fmt
    raise FormatError(f"no format plug-in named {name!r} is installed")


def detect(head: bytes, name: str = "checkpoint") -> Format:
    """The format whose ``sniff`` claims these first bytes, in ``all_formats`` order: a
    built-in that claims them is found without scanning the entry points (10-20 ms of
    every filter start that cleans a file)."""
    builtins = _builtin_formats()
    for fmt in builtins.values():
        if fmt.sniff(head):
            return fmt
    for fmt in all_formats()[len(builtins):]:
        if fmt.sniff(head):
            return fmt
    kinds = ", ".join(f.name for f in all_formats() if f.name != "opaque")
    raise NotWeights(f"{name}: not a checkpoint theta-zarr can read (known formats: {kinds})")


def view_json(view: TensorView) -> dict[str, Any]:
    """A TensorView as JSON: ``{"param": P}``, plus ``dtype`` and ``view``
    (``[offset, shape, stride]``, in elements) when the tensor is not the whole parameter."""
    out: dict[str, Any] = {"param": view.param}
    if view.dtype is not None:
        out["dtype"] = view.dtype
    if view.shape is not None:
        out["view"] = [view.offset, list(view.shape), list(view.stride or ())]
    return out


def tensor_views(manifest: Manifest) -> dict[str, TensorView]:
    """Every tensor a reader of ``manifest`` gets, by key (``load_state_dict``'s keys).

    A checkpoint file asks its plug-in (``Format.tensors``: tied aliases and views of
    one storage included).  A sharded model (``theta_zarr.shards.combine``) lists its
    tensors itself in ``format.tensors``, as ``view_json`` writes them, because its
    shards' plug-in data (a torch tree per shard) does not combine into one.
    Raises FormatError when the plug-in is not installed.
    """
    fmt = manifest.format
    if fmt.get("sharded"):
        out = {}
        for key, v in (fmt.get("tensors") or {}).items():
            view = v.get("view")
            out[key] = TensorView(v["param"], v.get("dtype")) if view is None else \
                TensorView(v["param"], v.get("dtype"), view[0], tuple(view[1]), tuple(view[2]))
        return out
    return get_format(manifest.format_name).tensors(fmt, manifest.params)


def transposed(m: Manifest | None) -> set[str]:
    """Parameters the file holds transposed (a Fortran-ordered ``.npy`` array is stored as
    its C-ordered transpose; a reader gets the reversed shape), as its plug-in says
    (``Format.tensors``; plug-ins that keep the default have none)."""
    if m is None:
        return set()
    try:
        fmt = get_format(m.format_name)
    except FormatError:
        return set()
    if type(fmt).tensors is Format.tensors:
        return set()
    try:
        views = fmt.tensors(m.format, m.params)
    except FormatError:  # keys no flat dict can hold (two tensors of one key): the diff goes on
        return set()
    return {n for n, v in views.items()
            if n in m.params and v.is_transpose_of(tuple(m.params[n].shape))}
