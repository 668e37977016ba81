"""Everyday git over commits that change a checkpoint: worktree, stash, rebase, cherry-pick."""

from __future__ import annotations

import functools
import os
import time

import pytest
from helpers import commit_checkpoint, file_sha, run_python

from theta_zarr.demo import ModelShape, write_model

SHAPE = ModelShape(hidden=64, layers=3, vocab=256)


commit_model = functools.partial(commit_checkpoint, shape=SHAPE)


def test_worktree_shares_cache_and_checks_out(repo, tmp_path):
    h = commit_model(repo, "base")
    wt = tmp_path / "wt"
    repo.git("worktree", "add", "-q", str(wt), "HEAD")
    assert file_sha(wt / "model.safetensors") == h
    # the linked worktree uses the same cache: no second objects folder
    assert not list(wt.glob(".git/theta-zarr"))
    assert (repo.path / ".git" / "theta-zarr" / "objects").is_dir()
    status = repo.run("git", "-C", str(wt), "status", "--porcelain").stdout
    assert status == b""


def test_worktrees_share_a_cache_set_by_a_relative_path(repo, tmp_path):
    """theta-zarr.cache=.tzcache was resolved from each linked worktree's own top: an empty
    cache, and git worktree add failed ("not in the cache")."""
    repo.git("config", "theta-zarr.cache", ".tzcache")
    h = commit_model(repo, "base")
    assert (repo.path / ".tzcache" / "objects").is_dir()
    wt = tmp_path / "wt"
    repo.git("worktree", "add", "-q", str(wt), "HEAD")
    assert file_sha(wt / "model.safetensors") == h
    assert not (wt / ".tzcache").exists()


def test_stash_and_pop(repo):
    h1 = commit_model(repo, "base")
    write_model(str(repo.path / "model.safetensors"), SHAPE, tuned=SHAPE.layer_names(1))
    h2 = file_sha(repo.path / "model.safetensors")
    repo.git("stash", "-q")
    assert file_sha(repo.path / "model.safetensors") == h1
    assert repo.out("status", "--porcelain") == ""
    repo.git("stash", "pop", "-q")
    assert file_sha(repo.path / "model.safetensors") == h2


def test_rebase_over_checkpoint_changes(repo):
    commit_model(repo, "base")
    repo.git("checkout", "-q", "-b", "feature")
    (repo.path / "notes.txt").write_text("feature work\n")
    repo.git("add", "notes.txt")
    repo.git("commit", "-q", "-m", "notes")
    repo.git("checkout", "-q", "main")
    h_main = commit_model(repo, "tune layer 0", tuned=SHAPE.layer_names(0))
    repo.git("checkout", "-q", "feature")
    repo.git("rebase", "-q", "main")
    assert file_sha(repo.path / "model.safetensors") == h_main
    assert (repo.path / "notes.txt").exists()
    assert repo.out("status", "--porcelain") == ""


def test_cherry_pick_checkpoint_commit(repo):
    commit_model(repo, "base")
    repo.git("checkout", "-q", "-b", "tune")
    h_tuned = commit_model(repo, "tune layer 2", tuned=SHAPE.layer_names(2))
    tuned_commit = repo.out("rev-parse", "HEAD").strip()
    repo.git("checkout", "-q", "main")
    (repo.path / "README").write_text("x\n")
    repo.git("add", "README")
    repo.git("commit", "-q", "-m", "readme")
    repo.git("cherry-pick", tuned_commit)
    assert file_sha(repo.path / "model.safetensors") == h_tuned
    assert repo.out("status", "--porcelain") == ""


def test_clone_with_shared_cache_config(repo, make_repo, tmp_path):
    """theta-zarr.cache points repositories at one cache folder."""
    shared = tmp_path / "shared-cache"
    repo.git("config", "theta-zarr.cache", str(shared))
    h = commit_model(repo, "base")
    assert list((shared / "objects").rglob("*"))
    other = make_repo("other")
    other.git("init", "-q", "-b", "main")
    other.tz("install")
    other.git("config", "theta-zarr.cache", str(shared))
    other.git("fetch", "-q", str(repo.path), "main")
    other.git("checkout", "-q", "FETCH_HEAD")
    assert file_sha(other.path / "model.safetensors") == h


