"""Bad input: a one-line error naming the file, a non-zero exit, and an unchanged repository."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import safetensors.numpy
import torch
from helpers import manifest_at

from theta_zarr.demo import ModelShape, write_model
from theta_zarr.manifest import Manifest

SHAPE = ModelShape(hidden=64, layers=2, vocab=128)


def index_state(repo) -> bytes:
    return repo.git("ls-files", "-s").stdout


def assert_rejected(repo, path: str, expect: str) -> str:
    before = index_state(repo)
    head = repo.out("rev-parse", "HEAD")
    proc = repo.git("add", path, check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    ours = [line for line in err.splitlines() if line.startswith("theta-zarr:")]
    assert len(ours) == 1, err
    assert path in ours[0] and expect in ours[0], ours[0]
    assert index_state(repo) == before
    assert repo.out("rev-parse", "HEAD") == head
    return ours[0]


def test_truncated_safetensors(repo):
    p = repo.path / "model.safetensors"
    write_model(str(p), SHAPE)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert_rejected(repo, "model.safetensors", "truncated")


def evil_pickle(marker) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3), "evil": Evil()}, buf)
    return buf.getvalue()


def test_pickle_that_runs_code_is_refused_when_weights_are_required(repo, tmp_path):
    marker = tmp_path / "pwned"
    repo.git("config", "theta-zarr.opaque", "false")
    (repo.path / "evil.pt").write_bytes(evil_pickle(marker))
    line = assert_rejected(repo, "evil.pt", "weights_only")
    assert "refused" in line and "GLOBAL posix.system" in line
    assert not marker.exists()


def test_pickle_that_runs_code_is_kept_as_bytes_never_run(repo, tmp_path):
    marker = tmp_path / "pwned"
    data = evil_pickle(marker)
    (repo.path / "evil.pt").write_bytes(data)
    proc = repo.git("add", "evil.pt")
    ours = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("theta-zarr:")]
    assert len(ours) == 1 and "evil.pt" in ours[0] and "opaque" in ours[0], ours
    repo.git("commit", "-q", "-m", "evil")
    m = manifest_at(repo, "HEAD", "evil.pt")
    assert m.format_name == "opaque"
    (repo.path / "evil.pt").unlink()
    repo.git("checkout", "--", "evil.pt")
    assert (repo.path / "evil.pt").read_bytes() == data
    assert not marker.exists()


def test_non_checkpoint_under_tracked_pattern(repo):
    repo.git("config", "theta-zarr.opaque", "false")
    (repo.path / "notes.safetensors").write_text("these are not weights\n")
    assert_rejected(repo, "notes.safetensors", "not a checkpoint")


def test_hand_edited_manifest_with_path_or_bad_digest(repo):
    safetensors.numpy.save_file({"w": np.ones((300, 3), np.float32)},
                                str(repo.path / "m.safetensors"))
    repo.git("add", "m.safetensors")
    repo.git("commit", "-q", "-m", "m")
    manifest = repo.git("cat-file", "blob", "HEAD:m.safetensors").stdout
    m = Manifest.from_bytes(manifest)
    digest = m.params["w"].chunks[0]
    # a lazy working tree holds manifests; a hand-edited one must be refused by clean
    bad_path = manifest.replace(b'"w":', b'"../../etc/passwd":')
    (repo.path / "m.safetensors").write_bytes(bad_path)
    assert_rejected(repo, "m.safetensors", "invalid parameter name")
    bad_digest = manifest.replace(digest.encode(), b"blake3:../../../../tmp/x")
    (repo.path / "m.safetensors").write_bytes(bad_digest)
    assert_rejected(repo, "m.safetensors", "invalid digest")
    unknown = manifest.replace(b'{"theta_zarr": 1,', b'{"theta_zarr": 9,')
    (repo.path / "m.safetensors").write_bytes(unknown)
    assert_rejected(repo, "m.safetensors", "unsupported manifest version")
    conflicted = b"<<<<<<< ours\n" + manifest + b"=======\n" + manifest + b">>>>>>> theirs\n"
    (repo.path / "m.safetensors").write_bytes(conflicted)
    assert_rejected(repo, "m.safetensors", "conflict")


def _commit_one_chunk(repo):
    """Commit a one-chunk checkpoint; its chunk's digest and cache object's path."""
    safetensors.numpy.save_file({"w": np.arange(5000, dtype=np.float32)},
                                str(repo.path / "m.safetensors"))
    repo.git("add", "m.safetensors")
    repo.git("commit", "-q", "-m", "m")
    digest = Manifest.from_bytes(
        repo.git("cat-file", "blob", "HEAD:m.safetensors").stdout).params["w"].chunks[0]
    obj = repo.objects_dir / digest[7:9] / digest[9:]
    return digest, obj


def test_missing_chunk_on_checkout_names_it(repo):
    digest, obj = _commit_one_chunk(repo)
    obj.unlink()
    (repo.path / "m.safetensors").unlink()
    proc = repo.git("checkout", "--", "m.safetensors", check=False)
    assert proc.returncode != 0
    assert digest in proc.stderr.decode()
    assert not (repo.path / "m.safetensors").exists() or \
        (repo.path / "m.safetensors").stat().st_size == 0


def test_corrupt_chunk_in_cache_is_detected(repo):
    digest, obj = _commit_one_chunk(repo)
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))
    (repo.path / "m.safetensors").unlink()
    proc = repo.git("checkout", "--", "m.safetensors", check=False)
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert digest in err and "corrupt" in err


def test_legacy_torch_file_is_tracked(repo):
    torch.save({"w": torch.ones(3)}, repo.path / "old.pt", _use_new_zipfile_serialization=False)
    repo.git("add", "old.pt")
    m = Manifest.from_bytes(repo.git("cat-file", "blob", ":old.pt").stdout)
    assert m.format_name == "torch" and m.format["serialization"] == "legacy"


def test_raw_pickle_is_not_loaded_by_plain_pickle(repo):
    # a raw pickle (not a torch file) under *.pt is not a checkpoint: refused, or kept as bytes
    repo.git("config", "theta-zarr.opaque", "false")
    (repo.path / "raw.pt").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    assert_rejected(repo, "raw.pt", "not a checkpoint")
