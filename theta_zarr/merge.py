"""Merge of manifests (three-way, or N models and a base): by parameter, then by chunk,
then by strategy.

Digests decide almost everything without reading a byte: a parameter changed on
one side is taken from that side, the same change on several sides is taken once,
and where sides changed a parameter differently each chunk is merged on its own
(a chunk changed on one side only comes from that side, bit for bit).  Only the
chunks sides changed differently go to a strategy (theta_zarr.merges); a numeric
strategy reads those chunks, one at a time, widens them to its compute dtype,
combines them and casts back with round-to-nearest-even, so memory stays bounded
by the chunk size.  A strategy that needs whole-parameter statistics streams every
chunk of that one parameter first (:class:`theta_zarr.merges.TensorView`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import chunking
from .chunkreader import ordered_map
from .dtypes import by_name
from .manifest import Manifest, ManifestError, ParamEntry
from .mergeinfo import ABSENT, InfoConflict, merge_info, pick, set_at
from .merges import (
    ChunkInput,
    MergeOptions,
    Strategy,
    StrategyError,
    TensorView,
    get_strategy,
)
from .objects import ObjectError

Key = str | bytes  # a chunk's digest, or its inline bytes

log = logging.getLogger(__name__)


class MergeError(ValueError):
    """A merge that cannot be computed (a missing chunk, a strategy that cannot apply).

    ``side_resolves``: the strategy asked for refused the parameter (an integer counter,
    a shape change, no base to subtract), which taking a side (ours) would merge;
    callers that choose strategies themselves say how to pick a side.
    """

    def __init__(self, message: str, side_resolves: bool = False):
        super().__init__(message)
        self.side_resolves = side_resolves


def chunk_keys(entry: ParamEntry) -> tuple[Key, ...]:
    """What identifies each chunk: its digest, or its bytes when inline."""
    return entry.inline if entry.inline is not None else entry.chunks


def same_grid(a: ParamEntry | None, b: ParamEntry | None) -> bool:
    """Same shape, dtype, chunking and storage form: chunk i means the same elements."""
    return (a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype
            and a.chunk_shape == b.chunk_shape and a.is_inline == b.is_inline)


def numeric_kind(dtype: str) -> str:
    """numpy's kind letter, with ml_dtypes' bfloat16/float8 (kind 'V') counted as 'f';
    'V' (no arithmetic) for types whose NumPy form only carries bytes (float4 pairs)."""
    if not by_name(dtype).native:
        return "V"
    if dtype.startswith(("float", "bfloat")):
        return "f"
    return by_name(dtype).numpy.kind


@dataclass
class ParamConflict:
    """A parameter several sides changed in ways digests cannot reconcile.

    ``models`` are the sides in merge order (ours, theirs; or the models of
    ``merge-models``), named by ``labels``.
    """

    name: str
    kind: str  # "chunks" | "shape" | "delete-modify" | "add-add" | "opaque" | "info"
    base: ParamEntry | None
    models: list[ParamEntry | None]
    labels: list[str]
    chunks: list[int] = field(default_factory=list)  # chunks changed differently ("chunks")
    merged: list[Key] = field(default_factory=list)  # the chunk-level merge so far
    info: InfoConflict | None = None  # a non-tensor value ("info"): its values

    @property
    def ours(self) -> ParamEntry | None:
        return self.models[0]

    @property
    def theirs(self) -> ParamEntry | None:
        return self.models[-1]

    @property
    def whole(self) -> bool:
        """Only a whole side settles it: shape, dtype or presence differ, or an opaque file
        (values changed on a common grid can also be combined, chunk by chunk)."""
        return self.kind != "chunks" and not (self.kind == "add-add" and self.merged)

    def side(self, takes: str) -> ParamEntry | None:
        """The entry a ``takes`` strategy picks: ``"ours"``, ``"theirs"`` or ``"base"``."""
        return {"ours": self.ours, "theirs": self.theirs, "base": self.base}[takes]

    def describe(self) -> str:
        """One line: what the sides did to this parameter."""
        who = "both sides" if len(self.models) == 2 else f"{len(self.models)} models"
        if self.kind == "chunks":
            return f"{who} changed {len(self.chunks)} of {len(self.merged)} chunk(s)"
        if self.kind == "delete-modify":
            gone = [lb for lb, m in zip(self.labels, self.models, strict=True) if m is None]
            if len(self.models) == 2:
                return f"deleted on {gone[0]}, changed on the other side"
            return f"deleted in {', '.join(gone)}, changed in another model"
        if self.kind == "add-add":
            alike = all(same_grid(self.models[0], m) for m in self.models)
            return f"added on {who} with different " + (
                "values" if alike else "shapes or dtypes")
        if self.kind == "opaque":
            return f"an opaque file (bytes, not weights) changed on {who}"
        if self.info is not None:
            values = ", ".join(f"{lb} {_short(v)}" for lb, v in zip(self.labels, self.info.sides,
                                                                     strict=True))
            return f"a non-tensor value changed differently: {values}, base " \
                   f"{_short(self.info.base)}"
        geoms = ", ".join(f"{lb} {_geom(m)}" for lb, m in zip(self.labels, self.models,
                                                                 strict=True))
        return f"shape/dtype/chunking differ: {geoms}"


def _short(value: Any) -> str:
    text = "(absent)" if value is ABSENT else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _geom(e: ParamEntry | None) -> str:
    return "(absent)" if e is None else f"{e.dtype}{list(e.shape)} chunks {list(e.chunk_shape)}"


@dataclass
class MergePlan:
    """What digests alone decide: merged entries (None: removed) and the conflicts left."""

    base: Manifest
    models: list[Manifest]
    labels: list[str]
    params: dict[str, ParamEntry | None]
    conflicts: dict[str, ParamConflict]
    chunk_merged: list[str]  # parameters merged chunk by chunk without a conflict

    @property
    def ours(self) -> Manifest:
        return self.models[0]

    @property
    def theirs(self) -> Manifest:
        return self.models[-1]


def plan(base: Manifest | None, ours: Manifest, theirs: Manifest) -> MergePlan:
    """The three-way plan of a git merge: :func:`plan_models` of ours and theirs."""
    return plan_models(base, [ours, theirs], ["ours", "theirs"])


def plan_models(base: Manifest | None, models: Sequence[Manifest],
                labels: Sequence[str]) -> MergePlan:
    """Decide every parameter that digests can decide; collect the rest as conflicts.

    A parameter (then a chunk) changed by one model, or changed alike by several,
    takes that change; only chunks that models changed differently are left.
    """
    base = base or Manifest(dict(models[0].format), {})
    names = list(dict.fromkeys([n for m in models for n in m.params] + list(base.params)))
    params: dict[str, ParamEntry | None] = {}
    conflicts: dict[str, ParamConflict] = {}
    chunk_merged = []
    # bytes of a file no plug-in reads: mixing chunks would make a file no side wrote (a
    # broken pickle), so the whole file is one conflict
    opaque = any(m.format_name == "opaque" for m in models)
    for name in names:
        b = base.params.get(name)
        ms = [m.params.get(name) for m in models]
        ok, entry = pick(b, ms)
        if ok:
            params[name] = entry
            continue
        if any(m is None for m in ms):
            conflicts[name] = ParamConflict(name, "delete-modify", b, ms, list(labels))
            continue
        if opaque:
            conflicts[name] = ParamConflict(name, "opaque", b, ms, list(labels))
            continue
        first = ms[0]
        assert first is not None
        if not all(same_grid(first, m) for m in ms):
            kind = "add-add" if b is None else "shape"
            conflicts[name] = ParamConflict(name, kind, b, ms, list(labels))
            continue
        keys = [chunk_keys(m) for m in ms]  # type: ignore[arg-type]
        kb = chunk_keys(b) if same_grid(b, first) else (None,) * len(keys[0])  # type: ignore[arg-type]
        merged: list[Key] = []
        both = []
        for i, cb in enumerate(kb):
            ok, key = pick(cb, [k[i] for k in keys])
            if not ok:
                both.append(i)
                key = keys[0][i]
            merged.append(key)
        if both:
            kind = "chunks" if b is not None else "add-add"
            conflicts[name] = ParamConflict(name, kind, b, ms, list(labels), both, merged)
        else:
            params[name] = _with_keys(first, merged)
            chunk_merged.append(name)
    for info in _merge_info(base.format, [m.format for m in models])[1]:
        key = info.name if info.name not in conflicts else f"{info.name} (format info)"
        conflicts[key] = ParamConflict(key, "info", None, [None] * len(models), list(labels),
                                       info=info)
    return MergePlan(base, list(models), list(labels), params, conflicts, chunk_merged)


def _with_keys(like: ParamEntry, keys: Sequence[Key]) -> ParamEntry:
    if like.is_inline:
        return ParamEntry(like.shape, like.dtype, like.chunk_shape, (), tuple(keys))  # type: ignore[arg-type]
    return ParamEntry(like.shape, like.dtype, like.chunk_shape, tuple(keys), None)  # type: ignore[arg-type]


# -- strategies per parameter --------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A glob's settings: its strategy (None: only parameters) and parameter values."""

    glob: str
    strategy: str | None
    options: MergeOptions = field(default_factory=MergeOptions)


