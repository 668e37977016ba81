"""A Hugging Face sharded checkpoint (save_pretrained's shards + index) is one model:
the API selects across shards, and diff reports per model, not per shard file."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from helpers import tiny_llama
from safetensors.torch import save_file

import theta_zarr
from theta_zarr.manifest import ManifestError


def _commit_sharded(repo, message: str):
    """A tiny random Llama saved in several shards in ``llama/``, added and committed;
    (model, folder)."""
    model = tiny_llama()
    folder = repo.path / "llama"
    model.save_pretrained(folder, max_shard_size="8KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", message)
    return model, folder


@pytest.fixture
def sharded(repo):
    """A tiny random Llama saved in several shards and committed; (repo, model, folder)."""
    model, folder = _commit_sharded(repo, "tiny llama, sharded")
    return repo, model, folder


def test_load_state_dict_of_folder_and_index_selects_across_shards(sharded):
    repo, model, folder = sharded
    want = model.state_dict()
    for target in (folder, folder / "model.safetensors.index.json"):
        sd = theta_zarr.load_state_dict(str(target))
        assert set(sd) == set(want)
        assert all(torch.equal(sd[k], want[k]) for k in want)
    picked = theta_zarr.load_state_dict(str(folder), include=["*.mlp.*", "lm_head.*"])
    assert set(picked) == {k for k in want if ".mlp." in k or k.startswith("lm_head.")}
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len({index["weight_map"][k] for k in picked}) > 1  # really across shards
    g = theta_zarr.open(str(folder))
    w = want["model.layers.1.self_attn.q_proj.weight"]
    assert (g["model.layers.1.self_attn.q_proj.weight"][...] == w.numpy()).all()
    # the working tree (rev=None) reads the same
    assert set(theta_zarr.load_state_dict(str(folder), rev=None, include="lm_head.*")) == \
        {"lm_head.weight"}


def test_ls_files_of_an_index_lists_the_models_shards(sharded):
    """load_state_dict and diff take a sharded model's index for the model; ls-files said
    the index matched no file theta-zarr tracks."""
    repo, model, folder = sharded
    index = "llama/model.safetensors.index.json"
    shards = sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())
                        ["weight_map"].values()))
    listed = [ln.split()[0] for ln in repo.tz("ls-files", index).stdout.decode().splitlines()]
    assert listed == [f"llama/{s}" for s in shards]
    params = json.loads(repo.tz("ls-files", "--params", "--json", index, "--rev",
                                "HEAD").stdout)
    assert {p["name"] for row in params for p in row["parameters"]} == \
        set(model.state_dict())


def test_ls_files_of_a_damaged_index_says_what_is_wrong_with_it(sharded):
    """A committed index cut short (a hand edit, a copy that stopped): ls-files of it said
    "no file theta-zarr tracks matches it", as if the path were misspelt."""
    repo, _, folder = sharded
    index = folder / "model.safetensors.index.json"
    index.write_text(index.read_text()[:200])
    repo.git("commit", "-q", "-am", "damaged index")
    for args in ([], ["--rev", "HEAD"]):
        r = repo.tz("ls-files", *args, "llama/model.safetensors.index.json", check=False)
        err = r.stderr.decode()
        assert r.returncode != 0
        assert err.startswith("theta-zarr: llama/model.safetensors.index.json: index is not "
                              "valid JSON"), err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
    # the model's shards are still listed by folder
    listed = repo.tz("ls-files", "llama").stdout.decode()
    assert "model-00001-of-" in listed


def test_a_folder_with_no_model_says_which_files_it_found(sharded):
    repo, _, folder = sharded
    (repo.path / "two").mkdir()
    for name in ("a.pt", "b.pt"):
        torch.save({"w": torch.zeros(2)}, repo.path / "two" / name)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "two files")
    with pytest.raises(ValueError, match=r"two: cannot tell which checkpoint.*a\.pt, two/b\.pt"):
        theta_zarr.load_state_dict(str(repo.path / "two"))


def test_a_folder_with_no_checkpoint_says_so_and_where(sharded):
    repo, _, _ = sharded
    (repo.path / "cfg").mkdir()
    (repo.path / "cfg" / "config.json").write_text("{}")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "config only")
    with pytest.raises(ManifestError, match=r"^cfg: holds no tracked checkpoint or index at HEAD;"):
        theta_zarr.load_state_dict(str(repo.path / "cfg"))
    with pytest.raises(ManifestError, match=r"^cfg: holds no tracked .* in the working tree;"):
        theta_zarr.open(str(repo.path / "cfg"), rev=None)
    index = str(repo.path / "cfg" / "model.safetensors.index.json")
    with pytest.raises(ManifestError, match=r"index.json: no such index in the working tree$"):
        theta_zarr.load_state_dict(index, rev=None)


def test_resave_that_moves_tensors_between_shards_diffs_as_one_change(sharded):
    repo, model, folder = sharded
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(0.01)
    model.save_pretrained(folder, max_shard_size="12KB")  # other shard boundaries
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "tune one tensor, re-shard")
    out = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)
    (f,) = out["files"]
    assert f["path"] == "llama/model.safetensors.index.json"
    s = f["summary"]
    assert (s["changed"], s["added"], s["removed"], s["reshaped"]) == (1, 0, 0, 0)
    assert f["params"][0]["name"] == "model.layers.1.mlp.up_proj.weight"
    assert s["moved"] == len(f["moved"]) > 0
    assert all(m["from"] != m["to"] for m in f["moved"])
    text = repo.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert "1 changed, 0 reshaped, 0 added, 0 removed" in text
    assert "moved to another shard" in text and text.count("\n  ") == 1
    # git's external diff runs per shard file but compares within the model
    gd = repo.out("diff", "HEAD~1", "HEAD", "--", "llama")
    assert "(in llama/model.safetensors.index.json)" in gd
    assert "\n  + " not in gd and "\n  - " not in gd
    assert "~ model.layers.1.mlp.up_proj.weight" in gd


def test_tensors_moved_between_shards_of_the_same_names_are_no_layout_change(repo):
    """A re-save that keeps the shard files' names but moves tensors between them (as
    save_pretrained does after a fine-tune) printed "SHARD: (file layout): null -> null"
    for every shard, as a non-tensor change."""
    from safetensors.torch import save_file

    folder = repo.path / "m"
    folder.mkdir()

    def save(shards, tuned=0.0):
        for shard, names in shards.items():
            save_file({n: torch.full((4,), 1.0 + (tuned if n == "c" else 0.0)) for n in names},
                      folder / shard)
        weight_map = {n: shard for shard, names in shards.items() for n in names}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
        repo.git("add", "-A")
        repo.git("commit", "-q", "-m", "save")

    save({"model-1.safetensors": ["a", "b"], "model-2.safetensors": ["c"]})
    save({"model-1.safetensors": ["a"], "model-2.safetensors": ["b", "c"]}, tuned=1.0)
    text = repo.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert "1 changed, 0 reshaped, 0 added, 0 removed, 2 unchanged; 1 moved to another shard" \
        in text
    assert "file layout" not in text and "other (non-tensor)" not in text


def commit_shards(repo, folder, shards: dict[str, list[str]], base: torch.Tensor,
                  tuned: dict[str, float], message: str) -> None:
    """Save a sharded safetensors model into ``folder`` (shard file -> tensor names; each
    tensor ``base`` plus its ``tuned`` offset), replacing its old shards, with its index;
    commit everything."""
    from safetensors.torch import save_file

    for old in folder.glob("model-*.safetensors"):
        old.unlink()
    for shard, names in shards.items():
        save_file({n: base + tuned.get(n, 0.0) for n in names}, folder / shard)
    weight_map = {n: shard for shard, names in shards.items() for n in names}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", message)


@pytest.mark.parametrize("resaved", [
    {"model-1.safetensors": ["a", "b"], "model-2.safetensors": ["c"]},
    # a shard file the base did not have: no base version of the file at all
    {"model-1.safetensors": ["a"], "model-2.safetensors": ["c"], "model-3.safetensors": ["b"]},
])
def test_a_merge_finds_the_base_of_tensors_a_re_save_moved_to_another_shard(repo, resaved):
    """Both fine-tunes were re-saved with another shard layout than the base: 'b' moved
    from model-2 to another shard, and only ours changed it.  The merge of that shard saw
    'b' added on both sides: an 'average' rule averaged ours's 'b' with theirs's untouched
    copy, and TIES refused it for want of a base.  Its base is read from the base's other
    shard."""
    from safetensors.torch import load_file

    folder = repo.path / "m"
    folder.mkdir()

    def save(shards, tuned, message):
        commit_shards(repo, folder, shards, torch.ones(8), tuned, message)

    save({"model-1.safetensors": ["a"], "model-2.safetensors": ["b", "c"]}, {}, "base")
    repo.git("checkout", "-q", "-b", "other")
    save(resaved, {"a": 1.0, "c": 1.0}, "theirs")
    repo.git("checkout", "-q", "main")
    save(resaved, {"a": 3.0, "b": 2.0, "c": 3.0}, "ours")
    ours, base = repo.out("rev-parse", "HEAD").strip(), repo.out("rev-parse", "HEAD~1").strip()
    for strategy in ("average", "ties"):
        repo.git("reset", "-q", "--hard", ours)
        repo.git("-c", f"theta-zarr-merge.*.strategy={strategy}", "merge", "-q",
                 "--no-edit", "other")
        sd = {k: v for shard in resaved for k, v in load_file(folder / shard).items()}
        assert sd["b"].tolist() == [3.0] * 8, strategy  # ours's, the only change
        # both tuned: 1 + (3 + 1) / 2, the mean (average) and the disjoint mean (TIES)
        assert sd["a"].tolist() == [3.0] * 8 and sd["c"].tolist() == [3.0] * 8, strategy
    # merge-models reads the base the same way
    repo.git("checkout", "-q", "-b", "soup", base)
    config = repo.path.parent / "soup.yml"
    config.write_text(f"merge_method: linear\nmodels: [{ours}, other]\n")
    repo.tz("merge-models", str(config))
    b_shard = next(shard for shard, names in resaved.items() if "b" in names)
    assert load_file(folder / b_shard)["b"].tolist() == [3.0] * 8


def test_a_merge_finds_the_base_of_a_shard_git_paired_with_a_renamed_one(repo):
    """One branch re-saved the model into differently named shards (another
    max_shard_size), so git paired ours's shard with theirs's new file as a rename and
    handed the merge driver the base version of the old name under the new name.  The
    driver looked for that base under the new name only, found none, and so took 'a',
    which a re-save moved into the shard and only ours tuned, for added on both sides:
    the conflict report offered to average ours's 'a' with theirs's untouched copy."""
    from safetensors.torch import load_file

    folder = repo.path / "m"
    folder.mkdir()

    def save(shards, tuned, message):
        commit_shards(repo, folder, shards, torch.arange(64.0), tuned, message)

    many = [f"t{i}" for i in range(8)]
    save({"model-1.safetensors": ["a"], "model-2.safetensors": ["b", *many]}, {}, "base")
    repo.git("checkout", "-q", "-b", "other")
    save({"model-1.safetensors": ["b"], "model-x.safetensors": ["a", *many]}, {"t0": 1.0},
         "theirs: re-saved into other shard files")
    repo.git("checkout", "-q", "main")
    save({"model-1.safetensors": ["b"], "model-2.safetensors": ["a", *many]}, {"a": 2.0},
         "ours: re-saved, 'a' tuned")
    merged = repo.git("-c", "theta-zarr-merge.*.strategy=average", "merge", "--no-edit",
                      "other", check=False)
    out = merged.stdout.decode() + merged.stderr.decode()
    assert "model-x.safetensors" in out and "added on both sides" not in out, out
    assert not repo.out("ls-files", "-u", "--", "m/model-x.safetensors"), out
    sd = load_file(folder / "model-x.safetensors")
    assert set(sd) == {"a", *many}
    assert torch.equal(sd["a"], torch.arange(64.0) + 2.0)  # ours's: only ours tuned it
    assert torch.equal(sd["t0"], torch.arange(64.0) + 1.0)  # theirs's
    assert torch.equal(sd["t5"], torch.arange(64.0))


def test_git_diff_of_a_renamed_model_folder_finds_each_shard_in_the_new_folder(sharded):
    """`git mv llama llama-v2`: git's rename detection hands each shard's pair to the diff
    driver, which looked the new side up in the old folder's model and printed every
    tensor of the shard as removed."""
    repo, _, folder = sharded
    repo.git("mv", "llama", "llama-v2")
    repo.git("commit", "-q", "-m", "rename the model folder")
    out = repo.out("diff", "-M", "HEAD~1", "HEAD")
    shards = sorted(p.name for p in (repo.path / "llama-v2").glob("model-*.safetensors"))
    heads = [ln for ln in out.splitlines() if " (in llama/" in ln]
    assert len(heads) == len(shards) > 2, out
    both = "(in llama/model.safetensors.index.json => llama-v2/model.safetensors.index.json)"
    for ln in heads:
        assert both in ln and ": 0 changed, 0 reshaped, 0 added, 0 removed, " in ln
        assert "moved to another shard" not in ln
    assert "\n  - " not in out
    # `git theta-zarr diff` pairs the two models by git's renames of their shards: it
    # reported every tensor of the old folder's model removed and all of the new added
    model = "llama/model.safetensors.index.json => llama-v2/model.safetensors.index.json"
    out = repo.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert out.startswith(f"{model}: 0 changed, 0 reshaped, 0 added, 0 removed, "), out
    assert len(out.splitlines()) == 1, out
    stat = repo.tz("diff", "--stat", "HEAD~1", "HEAD").stdout.decode().splitlines()
    assert stat == [f" {model} | renamed", " 1 checkpoint(s) changed"], stat



def test_git_diff_of_a_shard_deleted_here_compares_with_the_index_not_another_branch(sharded):
    """A re-save into fewer shards deletes shard files. git's external diff of a deleted
    shard (`git diff`, and `git diff --cached` once staged) looked for the new side in the
    commit of any branch that had deleted the same file, and reported that branch's
    fine-tune as this change's."""
    repo, model, folder = sharded

    def resave(tuned: str, message: str | None) -> None:
        with torch.no_grad():
            tune = {n: p for n, p in model.named_parameters() if n.startswith(tuned)}
            kept = {n: p.clone() for n, p in tune.items()}
            for p in tune.values():
                p.add_(0.25)
            model.save_pretrained(folder, max_shard_size="12KB")
            for n, p in tune.items():
                p.copy_(kept[n])
        if message:
            repo.git("add", "-A")
            repo.git("commit", "-q", "-m", message)

    repo.git("checkout", "-q", "-b", "other")
    resave("model.layers.0.", "other: layer 0 tuned, fewer shards")
    repo.git("checkout", "-q", "main")
    resave("lm_head.", None)
    assert " D llama/" in repo.out("status", "--porcelain")  # shard files deleted
    unstaged = repo.out("diff", "--", "llama")
    repo.git("add", "-A")
    staged = repo.out("diff", "--cached", "--", "llama")
    for out in (unstaged, staged):
        assert "~ model.layers.0." not in out, out
    assert "~ lm_head.weight" in staged, staged

