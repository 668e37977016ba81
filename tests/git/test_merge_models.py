"""Model merging through real git: a tiny bf16 transformer, fine-tuned on branches, merged
with TIES/DARE by the merge driver, by ``resolve`` and N-way by ``merge-models``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import BF16, MODEL, commit_tensors, dare_mask, f32, manifest_at, read_tensors, ties_ref
from safetensors.torch import load_file, save_file

H = 32  # hidden size: every matrix is 32x32 bf16 = 2 KiB


def base_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    names = ["embed.weight"] + [f"layers.{i}.{p}.weight" for i in range(3)
                                for p in ("attn.q", "attn.v", "mlp.up")] + ["head.weight"]
    return {n: rng.standard_normal((H, H), dtype=np.float32).astype(BF16) for n in names}


def tune(model: dict, layers: list[str], seed: int) -> dict:
    """A fine-tune: small updates to the parameters of ``layers`` ("layers.0." ...)."""
    rng = np.random.default_rng(seed)
    out = dict(model)
    for n, v in model.items():
        if any(n.startswith(p) for p in layers):
            delta = rng.standard_normal(v.shape, dtype=np.float32) * 0.05
            out[n] = (v.astype(np.float32) + delta).astype(BF16)
    return out


def branches(repo, tunes: dict[str, dict]) -> dict:
    """main holds the pretrained base; one branch per fine-tune; back on main."""
    base = base_model()
    commit_tensors(repo, base, "pretrained")
    for name, model in tunes.items():
        repo.git("checkout", "-q", "-b", name, "main")
        commit_tensors(repo, model, name)
    repo.git("checkout", "-q", "main")
    return base


def test_disjoint_fine_tunes_merge_bit_exactly_without_arithmetic(repo):
    base = base_model()
    a, b = tune(base, ["layers.0."], 1), tune(base, ["layers.2.", "head."], 2)
    branches(repo, {"task-a": a, "task-b": b})
    repo.git("config", "theta-zarr-merge.*.strategy", "ties")
    repo.git("checkout", "-q", "task-a")
    proc = repo.git("merge", "--no-edit", "task-b")
    assert b"(0 chunk by chunk)" in proc.stderr and b"by ties" not in proc.stderr
    got = read_tensors(repo.path / MODEL)
    for n in base:
        want = a[n] if n.startswith("layers.0.") else b[n]
        assert got[n].tobytes() == want.tobytes(), n
    m, ma, mb = (manifest_at(repo, r) for r in ("HEAD", "task-a", "task-b"))
    assert all(m.params[n] == (ma if n.startswith("layers.0.") else mb).params[n] for n in base)


def test_overlapping_fine_tunes_merge_with_ties_reproducibly(repo):
    base = base_model()
    a = tune(base, ["layers.0.", "layers.1."], 3)
    b = tune(tune(base, ["layers.0."], 4), ["head."], 5)
    branches(repo, {"task-a": a, "task-b": b})
    repo.git("config", "theta-zarr-merge.*.strategy", "ties")
    repo.git("config", "theta-zarr-merge.*.density", "0.3")
    repo.git("config", "theta-zarr-merge.*.weight", "1.0,0.5")
    repo.git("checkout", "-q", "-b", "merged", "task-a")
    proc = repo.git("merge", "--no-edit", "task-b")
    assert b"3 by ties" in proc.stderr
    got = read_tensors(repo.path / MODEL)
    for n in base:
        if n.startswith("layers.0."):
            want = ties_ref(base[n], [a[n], b[n]], [1.0, 0.5], 0.3).astype(BF16)
        else:
            want = a[n] if n.startswith("layers.1.") else b[n]
        assert got[n].tobytes() == want.tobytes(), n
    first = repo.out("rev-parse", "HEAD:model.safetensors")
    repo.git("reset", "-q", "--hard", "task-a")
    repo.git("merge", "-q", "--no-edit", "task-b")
    assert repo.out("rev-parse", "HEAD:model.safetensors") == first


def test_resolve_with_dare_and_set(repo):
    base = base_model()
    a, b = tune(base, ["layers.1.mlp"], 6), tune(base, ["layers.1.mlp"], 7)
    branches(repo, {"task-a": a, "task-b": b})
    repo.git("checkout", "-q", "task-a")
    proc = repo.git("merge", "--no-edit", "task-b", check=False)
    assert proc.returncode != 0 and b"layers.1.mlp.up.weight" in proc.stderr
    bad = repo.tz("resolve", "model.safetensors", "--strategy", "dare", "--set", "densty=0.5",
                  check=False)
    assert bad.returncode == 1 and b"unknown merge parameter 'densty'" in bad.stderr
    assert b"Traceback" not in bad.stderr
    # a parameter the strategy does not read was ignored: the merge went on without it
    for args in (["--set", "alpha=0.3"], ["--alpha", "0.3"]):
        bad = repo.tz("resolve", "model.safetensors", "--strategy", "dare", *args, check=False)
        assert bad.returncode == 1 and b"strategy 'dare' does not read 'alpha'" in bad.stderr
    assert repo.out("ls-files", "-u")  # still conflicted
    repo.tz("resolve", "model.safetensors", "--strategy", "dare", "--set", "density=0.5")
    n = "layers.1.mlp.up.weight"
    (kb,), (ka,), (kt,) = (manifest_at(repo, r).params[n].chunks
                           for r in ("main", "task-a", "task-b"))
    bw, aw, tw = f32(base[n], a[n], b[n])
    d = np.float32(0.5)
    ma, mt = (dare_mask(kb, k, H * H, 0.5).reshape(H, H).astype(np.float32) for k in (ka, kt))
    want = (bw + ((aw - bw) * ma / d + (tw - bw) * mt / d) * np.float32(1)).astype(BF16)
    assert read_tensors(repo.path / MODEL)[n].tobytes() == want.tobytes()


CONFIG = """\
merge_method: ties
base_model: main
models:
  - model: task-a
    parameters:
      weight: 1.0
  - model: task-b
    parameters:
      weight: 0.5
  - model: task-c
