"""Counts and sizes as people read them in theta-zarr's output."""

from __future__ import annotations

import pytest

from theta_zarr.wording import counted, human


@pytest.mark.parametrize("n, noun, plural, said", [
    (0, "chunk", None, "0 chunks"), (1, "chunk", None, "1 chunk"),
    (2, "object", None, "2 objects"), (1, "shard", None, "1 shard"),
    (3, "index", "indexes", "3 indexes"), (1, "index", "indexes", "1 index"),
])
def test_counted_is_singular_only_for_one(n, noun, plural, said):
    assert counted(n, noun, plural) == said


@pytest.mark.parametrize("n, said", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (3 << 30, "3.0 GiB"), (5 << 40, "5.0 TiB"), (5 << 50, "5120.0 TiB"),
])
def test_human_uses_binary_units(n, said):
    assert human(n) == said