def test_a_model_cast_to_bf16_that_fits_one_file_diffs_as_that_file(sharded):
    """save_pretrained of the model in bf16 writes one model.safetensors, deletes the shards
    and leaves the index, which names them still. transformers loads model.safetensors;
    the diff took the index as the model, met its missing shards and went file by file
    (every tensor removed from the shards and added to model.safetensors)."""
    repo, model, folder = sharded
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="1MB")
    assert (folder / "model.safetensors").exists()
    assert (folder / "model.safetensors.index.json").exists()  # left behind
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "bf16, one file")
    out = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)
    (f,) = out["files"]
    assert f["path"] == "llama/model.safetensors"
    n = len(model.state_dict())
    assert f["summary"]["reshaped"] == f["summary"]["moved"] == n
    assert all(p["new"]["dtype"] == "bfloat16" for p in f["params"])
    gd = repo.out("diff", "HEAD~1", "HEAD", "--", "llama")
    assert "\n  - " not in gd and "\n  + " not in gd, gd
    assert theta_zarr.load_state_dict(str(folder))["lm_head.weight"].dtype == torch.bfloat16


def test_materialize_include_of_sharded_folder_writes_a_loadable_folder(sharded, tmp_path):
    from transformers import LlamaForCausalLM

    repo, model, folder = sharded
    proc = repo.tz("materialize", "llama", "--include", "model.*", "--include", "lm_head.*",
                   "-o", str(repo.path / "copy"))
    assert re.search(rb" of \d+ parameters in \d+ shards? -> copy", proc.stdout)
    index = json.loads((repo.path / "copy" / "model.safetensors.index.json").read_text())
    written = sorted(p.name for p in (repo.path / "copy").glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == written
    again = LlamaForCausalLM.from_pretrained(repo.path / "copy")  # config.json came along
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    # a narrower selection drops the shards that hold none of it
    repo.tz("materialize", "llama/model.safetensors.index.json", "--include", "lm_head.*")
    part = repo.path / "llama.partial"
    index = json.loads((part / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {"lm_head.weight"}
    assert [p.name for p in part.glob("*.safetensors")] == [index["weight_map"]["lm_head.weight"]]
    # the totals describe the partial copy, not the whole model (transformers 5 writes both)
    lm_head = model.lm_head.weight
    assert index["metadata"]["total_parameters"] == lm_head.numel()
    assert index["metadata"]["total_size"] == lm_head.numel() * lm_head.element_size()
    # a copy outside the current folder is named as typed: absolute, not ../../elsewhere
    out = repo.tz("materialize", "llama", "--include", "lm_head.*", "-o",
                  str(tmp_path / "elsewhere")).stdout.decode()
    assert out.rstrip().endswith(f"-> {tmp_path / 'elsewhere'}"), out


def test_materialize_of_a_model_folder_writes_every_tracked_file_under_it(repo):
    """A lazy Hub-style folder: shards and their index, tokenizer.json, an adapter/.
    `materialize llama/` wrote the shards only (the folder was taken as its model) and left
    tokenizer.json and the adapter as manifests, which no loader can read."""
    from safetensors.torch import save_file

    repo.tz("track", "tokenizer.json")
    folder = repo.path / "llama"
    (folder / "adapter").mkdir(parents=True)
    weight_map = {}
    for i, name in enumerate(("model.embed_tokens.weight", "lm_head.weight")):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({name: torch.full((8, 8), float(i))}, folder / shard)
        weight_map[name] = shard
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    save_file({"lora_A.weight": torch.ones(4, 8)}, folder / "adapter" / "adapter_model.safetensors")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "model, tokenizer and adapter")
    tracked = repo.out("ls-files", "llama").split()
    want = {name: (repo.path / name).read_bytes() for name in tracked}
    shutil.rmtree(folder)
    repo.git("-c", "theta-zarr.lazy=true", "checkout", "--", ".")
    assert (folder / "tokenizer.json").read_bytes().startswith(b'{"theta_zarr"')
    out = repo.tz("materialize", "llama/").stdout.decode()
    assert "llama/tokenizer.json: materialized" in out
    assert "llama/adapter/adapter_model.safetensors: materialized" in out
    assert {name: (repo.path / name).read_bytes() for name in tracked} == want
    assert repo.out("status", "--porcelain") == ""


def test_materialize_include_of_a_folder_with_no_index_selects_from_its_files(repo):
    """A diffusers pipeline (its weights in unet/ and text_encoder/) and a folder of two
    checkpoints hold no sharded model: `materialize FOLDER --include` selects from each
    file under them, as with no PATH. It was refused: the pipeline "holds no tracked
    checkpoint or index", the other "cannot tell which checkpoint is the model"."""
    from safetensors.torch import load_file, save_file

    pipe = repo.path / "pipe"
    for sub, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (pipe / sub).mkdir(parents=True)
        save_file({f"{sub}.weight": torch.ones(4, 4)}, pipe / sub / f"{name}.safetensors")
    (pipe / "model_index.json").write_text('{"_class_name": "Pipeline"}')
    (repo.path / "ck").mkdir()
    torch.save({"w": torch.ones(3)}, repo.path / "ck" / "a.pt")
    torch.save({"v": torch.ones(3)}, repo.path / "ck" / "b.pt")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "a pipeline and a folder of checkpoints")
    out = repo.tz("materialize", "pipe", "--include", "unet.*").stdout.decode()
    partial = pipe / "unet" / "diffusion_pytorch_model.partial.safetensors"
    assert out.splitlines() == ["pipe/unet/diffusion_pytorch_model.safetensors: 1 of 1 "
                                "parameter -> pipe/unet/diffusion_pytorch_model.partial"
                                ".safetensors"]
    assert list(load_file(partial)) == ["unet.weight"]
    out = repo.tz("materialize", "ck/", "--include", "w").stdout.decode()
    assert out.splitlines() == ["ck/a.pt: 1 of 1 parameter -> ck/a.partial.pt"]
    assert not (repo.path / "ck" / "b.partial.pt").exists()
    proc = repo.tz("materialize", "pipe", "--include", "nothing.*", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err == "theta-zarr: pipe: no parameter matches nothing.*\n"


def _bin_shards(repo, sd: dict, plan: dict[str, list[str]]) -> None:
    folder = repo.path / "bert"
    folder.mkdir(exist_ok=True)
    for f, names in plan.items():
        torch.save({n: sd[n] for n in names}, folder / f)
    index = {"metadata": {"total_size": 0}, "weight_map": {n: f for f, ns in plan.items()
                                                           for n in ns}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def test_pytorch_bin_index_and_bad_indexes(repo):
    repo.tz("track", "*.bin")
    sd = {f"enc.{i}.w": torch.full((4, 4), float(i)) for i in range(4)}
    _bin_shards(repo, sd, {"pytorch_model-00001-of-00002.bin": ["enc.0.w", "enc.1.w"],
                           "pytorch_model-00002-of-00002.bin": ["enc.2.w", "enc.3.w"]})
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "bin shards")
    got = theta_zarr.load_state_dict(str(repo.path / "bert"), include=["enc.[13].w"])
    assert set(got) == {"enc.1.w", "enc.3.w"} and torch.equal(got["enc.3.w"], sd["enc.3.w"])
    index = repo.path / "bert" / "pytorch_model.bin.index.json"
    for weight_map, message in (
            ({"enc.0.w": "../pytorch_model-00001-of-00002.bin"}, "invalid shard file name"),
            ({"enc.0.w": "missing.bin"}, "json: shard bert/missing.bin: not a theta-zarr"),
            ({"enc.9.w": "pytorch_model-00001-of-00002.bin"}, "'enc.9.w' is not in shard")):
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ValueError, match=message):
            theta_zarr.load_state_dict(str(index), rev=None)
    # deep nesting was a RecursionError (an internal error from materialize and diff); a
    # shard named twice for one tensor kept the last silently
    for text, message in (('{"weight_map": ' + "[" * 10_000 + "]" * 10_000 + "}",
                           "index is nested more than 64 levels"),
                          ('{"weight_map": {"enc.0.w": "a.bin", "enc.0.w": "b.bin"}}',
                           "index has the key 'enc.0.w' twice")):
        index.write_text(text)
        with pytest.raises(ValueError, match=message):
            theta_zarr.load_state_dict(str(index), rev=None)


def _tied_bin_model(repo) -> dict:
    """A .bin sharded model whose shards hold tensors that are no parameter of their own:
    a tied alias (lm_head.weight is embed.weight) and two slices of one fused weight."""
    repo.tz("track", "*.bin")
    qkv = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    embed = torch.full((3, 4), 2.0)
    sd = {"attn.q": qkv[:2], "attn.k": qkv[2:4], "mlp.w": torch.ones(4, 4),
          "embed.weight": embed, "lm_head.weight": embed}
    _bin_shards(repo, sd, {"pytorch_model-00001-of-00002.bin": ["attn.q", "attn.k", "mlp.w"],
                           "pytorch_model-00002-of-00002.bin": ["embed.weight",
                                                                "lm_head.weight"]})
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "bin shards with a tied head and a fused weight")
    return sd


