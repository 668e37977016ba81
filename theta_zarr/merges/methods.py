"""Model-merging methods as merge strategies: linear, TIES, DARE, breadcrumbs, SLERP,
model stock.

Parameters carry mergekit's names and defaults (``weight``, ``density``, ``lambda``,
``normalize``, ``rescale``, ``gamma``, ``t``).  Numbers are computed in float32
(float64 for float64 parameters); the caller casts the result back to the
parameter's dtype.  The exact formulas, and the papers they come from, are in
docs/diff-merge.md ("Model-merging methods").  Chunk by chunk: a method sees only
the chunks that several models changed differently; statistics over the whole
parameter (magnitude ranks, norms, angles) are streamed from every chunk of it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import blake3
import numpy as np

from ..chunking import digest
from .base import ChunkInput, MergeOptions, Strategy, StrategyError, TensorView, float32_compute
from .stats import BlockSum, magnitude_bits, products, select_ranks

DARE_SEED = b"theta-zarr dare 1\0"
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's: nearly parallel vectors fall back to linear
NORM_EPS = 1e-8  # slerp: a vector with a smaller norm is not normalised
COS_EPS = 1e-6  # model_stock: the smallest norm product divided by


class FloatMethod(Strategy):
    """Shared by the model-merging methods: float32 compute, floating parameters only."""

    models = (2, None)

    def check(self, dtype: str, numeric_kind: str) -> None:
        if numeric_kind != "f":
            raise StrategyError(f"strategy {self.name!r} needs real floating-point "
                                f"parameters, not {dtype} (use ours, theirs or base)")

    def compute_dtype(self, dtype: str) -> np.dtype:
        return float32_compute(dtype)


def _f(x: float, like: np.ndarray) -> np.generic:
    return like.dtype.type(x)


class Linear(FloatMethod):
    """sum_i w_i * M_i, divided by sum_i w_i when ``normalize`` (model soups)."""

    name = "linear"
    parameters = {"weight": 1.0, "normalize": 1.0}
    per_model = frozenset({"weight"})

    def merge(self, chunk: ChunkInput, options: MergeOptions, stats: Any) -> np.ndarray:
        ms = chunk.models
        ws = [_f(self.param(options, "weight", i), ms[0]) for i in range(len(ms))]
        out = ws[0] * ms[0]
        total = ws[0]
        for w, m in zip(ws[1:], ms[1:], strict=True):
            out = out + w * m
            total = total + w
        if self.flag(options, "normalize"):
            if total == 0:
                raise StrategyError("linear: the weights sum to 0; set normalize to false")
            out = out / total
        return out


def _dare_keep(chunk: ChunkInput, i: int, density: float) -> np.ndarray:
    """DARE's Bernoulli(density) keep-mask of model ``i``'s chunk, from blake3 of digests."""
    def name(key: str | bytes | None) -> bytes:
        if key is None:
            return b""
        return (digest(key) if isinstance(key, bytes) else key).encode()

    n = chunk.models[i].size
    seed = DARE_SEED + name(chunk.base_key) + b"\0" + name(chunk.model_keys[i])
    u = np.frombuffer(blake3.blake3(seed).digest(length=4 * n), dtype="<u4")
    return (u < np.uint32(int(density * 2**32))).reshape(chunk.models[i].shape)


class TaskVectors(FloatMethod):
    """mergekit's generalised task arithmetic: sparsify each task vector, weigh, elect signs,
    add to the base.  Subclasses pick the sparsification and the sign consensus."""

    needs_base = True
    sparsify: str | None = None  # None | "magnitude" | "random" | "outliers"
    consensus = False
    default_normalize = False
    default_rescale = False

    @functools.cached_property
    def parameters(self) -> dict[str, float]:  # type: ignore[override]
        """Built once per strategy object from its sparsification (read per chunk)."""
        p = {"weight": 1.0, "lambda": 1.0, "normalize": float(self.default_normalize)}
        if self.sparsify:
            p["density"] = 1.0
        if self.sparsify == "random":
            p["rescale"] = float(self.default_rescale)
        if self.sparsify == "outliers":
            p["gamma"] = 0.01
        return p

    per_model = frozenset({"weight", "density", "gamma"})

    def _ranks(self, n: int, options: MergeOptions, i: int) -> list[int]:
        """The magnitude ranks (1 = largest) that bound what model ``i`` keeps."""
        density = self.param(options, "density", i)
        if density >= 1.0:
            return []
        keep = int(density * n)
        if self.sparsify == "magnitude":
            return [keep]
        top = int(self.param(options, "gamma", i) * n)
        if keep + top > n:
            top = n - keep
        return [top, top + keep]

    def statistics(self, tensor: TensorView, options: MergeOptions) -> Any:
        if self.sparsify not in ("magnitude", "outliers"):
            return None
        n_models = tensor.n_models
        ranks = [self._ranks(tensor.numel, options, i) for i in range(n_models)]
        if not any(ranks):
            return [None] * n_models

        def passes():
            for c in tensor.chunks():
                assert c.base is not None
                yield [magnitude_bits(m - c.base) for m in c.models]

        found = select_ranks(passes, ranks)
        return [None if not r else (r, f) for r, f in zip(ranks, found, strict=True)]

    def _sparse(self, chunk: ChunkInput, i: int, tau: np.ndarray, options: MergeOptions,
                stats: Any) -> np.ndarray:
        """Model ``i``'s task vector with the dropped elements zeroed (in place)."""
        if self.sparsify == "random":
            density = self.param(options, "density", i)
            if density >= 1.0:
                return tau
            if density <= 0.0:
                tau[...] = 0
                return tau
            tau *= _dare_keep(chunk, i, density).astype(tau.dtype)
            if self.flag(options, "rescale"):
                tau /= _f(density, tau)
            return tau
        if self.sparsify is None or stats is None or stats[i] is None:
            return tau
        ranks, found = stats[i]
        if self.sparsify == "magnitude":
            lo, hi = found[0], None
        else:
            hi = found[0] if ranks[0] > 0 else None
            lo = found[1]
        if lo is None:  # keeps no element
            tau *= _f(0.0, tau)
            return tau
        bits = magnitude_bits(tau)
        keep = bits >= np.uint32(lo)
        if hi is not None:
            keep &= bits < np.uint32(hi)
        tau *= keep.astype(tau.dtype)
        return tau

    def merge(self, chunk: ChunkInput, options: MergeOptions, stats: Any) -> np.ndarray:
        base = chunk.base
        assert base is not None
        ws = [_f(self.param(options, "weight", i), base) for i in range(len(chunk.models))]
        tvs = []
        for i, (w, m) in enumerate(zip(ws, chunk.models, strict=True)):
            tv = self._sparse(chunk, i, m - base, options, stats)
            tv *= w
            tvs.append(tv)
        if self.consensus:
            total = tvs[0].copy()
            for tv in tvs[1:]:
                total += tv
            sign = np.where(total >= 0, _f(1.0, base), _f(-1.0, base))
            del total
            mixed = divisor = None
            for w, tv in zip(ws, tvs, strict=True):
                agree = (np.sign(tv) == sign).astype(base.dtype)
                tv *= agree
                agree *= w
                mixed = tv if mixed is None else _add(mixed, tv)
                divisor = agree if divisor is None else _add(divisor, agree)
            assert mixed is not None and divisor is not None
            divisor[divisor == 0] = 1
        else:
            mixed = tvs[0]
            for tv in tvs[1:]:
                mixed += tv
            divisor = _fold(ws)
            if abs(divisor) < 1e-8:
                divisor = _f(1.0, base)
        if self.flag(options, "normalize"):
            mixed /= divisor
        mixed *= _f(self.param(options, "lambda"), base)
        mixed += base
        return mixed


