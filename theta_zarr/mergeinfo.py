"""The three-way merge of a manifest's format info: key by key, down to the leaves.

A format plug-in keeps what rebuilds its file beside the tensors: safetensors'
``__metadata__``, a PyTorch state dict's tree with its non-tensor leaves (a learning
rate, a step count, ``param_groups``).  Each mapping in it (a JSON object, or the
``[[key, value], ...]`` pairs the PyTorch tree keeps a dict's order in) merges key by key
with git's three-way rule (:func:`pick`), so one side's change to ``lr`` and the other's
new tensor both survive.  A leaf both sides changed differently is an :class:`InfoConflict`,
reported and resolved like a parameter's (ours, theirs or base), by its dotted key path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: a key absent on one side (deleted, or never there)
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "(absent)"})()

#: the tree's and header's wrapper keys, left out of a leaf's dotted name
_WRAPPERS = frozenset({"tree", "header", "__dict__", "__odict__", "__list__", "__tuple__"})


def pick(base: Any, sides: Sequence[Any]) -> tuple[bool, Any]:
    """The three-way rule for any number of sides: the base if no side changed it, the
    one change if every side that changed it agrees; (False, None) otherwise."""
    changed: list[Any] = []
    for v in sides:
        if v != base and v not in changed:
            changed.append(v)
    if not changed:
        return True, base
    if len(changed) == 1:
        return True, changed[0]
    return False, None


@dataclass
class InfoConflict:
    """A leaf of the format info that sides changed differently (ABSENT: deleted)."""

    path: tuple[Any, ...]  # keys from the top of the format info
    base: Any
    sides: list[Any]

    @property
    def name(self) -> str:
        """The dotted key path a user names it by (``lr``, ``__metadata__.step``)."""
        keys = [str(k) for i, k in enumerate(self.path)
                if not (k in _WRAPPERS and (i == 0 or k.startswith("__")))]
        return ".".join(keys) or "format info"


def _mapping(value: Any) -> tuple[dict, str] | None:
    """``value`` as an ordered mapping and its kind ("dict" or "pairs"), or None."""
    if isinstance(value, dict):
        return value, "dict"
    if isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int, float, bool))
            for p in value):
        keys = [p[0] for p in value]
        if len(set(keys)) == len(keys):
            return {k: v for k, v in value}, "pairs"
    return None


def _build(m: dict, kind: str) -> Any:
    return dict(m) if kind == "dict" else [[k, v] for k, v in m.items()]


def merge_info(base: Any, sides: Sequence[Any], path: tuple[Any, ...] = ()
               ) -> tuple[Any, list[InfoConflict]]:
    """Merge ``sides`` (ours first) against ``base``; returns the merged value (ours's
    value where they conflict, ABSENT where it is deleted) and the conflicts.

    Mappings of one kind on every side merge key by key, in ours's order then the
    others' additions; lists of the base's length on every side, element by element; any
    other value merges whole.
    """
    ok, value = pick(base, sides)
    if ok:
        return value, []
    if isinstance(base, list) and _mapping(base) is None and \
            all(isinstance(v, list) and len(v) == len(base) for v in sides):
        # lists of one length (param_groups): element by element
        items, conflicts = [], []
        for i, b in enumerate(base):
            v, c = merge_info(b, [side[i] for side in sides], (*path, i))
            items.append(v)
            conflicts += c
        return items, conflicts
    maps = [_mapping(v) for v in sides]
    kinds = {m[1] for m in maps if m is not None}
    b = {} if base is ABSENT else _mapping(base)
    if None in maps or len(kinds) != 1 or b is None or (
            isinstance(b, tuple) and b[1] not in kinds):
        return sides[0], [InfoConflict(path, base, list(sides))]
    bm = b[0] if isinstance(b, tuple) else b
    merged: dict = {}
    conflicts: list[InfoConflict] = []
    for key in dict.fromkeys(k for m in maps for k in m[0]):  # type: ignore[index]
        v, c = merge_info(bm.get(key, ABSENT), [m[0].get(key, ABSENT) for m in maps],  # type: ignore[index]
                          (*path, key))
        conflicts += c
        if v is not ABSENT:
            merged[key] = v
    return _build(merged, kinds.pop()), conflicts


def set_at(value: Any, path: tuple[Any, ...], leaf: Any) -> Any:
    """``value`` with the leaf at ``path`` replaced by ``leaf`` (ABSENT: removed)."""
    if not path:
        return leaf
    if isinstance(value, list) and _mapping(value) is None:  # merged element by element
        items = list(value)
        items[path[0]] = set_at(items[path[0]], path[1:], leaf)
        return items
    found = _mapping(value)
    m, kind = (dict(found[0]), found[1]) if found is not None else ({}, "dict")
    new = set_at(m.get(path[0], ABSENT), path[1:], leaf)
    if new is ABSENT:
        m.pop(path[0], None)
    else:
        m[path[0]] = new
    return _build(m, kind)