def test_bin_shards_with_tied_aliases_and_views_are_one_model(repo):
    sd = _tied_bin_model(repo)
    got = theta_zarr.load_state_dict(str(repo.path / "bert"))
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert got["lm_head.weight"].data_ptr() == got["embed.weight"].data_ptr()
    assert got["attn.k"].untyped_storage().data_ptr() == \
        got["attn.q"].untyped_storage().data_ptr()
    picked = theta_zarr.load_state_dict(str(repo.path / "bert"), include=["lm_head.*",
                                                                           "attn.k"])
    assert set(picked) == {"lm_head.weight", "attn.k"}
    assert torch.equal(picked["lm_head.weight"], sd["embed.weight"])
    assert torch.equal(picked["attn.k"], sd["attn.k"])


def test_materialize_include_of_a_tied_alias_in_bin_shards(repo):
    sd = _tied_bin_model(repo)
    proc = repo.tz("materialize", "bert", "--include", "lm_head.*")
    assert b"1 of 3 parameters in 1 shard -> " in proc.stdout
    part = repo.path / "bert.partial"
    index = json.loads((part / "pytorch_model.bin.index.json").read_text())
    # the shard written holds the alias and the tensor it ties to; the index names both
    assert index["weight_map"] == {"embed.weight": "pytorch_model-00002-of-00002.bin",
                                   "lm_head.weight": "pytorch_model-00002-of-00002.bin"}
    assert index["metadata"]["total_size"] == 3 * 4 * 4  # one storage, counted once
    loaded = torch.load(part / "pytorch_model-00002-of-00002.bin", weights_only=True)
    assert torch.equal(loaded["lm_head.weight"], sd["lm_head.weight"])
    assert loaded["lm_head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()


def test_bin_reshard_moving_a_tied_storage_diffs_as_moved(repo):
    sd = _tied_bin_model(repo)
    sd["mlp.w"] = sd["mlp.w"] * 3
    _bin_shards(repo, sd, {"pytorch_model-00001-of-00002.bin": ["attn.q", "attn.k"],
                           "pytorch_model-00002-of-00002.bin": ["mlp.w", "embed.weight",
                                                                "lm_head.weight"]})
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "re-shard, change mlp.w")
    out = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)
    (f,) = out["files"]
    s = f["summary"]
    assert (s["changed"], s["added"], s["removed"]) == (1, 0, 0)
    assert f["params"][0]["name"] == "mlp.w"
    assert [m["name"] for m in f["moved"]] == ["mlp.w"]