def test_a_shared_cache_keeps_objects_another_repository_stored_compressed(
        repo, make_repo, tmp_path):
    """Two repositories share a cache, one with cache-compression=zstd.  A git add in the
    raw one took each zstd object for a truncated raw one (its size is not a raw
    object's), moved every healthy object to quarantine/ and wrote it again: the cache
    grew by the checkpoint's size each time, and a checkout in the other repository could
    find the object gone in between."""
    shared = tmp_path / "shared-cache"
    repo.git("config", "theta-zarr.cache", str(shared))
    repo.git("config", "theta-zarr.cache-compression", "zstd")
    h = commit_model(repo, "base")
    objects = {p: p.stat().st_ino for p in (shared / "objects").rglob("*") if p.is_file()}
    assert objects
    other = make_repo("other")
    other.git("init", "-q", "-b", "main")
    other.tz("install")
    other.tz("track", "*.safetensors")
    other.git("config", "theta-zarr.cache", str(shared))
    (other.path / "model.safetensors").write_bytes((repo.path / "model.safetensors").read_bytes())
    other.git("add", "model.safetensors")
    other.git("commit", "-q", "-m", "same model")
    assert not (shared / "quarantine").exists()
    assert {p: p.stat().st_ino for p in objects} == objects  # not written again
    for r in (repo, other):
        (r.path / "model.safetensors").unlink()
        r.git("checkout", "--", "model.safetensors")
        assert file_sha(r.path / "model.safetensors") == h
    assert other.tz("fsck").returncode == 0


def test_checkout_recurse_submodules_removes_and_recreates_a_checkpoint_submodule(
        make_repo, tmp_path):
    """git runs the filter of a submodule's commands with GIT_INTERNAL_SUPER_PREFIX set;
    every git command theta-zarr started then died ("rev-parse doesn't support
    --super-prefix"), and the submodule was left with every file staged as deleted."""
    models = make_repo("models")
    models.run("git", "theta-zarr", "install", "--global")
    models.git("config", "--global", "protocol.file.allow", "always")
    models.git("init", "-q", "-b", "main")
    models.tz("track", "*.safetensors")
    models.git("add", ".gitattributes")
    h = commit_model(models, "model")
    bare = tmp_path / "models.git"
    models.run("git", "clone", "-q", "--bare", str(models.path), str(bare))
    models.run("cp", "-r", str(models.path / ".git" / "theta-zarr"), str(bare / "theta-zarr"))
    top = make_repo("super")
    top.git("init", "-q", "-b", "main")
    (top.path / "f").write_text("x\n")
    top.git("add", "f")
    top.git("commit", "-q", "-m", "s0")
    top.git("tag", "nosub")
    top.git("submodule", "-q", "add", f"file://{bare}", "models")
    top.git("commit", "-q", "-m", "add models")
    assert file_sha(top.path / "models" / "model.safetensors") == h
    top.git("checkout", "-q", "--recurse-submodules", "nosub")
    assert not (top.path / "models" / "model.safetensors").exists()
    top.git("checkout", "-q", "--recurse-submodules", "main")
    assert file_sha(top.path / "models" / "model.safetensors") == h
    assert top.run("git", "-C", "models", "status", "--porcelain").stdout == b""


def test_a_shared_repository_shares_the_cache_with_its_group(make_repo):
    """core.sharedRepository=group: git makes .git/objects group-writable; the cache's
    folders were 0755, so another member of the group could not git add a checkpoint."""
    r = make_repo("shared")
    r.git("init", "-q", "--shared=group", "-b", "main")
    r.tz("install")
    r.tz("track", "*.safetensors")
    write_model(str(r.path / "model.safetensors"), SHAPE)
    old = time.time() - 60  # not racily clean: the add keeps a stat record of it
    os.utime(r.path / "model.safetensors", (old, old))
    r.run("sh", "-c", "umask 022 && git add model.safetensors && git commit -q -m m")
    cache = r.path / ".git" / "theta-zarr"
    folders = [cache, *(p for p in cache.rglob("*") if p.is_dir())]
    assert len(folders) > 3
    closed = [str(p) for p in folders if not p.stat().st_mode & 0o020]
    assert closed == []
    files = [p for p in (cache / "objects").rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o040 for p in files)
    # the stat records too: they were 0600 (mkstemp), so another member's git status
    # could not read them and hashed every checkpoint again
    records = list((cache / "stat").iterdir())
    assert records and all(p.stat().st_mode & 0o060 == 0o060 for p in records)


@pytest.mark.parametrize("value, folder, file", [("all", 0o775, 0o664),
                                                  ("group", 0o770, 0o660),
                                                  ("0640", 0o750, 0o640)])
