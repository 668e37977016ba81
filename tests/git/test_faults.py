"""Faults through git: hostile checkpoints and hand-edited manifests, a corrupt cache,
fsck over manifests that cannot be checked out, materialize without install.

Manifests are committed with ``git hash-object --no-filters`` (as an attacker or a
bad merge would), then checked out: every case must end in one ``theta-zarr:`` line,
a non-zero exit and no traceback, and never in a file that cannot be loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from helpers import manifest_at

from theta_zarr.manifest import Manifest


def commit_blob(repo, path: str, data: bytes) -> None:
    """Commit ``data`` as the blob of ``path`` without running any filter."""
    sha = repo.git("hash-object", "-w", "--no-filters", "--stdin", input=data).stdout
    repo.git("update-index", "--add", "--cacheinfo", f"100644,{sha.decode().strip()},{path}")
    repo.git("commit", "-q", "-m", f"hand-made {path}")


def assert_one_line(proc, *fragments: str) -> str:
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Traceback" not in err and "internal error" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("theta-zarr:")]
    assert len(ours) == 1, err
    for fragment in fragments:
        assert fragment in ours[0], ours[0]
    return ours[0]


def checkout_fresh(repo, path: str):
    (repo.path / path).unlink(missing_ok=True)
    return repo.git("checkout", "--", path, check=False)


def small_model(repo, name: str = "m.safetensors") -> Manifest:
    safetensors.numpy.save_file({"w": np.arange(5000, dtype=np.float32),
                                 "b": np.ones(4, dtype=np.float32)}, str(repo.path / name))
    repo.git("add", name)
    repo.git("commit", "-q", "-m", name)
    return manifest_at(repo, "HEAD", name)


def edited(manifest: Manifest, name: str, **changes) -> bytes:
    obj = json.loads(manifest.to_bytes())
    obj["params"][name].update(changes)
    return json.dumps(obj).encode()


# -- item 2: memory bombs from a few bytes ---------------------------------------------------
def test_a_tiny_header_declaring_an_enormous_tensor_is_refused_before_any_work(repo):
    header = json.dumps({"w": {"dtype": "U8", "shape": [2**40, 2**40],
                               "data_offsets": [0, 2**80]}}).encode()
    (repo.path / "bomb.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert_one_line(repo.git("add", "bomb.safetensors", check=False), "bomb.safetensors",
                    "bytes")


def test_clean_refuses_a_shape_smudge_would_refuse(repo):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**62, 4, 0],
                               "data_offsets": [0, 0]}}).encode()
    header += b" " * (-len(header) % 8)
    (repo.path / "z.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert_one_line(repo.git("add", "z.safetensors", check=False), "out of range")


def test_a_manifest_whose_shape_needs_a_billion_chunks_fails_in_one_line(repo):
    m = small_model(repo)
    one = m.params["w"].chunks[0]
    commit_blob(repo, "m.safetensors", edited(m, "w", shape=[2**30, 1], chunk_shape=[1, 1],
                                              chunks=[one]))
    for proc in (checkout_fresh(repo, "m.safetensors"),
                 repo.tz("ls-files", check=False),
                 repo.tz("diff", "HEAD~1", "HEAD", check=False)):
        assert_one_line(proc, "1 chunks listed, shape needs 1073741824")


# -- item 3: manifests that disagree with their chunks ----------------------------------------
def test_a_dtype_edited_without_its_chunks_never_checks_out(repo):
    m = small_model(repo)
    commit_blob(repo, "m.safetensors", edited(m, "w", dtype="float64"))
    line = assert_one_line(checkout_fresh(repo, "m.safetensors"), "float64", "holds")
    assert "chunk 0" in line
    assert not (repo.path / "m.safetensors").exists() or \
        (repo.path / "m.safetensors").stat().st_size == 0


def test_the_zarr_view_refuses_chunks_of_the_wrong_size(repo):
    import pytest
    import zarr

    from theta_zarr.cache import Cache
    from theta_zarr.objects import ObjectError
    from theta_zarr.zarrstore import ManifestStore

    m = small_model(repo)
    bad = Manifest.from_bytes(edited(m, "w", dtype="float64"))
    group = zarr.open_group(ManifestStore(bad, Cache(str(repo.objects_dir.parent))), mode="r")
    with pytest.raises(ObjectError, match="holds 20000 bytes"):
        group["w"][:]


def test_a_committed_conflict_marked_manifest_does_not_check_out_as_text(repo):
    m = small_model(repo)
    text = m.to_bytes()
    commit_blob(repo, "m.safetensors",
                b"<<<<<<< ours\n" + text + b"=======\n" + text + b">>>>>>> theirs\n")
    assert_one_line(checkout_fresh(repo, "m.safetensors"), "conflict")


def test_fsck_parses_every_manifest_it_walks(repo):
    m = small_model(repo)
    commit_blob(repo, "m.safetensors", edited(m, "w", shape=[7, 7]))
    proc = repo.tz("fsck", check=False)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "unusable manifest" in out and "m.safetensors" in out
    # a path with a tab is named as git lists it, one line a problem
    commit_blob(repo, "a\tb.safetensors", edited(m, "w", shape=[7, 7]))
    out = repo.tz("fsck", check=False).stdout.decode()
    assert 'unusable manifest "a\\tb.safetensors" (git blob' in out, out


# -- item 4: deeply nested JSON ---------------------------------------------------------------
def test_a_hundred_thousand_levels_of_nesting_is_one_line(repo):
    deep = b'{"theta_zarr": 1, "format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    commit_blob(repo, "deep.safetensors", deep)
    assert_one_line(checkout_fresh(repo, "deep.safetensors"), "nested")
    assert_one_line(repo.tz("ls-files", check=False), "nested")


# -- item 5: a corrupt object in the cache is repaired ---------------------------------------
def _corrupt(repo, digest: str) -> None:
    obj = repo.objects_dir / digest[7:9] / digest[9:]
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(obj, 0o644)
    obj.write_bytes(bytes(data))


def test_corrupt_cache_object_is_quarantined_then_rewritten_by_clean(repo):
    m = small_model(repo)
    original = (repo.path / "m.safetensors").read_bytes()
    digest = m.params["w"].chunks[0]
    _corrupt(repo, digest)
    line = assert_one_line(checkout_fresh(repo, "m.safetensors"), digest, "quarantine")
    assert "renormalize" in line
    assert (repo.objects_dir.parent / "quarantine" / digest[7:]).exists()
    # cleaning the same bytes again writes the object back
    (repo.path / "m.safetensors").write_bytes(original)
    repo.git("add", "--renormalize", "m.safetensors")
    assert checkout_fresh(repo, "m.safetensors").returncode == 0
    assert (repo.path / "m.safetensors").read_bytes() == original


@pytest.mark.parametrize("fault", ["corrupt", "missing"])
def test_a_bad_chunk_of_a_torch_file_is_one_line(repo, fault):
    """A .pt file is rebuilt on a memory map: the error's traceback held views of it, and
    closing the map raised BufferError, reported as an internal error instead."""
    import torch

    torch.save({"a": torch.randn(64, 256), "b": torch.randn(64, 256)}, repo.path / "opt.pt")
    repo.git("-c", "theta-zarr.chunk-size=16KiB", "add", "opt.pt")
    repo.git("commit", "-q", "-m", "opt")
    m = manifest_at(repo, "HEAD", "opt.pt")
    digest = m.params[sorted(m.params)[-1]].chunks[-1]
    if fault == "corrupt":
        _corrupt(repo, digest)
        assert_one_line(checkout_fresh(repo, "opt.pt"), "opt.pt", digest, "quarantine")
    else:
        (repo.objects_dir / digest[7:9] / digest[9:]).unlink()
        assert_one_line(checkout_fresh(repo, "opt.pt"), "opt.pt", "not in the cache")


def test_a_checkout_that_misses_the_objects_of_an_unusable_pack_names_the_pack(repo):
    """A pack cut short is left out of every lookup: the checkout said only that 120
    chunks were not in the cache, and nothing of the pack that held them."""
    from theta_zarr import packs
    rng = np.random.default_rng(0)
    safetensors.numpy.save_file({f"experts.{i}.w": rng.standard_normal(256, dtype=np.float32)
                                 for i in range(packs.PACK_MIN + 20)},
                                str(repo.path / "model.safetensors"))
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "experts")
    [path] = packs.list_packs(str(repo.objects_dir.parent / packs.FOLDER))
    os.chmod(path, 0o644)
    os.truncate(path, os.path.getsize(path) - 1)
    assert_one_line(checkout_fresh(repo, "model.safetensors"), "not in the cache",
                    f"{os.path.basename(path)} is corrupt")


@pytest.mark.parametrize("direct", ["off", "1"], ids=["pipe", "direct"])
def test_corrupt_cache_object_is_fetched_again_from_the_remote(repo, tmp_path, direct):
    """Through git's pipe and in a direct write (after git is done) alike."""
    repo.git("config", "theta-zarr.direct-checkout", direct)
    bucket = tmp_path / "bucket"
    repo.tz("remote", "add", "origin", str(bucket))
    m = small_model(repo)
    original = (repo.path / "m.safetensors").read_bytes()
    repo.tz("push", "origin")
    _corrupt(repo, m.params["w"].chunks[0])
    proc = checkout_fresh(repo, "m.safetensors")
    assert proc.returncode == 0, proc.stderr.decode()
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith("theta-zarr: object ") and line.endswith("fetched a good copy again")
    assert (repo.path / "m.safetensors").read_bytes() == original
    assert repo.tz("fsck").returncode == 0