def _tune_and_commit(repo, model, folder, message: str) -> None:
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(0.01)
    model.save_pretrained(folder, max_shard_size="8KB")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", message)


def test_a_tracked_index_is_read_from_its_chunks(repo):
    """``track '*.index.json'`` stores the index as opaque chunks: the model is still
    one model to diff and to load, at every revision."""
    repo.tz("track", "*.index.json")
    model, folder = _commit_sharded(repo, "sharded, index tracked")
    blob = repo.git("cat-file", "blob", "HEAD:llama/model.safetensors.index.json").stdout
    assert blob.startswith(b'{"theta_zarr"')  # the index really is a manifest in git
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _tune_and_commit(repo, model, folder, "tune one tensor")
    out = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)
    (f,) = out["files"]
    assert f["path"] == "llama/model.safetensors.index.json"
    assert (f["summary"]["changed"], f["summary"]["added"]) == (1, 0)
    assert f["params"][0]["name"] == "model.layers.1.mlp.up_proj.weight"
    old = theta_zarr.load_state_dict(str(folder), rev="HEAD~1")
    assert set(old) == set(before) and all(torch.equal(old[k], before[k]) for k in before)


def test_a_tracked_index_that_changes_is_reported_once_with_the_model(repo):
    """A vocab resize changes a tensor and the tracked index's total_size: the index was
    reported a second time, as an opaque file of bytes with numbers of its JSON text."""
    repo.tz("track", "*.index.json")
    model, folder = _commit_sharded(repo, "sharded, index tracked")
    model.resize_token_embeddings(model.config.vocab_size + 8)
    model.save_pretrained(folder, max_shard_size="8KB")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "resize")
    names = repo.tz("diff", "--name-only", "HEAD~1", "HEAD").stdout.decode().split()
    assert names == ["llama/model.safetensors.index.json"]
    (f,) = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)["files"]
    assert all(p["name"] != "bytes" for p in f["params"])
    assert any(o["key"] == "index: metadata.total_size" for o in f["other"])
    # git's own diff runs the driver once per file: the index's turn shows its metadata
    gd = repo.git("diff", "HEAD~1", "HEAD").stdout.decode()
    assert "index: metadata.total_size" in gd, gd


