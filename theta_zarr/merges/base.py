"""The contract of a merge strategy.

A strategy sees only the chunks that more than one side changed, each in its own
way (a chunk changed on one side only is taken from that side before any strategy
runs).  It either *takes* one side's chunk by digest (no bytes read, any dtype) or
*merges* the chunks numerically.  Numbers arrive already widened to the strategy's
compute dtype and the result is cast back by the caller with round-to-nearest-even,
so every strategy is deterministic.

A strategy that needs statistics of the whole parameter (a magnitude threshold, a
norm, an angle) computes them in :meth:`Strategy.statistics` from
:meth:`TensorView.chunks`, which streams every chunk of the parameter, as many times
as the strategy asks, one chunk at a time: memory stays bounded by the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import by_name

Value = float | tuple[float, ...]  # one number, or one per model (ours first)


class StrategyError(ValueError):
    """A strategy that cannot apply (unknown name, integer dtype, missing base, bad value)."""


class MergeOptions:
    """The numeric parameters of a merge (mergekit's names: ``weight``, ``density``, ...).

    A value is a float, or a tuple with one float per model (``ours``, ``theirs`` in a
    three-way merge; the listed models in ``merge-models``).  A strategy reads them with
    ``Strategy.param``, which supplies its own defaults.
    """

    def __init__(self, values: Mapping[str, Value] | None = None, /,
                 **kw: Value | None) -> None:
        self.values: dict[str, Value] = dict(values or {})
        self.values.update({k: v for k, v in kw.items() if v is not None})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MergeOptions) and self.values == other.values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.values.items())))

    def __repr__(self) -> str:
        return f"MergeOptions({self.values!r})"

    def over(self, other: MergeOptions) -> MergeOptions:
        """These options with ``other``'s values on top."""
        return MergeOptions({**self.values, **other.values})

    def get(self, name: str, default: float, model: int | None = None) -> float:
        """The value of ``name``; for a per-model value, that of model number ``model``.

        Raises StrategyError if a per-model value is asked without a model number
        or the tuple has no entry for that model.
        """
        v = self.values.get(name, default)
        if isinstance(v, tuple):
            if model is None:
                raise StrategyError(f"{name!r} takes one value, not one per model")
            if model >= len(v):
                raise StrategyError(f"{name!r} has {len(v)} value(s), one per model is needed")
            return float(v[model])
        return float(v)


@dataclass(frozen=True)
class ChunkInput:
    """One chunk of a parameter, every side widened to the compute dtype.

    ``base`` is None when the strategy needs no base or the parameter has none;
    ``models`` are in merge order (ours, theirs; or the configured models);
    ``base_key`` and ``model_keys`` are the chunks' digests (or inline bytes), the
    seed of any randomness, so a merge gives the same bytes on every machine.
    """

    index: int
    base: np.ndarray | None
    models: list[np.ndarray]
    base_key: str | bytes | None
    model_keys: list[str | bytes]


class TensorView:
    """Every chunk of one parameter, streamed on demand (for whole-tensor statistics)."""

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], nchunks: int,
                 n_models: int, load: Callable[[Iterator[int]], Iterator[ChunkInput]]) -> None:
        self.name, self.dtype, self.shape, self.nchunks = name, dtype, shape, nchunks
        self.n_models = n_models
        self.numel = int(np.prod(shape, dtype=np.int64))
        self._load = load

    def chunks(self) -> Iterator[ChunkInput]:
        """All chunks in order, read ahead concurrently; call again for another pass."""
        return self._load(iter(range(self.nchunks)))


