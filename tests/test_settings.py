"""Sizes as git config, --chunk-size and demo --size take them."""

from __future__ import annotations

import pytest

from theta_zarr.settings import parse_size


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