def test_a_model_whose_old_shards_theta_zarr_did_not_store_diffs_file_by_file(repo):
    """Shards committed before the pattern was tracked are no theta-zarr model on that
    side: the diff goes file by file (as for any such file) instead of failing."""
    repo.tz("untrack", "*.safetensors")
    model, folder = _commit_sharded(repo, "plain blobs")
    repo.tz("track", "*.safetensors")
    repo.git("add", "--renormalize", ".")
    repo.git("commit", "-q", "-m", "tracked now")
    proc = repo.tz("diff", "HEAD~1", "HEAD")
    text = proc.stdout.decode()
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] \
        == [f"llama/{s}" for s in shards]
    assert text.count("committed before it was tracked") == len(shards)
    out = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)
    assert sum(f["summary"]["added"] for f in out["files"]) == len(model.state_dict())
    # an index changed with them is no file "committed before it was tracked"
    _edit_index(folder, lambda obj: obj["metadata"].update(note="hand edit"))
    repo.git("commit", "-q", "-am", "index edited")
    text = repo.tz("diff", "HEAD~2", "HEAD").stdout.decode()
    assert "index.json" not in text and text.count("committed before") == len(shards)


def test_bin_shards_converted_to_safetensors_shards_diff_as_one_model(repo):
    """The Hub's conversion to safetensors: `pytorch_model.bin` shards (or the one file)
    replaced by `model.safetensors` shards of the same tensors.  Both diffs listed every
    tensor as removed from one model and added to another; now it is one model whose
    tensors moved, with its format change.  A one-file model converted and fine-tuned at
    once (git pairs no rename) was a deleted and a new file, and once paired, every tensor
    "moved to another shard"; now it is the same file in the other format (diffusers'
    names too)."""
    from safetensors.torch import save_file

    repo.tz("track", "*.bin")
    sd = {f"enc.{i}.w": torch.full((4, 4), float(i)) for i in range(3)}
    _bin_shards(repo, sd, {"pytorch_model-00001-of-00002.bin": ["enc.0.w", "enc.1.w"],
                           "pytorch_model-00002-of-00002.bin": ["enc.2.w"]})
    (repo.path / "one").mkdir()
    torch.save(sd, repo.path / "one" / "pytorch_model.bin")
    single = {f"h.{i}.w": torch.randn(64, 64, generator=torch.Generator().manual_seed(i))
              for i in range(6)}
    for folder, name in (("single", "pytorch_model.bin"),
                         ("unet", "diffusion_pytorch_model.bin")):
        (repo.path / folder).mkdir()
        torch.save(single, repo.path / folder / name)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "bin")
    repo.git("rm", "-q", "-r", "bert", "one", "single", "unet")
    # converted and fine-tuned at once: every tensor changed, so git pairs no rename
    for folder, name in (("single", "model.safetensors"),
                         ("unet", "diffusion_pytorch_model.safetensors")):
        (repo.path / folder).mkdir()
        save_file({n: t + 1 for n, t in single.items()}, repo.path / folder / name,
                  metadata={"format": "pt"})
    weight_map = {n: f"model-0000{i // 2 + 1}-of-00002.safetensors" for i, n in enumerate(sd)}
    for folder in ("bert", "one"):
        (repo.path / folder).mkdir()
        for shard in set(weight_map.values()):
            save_file({n: sd[n] for n, s in weight_map.items() if s == shard},
                      repo.path / folder / shard)
        (repo.path / folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "converted to safetensors")

    text = repo.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert "bert/pytorch_model.bin.index.json => bert/model.safetensors.index.json: " \
           "0 changed, 0 reshaped, 0 added, 0 removed, 3 unchanged" in text
    assert "one/pytorch_model.bin => one/model.safetensors.index.json: " \
           "0 changed, 0 reshaped, 0 added, 0 removed, 3 unchanged" in text
    assert text.count("format torch -> safetensors") == 4
    # a one-file model converted: the same file in the other format, no tensor "moved"
    # (both were listed as a deleted and a new file when git paired no rename)
    assert "single/pytorch_model.bin => single/model.safetensors: 6 changed, 0 reshaped, " \
           "0 added, 0 removed, 0 unchanged; 1 other (non-tensor) change(s)" in text
    assert "unet/diffusion_pytorch_model.bin => unet/diffusion_pytorch_model.safetensors: " \
           "6 changed, 0 reshaped, 0 added, 0 removed, 0 unchanged; 1 other" in text
    assert text.count('  * __metadata__.format: (none) -> "pt"\n') == 2
    assert "R" not in repo.out("diff", "--name-status", "HEAD~1", "HEAD", "--", "single", "unet")
    assert " added," not in text.replace(" 0 added,", "")
    # git's diff driver, once per file, compares each file within the converted model
    lines = [line for line in repo.out("diff", "HEAD~1", "HEAD").splitlines()
             if line.startswith(("bert/", "one/"))]
    assert {f for line in lines for f in ("bert/", "one/") if line.startswith(f)} == \
        {"bert/", "one/"}, lines
    assert all(" 0 added, 0 removed, " in line and "=> " in line for line in lines), lines