class Strategy:
    """Base class of merge strategies (subclass it and register an entry point)."""

    #: the name users type (``--strategy``); set by subclasses
    name: str = ""
    #: "ours", "theirs" or "base": take that side's chunk by digest; None: combine
    takes: str | None = None
    #: False for ``fail``: the conflict stays and is reported
    resolves: bool = True
    #: True if merging needs the base chunk (a parameter both sides added has none)
    needs_base: bool = False
    #: the parameters this strategy reads, with their defaults
    parameters: Mapping[str, float] = {}
    #: the parameters that may differ per model (a tuple value)
    per_model: frozenset[str] = frozenset()
    #: how many models it merges: (at least, at most or None)
    models: tuple[int, int | None] = (2, 2)

    def param(self, options: MergeOptions, name: str, model: int | None = None) -> float:
        """Parameter ``name`` (one of ``parameters``, whose value is its default), for
        model number ``model`` when it may differ per model."""
        return options.get(name, self.parameters[name], model)

    def flag(self, options: MergeOptions, name: str) -> bool:
        """A yes/no parameter (``normalize``, ``rescale``): any non-zero number is yes."""
        return self.param(options, name) != 0.0

    def check(self, dtype: str, numeric_kind: str) -> None:
        """Refuse a parameter this strategy cannot combine (``numeric_kind``: numpy's kind)."""
        if self.takes is None and self.resolves and numeric_kind not in "fc":
            raise StrategyError(
                f"strategy {self.name!r} needs floating-point parameters, not {dtype} "
                "(use ours, theirs or base for integer and bool tensors)")

    def validate(self, options: MergeOptions, n_models: int) -> None:
        """Refuse bad values or model counts (StrategyError, one line)."""
        lo, hi = self.models
        if n_models < lo or (hi is not None and n_models > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            raise StrategyError(f"strategy {self.name!r} merges {want} models, not {n_models}")
        for name, default in self.parameters.items():
            v = options.values.get(name, default)
            if isinstance(v, tuple):
                if name not in self.per_model:
                    raise StrategyError(f"{self.name}: {name!r} takes one value, "
                                        "not one per model")
                if len(v) != n_models:
                    raise StrategyError(f"{self.name}: {name!r} has {len(v)} values for "
                                        f"{n_models} models")
            for x in v if isinstance(v, tuple) else (v,):
                problem = value_problem(name, x)
                if problem is not None:
                    raise StrategyError(f"{self.name}: {name!r} {problem}, not {x:g}")

    def check_names(self, names: Iterable[str]) -> None:
        """Refuse parameters this strategy does not read (StrategyError, one line): given
        for it by name (``--set``, a ``merge-models`` config), they would be ignored."""
        unread = sorted(set(names) - set(self.parameters))
        if unread:
            reads = ", ".join(sorted(self.parameters)) or "none"
            raise StrategyError(f"strategy {self.name!r} does not read "
                                f"{', '.join(map(repr, unread))} (its parameters: {reads})")

    def compute_dtype(self, dtype: str) -> np.dtype:
        """float64 for 32/64-bit floats (complex128 for complex), float32 for narrower."""
        np_dtype = by_name(dtype).numpy
        if np_dtype.kind == "c":
            return np.dtype(np.complex128)
        if np_dtype.itemsize >= 4:
            return np.dtype(np.float64)
        return np.dtype(np.float32)

    def statistics(self, tensor: TensorView, options: MergeOptions) -> Any:
        """Whole-parameter statistics for :meth:`merge` (default: none, no chunk read)."""
        return None

    def merge(self, chunk: ChunkInput, options: MergeOptions, stats: Any) -> np.ndarray:
        """The merged chunk, in the compute dtype (default: :meth:`combine` of two models)."""
        ours, theirs = chunk.models
        return self.combine(chunk.base, ours, theirs, options)

    def combine(self, base: np.ndarray | None, ours: np.ndarray, theirs: np.ndarray,
                options: MergeOptions) -> np.ndarray:
        """The merged chunk of a three-way merge, in the compute dtype of its inputs."""
        raise NotImplementedError(f"strategy {self.name!r} does not combine chunks")


#: parameters that are fractions, in [0, 1], and what they say: the interpolation weights
#: (``average``'s ``alpha``, ``slerp``'s ``t``: values outside would extrapolate past a
#: side, as mergekit's and git-theta's interpolations never do) and shares of a task vector
UNIT_INTERVAL = {"alpha": "from ours (0) to theirs (1)",
                 "t": "from the first model (0) to the second (1)",
                 "density": "the share of each task vector kept",
                 "gamma": "the share of each task vector's largest magnitudes dropped"}


def value_problem(name: str, x: float) -> str | None:
    """What is wrong with ``x`` as the value of merge parameter ``name`` (``must be ...``),
    None if nothing: every value is a finite number (NaN or infinity would make every
    merged element NaN or infinite), and a fraction (``UNIT_INTERVAL``) lies in [0, 1]."""
    if not math.isfinite(x):
        return "must be a finite number"
    if name in UNIT_INTERVAL and not 0.0 <= x <= 1.0:
        return f"must be in [0, 1], {UNIT_INTERVAL[name]}"
    return None


def float32_compute(dtype: str) -> np.dtype:
    """float32, or float64 for float64 parameters (the model-merging methods' rule)."""
    return np.dtype(np.float64 if by_name(dtype).numpy.itemsize >= 8 else np.float32)
