"""Sizes as git config, --chunk-size and demo --size take them; booleans as git reads them."""

from __future__ import annotations

import pytest

from theta_zarr.settings import parse_bool, parse_size


@pytest.mark.parametrize("text, n", [("4MiB", 4 << 20), ("4M", 4 << 20), ("1g", 1 << 30),
                                     ("512KiB", 512 << 10), ("4194304", 4194304),
                                     ("2KB", 2000), ("1.5k", 1536), ("0", 0)])
def test_sizes_the_docs_list(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["inf", "infMiB", "-inf", "1e400", "nan", "-1", "-4MiB",
                                  "abc", "4 XB", ""])
def test_what_no_size_can_be_is_not_a_size(text):
    """'inf' reached the user as internal error (OverflowError) from every command reading
    a size; a negative one passed (direct-checkout -1, demo's 'math domain error')."""
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text, value", [("true", True), ("Yes", True), ("on", True),
                                         ("1", True), ("2", True), ("-1", True),
                                         ("false", False), ("NO", False), ("off", False),
                                         ("0", False), ("", False)])
def test_booleans_as_git_config_bool_reads_them(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["ture", "flase", "maybe", "y", "1.0", "on off"])
def test_what_git_calls_a_bad_boolean_is_not_a_boolean(text):
    """They were read as false, silently: ``theta-zarr.lazy ture`` checked every file out."""
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(text)
