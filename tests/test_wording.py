"""Counts and sizes as people read them in theta-zarr's output."""

from __future__ import annotations

import pytest

from theta_zarr.wording import counted, human, quote_path, shell_word, show_name, unquote_c


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



@pytest.mark.parametrize("quoted, name", [
    ('"a b.pt"', "a b.pt"),
    ('"a\\"b\\\\c\\t\\001.pt"', 'a"b\\c\t\x01.pt'),
    ('"\\351t\\351.pt"', "\udce9t\udce9.pt"),  # not UTF-8: surrogate escapes
    ('"\\303\\251 \\303\\274.pt"', "é ü.pt"),
    ('"é.pt"', "é.pt"),
])
def test_unquote_c_reads_git_quoting(quoted, name):
    """What follows the closing quote is handed back (a .gitattributes line's attributes);
    what ``quote_path`` writes reads back as the name."""
    assert unquote_c(quoted + " rest") == (name, " rest")
    assert unquote_c(quote_path(name) if quote_path(name) != name else f'"{name}"') == (name, "")


@pytest.mark.parametrize("text", ['"open', '"bad\\q"', '"\\400"', '"\\12"', "plain"])
def test_unquote_c_gives_up_where_git_does(text):
    """git's ``unquote_c_style``: no closing quote, an unknown escape, an octal escape
    over \\377 or short of three digits; and no opening quote."""
    assert unquote_c(text) is None