def test_the_index_path_a_model_is_reported_under_selects_that_model(repo):
    """`diff A B -- llama/model.safetensors.index.json`, the path the diff names the model
    by, printed nothing and exited 0: the index is no tracked file, and the path selected
    none of the shards."""
    from safetensors.torch import save_file

    folder = repo.path / "llama"
    folder.mkdir()
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    for value in (1.0, 2.0):
        for name, shard in weight_map.items():
            save_file({name: torch.full((8, 8), value if name == "a" else 1.0)}, folder / shard)
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
        repo.git("add", "-A")
        repo.git("commit", "-q", "-m", f"a = {value}")
    whole = repo.tz("diff", "--stat", "HEAD~1", "HEAD").stdout.decode()
    assert whole.startswith(" llama/model.safetensors.index.json | 1 changed"), whole
    picked = repo.tz("diff", "--stat", "HEAD~1", "HEAD", "--",
                     "llama/model.safetensors.index.json").stdout.decode()
    assert picked == whole


def test_a_variant_index_and_a_diffusers_folder_are_one_model(repo):
    """``save_pretrained(variant="fp16")`` names its index
    ``model.safetensors.index.fp16.json``, which was not taken for an index: the folder
    was "cannot tell which checkpoint is the model" (each shard a candidate), the index
    "not tracked by theta-zarr", and a re-save diffed shard by shard.  A diffusers
    component folder (``unet/``: ``diffusion_pytorch_model.safetensors`` beside its
    ``.fp16`` variant) resolves to the file diffusers loads."""
    model = tiny_llama().half()
    folder = repo.path / "llama"
    model.save_pretrained(folder, max_shard_size="4KB", variant="fp16")
    index = folder / "model.safetensors.index.fp16.json"
    assert index.exists() and len(set(json.loads(index.read_text())["weight_map"].values())) > 2
    unet = {"conv_in.weight": torch.randn(8, 4, 3, 3)}
    (repo.path / "unet").mkdir()
    save_file(unet, repo.path / "unet" / "diffusion_pytorch_model.safetensors")
    save_file({k: v.half() for k, v in unet.items()},
              repo.path / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "fp16 variant, unet")
    want = model.state_dict()
    for target in (folder, index):
        sd = theta_zarr.load_state_dict(str(target))
        assert set(sd) == set(want) and all(torch.equal(sd[k], want[k]) for k in want)
    got = theta_zarr.load_state_dict(str(repo.path / "unet"))
    assert got["conv_in.weight"].dtype == torch.float32
    assert torch.equal(got["conv_in.weight"], unet["conv_in.weight"])
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(0.01)
    model.save_pretrained(folder, max_shard_size="6KB", variant="fp16")  # re-shard
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "tune one tensor, re-shard")
    (f,) = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)["files"]
    assert f["path"] == "llama/model.safetensors.index.fp16.json"
    s = f["summary"]
    assert (s["changed"], s["added"], s["removed"], s["moved"] > 0) == (1, 0, 0, True)
    gd = repo.out("diff", "HEAD~1", "HEAD", "--", "llama")
    assert "(in llama/model.safetensors.index.fp16.json)" in gd
    assert "\n  + " not in gd and "\n  - " not in gd


