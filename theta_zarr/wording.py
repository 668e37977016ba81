"""How counts and sizes read in what theta-zarr says to people."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 chunk``, ``2 chunks``, ``0 chunks``: ``n`` and the noun, plural unless ``n`` is 1
    (``plural`` for a noun that does not take an ``s``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def human(n: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
