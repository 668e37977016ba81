"""A Hugging Face Trainer checkpoint folder is committed whole: weights as weights, the
pickles weights_only refuses (rng_state.pth, training_args.bin) as opaque chunks."""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import manifest_at

from theta_zarr.manifest import Manifest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

PICKLES = ("rng_state.pth", "training_args.bin")


@pytest.fixture(scope="module")
def trainer_folder(tmp_path_factory) -> Path:
    """checkpoint-2/ as transformers' Trainer writes it, from a tiny random-init model."""
    out = tmp_path_factory.mktemp("trainer")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    data = [{"input_ids": torch.randint(0, 64, (8,)), "labels": torch.randint(0, 64, (8,))}
            for _ in range(4)]
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=2, save_steps=2, per_device_train_batch_size=2,
        report_to=[], use_cpu=True, logging_steps=100)
    transformers.Trainer(model=model, args=args, train_dataset=data).train()
    folder = out / "checkpoint-2"
    assert all((folder / p).exists() for p in PICKLES)
    return folder


def test_trainer_folder_is_added_whole_and_rebuilt_byte_identically(repo, trainer_folder):
    repo.tz("track", "*.bin", "*.pth")
    dest = repo.path / "checkpoint-2"
    shutil.copytree(trainer_folder, dest)
    proc = repo.git("add", "-A")
    err = proc.stderr.decode()
    for name in PICKLES:  # said once per file, naming what weights_only refused
        lines = [ln for ln in err.splitlines() if f"checkpoint-2/{name}" in ln]
        assert len(lines) == 1 and "opaque" in lines[0] and "GLOBAL" in lines[0], err
    repo.git("commit", "-q", "-m", "trainer checkpoint")
    for name in PICKLES:  # touched: git cleans them again, and nothing is said again
        st = (dest / name).stat()
        os.utime(dest / name, (st.st_atime + 5, st.st_mtime + 5))
    again = repo.git("add", "-A").stderr.decode()
    assert "opaque" not in again, again
    assert repo.out("status", "--porcelain") == ""

    for name in PICKLES:
        m = manifest_at(repo, "HEAD", f"checkpoint-2/{name}")
        assert m.format_name == "opaque"
        assert set(m.params) == {"bytes"} and m.params["bytes"].shape == (
            (trainer_folder / name).stat().st_size,)
    weights = Manifest.from_bytes(
        repo.git("cat-file", "blob", "HEAD:checkpoint-2/model.safetensors").stdout)
    assert weights.format_name == "safetensors"
    optimizer = Manifest.from_bytes(
        repo.git("cat-file", "blob", "HEAD:checkpoint-2/optimizer.pt").stdout)
    assert optimizer.format_name == "torch"

    shutil.rmtree(dest)
    repo.git("checkout", "--", ".")
    for f in sorted(trainer_folder.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".pth", ".json"):
            assert filecmp.cmp(f, dest / f.name, shallow=False), f.name
    assert repo.out("status", "--porcelain") == ""

    # lazily checked out, the folder materializes whole (it said "Is a directory")
    shutil.rmtree(dest)
    repo.git("-c", "theta-zarr.lazy=true", "checkout", "--", ".")
    assert (dest / "model.safetensors").read_bytes().startswith(b'{"theta_zarr"')
    out = repo.tz("materialize", "checkpoint-2/").stdout.decode()
    assert "checkpoint-2/model.safetensors: materialized" in out
    for f in sorted(trainer_folder.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".pth", ".json"):
            assert filecmp.cmp(f, dest / f.name, shallow=False), f.name
    assert repo.out("status", "--porcelain") == ""


