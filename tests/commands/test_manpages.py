"""`git theta-zarr --help` (git runs `man git-theta-zarr`) and `git theta-zarr help CMD`."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from theta_zarr.cli import main
from theta_zarr.commands.manpages import PAGE, render

ROOT = Path(__file__).resolve().parents[2]


def test_committed_man_page_is_current():
    """Regenerate with: python -m theta_zarr.commands.manpages man/man1"""
    assert (ROOT / "man" / "man1" / PAGE).read_text() == render(main, version("theta-zarr"))
    text = render(main, version("theta-zarr"))
    assert ".SS theta-zarr publish [OPTIONS] CKPT REMOTE" in text
    assert "filter-process" not in text  # hidden commands stay hidden
    name = text.split(".SH NAME\n", 1)[1].split("\n", 1)[0]
    assert name.endswith("git holding only a manifest."), name  # not cut at a line end
    # options as --help lists them: every command takes -h too
    assert text.count("\\fB-h, --help\\fR") == text.count(".SS ")


def test_git_help_finds_the_man_page(repo):
    proc = repo.git("theta-zarr", "--help", env={"MANPAGER": "cat", "PAGER": "cat"})
    out = proc.stdout.decode()
    assert "GIT-THETA-ZARR(1)" in out and "publish" in out


def test_help_command(repo):
    assert "Usage: git theta-zarr remote add" in repo.tz("help", "remote", "add").stdout.decode()
    # the same text as --help, the program name aside
    helped = repo.tz("help", "push").stdout.decode().split("\n", 1)[1]
    assert helped == repo.tz("push", "--help").stdout.decode().split("\n", 1)[1]
    assert "ls-files" in repo.tz("help").stdout.decode()
    proc = repo.tz("help", "nope", check=False)
    assert proc.returncode == 1 and proc.stderr.decode().startswith("theta-zarr: no such command")