class StrategyTable:
    """Which strategy and parameters each tensor gets, setting by setting: the strategy
    of the last rule that names one and whose glob matches (else ``fail``), and each
    parameter from the last matching rule that sets it."""

    def __init__(self, rules: Sequence[Rule] = (), default: Rule | None = None):
        self.rules = list(rules)
        self.default = default or Rule("*", "fail")

    def lookup(self, name: str) -> tuple[Strategy, MergeOptions]:
        strategy = self.default.strategy
        options = self.default.options
        for r in self.rules:
            if fnmatch.fnmatchcase(name, r.glob):
                strategy = r.strategy or strategy
                options = options.over(r.options)
        assert strategy is not None
        return get_strategy(strategy), options


def unresolved(p: MergePlan, table: StrategyTable) -> list[ParamConflict]:
    """The conflicts whose strategy is ``fail``: the merge must stop on these."""
    return [c for n, c in p.conflicts.items() if not table.lookup(n)[0].resolves]


def execute(p: MergePlan, table: StrategyTable, objects: Any, workers: int = 4,
            source: str = "merge") -> Manifest:
    """Resolve every conflict by its strategy; the merged manifest (chunks in the cache).

    ``objects`` reads chunks (``.get``) and holds new ones (``.cache.ensure``): the
    repository's ReadThrough, which fetches what the cache lacks from the remote.
    Raises MergeError (one line naming the parameter) when a strategy cannot apply
    or a chunk cannot be read.
    """
    left = unresolved(p, table)
    if left:
        raise MergeError(f"{source}: {len(left)} conflicting parameter(s) have strategy 'fail' "
                         f"(first: {left[0].name})")
    params = dict(p.params)
    resolved: dict[tuple, Any] = {}
    for name, c in p.conflicts.items():
        strategy, options = table.lookup(name)
        if c.info is None:
            params[name] = _resolve(c, strategy, options, objects, workers, source)
        elif strategy.takes is not None:
            resolved[c.info.path] = c.info.base if strategy.takes == "base" else \
                c.info.sides[0 if strategy.takes == "ours" else -1]
        else:  # a value strategy for the tensors (merge-models, a '*' rule): ours, said so
            log.warning("%s: %s: %s; kept %s's (strategy %r combines tensors only)", source,
                        name, c.describe(), c.labels[0], strategy.name)
    merged = {n: e for n, e in params.items() if e is not None}
    fmt = merge_formats(p.base.format, [m.format for m in p.models], merged, resolved)
    return Manifest(fmt, merged)


