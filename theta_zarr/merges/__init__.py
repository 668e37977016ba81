"""Merge strategies: what to do with the chunks both sides of a merge changed.

A strategy is a plug-in (entry-point group ``theta_zarr.merges``; the built-ins
are registered there too), so a team can add, say, a TIES or SLERP merge
without touching theta-zarr.  See docs/diff-merge.md for the contract.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import MergeOptions, Strategy, StrategyError
from .builtin import BUILTINS

GROUP = "theta_zarr.merges"


def available() -> dict[str, type[Strategy]]:
    """Every strategy by name: the built-ins, then installed plug-ins (which may not shadow)."""
    found: dict[str, type[Strategy]] = dict(BUILTINS)
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


__all__ = ["GROUP", "MergeOptions", "Strategy", "StrategyError", "available", "get_strategy"]