@pytest.mark.parametrize("direct", ["off", "1"], ids=["pipe", "direct"])
def test_a_corrupt_cache_object_the_remote_lacks_says_it_was_corrupt(repo, tmp_path, direct):
    """A commit not pushed yet: its corrupt cached chunk was moved to quarantine, then the
    remote lacked it, and the checkout said only "object ... is missing from BUCKET", as
    if the push had been forgotten; the line now says the cache's copy was corrupt."""
    repo.git("config", "theta-zarr.direct-checkout", direct)
    bucket = tmp_path / "bucket"
    repo.tz("remote", "add", "origin", str(bucket))
    commit_blob(repo, "notes.txt", b"first")
    repo.tz("push", "origin")  # the remote exists, without the next commit's chunks
    m = small_model(repo)
    digest = m.params["w"].chunks[0]
    _corrupt(repo, digest)
    for fragment in ("missing from", "does not exist"):
        if fragment == "missing from":
            bucket.mkdir(exist_ok=True)  # the remote exists and lacks the chunk
        else:  # the remote's folder was never made (nothing pushed there yet)
            shutil.rmtree(bucket)
            os.replace(repo.objects_dir.parent / "quarantine" / digest[7:],
                       repo.objects_dir / digest[7:9] / digest[9:])  # corrupt, back
        proc = checkout_fresh(repo, "m.safetensors")
        [line] = [ln for ln in proc.stderr.decode().splitlines()
                  if ln.startswith("theta-zarr:")]
        assert (proc.returncode != 0) == (direct == "off")  # a direct write leaves it lazy
        for part in (digest, "is corrupt", "quarantine", fragment, "renormalize"):
            assert part in line, line