parameters:
  density:
    - filter: "layers.0.*"
      value: 0.3
    - value: 1.0
"""


def test_merge_models_three_fine_tunes_in_one_commit(repo):
    base = base_model()
    tunes = {"task-a": tune(base, ["layers.0.", "layers.1."], 8),
             "task-b": tune(base, ["layers.0.", "head."], 9),
             "task-c": tune(base, ["layers.0.", "layers.1.attn.q"], 10)}
    branches(repo, tunes)
    pretrained = repo.out("rev-parse", "main").strip()
    (repo.path / "notes.txt").write_text("main's own change, kept by the merge\n")
    repo.git("add", "notes.txt")
    repo.git("commit", "-q", "-m", "notes")
    start = repo.out("rev-parse", "HEAD").strip()
    (repo.path.parent / "merge.yml").write_text(CONFIG.replace("main", pretrained))
    proc = repo.tz("merge-models", str(repo.path.parent / "merge.yml"))
    assert b"merged 3 models onto" in proc.stdout
    parents = repo.out("log", "-1", "--format=%P").split()
    assert len(parents) == 4  # main and the three fine-tunes: an octopus merge commit
    message = repo.out("log", "-1", "--format=%B")
    assert "theta-zarr merge-models config:" in message and "merge_method: ties" in message
    assert repo.out("rev-parse", "task-a") in message  # revisions recorded as commit ids
    assert repo.out("status", "--porcelain") == ""
    assert (repo.path / "notes.txt").exists()
    a, b, c = tunes.values()
    got = read_tensors(repo.path / MODEL)
    for n in base:
        density = 0.3 if n.startswith("layers.0.") else 1.0
        if n.startswith(("layers.0.", "layers.1.attn.q")):
            want = ties_ref(base[n], [a[n], b[n], c[n]], [1.0, 0.5, 1.0], density)
            want = want.astype(BF16)
        else:
            want = next((m[n] for m in (a, b, c) if m[n].tobytes() != base[n].tobytes()),
                        base[n])
        assert got[n].tobytes() == want.tobytes(), n
    first = repo.out("rev-parse", "HEAD^{tree}")
    merged = repo.out("rev-parse", "HEAD").strip()
    # the docs' next step, on the merge itself: HEAD already holds it (it was refused as
    # "changed on HEAD and by the models"), and no empty commit is made
    proc = repo.tz("merge-models", "--from-commit", "HEAD")
    assert b"already holds this merge; nothing to commit" in proc.stdout
    assert repo.out("rev-parse", "HEAD").strip() == merged
    repo.git("reset", "-q", "--hard", start)  # merge-models moved main: go back
    repo.tz("merge-models", "--from-commit", merged)
    assert repo.out("rev-parse", "HEAD^{tree}") == first
    assert repo.out("log", "-1", "--format=%s") == "Merge models task-a, task-b, task-c with ties\n"
    diff = json.loads(repo.tz("diff", pretrained, "HEAD", "--json").stdout)
    assert diff["files"][0]["summary"]["changed"] == 7  # layers 0 and 1, head


def test_merge_models_on_the_pretrained_commit_of_a_fine_tune_and_its_continuation(repo):
    """task-b continued from task-a, and merge-models runs on main (the pretrained commit):
    the models' merge base is task-a, HEAD is behind it and made no change of its own.
    It was refused with "changed on HEAD and by the models"."""
    base = base_model()
    commit_tensors(repo, base, "pretrained")
    repo.git("checkout", "-q", "-b", "task-a")
    a = tune(base, ["layers.0."], 8)
    commit_tensors(repo, a, "task-a")
    repo.git("checkout", "-q", "-b", "task-b")
    b = tune(a, ["layers.1."], 9)
    commit_tensors(repo, b, "task-b")
    repo.git("checkout", "-q", "main")
    config = repo.path.parent / "merge.yml"
    config.write_text("merge_method: linear\nmodels:\n  - model: task-a\n  - model: task-b\n")
    proc = repo.tz("merge-models", str(config))
    assert b"merged 2 models onto" in proc.stdout
    got = read_tensors(repo.path / MODEL)
    assert all(got[n].tobytes() == b[n].tobytes() for n in b)  # only task-b changed task-a
    # task-a is reached through task-b: no parent of its own
    assert repo.out("log", "-1", "--format=%P").split() == [
        repo.out("rev-parse", r).strip() for r in ("main~1", "task-b")]
    assert repo.out("status", "--porcelain") == ""


def test_merge_models_bad_input_is_one_line_and_changes_nothing(repo):
    base = base_model()
    branches(repo, {"task-a": tune(base, ["layers.0."], 1),
                    "task-b": tune(base, ["layers.0."], 2)})
    head = repo.out("rev-parse", "HEAD")
    cfg = repo.path.parent / "bad.yml"
    cases = {
        "merge_method: ties\nmodels: [task-a, nope]\n": "'nope' is not a commit",
        "merge_method: tiez\nmodels: [task-a, task-b]\n": "unknown merge strategy 'tiez'",
        "merge_method: ties\nmodels: [task-a, task-b]\nparameters: {densty: 1}\n":
            "unknown merge parameter 'densty'",
        "merge_method: slerp\nmodels: [task-a, task-b, main]\n": "merges 2 models, not 3",
        "merge_method: [\n": "not valid YAML",
        # PyYAML composes recursively: a RecursionError, reported as an internal error
        "a: " + "[" * 100_000: "not valid YAML (nested too deeply)",
        # an encoding error that named neither the file nor what it is
        "\udcff\udcfemerge_method: ties\n": "bad.yml: not a YAML merge config (not UTF-8",
    }
    for text, message in cases.items():
        cfg.write_bytes(text.encode("utf-8", "surrogateescape"))
        proc = repo.tz("merge-models", str(cfg), check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and message in err, (text, err)
        assert err.startswith("theta-zarr: ") and "Traceback" not in err
        assert repo.out("rev-parse", "HEAD") == head
    for args, message in ((["merge-models"], "takes a CONFIG file or --from-commit"),
                          (["merge-models", "missing.yml"], "missing.yml"),
                          (["merge-models", "--from-commit", "HEAD"], "holds no merge-models")):
        proc = repo.tz(*args, check=False)
        assert proc.returncode == 1 and message in proc.stderr.decode(), args
        assert b"Traceback" not in proc.stderr
    (repo.path / "model.safetensors").write_bytes(b"local edits")
    cfg.write_text("merge_method: ties\nmodels: [task-a, task-b]\n")
    proc = repo.tz("merge-models", str(cfg), check=False)
    assert proc.returncode == 1 and b"uncommitted changes" in proc.stderr


@pytest.mark.parametrize("value", ["abc", "1,x"])
def test_bad_config_value_names_the_key(repo, value):
    base = base_model()
    branches(repo, {"task-a": tune(base, ["layers.0."], 1),
                    "task-b": tune(base, ["layers.0."], 2)})
    repo.git("config", "theta-zarr-merge.layers.*.density", value)
    repo.git("config", "theta-zarr-merge.*.strategy", "ties")
    repo.git("checkout", "-q", "task-a")
    proc = repo.git("merge", "--no-edit", "task-b", check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "theta-zarr-merge.layers.*.density: not a number" in err
    assert "Traceback" not in err


def test_merge_models_takes_a_side_for_integer_buffers_by_the_merge_rules(repo):
    """BatchNorm's num_batches_tracked (int64) differs between fine-tunes: no merge method
    computes on it, and merge-models refused every such model (its config has one method
    for every tensor, and the repository's merge rules were not read)."""
    base = base_model()
    tunes = {"task-a": tune(base, ["layers.0."], 1), "task-b": tune(base, ["layers.1."], 2)}

    def with_counter(model: dict, n: int) -> dict:
        t = {k: torch.from_numpy(v.view(np.uint16).copy()).view(torch.bfloat16)
             for k, v in model.items()}
        return {**t, "bn.num_batches_tracked": torch.tensor(n, dtype=torch.int64)}

    def save_counted(model: dict, n: int, message: str) -> None:
        save_file(with_counter(model, n), str(repo.path / "model.safetensors"))
        repo.git("add", "model.safetensors")
        repo.git("commit", "-q", "-m", message)

    save_counted(base, 0, "pretrained")
    for i, (name, model) in enumerate(tunes.items()):
        repo.git("checkout", "-q", "-b", name, "main")
        save_counted(model, 100 + i, name)
    repo.git("checkout", "-q", "main")
    cfg = repo.path.parent / "merge.yml"
    cfg.write_text("merge_method: ties\nmodels: [task-a, task-b]\nparameters: {density: 1}\n")
    proc = repo.tz("merge-models", str(cfg), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "git config theta-zarr-merge.'GLOB'.strategy base" in err
    repo.git("config", "theta-zarr-merge.*num_batches_tracked.strategy", "fail")
    err = repo.tz("merge-models", str(cfg), check=False).stderr.decode()
    assert "1 conflicting parameter(s), not merged: bn.num_batches_tracked: " in err, err
    repo.git("config", "theta-zarr-merge.*num_batches_tracked.strategy", "theirs")
    repo.tz("merge-models", str(cfg))
    got = load_file(str(repo.path / "model.safetensors"))
    assert int(got["bn.num_batches_tracked"]) == 101  # the last model's
    a, b = tunes.values()
    assert got["layers.0.attn.q.weight"].view(torch.uint16).numpy().tobytes() == \
        a["layers.0.attn.q.weight"].tobytes()
