"""Diff and merge through real git: the drivers `git theta-zarr install` configures."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from helpers import BF16, commit_checkpoint, commit_tensors, file_sha, manifest_at, read_tensors
from safetensors.torch import load_file, save_file

from theta_zarr.demo import ModelShape, write_model

SHAPE = ModelShape(hidden=64, layers=3, vocab=256)
M = "m.safetensors"  # the file the merge tests commit


commit_model = functools.partial(commit_checkpoint, shape=SHAPE)


def conflicting_branches(repo, base: dict, ours: dict, theirs: dict) -> None:
    commit_tensors(repo, base, "base", M)
    repo.git("checkout", "-q", "-b", "other")
    commit_tensors(repo, theirs, "theirs", M)
    repo.git("checkout", "-q", "main")
    commit_tensors(repo, ours, "ours", M)


def test_install_sets_and_uninstall_removes_drivers(repo):
    assert repo.out("config", "diff.theta-zarr.command").strip().endswith(
        "git-theta-zarr diff-driver")
    assert "%O %A %B %P" in repo.out("config", "merge.theta-zarr.driver")
    repo.tz("uninstall")
    assert repo.git("config", "merge.theta-zarr.driver", check=False).returncode == 1
    assert repo.git("config", "diff.theta-zarr.textconv", check=False).returncode == 1


def test_git_diff_log_show_and_plot(repo, tmp_path):
    commit_model(repo, "base")
    commit_model(repo, "tune", tuned=SHAPE.layer_names(1))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        png = tmp_path / "change.png"
        proc = repo.tz("diff", "HEAD~1", "HEAD", "--plot", str(png))
        assert png.read_bytes()[:4] == b"\x89PNG" and b"8 changed parameters" in proc.stdout
    out = repo.out("diff", "HEAD~1", "--", "model.safetensors")
    assert "8 changed, 0 reshaped, 0 added, 0 removed, 19 unchanged" in out
    assert "~ layers.1.attn.q_proj.weight" in out and "rel " in out
    log = repo.out("log", "-p", "-1", "--", "model.safetensors")
    assert "+layers.1.attn.q_proj.weight bfloat16[64, 64] 1 chunk " in log
    assert "layers.0." not in log.split("@@")[-1].replace(" layers.0.", "")  # context only
    show = repo.out("show", "HEAD")
    assert "-layers.1.mlp.up_proj.weight bfloat16[256, 64]" in show
    stat = repo.out("diff", "--stat", "HEAD~1")
    assert "model.safetensors" in stat
    # a working-tree checkpoint (not added) is cleaned and diffed
    write_model(str(repo.path / "model.safetensors"), SHAPE, tuned=SHAPE.layer_names(2))
    out = repo.out("diff", "--", "model.safetensors")
    assert "16 changed" in out and "~ layers.2.mlp.down_proj.weight" in out
    out = repo.tz("diff", "model.safetensors").stdout.decode()
    assert "16 changed" in out


def test_git_diff_of_a_renamed_checkpoint_names_both_paths(repo):
    """git passes the driver the new name of a renamed file: it was dropped, and five
    changed elements of 50,000 read "elements 0.0%"."""
    a = np.arange(50_000, dtype=np.float32)
    save_file({"a": torch.from_numpy(a), "b": torch.ones(50_000)},
              str(repo.path / "model.safetensors"))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "one")
    a[:5] += 1
    save_file({"a": torch.from_numpy(a), "b": torch.ones(50_000)},
              str(repo.path / "renamed.safetensors"))
    repo.git("rm", "-q", "model.safetensors")
    repo.git("add", "renamed.safetensors")
    repo.git("commit", "-q", "-m", "rename and tweak")
    out = repo.git("diff", "-M", "HEAD~1", "HEAD").stdout.decode()
    assert out.startswith("model.safetensors => renamed.safetensors: 1 changed"), out
    assert "elements 0.01%" in out
    # git theta-zarr diff follows the rename as git diff does (it listed every parameter
    # removed from the old name and added to the new one), unless diff.renames is off
    tz = repo.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert tz.startswith("model.safetensors => renamed.safetensors: 1 changed, 0 reshaped, "
                         "0 added, 0 removed, 1 unchanged"), tz
    repo.git("mv", "renamed.safetensors", "again.safetensors")
    repo.git("commit", "-q", "-m", "rename only")
    stat = repo.tz("diff", "--stat", "HEAD~1", "HEAD").stdout.decode()
    assert stat.startswith(" renamed.safetensors => again.safetensors | renamed\n"), stat
    # --name-only lists a rename's new path, as git does (it printed "OLD => NEW")
    assert repo.tz("diff", "--name-only", "HEAD~1", "HEAD").stdout == b"again.safetensors\n"
    assert repo.tz("diff", "--exit-code", "HEAD~1", "HEAD", check=False).returncode == 1
    off = repo.git("-c", "diff.renames=false", "theta-zarr", "diff", "--stat", "HEAD~1",
                   "HEAD").stdout.decode()
    assert "2 added" in off and "2 removed" in off, off
    # a mode change is said as git says it: the driver's summary alone hid it
    (repo.path / "again.safetensors").chmod(0o755)
    out = repo.git("diff").stdout.decode().splitlines()
    assert out[1:3] == ["  old mode 100644", "  new mode 100755"], out


def test_git_diff_into_a_closed_pipe_stops_quietly(repo):
    """``git diff | head``: git reports a driver's non-zero exit as "external diff died";
    the driver stops quietly instead, as ``git theta-zarr diff | head`` does (141)."""
    for name in ("a.safetensors", "b.safetensors"):
        commit_model(repo, "base", name=name)
    for name in ("a.safetensors", "b.safetensors"):
        commit_model(repo, "tune", name=name, tuned=SHAPE.layer_names(1))
    for cmd, status in (("git diff HEAD~2", 0), ("git theta-zarr diff HEAD~2", 141)):
        # the reader is gone before the first byte is written (``true`` reads nothing)
        proc = repo.run("bash", "-c", f"{cmd} | true; echo ${{PIPESTATUS[0]}}")
        assert proc.stderr == b"", proc.stderr.decode()
        assert int(proc.stdout) == status


def test_git_blame_of_the_working_tree_file_matches_blame_of_head(repo):
    """git blame FILE cleans the working tree's textconv summary; it was stored as an opaque
    file, so every line read "Not Committed Yet" and showed an opaque manifest."""
    commit_model(repo, "base")
    commit_model(repo, "tune", tuned=SHAPE.layer_names(1))
    head = repo.out("blame", "-s", "HEAD", "--", "model.safetensors")
    assert repo.out("blame", "-s", "--", "model.safetensors") == head
    assert "Not Committed" not in head and "layers.1.attn.q_proj.weight" in head
    tuned = [ln for ln in head.splitlines() if "layers.1." in ln]
    assert len({ln.split()[0] for ln in tuned}) == 1  # all from the tuning commit


def test_git_diff_of_old_versions_of_a_single_file_never_searches_history(repo, tmp_path):
    """git's external diff gets blob ids; for a file that cannot be a shard (no index
    beside it, now or in any commit) the driver says so before it looks for the blobs'
    commits with ``git log --find-object``, which walks the whole history per file."""
    for step in range(3):
        commit_model(repo, f"step {step}", tuned=SHAPE.layer_names(step))
    trace = tmp_path / "trace"  # a file: the driver's own git calls are traced there too
    proc = repo.git("diff", "HEAD~2", "HEAD~1", "--", "model.safetensors",
                    env={"GIT_TRACE": str(trace)})
    assert "16 changed" in proc.stdout.decode()  # layer 0's and layer 1's tuning
    assert "diff-driver" in trace.read_text() and "--find-object" not in trace.read_text()


def test_textconv_in_lazy_checkout_reads_no_chunk(repo):
    commit_model(repo, "base")
    commit_model(repo, "tune", tuned=SHAPE.layer_names(0))
    for f in repo.objects_dir.rglob("*"):
        if f.is_file():
            f.unlink()
    lazy = {"GIT_THETA_ZARR_SKIP_SMUDGE": "1"}
    log = repo.git("log", "-p", "--", "model.safetensors", env=lazy).stdout.decode()
    assert "+layers.0.attn.k_proj.weight bfloat16[64, 64] 1 chunk" in log
    out = repo.tz("diff", "HEAD~1", "HEAD", "--summary-only", env=lazy).stdout.decode()
    assert "8 changed" in out


def test_diff_reads_only_changed_chunks(repo):
    shape = ModelShape(hidden=64, layers=8, vocab=256)
    write_model(str(repo.path / "model.safetensors"), shape)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "v1")
    v1 = json.loads(repo.tz("ls-files", "--params", "--json").stdout)[0]
    tuned = shape.layer_names(3)  # 8 of 68 parameters: ~10%
    write_model(str(repo.path / "model.safetensors"), shape, tuned=tuned)
    repo.git("commit", "-q", "-am", "v2")
    repo.git("tag", "v1", "HEAD~1")
    repo.git("tag", "v2", "HEAD")
    # take away every object except the changed parameters' chunks: the diff still works
    keep = set()
    for rev in ("v1", "v2"):
        m = manifest_at(repo, rev)
        keep |= {d for n in tuned for d in m.params[n].chunks}
    removed = 0
    for f in repo.objects_dir.rglob("*"):
        if f.is_file() and "blake3:" + f.parent.name + f.name not in keep:
            f.unlink()
            removed += 1
    assert removed > 40
    out = json.loads(repo.tz("diff", "v1", "v2", "model.safetensors", "--json").stdout)
    assert {k: out[k] for k in ("theta_zarr_diff", "old", "new")} == {
        "theta_zarr_diff": 1, "old": "v1", "new": "v2"}  # the documented envelope
    (fd,) = out["files"]
    assert fd["summary"]["changed"] == 8 and fd["summary"]["unchanged"] == len(
        v1["parameters"]) - 8
    changed_bytes = sum(p["bytes"] for p in v1["parameters"] if p["name"] in tuned and
                        not p["inline"])
    assert fd["read"]["bytes"] == 2 * changed_bytes  # old and new of each changed chunk
    assert all(p["rel_change"] > 0 for p in fd["params"])


def test_different_layers_merge_rebase_and_cherry_pick_bit_exact(repo, tmp_path):
    """merge, cherry-pick and rebase all reach the merge driver: no prompt, bit-exact."""
    commit_model(repo, "base")
    repo.git("checkout", "-q", "-b", "tune-head")
    commit_model(repo, "head", tuned=SHAPE.layer_names(2))
    pick = repo.out("rev-parse", "HEAD").strip()
    repo.git("checkout", "-q", "main")
    commit_model(repo, "layer0", tuned=SHAPE.layer_names(0))
    expect = tmp_path / "expect.safetensors"
    write_model(str(expect), SHAPE, tuned=SHAPE.layer_names(0) + SHAPE.layer_names(2))
    repo.git("checkout", "-q", "-b", "merged")
    proc = repo.git("merge", "-q", "--no-edit", "tune-head")
    assert b"merged 27 parameter(s)" in proc.stderr
    assert file_sha(repo.path / "model.safetensors") == file_sha(expect)
    assert repo.out("status", "--porcelain") == ""
    repo.git("checkout", "-q", "-b", "picked", "main")
    repo.git("cherry-pick", pick)
    assert file_sha(repo.path / "model.safetensors") == file_sha(expect)
    repo.git("checkout", "-q", "tune-head")
    repo.git("rebase", "-q", "main")
    assert file_sha(repo.path / "model.safetensors") == file_sha(expect)
    assert repo.out("status", "--porcelain") == ""


def test_chunk_level_merge_of_embedding_rows(repo):
    repo.git("config", "theta-zarr.chunk-size", "4KiB")
    emb = np.random.default_rng(0).standard_normal((256, 64), dtype=np.float32)  # 16 chunks
    ours, theirs = emb.copy(), emb.copy()
    ours[3] += 1  # chunk 0
    theirs[200:202] *= 2  # chunk 12
    conflicting_branches(repo, {"emb": emb}, {"emb": ours}, {"emb": theirs})
    proc = repo.git("merge", "-q", "--no-edit", "other")
    assert b"1 chunk by chunk" in proc.stderr
    expect = emb.copy()
    expect[3] += 1
    expect[200:202] *= 2
    assert read_tensors(repo.path / M)["emb"].tobytes() == expect.tobytes()


def test_a_dtype_conflict_is_hinted_with_the_strategies_that_resolve_it(repo):
    """A tensor cast to bf16 on one side and changed on the other can only take a side:
    the report suggested averaging it, which fails."""
    rng = np.random.default_rng(2)
    base = {"a": rng.standard_normal((64, 64), dtype=np.float32)}
    conflicting_branches(repo, base, {"a": base["a"].astype(BF16)}, {"a": base["a"] + 1})
    proc = repo.git("merge", "--no-edit", "other", check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "shape/dtype/chunking differ" in err
    assert "resolve m.safetensors --strategy ours --param 'a'" in err
    assert "--strategy average" not in err and "task-arithmetic --scale" not in err
    repo.tz("resolve", "m.safetensors", "--strategy", "theirs", "--param", "a")
    assert read_tensors(repo.path / M)["a"].tobytes() == (base["a"] + 1).tobytes()


def test_integer_and_added_conflicts_are_hinted_with_what_resolves_them(repo):
    """Integer values cannot be averaged and a tensor added on both sides has no base for
    task arithmetic: the report suggested both, and each then failed."""
    w = np.zeros((8, 8), dtype=np.float32)
    conflicting_branches(repo, {"w": w}, {"w": w, "step": np.array([1, 2, 3])},
                         {"w": w, "step": np.array([4, 5, 6])})
    proc = repo.git("merge", "--no-edit", "other", check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "--strategy ours --param 'step'   (or theirs, or base: int64 values cannot be " \
           "averaged)" in err
    assert "--strategy average" not in err and "task-arithmetic" not in err.split(
        "or set a strategy")[0]
    repo.tz("resolve", "m.safetensors", "--strategy", "theirs", "--param", "step")
    assert read_tensors(repo.path / M)["step"].tolist() == [4, 5, 6]
    repo.git("commit", "-q", "--no-edit")
    repo.git("branch", "-q", "-D", "other")
    # float values added on both sides: average works, task arithmetic (no base) is not offered
    conflicting_branches(repo, {"w": w}, {"w": w, "new": np.ones(4, np.float32)},
                         {"w": w, "new": np.full(4, 3, np.float32)})
    err = repo.git("merge", "--no-edit", "other", check=False).stderr.decode()
    hint = err.split("resolve with one of:")[1].split("or set a strategy")[0]
    assert "--strategy average" in hint and "task-arithmetic" not in hint
    repo.tz("resolve", "m.safetensors", "--strategy", "average")
    assert read_tensors(repo.path / M)["new"].tolist() == [2.0] * 4


def test_a_name_holding_terminal_controls_is_never_printed_raw(repo):
    """A tensor named with a C1 control (U+009B, CSI to 8-bit terminals) and a bidi
    override (U+202E), as a hostile collaborator can commit it, was printed raw by
    `git diff`, `git theta-zarr diff`, `ls-files --params` and a merge's conflict list
    and hints: it could drive the terminal or make the line read as another name."""
    evil = "w\u009b31m\u202eX"
    shown = "w\\u009b31m\\u202eX"
    w = np.zeros(4, np.float32)
    conflicting_branches(repo, {"a": w, evil: w}, {"a": w, evil: w + 1}, {"a": w, evil: w + 2})
    # `git diff`'s driver and `git theta-zarr diff` print through one function
    outputs = [repo.out("diff", "HEAD~1", "HEAD"), repo.tz("ls-files", "--params").stdout]
    merge = repo.git("merge", "--no-edit", "other", check=False)
    assert merge.returncode != 0
    outputs.append(merge.stderr)
    for out in outputs:
        text = out if isinstance(out, str) else out.decode()
        assert "\u009b" not in text and "\u202e" not in text, text
        assert shown in text, text
    assert f"--param $'{shown}'" in merge.stderr.decode()


def test_every_hint_for_several_conflicts_finishes_the_merge(repo):
    """With several conflicting parameters each '--param' hint named one of them, and
    resolve then stopped on the others; an integer beside floats had no working hint, and
    a hint without --param replaced a strategy the configuration had given."""
    import shlex

    def tensors(v: float) -> dict:
        return {"w1": np.full((4, 4), v, np.float32), "w2": np.full((4, 4), v, np.float32),
                "step": np.array([int(v)])}

    conflicting_branches(repo, tensors(0), tensors(2), tensors(1))
    configured = ["-c", "theta-zarr-merge.step.strategy=theirs"]
    for extra in ([], configured):
        repo.git("reset", "-q", "--hard", "main")
        err = repo.git(*extra, "merge", "--no-edit", "other", check=False).stderr.decode()
        hints = [line.split("   (")[0].strip() for line in
                 err.split("resolve with one of:")[1].split("or set a strategy")[0].splitlines()
                 if line.strip()]
        assert len(hints) == (2 if not extra else 3), err
        for hint in hints:
            repo.git("merge", "--abort", check=False)
            repo.git("reset", "-q", "--hard", "main")
            repo.git(*extra, "merge", "--no-edit", "other", check=False)
            args = shlex.split(hint)
            assert args[0] == "git", hint
            proc = repo.git(*extra, *args[1:], check=False)
            assert proc.returncode == 0, (hint, proc.stderr.decode())
            assert not repo.out("ls-files", "-u"), hint
            if extra:
                # the configured rule kept
                assert read_tensors(repo.path / M)["step"].tolist() == [1], hint
    repo.git("merge", "--abort", check=False)


def test_a_misspelt_strategy_in_the_merge_rules_is_named_by_its_key(repo):
    """A bad value of a merge rule was named by its key (``theta-zarr-merge.*.density: not a
    number``), a misspelt strategy only by itself: nothing said which rule, or where."""
    w = np.zeros((4, 4), np.float32)
    conflicting_branches(repo, {"w": w}, {"w": w + 2}, {"w": w + 1})
    repo.git("config", "theta-zarr-merge.w*.strategy", "avrage")
    want = "theta-zarr: theta-zarr-merge.w*.strategy: unknown merge strategy 'avrage'"
    proc = repo.git("merge", "--no-edit", "other", check=False)
    assert proc.returncode != 0 and want in proc.stderr.decode()
    proc = repo.tz("resolve", "m.safetensors", "-s", "average", check=False)
    assert proc.returncode != 0 and proc.stderr.decode().startswith(want)


@pytest.mark.parametrize("key, value, words", [
    ("alpha", "2", "theta-zarr-merge.w*.alpha: must be in [0, 1], from ours (0) to theirs (1), "
                   "not 2"),
    ("alpha", "nan", "theta-zarr-merge.w*.alpha: not a finite number: 'nan'"),
])
def test_a_merge_rule_weight_out_of_its_range_is_named_by_its_key(repo, key, value, words):
    """``alpha = 2`` in a merge rule extrapolated past theirs, silently."""
    w = np.zeros((4, 4), np.float32)
    conflicting_branches(repo, {"w": w}, {"w": w + 2}, {"w": w + 1})
    repo.git("config", "theta-zarr-merge.w*.strategy", "average")
    repo.git("config", f"theta-zarr-merge.w*.{key}", value)
    proc = repo.git("merge", "--no-edit", "other", check=False)
    assert proc.returncode != 0 and f"theta-zarr: {words}" in proc.stderr.decode()
    assert repo.out("ls-files", "-u")  # left conflicted
    proc = repo.tz("resolve", "m.safetensors", "-s", "average", check=False)
    assert proc.returncode == 1 and proc.stderr.decode() == f"theta-zarr: {words}\n"


def test_the_merge_summary_counts_the_parameters_of_the_merged_file(repo):
    """A tensor one side removed was counted among the parameters merged: "merged 2
    parameter(s)" for a file of one."""
    w = np.zeros((4, 4), np.float32)
    conflicting_branches(repo, {"w": w, "x": w}, {"w": w + 2}, {"w": w + 1, "x": w})
    proc = repo.git("-c", "theta-zarr-merge.*.strategy=average", "merge", "--no-edit", "other")
    assert b"m.safetensors: merged 1 parameter(s) (0 chunk by chunk, 1 by average)" \
        in proc.stderr
    assert set(load_file(repo.path / "m.safetensors")) == {"w"}