def _edit_index(folder, edit) -> None:
    """Rewrite ``folder``'s model.safetensors.index.json with ``edit(obj)`` applied."""
    path = folder / "model.safetensors.index.json"
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj, indent=2))


def test_a_change_to_the_index_alone_is_reported_for_every_form_of_diff(sharded):
    """A commit that changed only the index (its metadata) printed nothing and exited 0
    from diff, --stat and --exit-code: the index is no tracked file, and no shard
    changed to bring its model into the diff."""
    repo, _, folder = sharded
    index = "llama/model.safetensors.index.json"

    def edit(obj):
        obj["metadata"]["total_size"] += 1
        obj["metadata"]["note"] = "hand edit"

    def reported(*args: str, staged: bool = False) -> None:
        text = repo.tz("diff", *args).stdout.decode()
        assert text.startswith(f"{index}: 0 changed, 0 reshaped, 0 added, 0 removed"), text
        assert "; 2 other (non-tensor) change(s)" in text
        assert "index: metadata.total_size" in text and "index: metadata.note" in text
        stat = repo.tz("diff", "--stat", *args).stdout.decode().splitlines()
        assert stat == [f" {index} | 2 other (non-tensor)",
                        " 1 checkpoint(s) changed: 2 other (non-tensor)"], stat
        assert repo.tz("diff", "--name-only", *args).stdout.decode().split() == [index]
        assert repo.tz("diff", "--exit-code", *args, check=False).returncode == 1
        (f,) = json.loads(repo.tz("diff", "--json", *args).stdout)["files"]
        assert {o["key"] for o in f["other"]} == {"index: metadata.total_size",
                                                  "index: metadata.note"}

    def silent(*args: str) -> None:
        r = repo.tz("diff", "--exit-code", *args, check=False)
        assert (r.returncode, r.stdout) == (0, b""), r

    _edit_index(folder, edit)
    reported()  # the working tree against the index
    reported("HEAD")
    silent("--cached")
    repo.git("add", "-A")
    silent()
    reported("--cached")
    repo.git("commit", "-q", "-m", "index metadata only")
    reported("HEAD~1", "HEAD")
    reported("HEAD~1", "HEAD", "--", index)  # the path the model is reported under
    reported("HEAD~1", "HEAD", "--", "llama")
    silent("HEAD")


