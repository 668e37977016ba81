"""Three-way merge of manifests: by parameter, then by chunk, then by strategy.

Digests decide almost everything without reading a byte: a parameter changed on
one side is taken from that side, the same change on both sides is taken once,
and where both sides changed a parameter differently each chunk is merged on its
own (a chunk changed on one side only comes from that side).  Only the chunks
both sides changed go to a strategy (theta_zarr.merges); a numeric strategy
reads those chunks, one at a time, widens them to the compute dtype, combines
them and casts back with round-to-nearest-even, so the result is the same as
numpy's on the whole tensors and memory stays bounded by the chunk size.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import chunking
from .chunkreader import ordered_map
from .dtypes import by_name
from .manifest import Manifest, ParamEntry
from .merges import MergeOptions, Strategy, StrategyError, get_strategy
from .objects import ObjectError

Key = str | bytes  # a chunk's digest, or its inline bytes


class MergeError(ValueError):
    """A merge that cannot be computed (a missing chunk, a strategy that cannot apply)."""


def chunk_keys(entry: ParamEntry) -> tuple[Key, ...]:
    """What identifies each chunk: its digest, or its bytes when inline."""
    return entry.inline if entry.inline is not None else entry.chunks


def same_grid(a: ParamEntry | None, b: ParamEntry | None) -> bool:
    """Same shape, dtype, chunking and storage form: chunk i means the same elements."""
    return (a is not None and b is not None and a.shape == b.shape and a.dtype == b.dtype
            and a.chunk_shape == b.chunk_shape and a.is_inline == b.is_inline)


def numeric_kind(dtype: str) -> str:
    """numpy's kind letter, with ml_dtypes' bfloat16/float8 (kind 'V') counted as 'f'."""
    if dtype.startswith(("float", "bfloat")):
        return "f"
    return by_name(dtype).numpy.kind


def compute_dtype(dtype: str) -> np.dtype:
    """float64 for 32/64-bit floats (complex128 for complex), float32 for narrower floats."""
    np_dtype = by_name(dtype).numpy
    if np_dtype.kind == "c":
        return np.dtype(np.complex128)
    if numeric_kind(dtype) == "f" and np_dtype.itemsize >= 4:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


@dataclass
class ParamConflict:
    """A parameter both sides changed in ways digests cannot reconcile."""

    name: str
    kind: str  # "chunks" | "shape" | "delete-modify" | "add-add"
    base: ParamEntry | None
    ours: ParamEntry | None
    theirs: ParamEntry | None
    chunks: list[int] = field(default_factory=list)  # both-changed chunks (kind "chunks")
    merged: list[Key] = field(default_factory=list)  # the chunk-level merge so far

    def describe(self) -> str:
        if self.kind == "chunks":
            n = len(self.merged)
            return f"both sides changed {len(self.chunks)} of {n} chunk(s)"
        if self.kind == "delete-modify":
            gone = "ours" if self.ours is None else "theirs"
            return f"deleted on {gone}, changed on the other side"
        if self.kind == "add-add":
            return "added on both sides with different " + (
                "values" if same_grid(self.ours, self.theirs) else "shapes or dtypes")
        return f"shape/dtype/chunking differ: ours {_geom(self.ours)}, theirs {_geom(self.theirs)}"


def _geom(e: ParamEntry | None) -> str:
    return "(absent)" if e is None else f"{e.dtype}{list(e.shape)} chunks {list(e.chunk_shape)}"


@dataclass
class MergePlan:
    """What digests alone decide: merged entries (None: removed) and the conflicts left."""

    base: Manifest
    ours: Manifest
    theirs: Manifest
    params: dict[str, ParamEntry | None]
    conflicts: dict[str, ParamConflict]
    chunk_merged: list[str]  # parameters merged chunk by chunk without a conflict


def _pick3(b: Any, o: Any, t: Any) -> tuple[bool, Any]:
    """The classic three-way rule; (False, None) when both sides changed differently."""
    if o == t:
        return True, o
    if o == b:
        return True, t
    if t == b:
        return True, o
    return False, None


def plan(base: Manifest | None, ours: Manifest, theirs: Manifest) -> MergePlan:
    """Decide every parameter that digests can decide; collect the rest as conflicts."""
    base = base or Manifest(dict(ours.format), {})
    names = list(dict.fromkeys([*ours.params, *theirs.params, *base.params]))
    params: dict[str, ParamEntry | None] = {}
    conflicts: dict[str, ParamConflict] = {}
    chunk_merged = []
    for name in names:
        b, o, t = base.params.get(name), ours.params.get(name), theirs.params.get(name)
        ok, entry = _pick3(b, o, t)
        if ok:
            params[name] = entry
            continue
        if o is None or t is None:
            conflicts[name] = ParamConflict(name, "delete-modify", b, o, t)
            continue
        if not same_grid(o, t):
            kind = "add-add" if b is None else "shape"
            conflicts[name] = ParamConflict(name, kind, b, o, t)
            continue
        ko, kt = chunk_keys(o), chunk_keys(t)
        kb = chunk_keys(b) if same_grid(b, o) else (None,) * len(ko)
        merged: list[Key] = []
        both = []
        for i, (cb, co, ct) in enumerate(zip(kb, ko, kt, strict=True)):
            ok, key = _pick3(cb, co, ct)
            if not ok:
                both.append(i)
                key = co
            merged.append(key)
        if both:
            kind = "chunks" if b is not None else "add-add"
            conflicts[name] = ParamConflict(name, kind, b, o, t, both, merged)
        else:
            params[name] = _with_keys(o, merged)
            chunk_merged.append(name)
    return MergePlan(base, ours, theirs, params, conflicts, chunk_merged)


def _with_keys(like: ParamEntry, keys: Sequence[Key]) -> ParamEntry:
    if like.is_inline:
        return ParamEntry(like.shape, like.dtype, like.chunk_shape, (), tuple(keys))  # type: ignore[arg-type]
    return ParamEntry(like.shape, like.dtype, like.chunk_shape, tuple(keys), None)  # type: ignore[arg-type]


# -- strategies per parameter --------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    glob: str
    strategy: str
    options: MergeOptions = MergeOptions()


class StrategyTable:
    """Which strategy each parameter gets: the last rule whose glob matches; else ``fail``."""

    def __init__(self, rules: Sequence[Rule] = (), default: Rule | None = None):
        self.rules = list(rules)
        self.default = default or Rule("*", "fail")

    def lookup(self, name: str) -> tuple[Strategy, MergeOptions]:
        rule = self.default
        for r in self.rules:
            if fnmatch.fnmatchcase(name, r.glob):
                rule = r
        return get_strategy(rule.strategy), rule.options


def unresolved(p: MergePlan, table: StrategyTable) -> list[ParamConflict]:
    """The conflicts whose strategy is ``fail``: the merge must stop on these."""
    return [c for n, c in p.conflicts.items() if not table.lookup(n)[0].resolves]


def execute(p: MergePlan, table: StrategyTable, objects: Any, workers: int = 4,
            source: str = "merge") -> Manifest:
    """Resolve every conflict by its strategy; the merged manifest (chunks in the cache).

    ``objects`` reads chunks (``.get``) and holds new ones (``.cache.ensure``): the
    repository's ReadThrough, which fetches what the cache lacks from the remote.
    """
    left = unresolved(p, table)
    if left:
        raise MergeError(f"{source}: {len(left)} conflicting parameter(s) have strategy 'fail' "
                         f"(first: {left[0].name})")
    params = dict(p.params)
    for name, c in p.conflicts.items():
        strategy, options = table.lookup(name)
        params[name] = _resolve(c, strategy, options, objects, workers, source)
    merged = {n: e for n, e in params.items() if e is not None}
    fmt = merge_format(p.base.format, p.ours.format, p.theirs.format, p.ours, p.theirs, merged)
    return Manifest(fmt, merged)


def _resolve(c: ParamConflict, strategy: Strategy, options: MergeOptions, objects: Any,
             workers: int, source: str) -> ParamEntry | None:
    where = f"{source}: parameter {c.name!r}"
    if c.kind != "chunks" and not (c.kind == "add-add" and c.merged):
        if strategy.takes is None:
            raise MergeError(f"{where}: {c.describe()}; only ours, theirs or base can resolve "
                             f"it, not {strategy.name!r}")
        return {"ours": c.ours, "theirs": c.theirs, "base": c.base}[strategy.takes]
    assert c.ours is not None and c.theirs is not None
    has_base = same_grid(c.base, c.ours)
    if strategy.takes == "base" and not has_base:
        raise MergeError(f"{where}: has no base of the same shape to take chunks from")
    if strategy.takes is None:
        if strategy.needs_base and not has_base:
            raise MergeError(f"{where}: strategy {strategy.name!r} needs the base version, "
                             "and the base has no parameter of this shape")
        try:
            strategy.check(c.ours.dtype, numeric_kind(c.ours.dtype))
        except StrategyError as e:
            raise MergeError(f"{where}: {e}") from None
    keys = list(c.merged)
    sides = {"ours": chunk_keys(c.ours), "theirs": chunk_keys(c.theirs),
             "base": chunk_keys(c.base) if has_base and c.base is not None else None}
    if strategy.takes is not None:
        chosen = sides[strategy.takes]
        assert chosen is not None
        for i in c.chunks:
            keys[i] = chosen[i]
        return _with_keys(c.ours, keys)
    dtype = by_name(c.ours.dtype).numpy
    wide = compute_dtype(c.ours.dtype)
    need_base = strategy.needs_base and sides["base"] is not None

    def read(side: str, i: int) -> np.ndarray:
        key = sides[side][i]  # type: ignore[index]
        if isinstance(key, bytes):
            raw = key
        else:
            try:
                raw = objects.get(key)
            except ObjectError as e:
                raise MergeError(f"{where}: chunk {i} of {side} ({key}) cannot be read: "
                                 f"{e}") from None
        return np.frombuffer(raw, dtype=dtype).astype(wide)

    def merge_chunk(i: int) -> Key:
        b = read("base", i) if need_base else None
        out = strategy.combine(b, read("ours", i), read("theirs", i), options)
        raw = np.ascontiguousarray(out.astype(wide).astype(dtype)).tobytes()
        if c.ours.is_inline:
            return raw
        d = chunking.digest(raw)
        objects.cache.ensure(d, raw)
        return d

    for i, key in zip(c.chunks, ordered_map(merge_chunk, c.chunks, workers), strict=True):
        keys[i] = key
    return _with_keys(c.ours, keys)


def merge_format(b: dict, o: dict, t: dict, ours: Manifest, theirs: Manifest,
                 params: dict[str, ParamEntry]) -> dict[str, Any]:
    """The format info of the merge: three-way by key, ours where both changed a key.

    A list ``order`` (tensor order, as safetensors keeps it) is then made to name
    exactly the merged parameters: ours's order, then theirs's additions.
    """
    ok, fmt = _pick3(b, o, t)
    if not ok:
        fmt = {}
        for k in dict.fromkeys([*o, *t]):
            ok, v = _pick3(b.get(k), o.get(k), t.get(k))
            v = v if ok else o.get(k)
            if v is not None:
                fmt[k] = v
    fmt = dict(fmt)
    order = fmt.get("order")
    if isinstance(order, list):
        seen = dict.fromkeys(n for n in [*order, *o.get("order", []), *t.get("order", []),
                                         *sorted(params)] if n in params)
        fmt["order"] = list(seen)
        if fmt["order"] != order:
            fmt.pop("header_text", None)
    return fmt


def merge_manifests(base: Manifest | None, ours: Manifest, theirs: Manifest,
                    table: StrategyTable, objects: Any, workers: int = 4,
                    source: str = "merge") -> tuple[Manifest | None, MergePlan]:
    """Plan and, unless a ``fail`` conflict remains, execute; (None, plan) when it stops."""
    p = plan(base, ours, theirs)
    if unresolved(p, table):
        return None, p
    return execute(p, table, objects, workers, source), p
