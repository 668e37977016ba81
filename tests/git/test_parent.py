"""Reading the git command above this process (theta_zarr.git.parent)."""

from __future__ import annotations

import pytest

from theta_zarr.git.parent import _subcommand, push_is_dry_run, strategy_option


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


@pytest.mark.parametrize("command, favor", [
    (("merge", ["-X", "theirs", "side"]), "theirs"),
    (("merge", ["-Xours", "side"]), "ours"),
    (("rebase", ["--strategy-option=theirs", "main"]), "theirs"),
    (("pull", ["--strategy-opt", "ours"]), "ours"),  # an abbreviation git takes
    (("cherry-pick", ["-x", "-Xtheirs", "abc"]), "theirs"),
    (("rebase", ["-i", "-X", "theirs", "-X", "ours"]), "ours"),  # the last one wins
    (("merge", ["-X", "patience", "side"]), None),
    (("merge", ["-m", "-Xtheirs", "side"]), None),  # -m's value
    (("merge", ["--message", "-Xtheirs", "side"]), None),
    (("merge", ["side", "--", "-Xtheirs"]), None),
    (("stash", ["pop"]), None),
    (None, None),
])
def test_strategy_option_reads_git_merge_x_as_git_parses_it(command, favor):
    assert strategy_option(command) == favor
