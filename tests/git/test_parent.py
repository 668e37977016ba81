"""Reading the git command above this process (theta_zarr.git.parent)."""

from __future__ import annotations

import pytest

from theta_zarr.git.parent import _subcommand, push_is_dry_run


@pytest.mark.parametrize("args, dry", [
    (["origin", "main"], False),
    (["-n", "origin"], True),
    (["--dry-run"], True),
    (["--dr"], True),
    (["-fnu", "origin"], True),
    (["-onever", "origin"], False),  # -o's value, not -n
    (["-o", "n", "origin"], False),
    (["--dry-run", "--no-dry-run"], False),
    (["--no-dry-run", "-n"], True),
    (["--delete", "origin", "x"], False),
    (["origin", "--", "-n"], False),  # a ref named -n
])
def test_push_is_dry_run_reads_options_as_git_parses_them(args, dry):
    assert push_is_dry_run(args) is dry


def test_subcommand_skips_git_options_and_their_values():
    assert _subcommand(["-C", "push", "-c", "a=b", "--no-pager", "push", "-n"]) == \
        ("push", ["-n"])
    assert _subcommand(["--version"]) is None
