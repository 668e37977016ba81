"""The built-in strategies: fail, ours, theirs, base, average, task-arithmetic."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import ChunkInput, MergeOptions, Strategy


class Fail(Strategy):
    """Leave the conflict for a person (the default): the merge reports and exits non-zero."""

    name = "fail"
    resolves = False


class Ours(Strategy):
    """Take our side's chunk, by digest, wherever both sides changed it differently (no
    bytes read, any dtype), as ``git merge -X ours`` takes our hunk; for a parameter whose
    shape, dtype or presence differ, our whole parameter."""

    name = "ours"
    takes = "ours"


class Theirs(Strategy):
    """Take their side's chunk, by digest, wherever both sides changed it differently (no
    bytes read, any dtype), as ``git merge -X theirs`` takes their hunk; for a parameter
    whose shape, dtype or presence differ, their whole parameter.  In ``merge-models``,
    the last model listed."""

    name = "theirs"
    takes = "theirs"


class Base(Strategy):
    """Undo both sides' edits of the chunks they both changed."""

    name = "base"
    takes = "base"


class Average(Strategy):
    """(1 - alpha) * ours + alpha * theirs, alpha in [0, 1] (0.5: the plain mean)."""

    name = "average"
    parameters = {"alpha": 0.5}

    def combine(self, base: np.ndarray | None, ours: np.ndarray, theirs: np.ndarray,
                options: MergeOptions) -> np.ndarray:
        a = ours.dtype.type(self.param(options, "alpha"))
        return (ours.dtype.type(1) - a) * ours + a * theirs


class TaskArithmetic(Strategy):
    """base + scale * ((M_1 - base) + (M_2 - base) + ...): add every side's task vector
    (scale any finite number: a negative one subtracts them)."""

    name = "task-arithmetic"
    needs_base = True
    parameters = {"scale": 1.0}
    models = (2, None)

    def merge(self, chunk: ChunkInput, options: MergeOptions, stats: Any) -> np.ndarray:
        base = chunk.base
        assert base is not None
        taus = [m - base for m in chunk.models]
        total = taus[0]
        for tau in taus[1:]:
            total = total + tau
        return base + base.dtype.type(self.param(options, "scale")) * total


BUILTINS: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Fail, Ours, Theirs, Base, Average, TaskArithmetic)}