def test_a_scratch_file_that_does_not_fit_is_one_line_naming_its_folder(repo):
    """An .npz (or .pt) file is rebuilt through a scratch file in the cache's tmp/.  When
    it did not fit (a full disk, a file-size limit) materialize and checkout said a bare
    "[Errno 27] File too large" (the torch side: tests/formats/test_torch.py)."""
    import numpy as np

    np.savez(repo.path / "w.npz", w=np.ones((64, 256), np.float32))
    repo.git("add", "w.npz")
    repo.git("commit", "-q", "-m", "npz")
    (repo.path / "w.npz").unlink()
    repo.git("-c", "theta-zarr.lazy=true", "checkout", "--", "w.npz")
    before = sorted(p.name for p in repo.path.iterdir())
    tmp = repo.path / ".git" / "theta-zarr" / "tmp"
    proc = repo.run("prlimit", "--fsize=1000", "git", "theta-zarr", "materialize", "w.npz",
                    check=False)
    line = assert_one_line(proc)
    assert line == f"theta-zarr: a scratch file in {tmp}: File too large", line
    assert (repo.path / "w.npz").read_bytes().startswith(b'{"theta_zarr"')  # still lazy
    assert sorted(p.name for p in repo.path.iterdir()) == before
    assert list(tmp.iterdir()) == []
    repo.tz("materialize", "w.npz")
    assert repo.out("status", "--porcelain") == ""


