"""`git theta-zarr diff` reads arguments as `git diff` does; a closed pipe ends it quietly."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from helpers import commit_tensors, torch_saved

from theta_zarr.demo import ModelShape, write_model
from theta_zarr.git.repo import Repo

SHAPE = ModelShape(hidden=32, layers=2, vocab=64)


@pytest.fixture
def two_commits(repo):
    write_model(str(repo.path / "m.safetensors"), SHAPE)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "v1")
    write_model(str(repo.path / "m.safetensors"), SHAPE, seed=1)
    repo.git("commit", "-q", "-am", "v2")
    return repo


@pytest.mark.parametrize("args, code, words", [
    (("HEAD~1", "HAED"), 128, "ambiguous argument 'HAED': unknown revision"),
    (("HEAD~1", "--", "HAED"), 0, None),  # a path after --: nothing there, no difference
    (("--", "HEAD"), 0, None),
    (("HAED", "--"), 128, "ambiguous argument 'HAED'"),
    (("--bogus", "HEAD~1"), 129, "unknown option '--bogus'"),
    (("HEAD", "HEAD~1", "HEAD~1"), 129, "at most two revisions"),
])
def test_arguments_as_git_diff_reads_them(two_commits, args, code, words):
    proc = two_commits.tz("diff", *args, check=False)
    assert proc.returncode == code, proc.stderr.decode()
    if words:
        assert words in proc.stderr.decode()
        assert proc.stderr.decode().count("\n") == 1 and not proc.stdout


def test_revision_that_is_also_a_file_is_ambiguous(two_commits):
    (two_commits.path / "HEAD").write_text("x")
    proc = two_commits.tz("diff", "HEAD", check=False)
    assert proc.returncode == 128 and "both revision and filename" in proc.stderr.decode()


def test_exit_code_stat_name_only_and_ranges(two_commits):
    r = two_commits
    assert r.tz("diff", "--exit-code", "HEAD~1", "HEAD", check=False).returncode == 1
    assert r.tz("diff", "--exit-code", "HEAD", "HEAD", check=False).returncode == 0
    quiet = r.tz("diff", "--quiet", "HEAD~1", "HEAD", check=False)  # as git diff --quiet
    assert quiet.returncode == 1 and quiet.stdout == quiet.stderr == b""
    assert r.tz("diff", "--quiet", "HEAD", "HEAD", check=False).returncode == 0
    assert r.tz("diff", "--name-only", "HEAD~1..HEAD").stdout.decode() == "m.safetensors\n"
    stat = r.tz("diff", "--stat", "HEAD~1", "HEAD", "--", "m.safetensors").stdout.decode()
    first, total = stat.splitlines()
    assert first.startswith(" m.safetensors | ") and "changed" in first
    assert total.startswith(" 1 checkpoint(s) changed:")
    full = r.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert r.tz("diff", "HEAD~1...HEAD").stdout.decode() == full  # merge base is HEAD~1


def test_a_symmetric_range_of_histories_that_never_met_is_gits_error(two_commits):
    """``A...B`` with no merge base (an orphan branch) was an internal error carrying git's
    merge-base failure; git diff says ``fatal: A...B: no merge base`` with status 128."""
    r = two_commits
    r.git("checkout", "-q", "--orphan", "fresh")
    r.git("commit", "-q", "-m", "orphan")
    proc = r.tz("diff", "main...fresh", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 128 and not proc.stdout
    assert err == "theta-zarr: fatal: main...fresh: no merge base\n"


def test_closed_pipe_is_not_an_error(two_commits):
    """`git theta-zarr diff | head` must not end with "Broken pipe"."""
    proc = subprocess.Popen(["git-theta-zarr", "diff", "HEAD~1", "HEAD", "--json"],
                            cwd=two_commits.path, env=two_commits.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    proc.wait()
    assert "Broken pipe" not in err and "BrokenPipeError" not in err and "Traceback" not in err
    assert proc.returncode == 141


def test_revision_check_names_the_repository(two_commits):
    repo = Repo.discover(str(two_commits.path))
    assert repo.commit("HEAD") == two_commits.out("rev-parse", "HEAD").strip()
    with pytest.raises(Exception, match="unknown revision 'HAED'"):
        repo.commit("HAED")


def test_resolve_help_names_every_built_in_strategy():
    """--strategy's help lists the built-ins a conflict can be resolved with (all but
    'fail'); it left out task_arithmetic, dare_linear and breadcrumbs_ties."""
    from click.testing import CliRunner

    from theta_zarr.cli import main
    from theta_zarr.merges import BUILTINS, METHODS

    text = " ".join(CliRunner().invoke(main, ["resolve", "--help"]).output.split())
    listed = text.split("-s, --strategy STRATEGY ", 1)[1].split(" (or a plug-in)", 1)[0]
    assert set(listed.split(", ")) == (set(BUILTINS) | set(METHODS)) - {"fail"}


def test_a_conflicted_path_is_unmerged_not_added_or_removed(conflicted):
    """During a conflicted merge the index holds stages 1-3 and no stage 0: the diff of
    the index with the working tree said every parameter was added, ``--cached`` that
    every one was removed.  Both say ``unmerged`` as git does, and count it as changed."""
    repo = conflicted
    line = ("model.safetensors: unmerged; finish with: git theta-zarr resolve "
            "model.safetensors --strategy STRATEGY\n")
    for cached in ([], ["--cached"]):
        assert repo.tz("diff", *cached).stdout.decode() == line
        assert repo.tz("diff", "--name-only", *cached).stdout.decode() == "model.safetensors\n"
        stat = repo.tz("diff", "--stat", *cached).stdout.decode()
        assert stat.splitlines()[0] == " model.safetensors | Unmerged"
        assert repo.tz("diff", "--exit-code", *cached, check=False).returncode == 1
        doc = json.loads(repo.tz("diff", "--json", *cached).stdout)
        assert doc["files"][0]["unmerged"] is True and doc["files"][0]["params"] == []
    assert repo.tz("diff", "HEAD").stdout.decode() == ""  # ours is in the working tree


def test_stat_lines_quote_paths_as_git_does():
    """--stat printed a name's raw bytes (a tab, a newline, a Latin-1 byte) where git
    writes "caf\\351.pt"; the column is as wide as the quoted names."""
    from theta_zarr.commands.diffmerge import stat_lines
    from theta_zarr.diff import FileDiff

    lines = stat_lines([FileDiff("caf\udce9.pt", None, None, unmerged=True),
                        FileDiff("a\nb.pt", None, None, unmerged=True)])
    assert lines[:2] == [' "caf\\351.pt" | Unmerged', ' "a\\nb.pt"    | Unmerged']


def test_a_file_added_or_deleted_is_a_change_even_without_tensors(repo):
    """A new ``.pt`` holding only a step and a learning rate (or an empty checkpoint) was
    no change: ``--exit-code`` exited 0, ``--stat`` and ``--name-only`` left it out, and
    the text never said the file was new.  Now it is a new (or deleted) file with its
    non-tensor content added (or removed)."""
    (repo.path / "sched.pt").write_bytes(torch_saved({"step": 7, "lr": 0.1}))
    repo.git("add", "sched.pt")

    def check(words: str, other: list[str]) -> None:
        assert repo.tz("diff", "--cached").stdout.decode().splitlines()[1:] == [
            f"  {words} (torch)", *other]
        assert repo.tz("diff", "--cached", "--exit-code", check=False).returncode == 1
        assert repo.tz("diff", "--cached", "--name-only").stdout.decode() == "sched.pt\n"
        stat = repo.tz("diff", "--cached", "--stat").stdout.decode().splitlines()[0]
        assert stat == f" sched.pt | {words}, 2 other (non-tensor)"

    check("new file", ["  * lr: (none) -> 0.1", "  * step: (none) -> 7"])
    repo.git("commit", "-q", "-m", "sched")
    repo.git("rm", "-q", "--cached", "sched.pt")
    check("deleted file", ["  * lr: 0.1 -> (none)", "  * step: 7 -> (none)"])


def test_a_file_added_with_intent_to_add_is_a_new_file(repo):
    """``git add -N`` records an empty blob that git's diffs take as no file yet: the
    diff of the working tree called the new checkpoint's old side "an empty file (kept
    as it is)", where ``git diff`` says it is new."""
    (repo.path / "sched.pt").write_bytes(torch_saved({"step": 7}))
    repo.git("add", "-N", "sched.pt")
    out = repo.tz("diff").stdout.decode().splitlines()
    assert out[1:] == ["  new file (torch)", "  * step: (none) -> 7"], out
    assert repo.tz("diff", "--stat").stdout.decode().splitlines()[0] == \
        " sched.pt | new file, 1 other (non-tensor)"


