"""theta_zarr.load_state_dict / open over a real repository."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import manifest_at

import theta_zarr
from theta_zarr.formats import transposed
from theta_zarr.git.repo import GitInputError
from theta_zarr.manifest import ManifestError
from theta_zarr.objects import MissingObjectError
from theta_zarr.remote import RemoteError


@pytest.fixture
def committed(repo):
    g = torch.Generator().manual_seed(0)
    sd = {
        "encoder.layer.0.weight": torch.randn(128, 64, generator=g).to(torch.bfloat16),
        "encoder.layer.1.weight": torch.randn(128, 64, generator=g).to(torch.bfloat16),
        "lm_head.weight": torch.randn(256, 64, generator=g).to(torch.bfloat16),
        "lm_head.bias": torch.randn(256, generator=g),
        "scale": torch.tensor(0.5),
    }
    repo.git("config", "theta-zarr.chunk-size", "4KiB")
    path = repo.path / "model.safetensors"
    safetensors.torch.save_file(sd, str(path))
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "base")
    manifest = manifest_at(repo, "HEAD")
    return repo, path, sd, manifest


def test_load_state_dict_all_params_bit_exact(committed):
    repo, path, sd, _ = committed
    loaded = theta_zarr.load_state_dict(str(path))
    assert list(loaded) == list(sd) or set(loaded) == set(sd)
    for name, t in sd.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape
        assert torch.equal(loaded[name].reshape(-1).view(torch.uint8),
                           t.reshape(-1).view(torch.uint8))


def test_load_state_dict_include_reads_only_selected_chunks(committed):
    repo, path, sd, manifest = committed
    keep = {d for n, e in manifest.params.items() if n.startswith("lm_head.") for d in e.chunks}
    # remove every other object from the cache: loading lm_head must not need them
    removed = 0
    for d in manifest.digests() - keep:
        (repo.objects_dir / d[7:9] / d[9:]).unlink()
        removed += 1
    assert removed > 0
    loaded = theta_zarr.load_state_dict(str(path), include=["lm_head.*"])
    assert set(loaded) == {"lm_head.weight", "lm_head.bias"}
    assert torch.equal(loaded["lm_head.weight"], sd["lm_head.weight"])
    with pytest.raises(Exception, match="not in the cache"):
        theta_zarr.load_state_dict(str(path), include="encoder.*")
    with pytest.raises(ManifestError, match="no parameter matches lm_haed.*, x"):
        theta_zarr.load_state_dict(str(path), include=["lm_haed.*", "x"])
    # the file is named, as materialize --include names it
    with pytest.raises(ManifestError) as e:
        theta_zarr.load_state_dict(str(path), include="lm_haed.*")
    assert str(e.value) == f"{path}: no parameter matches lm_haed.*"


def test_load_state_dict_at_older_revision(committed):
    repo, path, sd, _ = committed
    tuned = dict(sd)
    tuned["lm_head.bias"] = sd["lm_head.bias"] + 1
    safetensors.torch.save_file(tuned, str(path))
    repo.git("commit", "-q", "-am", "tuned")
    old = theta_zarr.load_state_dict(str(path), rev="HEAD~1", include="lm_head.bias")
    new = theta_zarr.load_state_dict(str(path), rev="HEAD", include="lm_head.bias")
    assert torch.equal(old["lm_head.bias"], sd["lm_head.bias"])
    assert torch.equal(new["lm_head.bias"], tuned["lm_head.bias"])
    # rev=None reads the working tree file itself
    wt = theta_zarr.load_state_dict(str(path), rev=None, include="lm_head.bias")
    assert torch.equal(wt["lm_head.bias"], tuned["lm_head.bias"])


def test_a_revision_of_a_folder_the_working_tree_no_longer_has(committed):
    """A checkpoint read at an older revision from a folder since deleted (a run's
    ``runs/step-100/``): the repository is found from the nearest folder that exists.
    It was a bare ``FileNotFoundError`` naming the missing folder."""
    repo, path, sd, _ = committed
    (repo.path / "runs" / "step-100").mkdir(parents=True)
    repo.git("mv", "model.safetensors", "runs/step-100/model.safetensors")
    repo.git("commit", "-q", "-m", "moved into a run folder")
    repo.git("rm", "-q", "-r", "runs")
    repo.git("commit", "-q", "-m", "run deleted")
    old = repo.path / "runs" / "step-100" / "model.safetensors"
    assert not old.parent.exists()
    loaded = theta_zarr.load_state_dict(str(old), rev="HEAD~1", include="lm_head.bias")
    assert torch.equal(loaded["lm_head.bias"], sd["lm_head.bias"])
    g = theta_zarr.open(str(old), rev="HEAD~1")
    assert g["scale"][...] == 0.5
    with pytest.raises(GitInputError, match="runs/step-100/model.safetensors: no such file in "
                                            "revision HEAD"):
        theta_zarr.load_state_dict(str(old))
    with pytest.raises(GitInputError, match="no such file in the working tree"):
        theta_zarr.load_state_dict(str(old), rev=None)


def test_two_tensors_of_one_flat_key_are_refused_not_one_dropped(repo):
    """A PyTorch file whose key paths flatten to one key (``"a.b"`` beside
    ``{"a": {"b": ...}}``, ``0`` beside ``"0"``): ``load_state_dict`` returned one of the
    two tensors and dropped the other without a word.  It says so, naming the file; the
    same tensor under both keys is no clash, and diffs of such a file still work."""
    path = repo.path / "clash.pt"
    torch.save({"a.b": torch.ones(4), "a": {"b": torch.zeros(4)}, 0: torch.ones(2),
                "0": torch.zeros(2)}, path)
    t = torch.arange(3.0)
    torch.save({"x.y": t, "x": {"y": t}}, repo.path / "same.pt")
    repo.git("add", "clash.pt", "same.pt")
    repo.git("commit", "-q", "-m", "clashing keys")
    with pytest.raises(ManifestError, match=r"clash\.pt: two tensors have the key 'a\.b'"):
        theta_zarr.load_state_dict(str(path))
    assert torch.equal(theta_zarr.load_state_dict(str(repo.path / "same.pt"))["x.y"], t)
    # what a diff asks of the file's tensors (the transposed ones) is still answered
    assert transposed(manifest_at(repo, "HEAD", "clash.pt")) == set()


def test_load_state_dict_from_lazy_working_tree(committed):
    repo, path, sd, _ = committed
    path.unlink()
    repo.git("checkout", "--", "model.safetensors", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    assert path.read_bytes().startswith(b'{"theta_zarr"')
    loaded = theta_zarr.load_state_dict(str(path), rev=None, include=["scale"])
    assert loaded["scale"].item() == 0.5


def test_working_tree_file_theta_zarr_does_not_track_is_refused(committed):
    repo, path, sd, _ = committed
    (repo.path / "notes.txt").write_text("hi\n")
    safetensors.torch.save_file(sd, str(repo.path / "weights.bin"))  # no track line
    for name in ("notes.txt", "weights.bin"):
        with pytest.raises(ManifestError, match=f"{name}: not tracked by theta-zarr"):
            theta_zarr.load_state_dict(str(repo.path / name), rev=None)
        with pytest.raises(ManifestError, match=f"{name}: not tracked by theta-zarr"):
            theta_zarr.open(str(repo.path / name), rev=None)
    with pytest.raises(GitInputError, match="gone.safetensors: no such file in the working tree"):
        theta_zarr.load_state_dict(str(repo.path / "gone.safetensors"), rev=None)


def test_chunks_missing_with_no_remote_name_the_file(committed, monkeypatch):
    repo, path, sd, manifest = committed
    monkeypatch.chdir(repo.path)  # the message names the path as given
    for d in manifest.digests():
        (repo.objects_dir / d[7:9] / d[9:]).unlink(missing_ok=True)
    with pytest.raises(MissingObjectError, match=r"^model.safetensors: \d+ chunk\(s\) are not in"):
        theta_zarr.load_state_dict("model.safetensors", include="lm_head.*")
    proc = repo.tz("materialize", "model.safetensors", "--include", "lm_head.*", check=False)
    assert proc.returncode != 0
    assert "model.partial.safetensors: " in proc.stderr.decode(), proc.stderr


def test_open_returns_zarr_group(committed):
    repo, path, sd, _ = committed
    g = theta_zarr.open(str(path))
    arr = g["lm_head.bias"]
    np.testing.assert_array_equal(arr[10:20], sd["lm_head.bias"][10:20].numpy())
    w = g["encoder.layer.0.weight"][...]
    assert w.dtype.name == "bfloat16"
    assert np.array_equal(w.view(np.uint16),
                          sd["encoder.layer.0.weight"].view(torch.uint16).numpy())


class TiedLM(torch.nn.Module):
    """GPT-2's shape in small: lm_head.weight is wte.weight."""

    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(50, 8)
        self.qkv = torch.nn.Linear(8, 24)
        self.lm_head = torch.nn.Linear(8, 50, bias=False)
        self.lm_head.weight = self.wte.weight