def test_materialize_include_of_a_trainer_folder_selects_from_the_files_that_match(
        repo, trainer_folder):
    """--include on checkpoint-2/ selects model weights: the optimizer's state holds no such
    name, and materialize wrote model.partial.safetensors, then failed on optimizer.pt
    without naming what it had written; a glob nothing matches writes nothing."""
    from safetensors.torch import load_file

    repo.tz("track", "*.bin", "*.pth")
    dest = repo.path / "checkpoint-2"
    shutil.copytree(trainer_folder, dest)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "trainer checkpoint")
    out = repo.tz("materialize", "checkpoint-2/", "--include", "transformer.h.0.*").stdout
    assert out.decode().splitlines() == [
        "checkpoint-2/model.safetensors: 12 of 16 parameters -> "
        "checkpoint-2/model.partial.safetensors"]
    assert all(k.startswith("transformer.h.0.")
               for k in load_file(dest / "model.partial.safetensors"))
    (dest / "model.partial.safetensors").unlink()
    for args in (["checkpoint-2/", "--include", "nothing.*"],
                 ["checkpoint-2/model.safetensors", "checkpoint-2/optimizer.pt",
                  "--include", "transformer.*"]):
        proc = repo.tz("materialize", *args, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.startswith("theta-zarr: ") and \
            "no parameter matches" in err and err.count("\n") == 1, err
        assert not (dest / "model.partial.safetensors").exists()
    proc = repo.tz("materialize", "checkpoint-2/", "--include", "*", "-o", "one.pt", check=False)
    assert proc.returncode == 1 and "takes one checkpoint" in proc.stderr.decode()
    assert not (repo.path / "one.pt").exists()


def test_refusing_opaque_files_names_the_refused_global(repo, trainer_folder):
    repo.tz("track", "*.pth")
    repo.git("config", "theta-zarr.opaque", "false")
    shutil.copy(trainer_folder / "rng_state.pth", repo.path / "rng_state.pth")
    proc = repo.git("add", "rng_state.pth", check=False)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("theta-zarr:")]
    assert len(ours) == 1 and "rng_state.pth" in ours[0] and "GLOBAL" in ours[0], ours
    assert "Traceback" not in proc.stderr.decode()
    assert repo.out("ls-files", "rng_state.pth") == ""


@pytest.mark.parametrize("direct", ["off", "1"], ids=["pipe", "from-file"])
def test_numpy_files_that_are_not_weights_are_kept_as_opaque_bytes(repo, tmp_path, direct):
    """Strings, dates, big-endian and object arrays: valid numpy files under a tracked
    pattern, refused at git add (or, for .npy, refused after the header was read, which
    the opaque copy then lacked)."""
    import numpy as np

    repo.git("config", "theta-zarr.direct-checkout", direct)  # clean from the pipe or file
    repo.tz("track", "*.npy")
    arrays = {"labels.npy": np.array(["cat", "dog"] * 500),
              "times.npy": np.arange("2026-01-01", "2026-04-01", dtype="datetime64[D]"),
              "be.npy": np.arange(1000, dtype=">f4"),
              "obj.npy": np.array([{"a": 1}, None], dtype=object)}
    for name, a in arrays.items():
        np.save(repo.path / name, a, allow_pickle=True)
    np.savez(repo.path / "mixed.npz", w=np.arange(5000.0), names=np.array(["x", "y"]))
    files = [*arrays, "mixed.npz"]
    want = {f: (repo.path / f).read_bytes() for f in files}
    proc = repo.git("add", ".gitattributes", *files)
    notes = [ln for ln in proc.stderr.decode().splitlines() if "stored as opaque bytes" in ln]
    assert len(notes) == len(files)
    repo.git("commit", "-q", "-m", "arrays")
    for f in files:
        (repo.path / f).unlink()
    repo.git("checkout", "--", *files)
    assert {f: (repo.path / f).read_bytes() for f in files} == want
    assert repo.out("status", "--porcelain") == ""
    repo.git("config", "theta-zarr.opaque", "false")
    np.save(repo.path / "more.npy", np.array(["x"]))
    assert repo.git("add", "more.npy", check=False).returncode != 0