def refusal(c: ParamConflict, strategy: Strategy) -> str | None:
    """Why ``strategy`` cannot resolve the conflict ``c`` (None: it can, given valid options).

    A conflict over shape, dtype or presence (or an opaque file) takes one side; a value
    strategy needs a dtype it computes in, and the base when it uses one.  The merge and
    the conflict report's suggestions both ask this.
    """
    if c.whole:
        if strategy.takes is None:
            return f"{c.describe()}; only ours, theirs or base can resolve it, not " \
                   f"{strategy.name!r}"
        return None
    first = c.models[0]
    assert first is not None
    has_base = same_grid(c.base, first)
    if strategy.takes == "base" and not has_base:
        return "has no base of the same shape to take chunks from"
    if strategy.takes is not None:
        return None
    if strategy.needs_base and not has_base:
        return f"strategy {strategy.name!r} needs the base version, and the base has no " \
               "parameter of this shape"
    try:
        strategy.check(first.dtype, numeric_kind(first.dtype))
    except StrategyError as e:
        return str(e)
    return None


def _resolve(c: ParamConflict, strategy: Strategy, options: MergeOptions, objects: Any,
             workers: int, source: str) -> ParamEntry | None:
    where = f"{source}: parameter {c.name!r}"
    why = refusal(c, strategy)
    if why is not None:
        raise MergeError(f"{where}: {why}", side_resolves=True)  # ours takes any parameter
    if c.whole:
        return c.side(strategy.takes)  # type: ignore[arg-type]
    first = c.models[0]
    assert first is not None
    keys = list(c.merged)
    if strategy.takes is not None:
        chosen = chunk_keys(c.side(strategy.takes))  # type: ignore[arg-type]
        for i in c.chunks:
            keys[i] = chosen[i]
        return _with_keys(first, keys)
    try:
        strategy.validate(options, len(c.models))
    except StrategyError as e:
        raise MergeError(f"{where}: {e}") from None
    sides = [chunk_keys(m) for m in c.models]  # type: ignore[arg-type]
    base_keys = chunk_keys(c.base) if strategy.needs_base and c.base is not None else None
    dtype = by_name(first.dtype).numpy
    wide = strategy.compute_dtype(first.dtype)

    def read(key: Key, i: int, label: str) -> np.ndarray:
        if isinstance(key, bytes):
            raw = key
        else:
            try:
                raw = objects.get(key, size=first.chunk_nbytes(i))
            except ObjectError as e:
                raise MergeError(f"{where}: chunk {i} of {label} ({key}) cannot be read: "
                                 f"{e}") from None
        try:
            first.check_chunk(i, raw, f"{where}: {label}")
        except ManifestError as e:
            raise MergeError(str(e)) from None
        return np.frombuffer(raw, dtype=dtype).astype(wide)

    def load(i: int) -> ChunkInput:
        base = read(base_keys[i], i, "base") if base_keys is not None else None
        models = [read(k[i], i, lb) for k, lb in zip(sides, c.labels, strict=True)]
        return ChunkInput(i, base, models, base_keys[i] if base_keys is not None else None,
                          [k[i] for k in sides])

    tensor = TensorView(c.name, first.dtype, first.shape, len(keys), len(c.models),
                        lambda items: ordered_map(load, items, workers))
    try:
        stats = strategy.statistics(tensor, options)
    except StrategyError as e:
        raise MergeError(f"{where}: {e}") from None

    def merge_chunk(i: int) -> Key:
        try:
            out = strategy.merge(load(i), options, stats)
        except StrategyError as e:
            raise MergeError(f"{where}: {e}") from None
        raw = np.ascontiguousarray(out.astype(wide).astype(dtype)).tobytes()
        if first.is_inline:
            return raw
        d = chunking.digest(raw)
        objects.cache.ensure(d, raw)
        return d

    for i, key in zip(c.chunks, ordered_map(merge_chunk, c.chunks, workers), strict=True):
        keys[i] = key
    return _with_keys(first, keys)