def test_corrupt_cache_object_without_a_remote_leaves_a_direct_write_lazy(repo):
    """A direct write happens after git is done, so git cannot fail the checkout: the file
    stays its manifest (a lazy file, which git status rightly calls clean), and one line
    says which object, which file and what to do."""
    repo.git("config", "theta-zarr.direct-checkout", "1")
    m = small_model(repo)
    original = (repo.path / "m.safetensors").read_bytes()
    digest = m.params["w"].chunks[0]
    _corrupt(repo, digest)
    proc = checkout_fresh(repo, "m.safetensors")
    [line] = proc.stderr.decode().splitlines()
    for fragment in (digest, "quarantine", "no remote", "lazy files): m.safetensors",
                     "materialize"):
        assert fragment in line, line
    assert line.startswith("theta-zarr: ")
    assert (repo.path / "m.safetensors").read_bytes() == repo.git(
        "cat-file", "blob", "HEAD:m.safetensors").stdout
    assert "lazy" in repo.tz("ls-files").stdout.decode()
    assert repo.out("status", "--porcelain") == ""
    # the chunk restored (the original file cleaned again), materialize writes the file
    (repo.path / "orig.safetensors").write_bytes(original)
    repo.git("add", "orig.safetensors")
    repo.tz("materialize", "m.safetensors")
    assert (repo.path / "m.safetensors").read_bytes() == original


# -- item 11: materialize checks its result ---------------------------------------------------
def test_materialize_in_a_clone_without_install_says_so(repo, make_repo, tmp_path):
    small_model(repo)
    bare = tmp_path / "origin.git"
    repo.git("clone", "-q", "--bare", str(repo.path), str(bare))
    clone = make_repo("plain")
    clone.git("clone", "-q", str(bare), ".")
    assert (clone.path / "m.safetensors").read_bytes().startswith(b'{"theta_zarr"')
    line = assert_one_line(clone.tz("materialize", check=False), "install")
    assert (clone.path / "m.safetensors").read_bytes().startswith(b'{"theta_zarr"')
    # the line docs/troubleshooting.md tells the reader to look for
    page = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    assert f"| `{line.removeprefix('theta-zarr: ')}` |" in page
    assert "materialized" not in clone.tz("materialize", check=False).stdout.decode()



def test_materialize_while_the_index_is_locked_is_one_line(repo):
    """A ``.git/index.lock`` left by a killed git (or held by a running one): materialize
    waited, fell back to git's pipe, which needs the lock too, and said ``internal error
    (GitError: remove the file manually to continue.)``."""
    small_model(repo)
    (repo.path / "m.safetensors").unlink()
    repo.git("-c", "theta-zarr.lazy=true", "checkout", "--", "m.safetensors")
    lock = repo.path / ".git" / "index.lock"
    lock.write_bytes(b"")
    line = assert_one_line(repo.tz("materialize", check=False),
                           "m.safetensors: not materialized:", f"{lock} exists")
    assert "remove it" in line and lock.exists()
    assert (repo.path / "m.safetensors").read_bytes().startswith(b'{"theta_zarr"')