@pytest.fixture
def conflicted(repo):
    """A merge of two branches that changed parameter ``a`` differently, left conflicted."""
    base = {"a": np.zeros((8, 8), np.float32), "b": np.ones(300, np.float32)}
    commit_tensors(repo, base, "base")
    repo.git("checkout", "-q", "-b", "other")
    commit_tensors(repo, {**base, "a": base["a"] + 1}, "other")
    repo.git("checkout", "-q", "main")
    commit_tensors(repo, {**base, "a": base["a"] + 2}, "ours")
    assert repo.git("merge", "other", "-m", "m", check=False).returncode == 1
    return repo


@pytest.mark.parametrize("args, words", [
    (["average", "--alpha", "2"], "'--alpha': '2' must be in [0, 1], from ours (0) to theirs"),
    (["average", "--alpha", "-0.5"], "'--alpha': '-0.5' must be in [0, 1]"),
    (["average", "--alpha", "nan"], "'--alpha': 'nan' must be a finite number"),
    (["task-arithmetic", "--scale", "inf"], "'--scale': 'inf' must be a finite number"),
    (["task-arithmetic", "--scale", "-nan"], "'--scale': '-nan' must be a finite number"),
    (["average", "--set", "alpha=1.5"], "--set alpha: must be in [0, 1], from ours (0)"),
    (["slerp", "--set", "t=-1"], "--set t: must be in [0, 1], from the first model (0)"),
    (["linear", "--set", "weight=1,nan"], "--set weight: not a finite number: '1,nan'"),
])
def test_resolve_refuses_a_weight_that_is_not_finite_or_out_of_its_range(conflicted, args,
                                                                           words):
    """``--alpha 2`` extrapolated past theirs and ``--alpha nan`` wrote NaN weights: both
    merged and staged without a word.  One line now, and the conflict is left as it was."""
    before = conflicted.out("ls-files", "-u")
    proc = conflicted.tz("resolve", "model.safetensors", "--strategy", *args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and err.count("\n") == 1, err
    assert err.startswith("theta-zarr: ") and words in err, err
    assert conflicted.out("ls-files", "-u") == before


def test_resolve_takes_the_ends_of_the_range_and_negative_scales(conflicted):
    """alpha 1 is theirs, exactly; a scale may be negative (task arithmetic's negation)."""
    from helpers import read_tensors

    conflicted.tz("resolve", "model.safetensors", "--strategy", "average", "--alpha", "1")
    got = read_tensors(conflicted.path / "model.safetensors")["a"]
    assert (got == 1).all() and not conflicted.out("ls-files", "-u")
    conflicted.git("reset", "-q", "--hard", "HEAD")
    assert conflicted.git("merge", "other", "-m", "m", check=False).returncode == 1
    conflicted.tz("resolve", "model.safetensors", "--strategy", "task-arithmetic",
                  "--scale", "-1")
    got = read_tensors(conflicted.path / "model.safetensors")["a"]
    assert (got == -3).all()  # 0 - ((2 - 0) + (1 - 0))


def test_resolve_help_gives_the_ranges():
    from click.testing import CliRunner

    from theta_zarr.cli import main

    text = " ".join(CliRunner().invoke(main, ["resolve", "--help"]).output.split())
    assert "alpha in [0, 1]" in text and "any finite number (default 1)" in text
    assert "t, density and gamma in [0, 1]" in text