def _add(acc: np.ndarray, x: np.ndarray) -> np.ndarray:
    acc += x
    return acc


def _fold(xs: list[Any]) -> Any:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


class WeightedTaskArithmetic(TaskVectors):
    """mergekit's ``task_arithmetic``: base + lambda * sum(w_i * (M_i - base)), every
    element of every task vector kept (Ilharco et al., "Editing models with task
    arithmetic", ICLR 2023); ``task-arithmetic`` is the same with all weights 1."""

    name = "task_arithmetic"


class Ties(TaskVectors):
    """TIES: keep each task vector's top-``density`` magnitudes, elect signs, disjoint mean."""

    name = "ties"
    sparsify = "magnitude"
    consensus = True
    default_normalize = True


class DareLinear(TaskVectors):
    """DARE: drop each task-vector element with probability 1 - density, rescale, add."""

    name = "dare_linear"
    sparsify = "random"
    default_rescale = True


class Dare(DareLinear):
    """``dare``: another name for ``dare_linear`` (DARE: Yu et al., "Language Models are
    Super Mario", ICML 2024), same parameters and defaults (``rescale`` on)."""

    name = "dare"


class DareTies(TaskVectors):
    """DARE's random drop, then TIES's sign election."""

    name = "dare_ties"
    sparsify = "random"
    consensus = True
    default_rescale = True