def test_load_state_dict_returns_tied_aliases_and_shared_views(repo):
    torch.manual_seed(0)
    model = TiedLM()
    sd = model.state_dict()
    w = sd["qkv.weight"]
    sd.update({"q": w[:8], "k": w[8:16], "v": w[16:]})  # a fused projection's slices
    torch.save(sd, repo.path / "model.pt")
    repo.git("add", "model.pt")
    repo.git("commit", "-q", "-m", "tied")
    ref = torch.load(repo.path / "model.pt", weights_only=True)

    loaded = theta_zarr.load_state_dict(str(repo.path / "model.pt"))
    assert list(loaded) == list(ref)
    for k, t in ref.items():
        assert torch.equal(loaded[k], t) and loaded[k].stride() == t.stride(), k
    assert loaded["lm_head.weight"].data_ptr() == loaded["wte.weight"].data_ptr()
    assert loaded["k"].untyped_storage().data_ptr() == loaded["q"].untyped_storage().data_ptr()

    only_head = theta_zarr.load_state_dict(str(repo.path / "model.pt"), include=["lm_head.*"])
    assert list(only_head) == ["lm_head.weight"]
    assert torch.equal(only_head["lm_head.weight"], ref["wte.weight"])

    fresh = TiedLM()
    fresh.load_state_dict({k: v for k, v in loaded.items() if k not in "qkv"}, strict=True)
    assert torch.equal(fresh.lm_head.weight, ref["lm_head.weight"])