#: format keys that follow the tensors (safetensors' order and kept header text): merged
#: apart, never a conflict of their own
DERIVED = ("order", "header_text")


def _merge_info(b: dict, sides: Sequence[dict]) -> tuple[dict, list[InfoConflict]]:
    """The format info without its DERIVED keys, merged (mergeinfo.merge_info)."""
    def strip(fmt: dict) -> dict:
        return {k: v for k, v in fmt.items() if k not in DERIVED}

    return merge_info(strip(b), [strip(s) for s in sides])


def merge_formats(b: dict, sides: Sequence[dict], params: dict[str, Any],
                  resolved: dict[tuple, Any] | None = None) -> dict[str, Any]:
    """The format info of the merge: key by key down to the leaves (mergeinfo), with
    ``resolved`` values (by key path) where sides changed a leaf differently, else the
    first side's.

    A list ``order`` (tensor order, as safetensors keeps it) is then made to name
    exactly the merged parameters: the first side's order, then the others' additions;
    a kept ``header_text`` stays only if the sides agree on it and the order holds.
    """
    fmt = _merge_info(b, sides)[0]
    for path, value in (resolved or {}).items():
        fmt = set_at(fmt, path, value)
    fmt = dict(fmt)
    ok, text = pick(b.get("header_text", ABSENT), [s.get("header_text", ABSENT) for s in sides])
    if ok and text is not ABSENT:
        fmt["header_text"] = text
    ok, order = pick(b.get("order", ABSENT), [s.get("order", ABSENT) for s in sides])
    order = order if ok else sides[0].get("order", ABSENT)
    if isinstance(order, list):
        named = [*order, *(n for side in sides for n in side.get("order", [])), *sorted(params)]
        fmt["order"] = list(dict.fromkeys(n for n in named if n in params))
        if fmt["order"] != order:
            fmt.pop("header_text", None)
    return fmt


def merge_manifests(base: Manifest | None, ours: Manifest, theirs: Manifest,
                    table: StrategyTable, objects: Any, workers: int = 4,
                    source: str = "merge") -> tuple[Manifest | None, MergePlan]:
    """Plan and, unless a ``fail`` conflict remains, execute; (None, plan) when it stops."""
    return merge_models(base, [ours, theirs], ["ours", "theirs"], table, objects, workers,
                        source)


def merge_models(base: Manifest | None, models: Sequence[Manifest], labels: Sequence[str],
                 table: StrategyTable, objects: Any, workers: int = 4,
                 source: str = "merge") -> tuple[Manifest | None, MergePlan]:
    """N-way: plan and, unless a ``fail`` conflict remains, execute; (None, plan) if not."""
    p = plan_models(base, models, labels)
    if unresolved(p, table):
        return None, p
    return execute(p, table, objects, workers, source), p
