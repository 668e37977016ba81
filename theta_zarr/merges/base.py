"""The contract of a merge strategy.

A strategy sees only the chunks both sides changed (a chunk changed on one side
is taken from that side before any strategy runs).  It either *takes* one side's
chunk by digest (no bytes read, any dtype) or *combines* the three chunks
numerically.  Numbers arrive already widened to the compute dtype (float32, or
float64 for float32/float64 parameters) and the result is cast back by the
caller with round-to-nearest-even, so every strategy is deterministic and equals
the same formula applied by numpy to the whole tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class StrategyError(ValueError):
    """A strategy that cannot apply (unknown name, integer dtype, missing base...)."""


@dataclass(frozen=True)
class MergeOptions:
    alpha: float = 0.5  # average: weight of theirs
    scale: float = 1.0  # task-arithmetic: scale of the summed task vectors


class Strategy:
    """Base class of merge strategies (subclass it and register an entry point)."""

    #: the name users type (``--strategy``); set by subclasses
    name: str = ""
    #: "ours", "theirs" or "base": take that side's chunk by digest; None: combine
    takes: str | None = None
    #: False for ``fail``: the conflict stays and is reported
    resolves: bool = True
    #: True if combine needs the base chunk (a parameter both sides added has none)
    needs_base: bool = False

    def check(self, dtype: str, numeric_kind: str) -> None:
        """Refuse a parameter this strategy cannot combine (``numeric_kind``: numpy's kind)."""
        if self.takes is None and self.resolves and numeric_kind not in "fc":
            raise StrategyError(
                f"strategy {self.name!r} needs floating-point parameters, not {dtype} "
                "(use ours, theirs or base for integer and bool tensors)")

    def combine(self, base: np.ndarray | None, ours: np.ndarray, theirs: np.ndarray,
                options: MergeOptions) -> np.ndarray:
        """The merged chunk, in the compute dtype of its inputs."""
        raise NotImplementedError(f"strategy {self.name!r} does not combine chunks")