def test_a_weight_map_change_alone_names_the_tensor_and_its_shards(repo):
    """A tensor both shards hold, moved in the weight map only: reported as moved, from
    one shard to the other; an entry dropped from the map, as the tensor removed."""
    folder = repo.path / "llama"
    folder.mkdir()
    one, two = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    save_file({"a": torch.ones(4, 4), "x": torch.zeros(4)}, folder / one)
    save_file({"b": torch.ones(4, 4), "x": torch.zeros(4)}, folder / two)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 160}, "weight_map": {"a": one, "b": two, "x": one}}))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "two shards")
    _edit_index(folder, lambda obj: obj["weight_map"].update(x=two))
    repo.git("commit", "-q", "-am", "x read from the second shard")
    (f,) = json.loads(repo.tz("diff", "--json", "HEAD~1", "HEAD").stdout)["files"]
    assert f["moved"] == [{"name": "x", "from": f"llama/{one}", "to": f"llama/{two}"}]
    assert f["params"] == [] and f["summary"]["moved"] == 1
    stat = repo.tz("diff", "--stat", "HEAD~1", "HEAD").stdout.decode()
    assert " | 1 moved to another shard\n" in stat, stat
    assert repo.tz("diff", "--exit-code", "HEAD~1", "HEAD", check=False).returncode == 1
    _edit_index(folder, lambda obj: obj["weight_map"].pop("b"))
    text = repo.tz("diff", "HEAD").stdout.decode()
    assert "0 added, 1 removed" in text and "\n  - b " in text, text


def test_a_damaged_index_alone_is_one_line_naming_the_file_and_where(sharded):
    """An index made invalid JSON (or a weight map that names a shard lacking the tensor),
    and nothing else changed: the diff was silent and exited 0."""
    repo, _, folder = sharded
    path = folder / "model.safetensors.index.json"
    good = path.read_text()
    index = "llama/model.safetensors.index.json"

    def refused(where: str, *args: str, says: str = "index is not valid JSON") -> None:
        for form in ([], ["--stat"], ["--exit-code"], ["--name-only"]):
            r = repo.tz("diff", *form, *args, check=False)
            err = r.stderr.decode()
            assert r.returncode != 0 and r.stdout == b"", (form, r)
            assert err.startswith(f"theta-zarr: {index}: {says}"), err
            assert err.rstrip().endswith(f"({where})"), err
            assert len(err.splitlines()) == 1 and "Traceback" not in err

    path.write_text(good[:200])
    refused("in the working tree")
    refused("in the working tree", "HEAD")
    repo.git("add", "-A")
    refused("in the index", "--cached")
    repo.git("commit", "-q", "-m", "damaged index")
    refused("at HEAD", "HEAD~1", "HEAD")
    path.write_text(good[:100])  # still damaged, on both sides: the first one said
    refused("at HEAD", "HEAD")
    path.write_text(good)
    shard = json.loads(good)["weight_map"]["lm_head.weight"]
    other = next(s for s in json.loads(good)["weight_map"].values() if s != shard)
    _edit_index(folder, lambda obj: obj["weight_map"].update({"lm_head.weight": other}))
    refused("in the working tree", "HEAD~2",
            says=f"'lm_head.weight' is not in shard {other}")
