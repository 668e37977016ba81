"""Merge strategies: what to do with the chunks several sides of a merge changed.

A strategy is a plug-in (entry-point group ``theta_zarr.merges``; the built-ins,
including the model-merging methods of :mod:`.methods`, are registered there too),
so a team can add its own merge without touching theta-zarr.  See
docs/diff-merge.md for the contract.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from .base import ChunkInput, MergeOptions, Strategy, StrategyError, TensorView
from .builtin import BUILTINS
from .methods import METHODS

GROUP = "theta_zarr.merges"


def available() -> dict[str, type[Strategy]]:
    """Every strategy by name: the built-ins, then installed plug-ins (which may not shadow).

    Entry points are read once per process (a merge looks strategies up per parameter).
    """
    return dict(_load())


@functools.cache
def _load() -> dict[str, type[Strategy]]:
    found: dict[str, type[Strategy]] = {**BUILTINS, **METHODS}
    for ep in entry_points(group=GROUP):
        if ep.name in found and ep.value.startswith("theta_zarr."):
            continue
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise StrategyError(f"merge plug-in {ep.name!r} ({ep.value}) is not a Strategy class")
        found.setdefault(ep.name, cls)
    return found


def get_strategy(name: str) -> Strategy:
    """An instance of the named strategy; an unknown name is a one-line error listing all."""
    table = available()
    try:
        return table[name]()
    except KeyError:
        raise StrategyError(
            f"unknown merge strategy {name!r} (known: {', '.join(sorted(table))})") from None


def parameter_names() -> set[str]:
    """Every parameter name some strategy reads (to catch a misspelt setting)."""
    return {p for cls in available().values() for p in cls().parameters}


__all__ = ["GROUP", "ChunkInput", "MergeOptions", "Strategy", "StrategyError", "TensorView",
           "available", "get_strategy", "parameter_names"]
