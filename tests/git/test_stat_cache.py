"""clean answers a file whose stat is the one theta-zarr last cleaned or wrote from its record,
without re-hashing (git pipes it anyway whenever its index entry does not vouch for it)."""

from __future__ import annotations

import os
import shutil
import time

from theta_zarr.demo import ModelShape, write_model

SHAPE = ModelShape(hidden=64, layers=2, vocab=128)
MODEL = "model.safetensors"


def forget_stat(repo) -> None:
    """Make git compare the file's content on the next status (stat data zeroed)."""
    blob = repo.out("rev-parse", f":{MODEL}").strip()
    repo.git("update-index", "--index-info", input=f"100644 {blob}\t{MODEL}\n".encode())
    assert "size: 0" in repo.out("ls-files", "--debug", MODEL)


ANSWERED = f"{MODEL}: answered from its stat record"
DEBUG = {"GIT_THETA_ZARR_DEBUG": "1"}


def test_unchanged_file_is_not_rehashed(repo):
    write_model(str(repo.path / MODEL), SHAPE)
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "m")
    forget_stat(repo)
    proc = repo.git("status", "--porcelain", env=DEBUG)
    assert proc.stdout == b"" and ANSWERED in proc.stderr.decode()
    # touched: the stat differs, so the file is cleaned again
    st = os.stat(repo.path / MODEL)
    os.utime(repo.path / MODEL, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    forget_stat(repo)
    proc = repo.git("status", "--porcelain", env=DEBUG)
    assert proc.stdout == b"" and ANSWERED not in proc.stderr.decode()


def test_record_is_not_trusted_once_the_cache_lost_a_chunk(repo):
    """A deleted (or collected) cache: answering from the record would commit a manifest
    whose chunks exist nowhere; the file is cleaned again, which stores them."""
    write_model(str(repo.path / MODEL), SHAPE)
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "m")
    stored = repo.object_files()
    shutil.rmtree(repo.objects_dir)
    forget_stat(repo)
    proc = repo.git("status", "--porcelain", env=DEBUG)
    assert proc.stdout == b"" and ANSWERED not in proc.stderr.decode()
    assert stored and repo.object_files() == stored
    repo.git("theta-zarr", "fsck")


def test_a_damaged_record_is_no_record(repo):
    """A record of nested brackets stopped the filter with an internal error
    (RecursionError), and git status with it; garbage and a line without end are no
    record either: the file is cleaned again."""
    write_model(str(repo.path / MODEL), SHAPE)
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "m")
    (record,) = (repo.path / ".git" / "theta-zarr" / "stat").iterdir()
    for damage in (b"[" * 100_000, b"x" * 5_000_000, b'{"path": 1}\n', b"\xff\xfe"):
        record.write_bytes(damage)
        forget_stat(repo)
        proc = repo.git("status", "--porcelain", env=DEBUG)
        assert proc.stdout == b"" and ANSWERED not in proc.stderr.decode()


def test_changed_file_is_cleaned_and_other_content_is_not_answered_from_the_record(repo):
    write_model(str(repo.path / MODEL), SHAPE)
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "m")
    blob = repo.out("rev-parse", f":{MODEL}").strip()
    write_model(str(repo.path.parent / "other.safetensors"), SHAPE,
                tuned=SHAPE.layer_names(0))
    other = (repo.path.parent / "other.safetensors").read_bytes()
    # hash-object --stdin --path pipes other content under this path: cleaned for real
    proc = repo.git("hash-object", "--stdin", f"--path={MODEL}", input=other)
    assert proc.stdout.decode().strip() != blob
    write_model(str(repo.path / MODEL), SHAPE, tuned=SHAPE.layer_names(1))
    assert repo.out("status", "--porcelain").strip() == f"M {MODEL}"
    repo.git("add", MODEL)
    assert repo.out("rev-parse", f":{MODEL}").strip() != blob


def test_direct_write_is_recorded(repo):
    repo.git("config", "theta-zarr.direct-checkout", "1")
    write_model(str(repo.path / MODEL), SHAPE)
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "m")
    (repo.path / MODEL).unlink()
    repo.git("checkout", "--", MODEL)
    forget_stat(repo)
    proc = repo.git("status", "--porcelain", env=DEBUG)
    assert proc.stdout == b"" and ANSWERED in proc.stderr.decode()


def test_large_files_cleaned_from_the_file_give_the_pipes_manifest(repo):
    """Above theta-zarr.direct-checkout, clean reads the working-tree file while a thread
    drains git's pipe: the manifests are the ones the pipe gives (safetensors and .pt)."""
    import torch

    write_model(str(repo.path / MODEL), SHAPE)
    torch.save({"w": torch.arange(3000, dtype=torch.float32).reshape(30, 100),
                "step": 7}, repo.path / "opt.pt")
    blobs = {}
    for threshold in ("off", "1"):
        repo.git("config", "theta-zarr.direct-checkout", threshold)
        for name in (MODEL, "opt.pt"):
            shutil.rmtree(repo.objects_dir, ignore_errors=True)
            shutil.rmtree(repo.path / ".git" / "theta-zarr" / "stat", ignore_errors=True)
            repo.git("rm", "-q", "--cached", "--ignore-unmatch", name)
            repo.git("add", name)
            assert repo.object_files()  # really cleaned: chunks stored
            blobs.setdefault(name, set()).add(repo.out("rev-parse", f":{name}").strip())
    assert all(len(v) == 1 for v in blobs.values()), blobs
    repo.git("commit", "-q", "-m", "both")
    assert repo.out("status", "--porcelain") == ""


