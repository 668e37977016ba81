"""A side of a comparison that is no theta-zarr manifest (a git-lfs pointer, a plain file).

Diffs, merges and ``diff-refs`` show such a side by what it is, instead of stopping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .manifest import Manifest


@dataclass(frozen=True)
class Foreign:
    """A side that is no theta-zarr manifest: a git-lfs pointer, or a file stored as it is
    (committed before it was tracked, or not a checkpoint theta-zarr reads)."""

    kind: str  # "git-lfs" | "plain"
    text: str  # one line for people
    info: dict[str, Any] = field(default_factory=dict)


Side = Manifest | Foreign | None
