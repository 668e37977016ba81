"""A change git sees that touches no tensor shows in every diff view."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file


def _views(repo, *revs: str) -> dict[str, str]:
    return {
        "theta-zarr diff": repo.tz("diff", *revs).stdout.decode(),
        "git diff": repo.out("diff", *revs),
        "textconv": repo.out("diff", "--no-ext-diff", *revs),
    }


def test_torch_step_and_scheduler_change_is_shown(repo):
    path = repo.path / "ckpt.pt"
    w = torch.arange(64, dtype=torch.float32).reshape(8, 8)
    torch.save({"model": {"w": w}, "step": 5, "scheduler": {"last_epoch": 5, "lr": [0.1]}},
               path)
    repo.git("add", "ckpt.pt")
    repo.git("commit", "-q", "-m", "step 5")
    torch.save({"model": {"w": w}, "step": 6, "scheduler": {"last_epoch": 6, "lr": [0.1]}},
               path)
    assert repo.out("status", "--short").strip() == "M ckpt.pt"
    views = _views(repo)
    assert "0 changed" in views["theta-zarr diff"] and "2 other" in views["theta-zarr diff"]
    for name in ("theta-zarr diff", "git diff"):
        assert "* step: 5 -> 6" in views[name], name
        assert "* scheduler.last_epoch: 5 -> 6" in views[name], name
        assert "lr" not in views[name]  # unchanged leaves are not listed
    assert "-@ step = 5\n+@ step = 6" in views["textconv"]
    out = json.loads(repo.tz("diff", "--json").stdout)
    (f,) = out["files"]
    assert f["summary"]["other_changed"] == 2 and f["summary"]["changed"] == 0
    assert {(o["key"], o["old"], o["new"]) for o in f["other"]} == {
        ("step", 5, 6), ("scheduler.last_epoch", 5, 6)}
    repo.git("commit", "-q", "-am", "step 6")
    log = repo.out("log", "-p", "-1", "--format=%s")
    assert "-@ step = 5" in log and "+@ step = 6" in log


def test_safetensors_metadata_change_is_shown(repo):
    path = repo.path / "m.safetensors"
    sd = {"w": torch.ones(4, 4)}
    save_file(sd, path, metadata={"format": "pt", "epoch": "1"})
    repo.git("add", "m.safetensors")
    repo.git("commit", "-q", "-m", "epoch 1")
    # written by hand, metadata keys in an order no writer sorts to: the safetensors
    # library orders them by a hash map, so its header is sometimes the canonical one
    header = json.dumps({"__metadata__": {"format": "pt", "note": "tuned", "epoch": "2"},
                         "w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header +
                     sd["w"].numpy().astype("<f4").tobytes())
    repo.git("commit", "-q", "-am", "epoch 2")
    views = _views(repo, "HEAD~1", "HEAD")
    for name in ("theta-zarr diff", "git diff"):
        assert '* __metadata__.epoch: "1" -> "2"' in views[name], name
        assert '* __metadata__.note: (none) -> "tuned"' in views[name], name
    assert '+@ __metadata__.note = "tuned"' in views["textconv"]
    # the header bytes changed too (the second one is not canonical)
    summary = repo.tz("diff", "HEAD~1", "HEAD", "--summary-only").stdout.decode()
    assert "0 changed, 0 reshaped, 0 added, 0 removed, 1 unchanged; 3 other" in summary
    assert "* header_text: " in summary


def test_nontensor_change_counts_for_name_only_stat_and_exit_code(repo):
    path = repo.path / "ckpt.pt"
    w = torch.ones(4, 4)
    torch.save({"model": {"w": w}, "step": 1}, path)
    repo.git("add", "ckpt.pt")
    repo.git("commit", "-q", "-m", "step 1")
    torch.save({"model": {"w": w}, "step": 2}, path)
    assert repo.tz("diff", "--name-only").stdout.decode().split() == ["ckpt.pt"]
    # --stat says what changed (it printed "ckpt.pt | " and ": parameter(s)")
    assert repo.tz("diff", "--stat").stdout.decode().splitlines() == [
        " ckpt.pt | 1 other (non-tensor)", " 1 checkpoint(s) changed: 1 other (non-tensor)"]
    assert repo.tz("diff", "--exit-code", check=False).returncode == 1
    repo.git("checkout", "--", "ckpt.pt")
    assert repo.tz("diff", "--exit-code", check=False).returncode == 0


def test_a_tied_alias_lost_converting_bin_to_safetensors_is_shown(repo):
    """``pytorch_model.bin`` with a tied ``lm_head.weight`` converted to
    ``model.safetensors``, which cannot hold the alias: the diff said only ``format torch
    -> safetensors`` with every tensor unchanged, though a key the old file loaded with
    is gone.  Non-tensor content is now compared across formats too."""
    repo.tz("track", "*.bin")
    w = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    torch.save({"embed.weight": w, "lm_head.weight": w}, repo.path / "pytorch_model.bin")
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "bin")
    save_file({"embed.weight": w}, str(repo.path / "model.safetensors"),
              metadata={"format": "pt"})
    repo.git("rm", "-q", "pytorch_model.bin")
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "convert")
    views = _views(repo, "HEAD~1", "HEAD")
    for name in ("theta-zarr diff", "git diff"):
        text = views[name]
        assert text.startswith("pytorch_model.bin => model.safetensors: 0 changed"), text
        assert "  format torch -> safetensors\n" in text
        assert '  * lm_head.weight: {"tensor":"embed.weight"} -> (none)\n' in text, name
        assert '  * __metadata__.format: (none) -> "pt"\n' in text, name
    stat = repo.tz("diff", "--stat", "HEAD~1", "HEAD").stdout.decode().splitlines()[0]
    assert stat == " pytorch_model.bin => model.safetensors | format changed, 2 other (non-tensor)"