def test_non_tensor_values_of_a_torch_file_merge_leaf_by_leaf(repo):
    """Both sides' changes to different non-tensor leaves survive (theirs's used to be
    dropped with the whole tree whenever ours changed any leaf); a leaf changed
    differently stops the merge, and resolve settles it by its key path."""
    def save_pt(lr: float, groups: list, message: str, **extra) -> None:
        torch.save({"w": torch.zeros(4), "lr": lr, "param_groups": groups, **extra},
                   repo.path / "x.pt")
        repo.git("add", "x.pt")
        repo.git("commit", "-q", "-m", message)

    save_pt(0.1, [{"lr": 0.1, "m": 1}], "base")
    repo.git("checkout", "-q", "-b", "other")
    save_pt(0.2, [{"lr": 0.1, "m": 1}], "theirs", new=torch.ones(3))
    # each branch's file is saved anew right after the switch: not rebuilt (a torch import)
    lazy = {"GIT_THETA_ZARR_SKIP_SMUDGE": "1"}
    repo.git("checkout", "-q", "main", env=lazy)
    save_pt(0.1, [{"lr": 0.1, "m": 2}], "ours")
    repo.git("merge", "-q", "--no-edit", "other")
    merged = torch.load(repo.path / "x.pt", weights_only=True)
    assert merged["lr"] == 0.2 and merged["param_groups"] == [{"lr": 0.1, "m": 2}]
    assert merged["new"].tolist() == [1.0] * 3
    # the same leaf changed differently on both sides: a conflict, named by its path
    repo.git("checkout", "-q", "other", env=lazy)
    save_pt(0.2, [{"lr": 0.5, "m": 1}], "theirs again", new=torch.ones(3))
    repo.git("checkout", "-q", "main", env=lazy)
    save_pt(0.2, [{"lr": 0.7, "m": 2}], "ours again", new=torch.ones(3))
    proc = repo.git("merge", "--no-edit", "other", check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "x.pt: 1 conflicting non-tensor value(s), not merged:" in err
    assert "param_groups.0.lr: a non-tensor value changed differently: ours 0.7, theirs " \
           "0.5, base 0.1" in err
    assert "--strategy ours --param 'param_groups.0.lr'" in err
    repo.tz("resolve", "x.pt", "--strategy", "theirs", "--param", "param_groups.*")
    repo.git("commit", "-q", "--no-edit")
    assert torch.load(repo.path / "x.pt", weights_only=True)["param_groups"] == \
        [{"lr": 0.5, "m": 2}]


def test_resolve_summary_counts_a_value_kept_by_a_tensor_strategy_as_ours(repo):
    """A non-tensor value that a value strategy (average) cannot combine keeps ours's;
    the summary line counted it 'by average' as if it had been averaged."""
    def save_pt(w: float, lr: float, message: str) -> None:
        torch.save({"w": torch.full((4,), w), "lr": lr}, repo.path / "x.pt")
        repo.git("add", "x.pt")
        repo.git("commit", "-q", "-m", message)

    save_pt(0.0, 0.1, "base")
    repo.git("checkout", "-q", "-b", "other")
    save_pt(2.0, 0.5, "theirs")
    repo.git("checkout", "-q", "main", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    save_pt(1.0, 0.7, "ours")
    assert repo.git("merge", "--no-edit", "other", check=False).returncode != 0
    proc = repo.tz("resolve", "x.pt", "--strategy", "average")
    err, out = proc.stderr.decode(), proc.stdout.decode()
    assert "lr: a non-tensor value changed differently" in err and "kept ours's" in err
    assert "1 conflicting non-tensor value(s) (0 chunk by chunk, 1 by average, 1 by ours)" \
        in out
    merged = torch.load(repo.path / "x.pt", weights_only=True)
    assert merged["lr"] == 0.7 and merged["w"].tolist() == [1.5] * 4


def test_conflict_report_then_resolve_average(repo):
    rng = np.random.default_rng(1)
    base = {k: rng.standard_normal((64, 32), dtype=np.float32).astype(BF16)
            for k in ("encoder.w", "head.w")}
    ours = {k: (v.astype(np.float32) + 0.5).astype(BF16) for k, v in base.items()}
    theirs = {"encoder.w": (base["encoder.w"].astype(np.float32) * 3).astype(BF16),
              "head.w": base["head.w"]}
    conflicting_branches(repo, base, ours, theirs)
    proc = repo.git("merge", "--no-edit", "other", check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "1 conflicting parameter(s), not merged" in err
    assert "encoder.w: both sides changed 1 of 1 chunk(s)" in err
    assert "git theta-zarr resolve m.safetensors --strategy average" in err
    assert "U" in repo.out("status", "--porcelain")
    # git's own diff of the unmerged path does not crash
    repo.git("diff")
    bad = repo.tz("resolve", "m.safetensors", "--strategy", "average", "--param", "nomatch*",
                  check=False)
    assert bad.returncode == 1 and b"match no --param glob" in bad.stderr
    (repo.path / M).chmod(0o640)
    repo.tz("resolve", "m.safetensors", "--strategy", "average", "--param", "encoder.*")
    assert repo.out("status", "--porcelain").startswith("M ")
    # the file keeps its mode: it was rewritten with mkstemp's 0600
    assert (repo.path / M).stat().st_mode & 0o777 == 0o640
    want = ((ours["encoder.w"].astype(np.float32) + theirs["encoder.w"].astype(np.float32))
            / 2).astype(BF16)
    assert read_tensors(repo.path / M)["encoder.w"].tobytes() == want.tobytes()
    assert read_tensors(repo.path / M)["head.w"].tobytes() == ours["head.w"].tobytes()
    repo.git("commit", "-q", "--no-edit")
    assert repo.out("status", "--porcelain") == ""


def test_merge_and_rebase_x_ours_or_theirs_settle_conflicting_parameters(repo):
    """git hands a merge driver no ``-X``: ``git merge -X theirs`` stopped on every
    parameter both sides changed, as if no option had been given.  The driver reads it
    from git's command line: the conflicting parameters take that side, the others merge
    as always, and a configured strategy still wins."""
    rng = np.random.default_rng(2)
    base = {k: rng.standard_normal((16, 8), dtype=np.float32) for k in ("a", "b", "c")}
    ours = {**base, "a": base["a"] + 1, "b": base["b"] + 1}
    theirs = {**base, "a": base["a"] * 3, "c": base["c"] * 3}
    conflicting_branches(repo, base, ours, theirs)
    proc = repo.git("merge", "--no-edit", "-X", "theirs", "other")
    assert "1 by theirs" in proc.stderr.decode()
    got = read_tensors(repo.path / M)
    assert [got[k].tobytes() for k in "abc"] == \
        [theirs["a"].tobytes(), ours["b"].tobytes(), theirs["c"].tobytes()]
    # rebase: "ours" is the branch rebased onto, as for git's hunks
    repo.git("reset", "-q", "--hard", "HEAD~1")
    repo.git("checkout", "-q", "other")
    repo.git("rebase", "-Xours", "main")
    got = read_tensors(repo.path / M)
    assert [got[k].tobytes() for k in "abc"] == \
        [ours["a"].tobytes(), ours["b"].tobytes(), theirs["c"].tobytes()]
    assert repo.out("status", "--porcelain") == ""
    # a configured strategy settles its parameters whatever -X says
    repo.git("reset", "-q", "--hard", "ORIG_HEAD")
    repo.git("config", "theta-zarr-merge.a.strategy", "ours")
    repo.git("merge", "--no-edit", "-X", "theirs", "main")
    assert read_tensors(repo.path / M)["a"].tobytes() == theirs["a"].tobytes()


def test_resolve_settles_a_file_one_side_deleted(repo):
    """A modify/delete conflict: git's diff said "finish with: git theta-zarr resolve", and
    resolve answered "not in a conflicted merge (git ls-files -u lists no ours/theirs
    stages)" though it lists two.  ``ours``/``theirs``/``base`` now take that side's file
    whole (a deletion with ``git rm``); a value strategy is refused in one line."""
    base = {"w": np.zeros(300, np.float32)}
    commit_tensors(repo, base, "base", M)
    repo.git("checkout", "-q", "-b", "other")
    commit_tensors(repo, {"w": np.ones(300, np.float32)}, "theirs", M)
    repo.git("checkout", "-q", "main")
    repo.git("rm", "-q", M)
    repo.git("commit", "-q", "-m", "deleted")
    for strategy, kept in (("theirs", True), ("ours", False)):
        assert repo.git("merge", "--no-edit", "other", check=False).returncode == 1
        bad = repo.tz("resolve", M, "--strategy", "average", check=False)
        err = bad.stderr.decode()
        assert bad.returncode == 1 and err.count("\n") == 1
        assert "deleted by ours and changed by theirs" in err and "git rm" in err
        repo.tz("resolve", M, "--strategy", strategy)
        assert repo.out("ls-files", "-u") == ""
        assert (repo.path / M).exists() == kept
        if kept:
            assert read_tensors(repo.path / M)["w"].tolist() == [1.0] * 300
        repo.git("commit", "-q", "--no-edit")
        assert repo.out("status", "--porcelain") == ""
        assert (M in repo.out("ls-files")) == kept
        repo.git("reset", "-q", "--hard", "HEAD~1")


def test_resolve_task_arithmetic_and_config_override(repo):
    rng = np.random.default_rng(2)
    base = {k: rng.standard_normal((32, 40), dtype=np.float32) for k in ("a", "b")}
    ours = {k: v + rng.standard_normal(v.shape, dtype=np.float32) * 0.1
            for k, v in base.items()}
    theirs = {k: v - rng.standard_normal(v.shape, dtype=np.float32) * 0.1
              for k, v in base.items()}
    conflicting_branches(repo, base, ours, theirs)
    repo.git("config", "theta-zarr-merge.b.strategy", "theirs")
    proc = repo.git("merge", "--no-edit", "other", check=False)
    assert proc.returncode != 0 and b"  a: both sides" in proc.stderr and b"  b:" not in \
        proc.stderr
    repo.tz("resolve", "m.safetensors", "--strategy", "task-arithmetic", "--scale", "1.0",
            "--param", "a")
    b64, o64, t64 = (x["a"].astype(np.float64) for x in (base, ours, theirs))
    want = (b64 + 1.0 * ((o64 - b64) + (t64 - b64))).astype(np.float32)
    assert read_tensors(repo.path / M)["a"].tobytes() == want.tobytes()
    assert read_tensors(repo.path / M)["b"].tobytes() == theirs["b"].tobytes()


def test_configured_strategy_merges_without_prompt_and_thetazarr_file(repo):
    (repo.path / ".thetazarr").write_text('[theta-zarr-merge "*"]\n\tstrategy = average\n')
    repo.git("add", ".thetazarr")
    base = {"w": np.ones((16, 16), np.float32)}
    conflicting_branches(repo, base, {"w": base["w"] * 2}, {"w": base["w"] * 4})
    repo.git("merge", "-q", "--no-edit", "other")
    assert np.array_equal(read_tensors(repo.path / M)["w"], np.full((16, 16), 3, np.float32))


def test_merge_with_missing_chunk_names_it(repo):
    base = {"w": np.ones((64, 64), np.float32)}
    theirs = {"w": base["w"] * 4}
    conflicting_branches(repo, base, {"w": base["w"] * 2}, theirs)
    m = manifest_at(repo, "other", "m.safetensors")
    gone = m.params["w"].chunks[0]
    (repo.objects_dir / gone[7:9] / gone[9:]).unlink()
    repo.git("config", "theta-zarr-merge.*.strategy", "average")
    proc = repo.git("merge", "--no-edit", "other", check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert f"parameter 'w': chunk 0 of theirs ({gone}) cannot be read" in err
    assert "Traceback" not in err


def test_plain_git_log_and_diff_need_no_chunks_of_old_versions(repo):
    """git smudges blobs before calling textconv or the diff driver; for read-only
    commands the filter answers with the manifest, so no old version is rebuilt."""
    commit_model(repo, "base")
    commit_model(repo, "tune", tuned=SHAPE.layer_names(0))
    old = manifest_at(repo, "HEAD~1")
    new = manifest_at(repo, "HEAD")
    changed = {d for n in SHAPE.layer_names(0) for d in old.params[n].chunks} | {
        d for n in SHAPE.layer_names(0) for d in new.params[n].chunks}
    for f in repo.objects_dir.rglob("*"):
        if f.is_file() and "blake3:" + f.parent.name + f.name not in changed:
            f.unlink()
    log = repo.git("log", "-p", "--", "model.safetensors").stdout.decode()
    assert "+layers.0.attn.k_proj.weight bfloat16[64, 64] 1 chunk" in log
    diff = repo.git("diff", "HEAD~1", "HEAD", "--", "model.safetensors").stdout.decode()
    assert "layers.0.attn.k_proj.weight" in diff and "changed" in diff
    # the materialized working tree is untouched and still clean
    assert repo.out("status", "--porcelain") == ""