class Breadcrumbs(TaskVectors):
    """Model breadcrumbs: drop each task vector's top ``gamma`` and keep the next ``density``."""

    name = "breadcrumbs"
    sparsify = "outliers"


class BreadcrumbsTies(Breadcrumbs):
    """Model breadcrumbs' sparsification (Davari & Belilovsky, ECCV 2024), then TIES's
    sign election and disjoint mean (Yadav et al., NeurIPS 2023): mergekit's
    ``breadcrumbs_ties``, with its defaults (``normalize`` off)."""

    name = "breadcrumbs_ties"
    consensus = True


class Slerp(FloatMethod):
    """Spherical interpolation from the first model (t=0) to the second (t=1), per tensor."""

    name = "slerp"
    parameters = {"t": 0.5}
    models = (2, 2)

    def statistics(self, tensor: TensorView, options: MergeOptions) -> Any:
        d, n0, n1 = BlockSum(), BlockSum(), BlockSum()
        for c in tensor.chunks():
            v0, v1 = c.models
            d.add(products(v0, v1))
            n0.add(products(v0, v0))
            n1.add(products(v1, v1))
        t = self.param(options, "t")
        norm0, norm1 = math.sqrt(n0.value), math.sqrt(n1.value)
        cos = d.value / ((norm0 if norm0 > NORM_EPS else 1.0)
                         * (norm1 if norm1 > NORM_EPS else 1.0))
        if abs(cos) > SLERP_DOT_THRESHOLD:
            return 1.0 - t, t
        theta = math.acos(max(-1.0, min(1.0, cos)))
        s = math.sin(theta)
        return math.sin(theta - theta * t) / s, math.sin(theta * t) / s

    def merge(self, chunk: ChunkInput, options: MergeOptions, stats: Any) -> np.ndarray:
        v0, v1 = chunk.models
        return _f(stats[0], v0) * v0 + _f(stats[1], v0) * v1


class ModelStock(FloatMethod):
    """Model stock: the average of the models pulled towards the base by their angle."""

    name = "model_stock"
    needs_base = True

    def statistics(self, tensor: TensorView, options: MergeOptions) -> Any:
        n = tensor.n_models
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        dots = {p: BlockSum() for p in pairs}
        norms = [BlockSum() for _ in range(n)]
        for c in tensor.chunks():
            assert c.base is not None
            taus = [m - c.base for m in c.models]
            for i, tau in enumerate(taus):
                norms[i].add(products(tau, tau))
            for i, j in pairs:
                dots[i, j].add(products(taus[i], taus[j]))
        lengths = [math.sqrt(s.value) for s in norms]
        coss = [max(-1.0, min(1.0, dots[i, j].value / max(lengths[i] * lengths[j], COS_EPS)))
                for i, j in pairs]
        cos = math.fsum(coss) / len(coss)
        denominator = 1 + (n - 1) * cos
        return n * cos / denominator if denominator != 0 else 0.0

    def merge(self, chunk: ChunkInput, options: MergeOptions, stats: Any) -> np.ndarray:
        base = chunk.base
        assert base is not None
        avg = _fold(chunk.models) / _f(len(chunk.models), base)
        t = _f(stats, base)
        return t * avg + (_f(1.0, base) - t) * base


METHODS: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    Linear, WeightedTaskArithmetic, Ties, Dare, DareLinear, DareTies, Breadcrumbs,
    BreadcrumbsTies, Slerp, ModelStock)}
