"""pull --include of a sharded Hugging Face folder writes a consistent folder."""

from __future__ import annotations

import json

import torch
from helpers import env_for, make_case, tiny_llama, tz
from safetensors.torch import load_file


def test_pull_include_of_sharded_folder_rewrites_the_index(request, tmp_path, monkeypatch):
    case = make_case("local", request, tmp_path, monkeypatch)
    env = env_for(case, tmp_path)
    model = tiny_llama()
    src = tmp_path / "llama"
    model.save_pretrained(src, max_shard_size="8KB")
    tz(["publish", str(src), case.url, "--ref", "llama/v1"], env)
    out = tmp_path / "pulled"
    tz(["pull", case.url, "llama/v1", "-o", str(out), "--include", "*.mlp.*"], env)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == shards  # names exactly the shards
    want = {k: v for k, v in model.state_dict().items() if ".mlp." in k}
    got = {}
    for shard in shards:
        got.update(load_file(out / shard))
    assert set(got) == set(index["weight_map"]) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(index["weight_map"][k] == s for s in shards for k in load_file(out / s))
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in want.values())
    assert (out / "config.json").exists()  # other files of the folder come along
