"""The built-in strategies: fail, ours, theirs, base, average, task-arithmetic."""

from __future__ import annotations

import numpy as np

from .base import MergeOptions, Strategy


class Fail(Strategy):
    """Leave the conflict for a person (the default): the merge reports and exits non-zero."""

    name = "fail"
    resolves = False


class Ours(Strategy):
    name = "ours"
    takes = "ours"


class Theirs(Strategy):
    name = "theirs"
    takes = "theirs"


class Base(Strategy):
    """Undo both sides' edits of the chunks they both changed."""

    name = "base"
    takes = "base"


class Average(Strategy):
    """(1 - alpha) * ours + alpha * theirs (alpha 0.5: the plain mean)."""

    name = "average"

    def combine(self, base: np.ndarray | None, ours: np.ndarray, theirs: np.ndarray,
                options: MergeOptions) -> np.ndarray:
        a = ours.dtype.type(options.alpha)
        return (ours.dtype.type(1) - a) * ours + a * theirs


class TaskArithmetic(Strategy):
    """base + scale * ((ours - base) + (theirs - base)): add both sides' task vectors."""

    name = "task-arithmetic"
    needs_base = True

    def combine(self, base: np.ndarray | None, ours: np.ndarray, theirs: np.ndarray,
                options: MergeOptions) -> np.ndarray:
        assert base is not None
        s = ours.dtype.type(options.scale)
        return base + s * ((ours - base) + (theirs - base))


BUILTINS: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Fail, Ours, Theirs, Base, Average, TaskArithmetic)}