def test_gc_removes_the_records_no_file_answers_and_keeps_the_others(repo):
    """A Trainer writes checkpoint-500/, checkpoint-1000/, ... and deletes the older ones:
    every path kept its record (as large as its manifest) for good, gc or not."""
    for step in (500, 1000, 1500):
        os.makedirs(repo.path / f"checkpoint-{step}")
        write_model(str(repo.path / f"checkpoint-{step}" / MODEL), SHAPE, seed=step)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "three checkpoints")
    records = repo.path / ".git" / "theta-zarr" / "stat"
    assert len(os.listdir(records)) == 3
    repo.git("rm", "-rq", "checkpoint-500")
    shutil.copy(repo.path / "checkpoint-1500" / MODEL, repo.path / "checkpoint-1000" / MODEL)
    # a record write a kill interrupted two hours ago, and one in progress now
    (records / ".tmp-killed").write_bytes(b'{"path": "checkpoint-500/m')
    os.utime(records / ".tmp-killed", (time.time() - 7200,) * 2)
    (records / ".tmp-writing").write_bytes(b"")
    assert "would delete 3 stale stat record(s)" in repo.tz("gc", "--dry-run").stdout.decode()
    assert len(os.listdir(records)) == 5
    assert "deleted 3 stale stat record(s)" in repo.tz("gc").stdout.decode()
    assert sorted(os.listdir(records)) == sorted([".tmp-writing", *(
        n for n in os.listdir(records) if not n.startswith("."))])
    assert len(os.listdir(records)) == 2
    # the record left still answers
    repo.git("update-index", "--index-info", input=(
        f"100644 {repo.out('rev-parse', ':checkpoint-1500/' + MODEL).strip()}\t"
        f"checkpoint-1500/{MODEL}\n").encode())
    proc = repo.git("status", "--porcelain", "--", "checkpoint-1500", env=DEBUG)
    assert proc.stdout == b""
    assert f"checkpoint-1500/{MODEL}: answered from its stat record" in proc.stderr.decode()


def test_a_file_stamped_within_a_clock_tick_of_its_read_gets_no_record(repo):
    """File systems stamp mtimes from a coarse clock: a rewrite of the same size within
    one tick of the clean (a Trainer saving again) keeps inode, size, mtime and ctime, and
    a record made then answered the old manifest for the new bytes (git's racy-git
    problem). A file stamped within 100 ms of the read gets no record; an older one does."""
    from theta_zarr.git.statcache import StatCache

    path = repo.path / MODEL
    write_model(str(path), SHAPE)
    # stamped after the clean begins to read: an hour ahead, as a loaded machine may take
    # seconds to start git's filter (two seconds ahead was passed before the read began)
    soon = time.time_ns() + 3600 * 10**9
    os.utime(path, ns=(soon, soon))
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "m")
    records = StatCache(str(repo.path / ".git"))
    assert records.get(MODEL, os.stat(path)) is None
    forget_stat(repo)
    proc = repo.git("status", "--porcelain", env=DEBUG)
    assert proc.stdout == b"" and ANSWERED not in proc.stderr.decode()  # hashed again
    old = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(old, old))
    repo.git("add", MODEL)
    assert records.get(MODEL, os.stat(path)) is not None
    forget_stat(repo)
    assert ANSWERED in repo.git("status", "--porcelain", env=DEBUG).stderr.decode()


def test_a_diff_of_the_working_tree_answers_from_the_record_gits_clean_left(repo):
    """``theta-zarr diff`` of a changed working-tree file cleaned it twice: once through
    git's filter (the git command it runs to find changed files) and again itself, a
    second torch import and hash of every byte.  It now answers from the record."""
    path = repo.path / MODEL
    write_model(str(path), SHAPE)
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "m")
    write_model(str(path), SHAPE, tuned=SHAPE.layer_names(1))
    old = time.time_ns() - 3600 * 10**9  # not racily clean: the clean leaves a record
    os.utime(path, ns=(old, old))
    diff = repo.tz("diff", "--stat", env=DEBUG)
    assert diff.stdout.decode().startswith(f" {MODEL} | 8 changed\n")
    assert ANSWERED in diff.stderr.decode()
    # a record of other content is not used: the file is cleaned and diffed as it is
    write_model(str(path), SHAPE)
    os.utime(path, ns=(old, old))
    diff = repo.tz("diff", "--stat", "--exit-code", env=DEBUG, check=False)
    assert diff.returncode == 0 and diff.stdout == b""
