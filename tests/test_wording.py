"""Counts and sizes as people read them in theta-zarr's output."""

from __future__ import annotations

import pytest

from theta_zarr.wording import counted, human, shell_word, show_name


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


def test_names_never_carry_controls_or_format_characters_to_a_terminal():
    """C1 controls (U+009B is CSI to 8-bit terminals), bidi overrides, zero-width and
    line separators in a name are shown as escapes; a backslash is doubled so the
    escapes cannot be forged; other Unicode stays as it is."""
    assert show_name("model.layers.0.weight") == "model.layers.0.weight"
    assert show_name("caf\u00e9/\u4e2d\u6587") == "caf\u00e9/\u4e2d\u6587"
    assert show_name("w\u009b31m\u202eX\u200b\u2028\x1b") == \
        "w\\u009b31m\\u202eX\\u200b\\u2028\\u001b"
    assert show_name("a\\u0041") == "a\\\\u0041"
    assert shell_word("w\u009b\u202eX") == "$'w\\u009b\\u202eX'"
    assert shell_word("my model") == "'my model'"