def test_materialize_of_a_file_theta_zarr_does_not_track_is_refused(repo):
    """It said "README: already materialized" and exited 0."""
    small_model(repo)
    (repo.path / "README").write_text("notes\n")
    assert_one_line(repo.tz("materialize", "README", check=False),
                    "README: no file theta-zarr tracks matches it")
    assert "already materialized" in repo.tz("materialize", "m.safetensors").stdout.decode()


def test_materialize_output_is_a_new_path_unless_forced(repo, tmp_path):
    """``-o`` names a new file, as ``pull``'s OUT does: an existing file (the user's notes)
    is not overwritten without --force, and a folder is refused in one line."""
    small_model(repo)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert_one_line(repo.tz("materialize", "m.safetensors", "--include", "w", "-o",
                            str(notes), check=False), "already exists", "--force")
    assert notes.read_text() == "my notes\n"
    folder = tmp_path / "outdir"
    folder.mkdir()
    line = assert_one_line(repo.tz("materialize", "m.safetensors", "--include", "w", "-o",
                                   str(folder), check=False), "is a folder")
    assert ".theta-zarr-" not in line  # no temporary name in the message
    repo.tz("materialize", "m.safetensors", "--include", "w", "-o", str(notes), "--force")
    sd = safetensors.numpy.load_file(str(notes))
    assert list(sd) == ["w"] and (sd["w"] == np.arange(5000, dtype=np.float32)).all()
    # -o with no PATH, although the repository tracks one checkpoint: what it writes must
    # not change when a second one is committed
    for args in ((), ("--include", "w")):
        assert_one_line(repo.tz("materialize", *args, "-o", str(tmp_path / "x"), check=False),
                        "--output needs exactly one PATH")
    assert not (tmp_path / "x").exists()


def test_materialize_output_without_include_writes_the_whole_file_there(repo, tmp_path):
    """Of a lazy file it wrote OUT and said "m.safetensors: materialized"; of a
    materialized one it said "already materialized" and wrote nothing."""
    small_model(repo)
    original = (repo.path / "m.safetensors").read_bytes()
    for lazy in (False, True):
        if lazy:
            (repo.path / "m.safetensors").unlink()
            repo.git("checkout", "--", "m.safetensors", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
        before = (repo.path / "m.safetensors").read_bytes()
        out = tmp_path / f"copy-{lazy}.safetensors"
        line = repo.tz("materialize", "m.safetensors", "-o", str(out)).stdout.decode()
        assert line == f"m.safetensors: 2 parameters -> {out}\n"
        assert out.read_bytes() == original
        assert (repo.path / "m.safetensors").read_bytes() == before  # left as it was
    assert repo.out("status", "--porcelain") == ""


def test_a_chunk_missing_from_the_remote_too_is_one_line(repo, tmp_path):
    """The batch fetch of delayed files failed first and said so, then the file's own
    fetch said it again with its path: the same error twice."""
    repo.tz("remote", "add", "origin", str(tmp_path / "bucket"))
    m = small_model(repo)
    repo.tz("push", "origin")
    digest = m.params["w"].chunks[0]
    for root in (repo.objects_dir, tmp_path / "bucket" / "objects"):
        (root / digest[7:9] / digest[9:]).unlink()
    assert_one_line(checkout_fresh(repo, "m.safetensors"), "m.safetensors", digest,
                    "is missing")


def test_fetch_with_an_include_that_matches_nothing_is_refused(repo, tmp_path):
    repo.tz("remote", "add", "origin", str(tmp_path / "bucket"))
    small_model(repo)
    repo.tz("push", "origin")
    assert_one_line(repo.tz("fetch", "origin", "HEAD", "--include", "zzz*", check=False),
                    "no parameter", "zzz*")
    assert "fetched 0 objects" in repo.tz("fetch", "origin", "HEAD", "--include",
                                          "w").stdout.decode()