def test_materialize_include_by_alias_writes_the_tied_pair(repo):
    torch.manual_seed(1)
    torch.save(TiedLM().state_dict(), repo.path / "model.pt")
    repo.git("add", "model.pt")
    repo.git("commit", "-q", "-m", "tied")
    ref = torch.load(repo.path / "model.pt", weights_only=True)
    out = repo.tz("materialize", "model.pt", "--include", "lm_head.*").stdout.decode()
    assert "model.partial.pt" in out
    part = torch.load(repo.path / "model.partial.pt", weights_only=True)
    assert list(part) == ["wte.weight", "lm_head.weight"]  # one storage, both its names
    assert torch.equal(part["lm_head.weight"], ref["lm_head.weight"])
    assert part["lm_head.weight"].data_ptr() == part["wte.weight"].data_ptr()


def test_fortran_ordered_arrays_read_back_as_np_load_gives_them(repo):
    """They are stored as their C-ordered transpose; the API and the Zarr view returned
    that transpose (shape (4, 3) for a (3, 4) array) with no error."""
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((40, 30, 3)))
    b = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    np.save(repo.path / "f.npy", a)
    np.savez(repo.path / "z.npz", b=b, c=np.arange(5.0))
    repo.git("config", "theta-zarr.chunk-size", "4KiB")  # several chunks along each axis
    repo.tz("track", "*.npy")
    repo.git("add", ".gitattributes", "f.npy", "z.npz")
    repo.git("commit", "-q", "-m", "arrays")
    for path, name, want in ((repo.path / "f.npy", "array", a), (repo.path / "z.npz", "b", b)):
        loaded = theta_zarr.load_state_dict(str(path))[name]
        assert loaded.shape == want.shape and np.array_equal(loaded.numpy(), want)
        arr = theta_zarr.open(str(path))[name]
        assert arr.shape == want.shape
        assert np.array_equal(arr[...], want)
        assert np.array_equal(arr[1:3, 2:], want[1:3, 2:])  # chunk keys map both ways
    assert np.array_equal(theta_zarr.open(str(repo.path / "z.npz"))["c"][...], np.arange(5.0))


def test_paths_through_a_linked_folder_name_the_tracked_file(committed, tmp_path):
    """A home or scratch folder reached through a symbolic link: git takes such a path,
    and the API, ls-files and materialize refused it ("no such file in revision HEAD")."""
    repo, path, sd, _ = committed
    link = tmp_path / "link"
    link.symlink_to(repo.path.parent)
    via = link / repo.path.name / "model.safetensors"
    loaded = theta_zarr.load_state_dict(str(via), include="lm_head.bias")
    assert torch.equal(loaded["lm_head.bias"], sd["lm_head.bias"])
    assert "model.safetensors" in repo.tz("ls-files", str(via)).stdout.decode()
    out = tmp_path / "part.safetensors"
    repo.tz("materialize", str(via), "--include", "lm_head.*", "-o", str(out))
    assert set(safetensors.torch.load_file(str(out))) == {"lm_head.weight", "lm_head.bias"}


def test_a_remote_ref_read_names_the_call_not_an_internal_remote_name(tmp_path):
    with pytest.raises(RemoteError, match=r"^remote 'load_state_dict': unknown option 'foo'"):
        theta_zarr.load_state_dict(str(tmp_path), ref="run/step-1", options={"foo": "x"})
    with pytest.raises(RemoteError, match=r"^remote 'load_state_dict': unknown URL scheme"):
        theta_zarr.load_state_dict("s4://bucket/models", ref="run/step-1")


@pytest.mark.parametrize("rev", ["v1", None])
def test_a_revision_with_a_remote_ref_is_refused_not_ignored(tmp_path, rev):
    with pytest.raises(ValueError, match="rev=.* and ref='run/step-1' exclude each other"):
        theta_zarr.load_state_dict(str(tmp_path), ref="run/step-1", rev=rev)