def test_shared_repository_modes_let_readers_into_folders(tmp_path, value, folder, file):
    """core.sharedRepository=all under umask 077 made folders others could read but not
    enter (0774): git gives ``x`` wherever it gives ``r``."""
    proc = run_python(f"""
        import os
        from theta_zarr.git.repo import share_as_git_does
        os.umask(0o077)
        share_as_git_does({value!r})
        os.mkdir("d")
        open("f", "w").close()
        print(oct(os.stat("d").st_mode & 0o777), oct(os.stat("f").st_mode & 0o777))
        """, cwd=tmp_path)
    assert proc.stdout.decode().split() == [oct(folder), oct(file)], proc.stderr


def test_a_boolean_key_without_a_value_is_true_as_git_takes_it(repo):
    """``[theta-zarr] lazy`` (no ``= value``) is true to git (``git config --bool``): it was
    read as false, so checkouts stayed full and a remote's ``anon`` stayed signed."""
    from theta_zarr.git.remotes import configured
    from theta_zarr.git.repo import Repo

    with open(repo.path / ".git" / "config", "a") as f:
        f.write('[theta-zarr]\n\tlazy\n\topaque\n[theta-zarr "remote.pub"]\n'
                "\turl = /tmp/nowhere\n\tanon\n")
    assert repo.out("config", "--bool", "theta-zarr.lazy").strip() == "true"
    settings = Repo.discover(str(repo.path)).settings()
    assert settings.lazy and settings.opaque
    assert configured(Repo.discover(str(repo.path)))["pub"].options["anon"] == "true"
    commit_model(repo, "m")
    (repo.path / "model.safetensors").unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert (repo.path / "model.safetensors").read_bytes().startswith(b'{"theta_zarr"')



def test_a_boolean_key_git_would_refuse_is_one_line(repo, tmp_path):
    """``theta-zarr.lazy ture`` (or ``opaque``, ``delta``, a remote's ``anon``) was read as
    false with no word, where git says "bad boolean config value": a checkout meant to be
    lazy fetched and wrote every checkpoint, requests meant to be unsigned were signed."""
    repo.git("config", "theta-zarr.lazy", "ture")
    proc = repo.tz("ls-files", check=False)
    assert proc.returncode == 1 and proc.stderr.decode().splitlines() == [
        "theta-zarr: git config theta-zarr.lazy = 'ture' is not a boolean (true/false, "
        "yes/no, on/off, 1/0)"]
    write_model(str(repo.path / "m.safetensors"), SHAPE)
    proc = repo.git("add", "m.safetensors", check=False)
    assert proc.returncode != 0 and b"theta-zarr.lazy = 'ture' is not a boolean" in proc.stderr
    assert b"Traceback" not in proc.stderr and b"internal error" not in proc.stderr
    proc = repo.tz("remote", "add", "pub", str(tmp_path / "store"), "--remote-option",
                   "anon=ture", check=False)
    assert proc.returncode == 1 and b"option anon='ture' is not a boolean" in proc.stderr
    assert "theta-zarr.remote.pub" not in repo.out("config", "--list")

def test_materialize_leaves_a_sparse_checkouts_other_files_out(repo, tmp_path):
    """A sparse checkout (``git sparse-checkout set a``) keeps ``b/`` out of the work tree;
    ``materialize`` fetched and wrote ``b/``'s checkpoints too, and cleared their
    skip-worktree bit, as ``git checkout -- .`` never does."""
    (repo.path / "a").mkdir()
    (repo.path / "b").mkdir()
    write_model(str(repo.path / "a" / "x.safetensors"), SHAPE)
    commit_model(repo, "two", name="b/y.safetensors", seed=1)
    repo.git("sparse-checkout", "set", "a")
    assert not (repo.path / "b").exists()
    repo.tz("materialize")
    assert not (repo.path / "b").exists()
    assert repo.out("ls-files", "-t", "b/y.safetensors").startswith("S ")
    listed = repo.out("theta-zarr", "ls-files").splitlines()
    assert listed[-1].startswith("b/y.safetensors  safetensors") and listed[-1].endswith("sparse")
    proc = repo.tz("materialize", "b/y.safetensors", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("theta-zarr: b/y.safetensors: outside the "
                                                   "sparse checkout"), err
    assert "git sparse-checkout add b" in err and "Traceback" not in err
    assert not (repo.path / "b").exists()
    out = tmp_path / "y.safetensors"
    repo.tz("materialize", "b/y.safetensors", "-o", str(out))
    assert out.stat().st_size > 0 and not (repo.path / "b").exists()
