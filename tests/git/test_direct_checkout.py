"""Checkpoints written into the working tree by theta-zarr itself, not through git's pipe.

With ``theta-zarr.direct-checkout`` at 1 byte every checkpoint takes the direct path.
After every git workflow the file must be the real checkpoint, ``git status`` clean,
and the first ``git status`` must start no filter (the index holds the file's stat data,
not racily clean): through git's pipe the file and the index are written in the same
second, and that first status re-cleans the file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import subprocess
import time

import pytest
from helpers import (
    MODEL,
    cached_object_path,
    commit_checkpoint,
    file_sha,
    manifest_at,
    permissions_held,
)

from theta_zarr.demo import ModelShape, write_model
from theta_zarr.git.direct import SPOOL_PREFIX

SHAPE = ModelShape(hidden=64, layers=3, vocab=256)


commit_model = functools.partial(commit_checkpoint, shape=SHAPE)


def assert_clean_without_filter(repo, cwd=None) -> None:
    """The first status is clean and starts no filter process."""
    proc = repo.run("git", *(["-C", str(cwd)] if cwd else []), "status", "--porcelain",
                    env={"GIT_TRACE": "1"})
    assert proc.stdout == b""
    assert b"filter-process" not in proc.stderr, proc.stderr.decode()


@pytest.fixture
def direct(repo):
    repo.git("config", "theta-zarr.direct-checkout", "1")
    return repo


def test_checkout_path_writes_file_and_index(direct):
    h = commit_model(direct, "base")
    (direct.path / MODEL).unlink()
    direct.git("checkout", "--", MODEL)
    assert file_sha(direct.path / MODEL) == h
    assert_clean_without_filter(direct)
    debug = direct.out("ls-files", "--debug", MODEL)
    assert f"size: {(direct.path / MODEL).stat().st_size}" in debug
    # git still stores the manifest, byte for byte what clean gives
    blob = direct.git("cat-file", "blob", f":{MODEL}").stdout
    assert blob.startswith(b'{"theta_zarr":')
    assert direct.git("hash-object", MODEL).stdout == direct.git("rev-parse", f":{MODEL}").stdout
    direct.git("fsck", "--no-progress")


def test_switch_between_commits(direct):
    h1 = commit_model(direct, "base")
    direct.git("switch", "-q", "-c", "tune")
    h2 = commit_model(direct, "tune", tuned=SHAPE.layer_names(1))
    direct.git("switch", "-q", "main")
    assert file_sha(direct.path / MODEL) == h1
    assert_clean_without_filter(direct)
    direct.git("checkout", "-q", "tune")
    assert file_sha(direct.path / MODEL) == h2
    assert_clean_without_filter(direct)


def test_a_checkout_that_fails_on_one_file_writes_the_others_without_the_index(direct):
    """A smudge that fails (a chunk nowhere to be had) makes git die holding index.lock
    while it waits for the filter: the files kept for a direct write waited 5 s for that
    lock, stayed manifests, and the line blamed "another git command" and told the user to
    remove the lock.  They are written as git's pipe would have written them, the index
    left to git (which writes none)."""
    for name, seed in (("a.safetensors", 0), ("b.safetensors", 1)):
        write_model(str(direct.path / name), SHAPE, seed=seed)
    direct.git("add", "-A")
    direct.git("commit", "-q", "-m", "one")
    want = {}
    for name, seed in (("a.safetensors", 2), ("b.safetensors", 3)):
        write_model(str(direct.path / name), SHAPE, seed=seed)
        want[name] = file_sha(direct.path / name)
    direct.git("commit", "-q", "-am", "two")
    gone = manifest_at(direct, "HEAD", "b.safetensors").digests() - \
        manifest_at(direct, "HEAD~1", "b.safetensors").digests()
    direct.git("checkout", "-q", "HEAD~1")
    # a's index entry stamped 10 s back: a file of the same size written in the same second
    # on a reused inode would otherwise pass git's stat check as unchanged (git itself
    # writes no index after the failure either)
    past = time.time() - 10
    os.utime(direct.path / "a.safetensors", (past, past))
    direct.git("update-index", "-q", "--refresh")
    for d in gone:  # b's new chunks: in no cache and on no remote
        cached_object_path(direct.objects_dir.parent, d).unlink()
    proc = direct.git("checkout", "-q", "main", check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "b.safetensors" in err and "index.lock" not in err, err
    assert file_sha(direct.path / "a.safetensors") == want["a.safetensors"]
    assert not (direct.path / ".git" / "index.lock").exists()
    assert direct.out("status", "--porcelain").splitlines() == [" M a.safetensors",
                                                                " D b.safetensors"]


def test_restore_without_an_index_writes_the_file(direct):
    """git's own hint after a failed clone is ``git restore --source=HEAD :/``, which runs
    with no index file (and writes none): the file is written, not left as its manifest."""
    h = commit_model(direct, "base")
    (direct.path / MODEL).unlink()
    (direct.path / ".git" / "index").unlink()
    proc = direct.git("restore", "--source=HEAD", ":/")
    assert proc.stderr == b""
    assert file_sha(direct.path / MODEL) == h
    assert not (direct.path / ".git" / "index").exists()
    direct.git("reset", "-q")
    assert direct.out("status", "--porcelain") == ""


def test_reset_hard_and_stash(direct):
    h1 = commit_model(direct, "base")
    write_model(str(direct.path / MODEL), SHAPE, tuned=SHAPE.layer_names(0))
    h2 = file_sha(direct.path / MODEL)
    direct.git("stash", "-q")
    assert file_sha(direct.path / MODEL) == h1
    assert_clean_without_filter(direct)
    direct.git("stash", "pop", "-q")
    assert file_sha(direct.path / MODEL) == h2
    direct.git("reset", "-q", "--hard")
    assert file_sha(direct.path / MODEL) == h1
    assert_clean_without_filter(direct)


def test_merge_rebase_cherry_pick(direct):
    commit_model(direct, "base")
    direct.git("checkout", "-q", "-b", "feature")
    h_tuned = commit_model(direct, "tune layer 2", tuned=SHAPE.layer_names(2))
    tuned = direct.out("rev-parse", "HEAD").strip()
    direct.git("checkout", "-q", "main")
    (direct.path / "README").write_text("x\n")
    direct.git("add", "README")
    direct.git("commit", "-q", "-m", "readme")
    direct.git("cherry-pick", tuned)
    assert file_sha(direct.path / MODEL) == h_tuned
    assert_clean_without_filter(direct)
    direct.git("reset", "-q", "--hard", "HEAD~1")
    direct.git("merge", "-q", "--no-edit", "feature")
    assert file_sha(direct.path / MODEL) == h_tuned
    assert_clean_without_filter(direct)
    direct.git("checkout", "-q", "feature")
    direct.git("rebase", "-q", "main")
    assert file_sha(direct.path / MODEL) == h_tuned
    assert_clean_without_filter(direct)


def test_bisect(direct):
    hashes = [commit_model(direct, f"step {i}", tuned=SHAPE.layer_names(i % 3), seed=i)
              for i in range(4)]
    first = direct.out("rev-list", "--max-parents=0", "HEAD").strip()
    direct.git("bisect", "start", "HEAD", first)
    assert file_sha(direct.path / MODEL) in hashes
    assert_clean_without_filter(direct)
    direct.git("bisect", "reset")
    assert file_sha(direct.path / MODEL) == hashes[-1]


def test_worktree_and_sparse_checkout(direct, tmp_path):
    h = commit_model(direct, "base")
    # The test wrote this file; within the second of its index entry, git takes the entry
    # as racily clean and the last status re-cleans it (a file theta-zarr wrote never is).
    (direct.path / MODEL).unlink()
    direct.git("checkout", "--", MODEL)
    wt = tmp_path / "wt"
    direct.git("worktree", "add", "-q", str(wt), "HEAD")
    assert file_sha(wt / MODEL) == h
    assert_clean_without_filter(direct, cwd=wt)
    os.makedirs(direct.path / "sub")
    write_model(str(direct.path / "sub" / MODEL), SHAPE, seed=5)
    direct.git("add", "sub")
    direct.git("commit", "-q", "-m", "sub")
    h_sub = file_sha(direct.path / "sub" / MODEL)
    direct.git("sparse-checkout", "set", "--no-cone", "/*.safetensors", "/.gitattributes")
    assert not (direct.path / "sub").exists()
    direct.git("sparse-checkout", "disable")
    assert file_sha(direct.path / "sub" / MODEL) == h_sub
    assert_clean_without_filter(direct)


def test_clone_with_global_install(direct, make_repo, git_env):
    h = commit_model(direct, "base")
    other = make_repo("global")
    other.tz("install", "--global")
    other.git("config", "--global", "theta-zarr.direct-checkout", "1")
    # the clone has no cache: chunks come from the first repository's cache as a remote
    other.git("config", "--global", "theta-zarr.remote.origin.url",
              str(direct.path / ".git" / "theta-zarr"))
    other.git("clone", "-q", str(direct.path), "clone")
    clone = other.path / "clone"
    assert file_sha(clone / MODEL) == h
    assert_clean_without_filter(other, cwd=clone)


def test_small_files_and_archives_keep_the_pipe(repo):
    """Below the threshold (default 64 MiB), and for commands that do not write the
    working tree, git gets the file itself."""
    h = commit_model(repo, "base")
    (repo.path / MODEL).unlink()
    repo.git("checkout", "--", MODEL)
    assert file_sha(repo.path / MODEL) == h
    repo.git("config", "theta-zarr.direct-checkout", "1")
    out = repo.git("cat-file", "--filters", f"HEAD:{MODEL}").stdout
    assert hashlib.sha256(out).hexdigest() == h


def test_materialize_writes_directly(direct):
    h = commit_model(direct, "base")
    (direct.path / MODEL).unlink()
    direct.git("-c", "theta-zarr.lazy=true", "checkout", "--", MODEL)
    assert (direct.path / MODEL).read_bytes().startswith(b'{"theta_zarr":')
    direct.tz("materialize", MODEL)
    assert file_sha(direct.path / MODEL) == h
    assert_clean_without_filter(direct)


def test_split_index_falls_back_to_the_pipe(direct):
    h = commit_model(direct, "base")
    direct.git("update-index", "--split-index")
    (direct.path / MODEL).unlink()
    direct.git("checkout", "--", MODEL)
    assert file_sha(direct.path / MODEL) == h
    assert direct.out("status", "--porcelain") == ""


def commit_float32_model(repo, layers: int, rows: int, seed: int) -> str:
    """Commit MODEL as ``layers`` random float32 [rows, 1024] tensors; its sha256."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    save_file({f"l.{i}": rng.standard_normal((rows, 1024), dtype=np.float32)
               for i in range(layers)}, str(repo.path / MODEL))
    h = file_sha(repo.path / MODEL)
    repo.git("add", MODEL)
    repo.git("commit", "-q", "-m", "big")
    return h


def test_memory_limited_git_checks_out_larger_file(repo):
    """git itself, limited to 64 MiB of address space, checks out a 96 MiB checkpoint."""
    h = commit_float32_model(repo, layers=24, rows=1024, seed=0)
    (repo.path / MODEL).unlink()
    # the limit is for git: the filter it starts raises its own soft limit again
    repo.git("config", "filter.theta-zarr.process",
             "sh -c 'ulimit -S -v unlimited && exec git-theta-zarr filter-process'")
    limited = ["prlimit", f"--as={64 << 20}:unlimited", "git"]
    piped = repo.run(*limited, "-c", "theta-zarr.direct-checkout=off", "checkout", "--", MODEL,
                     check=False)
    assert piped.returncode != 0  # through the pipe git needs the file's size in memory
    (repo.path / MODEL).unlink(missing_ok=True)
    repo.run(*limited, "checkout", "--", MODEL)  # default threshold: 64 MiB
    assert file_sha(repo.path / MODEL) == h
    assert repo.out("status", "--porcelain") == ""


def test_kill_mid_write_leaves_old_or_new_file(repo):
    """SIGKILL while materialize writes: the manifest or the checkpoint, never a torn file."""
    h = commit_float32_model(repo, layers=16, rows=512, seed=1)
    repo.git("config", "theta-zarr.direct-checkout", "1")
    tmp = repo.path / ".git" / "theta-zarr" / "tmp"
    for _ in range(3):
        (repo.path / MODEL).unlink()
        repo.git("-c", "theta-zarr.lazy=true", "checkout", "--", MODEL)
        manifest = (repo.path / MODEL).read_bytes()
        # git-theta-zarr itself: `git theta-zarr` would run it as a child the kill misses
        proc = subprocess.Popen(["git-theta-zarr", "materialize", MODEL], cwd=repo.path,
                                env=repo.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if tmp.exists() and any(p.name.startswith(SPOOL_PREFIX) for p in tmp.iterdir()):
                break
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = (repo.path / MODEL).read_bytes()
        assert data == manifest or hashlib.sha256(data).hexdigest() == h
        # git tells the truth: either file cleans to the committed manifest
        assert repo.out("status", "--porcelain") == ""
        assert repo.git("diff", "--quiet", check=False).returncode == 0
    (repo.path / ".git" / "index.lock").unlink(missing_ok=True)
    repo.tz("materialize", MODEL)
    assert file_sha(repo.path / MODEL) == h
    # the killed writers' file-sized spools go with gc once the grace period is over
    spools = [p for p in tmp.iterdir() if p.name.startswith(SPOOL_PREFIX)]
    assert spools
    old = time.time() - 7200
    for p in spools:
        os.utime(p, (old, old))
    repo.tz("gc", "--grace", "1h")
    assert not any(p.name.startswith(SPOOL_PREFIX) for p in tmp.iterdir())


def test_a_checkout_the_cache_serves_looks_up_no_remote(direct, tmp_path):
    """The filter starts in every git command: the remote is looked up only when a chunk
    is missing, so a checkout served from the cache runs no ``git config`` for it."""
    h = commit_model(direct, "base")
    direct.git("theta-zarr", "remote", "add", "store", str(tmp_path / "store"))
    (direct.path / MODEL).unlink()
    log = tmp_path / "trace.log"  # a file: the filter's own git commands trace there too
    direct.git("checkout", "--", MODEL, env={"GIT_TRACE": str(log)})
    trace = log.read_text()
    assert "filter-process" in trace and "rev-parse" in trace
    assert "theta-zarr\\.remote" not in trace and "default-remote" not in trace, trace
    assert file_sha(direct.path / MODEL) == h


def test_a_read_only_copy_of_a_whole_cache_serves_checkouts(direct, tmp_path):
    """A team's cache copied whole (objects/ and tmp/) to a read-only place on the working
    tree's file system: every direct write took the cache's tmp/ for its scratch file,
    and the checkout failed ("CACHE/tmp/.tmp-checkout-...: Permission denied; left as
    manifests")."""
    import shutil

    h = commit_model(direct, "base")
    shared = tmp_path / "shared"
    shutil.copytree(direct.path / ".git" / "theta-zarr", shared)
    assert (shared / "tmp").is_dir()
    for p in (shared, *shared.rglob("*")):
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        direct.git("config", "theta-zarr.cache", str(shared))
        (direct.path / MODEL).unlink()
        proc = direct.run(*permissions_held(), "git", "checkout", "--", MODEL)
        assert proc.stderr == b""
        assert file_sha(direct.path / MODEL) == h
        assert_clean_without_filter(direct)
    finally:
        for p in (shared, *shared.rglob("*")):
            p.chmod(p.stat().st_mode | 0o200)


def test_add_checkout_and_materialize_of_safetensors_import_no_numpy(direct):
    """The filter starts in every git command: clean and smudge of a safetensors file
    (direct write included) need names and item sizes only, not NumPy or ml_dtypes
    (35-70 ms of imports), and with every chunk in the cache no transfer machinery
    (``remote``, ``git.push``: 30-60 ms), nor scan the installed packages' entry points
    for format plug-ins when a built-in format claims the file; materialize loads no diff
    or merge machinery either.  Python
    reports every import it makes on stderr under ``PYTHONPROFILEIMPORTTIME``, and git
    passes the filter's stderr through."""
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    write_model(direct.path / MODEL, SHAPE, seed=3)
    added = direct.git("add", MODEL, env=env).stderr.decode()
    direct.git("commit", "-q", "-m", "v")
    h = file_sha(direct.path / MODEL)
    (direct.path / MODEL).unlink()
    checked_out = direct.git("checkout", "--", MODEL, env=env).stderr.decode()
    assert file_sha(direct.path / MODEL) == h
    (direct.path / MODEL).unlink()
    direct.git("-c", "theta-zarr.lazy=true", "checkout", "--", MODEL)
    materialized = direct.tz("materialize", MODEL, env=env).stderr.decode()
    assert file_sha(direct.path / MODEL) == h
    for stderr in (added, checked_out, materialized):
        imported = {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines()
                    if line.startswith("import time:")}
        assert "theta_zarr.filewriter" in imported  # the filter's imports are reported
        assert not {"numpy", "ml_dtypes", "theta_zarr.diff"} & imported
        if stderr is not materialized:  # the command line's options name remote options
            assert not {"theta_zarr.remote", "theta_zarr.git.push",
                        "importlib.metadata"} & imported


USER_HOOK = """#!/bin/sh
python3 - <<'PY' >> "{log}"
import hashlib, sys
data = open("{model}", "rb").read()
print("{name}", "manifest" if data.startswith(b'{{"theta_zarr"') else
      hashlib.sha256(data).hexdigest())
PY
"""


@pytest.mark.parametrize("name", ["post-checkout", "post-merge"])
def test_the_users_hooks_see_the_checked_out_checkpoint(direct, tmp_path, name):
    """git runs post-checkout / post-merge before it exits, and the filter wrote the real
    file only at git's exit: a user's hook (tests after a checkout) read the manifest."""
    h1 = commit_model(direct, "base")
    direct.git("branch", "old")
    h2 = commit_model(direct, "tuned", tuned=SHAPE.layer_names(1))
    log = tmp_path / "hook.log"
    hook = direct.path / ".git" / "hooks" / name
    hook.write_text(USER_HOOK.format(log=log, model=MODEL, name=name))
    hook.chmod(0o755)
    if name == "post-checkout":
        direct.git("checkout", "-q", "old")
        want = h1
    else:
        direct.git("checkout", "-q", "old")
        direct.git("merge", "-q", "--ff-only", "main")
        want = h2
    assert log.read_text().splitlines()[-1] == f"{name} {want}"
    assert "theta-zarr post-checkout hook" in (
        direct.path / ".git" / "hooks" / "post-checkout").read_text()  # ours, chaining
    assert_clean_without_filter(direct)
    assert not os.listdir(direct.path / ".git" / "theta-zarr" / "pending")


def test_a_record_left_by_a_killed_filter_is_dropped(direct):
    """A pending record whose filter no longer runs names files nobody should write now."""
    commit_model(direct, "base")
    pending = direct.path / ".git" / "theta-zarr" / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (pending / str(dead.pid)).write_text('{"path": "model.safetensors", "blob": "00"}\n')
    direct.run("git-theta-zarr", "post-checkout", "0", "0", "1")
    assert not (pending / str(dead.pid)).exists()
    # a file the killed filter left as its manifest is named, with what finishes it
    (direct.path / "model.safetensors").unlink()
    direct.git("-c", "theta-zarr.lazy=true", "checkout", "--", "model.safetensors")
    blob = direct.out("rev-parse", ":model.safetensors").strip()
    (pending / str(dead.pid)).write_text(f'{{"path": "model.safetensors", "blob": "{blob}"}}\n')
    err = direct.run("git-theta-zarr", "post-checkout", "0", "0", "1").stderr.decode()
    assert "an earlier checkout was stopped before it wrote these files; left as manifests " \
        "(lazy files): model.safetensors; then run 'git theta-zarr materialize'" in err
    assert not (pending / str(dead.pid)).exists()


def test_record_lines_that_are_no_entry_are_skipped(tmp_path):
    """A line nested 100,000 deep raised a RecursionError out of the hook (an internal
    error); it is skipped like a line cut short by a kill."""
    from theta_zarr.git.pending import _entries

    record = tmp_path / "123"
    record.write_text("[" * 100_000 + "\n" + '{"path": "m.safetensors", "blob": "ab"}\n'
                      + '{"path": "../x", "blob": "ab"}\n[1]\n{"path": "cut')
    assert _entries(str(record)) == [("m.safetensors", "ab")]


def test_an_eol_crlf_line_after_the_track_line_still_checks_out_clean(direct):
    """``* text=auto eol=crlf`` after the track line overrides ``-text``: git converts the
    manifest to CRLF before the smudge filter sees it; the direct write then never matched
    the index's blob, and the file stayed " M" for good (a checkout of another branch was
    refused)."""
    with open(direct.path / ".gitattributes", "a") as f:
        f.write("* text=auto eol=crlf\n")
    direct.git("add", ".gitattributes")
    h1 = commit_model(direct, "base")
    h2 = commit_model(direct, "tuned", tuned=SHAPE.layer_names(1))
    direct.git("checkout", "-q", "HEAD~1")
    assert file_sha(direct.path / MODEL) == h1
    assert direct.out("status", "--porcelain") == ""
    direct.git("checkout", "-q", "main")
    assert file_sha(direct.path / MODEL) == h2
    assert direct.out("status", "--porcelain") == ""


def test_the_hook_asks_the_running_filter_to_write_no_second_process(direct, tmp_path):
    """theta-zarr's post-checkout hook signals the filter process git still runs (it is
    idle while git runs hooks) instead of starting theta-zarr again (0.2 s of start-up on
    every large checkout): the hook's own theta-zarr never starts, yet the user's hook
    that follows sees the checkpoint."""
    from theta_zarr.git.hooks import hook_text

    h1 = commit_model(direct, "base")
    direct.git("branch", "old")
    commit_model(direct, "tuned", tuned=SHAPE.layer_names(1))
    started = tmp_path / "started.log"
    wrapper = tmp_path / "tz-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {started}\nexec git-theta-zarr "$@"\n')
    wrapper.chmod(0o755)
    hooks = direct.path / ".git" / "hooks"
    (hooks / "post-checkout").write_text(hook_text("post-checkout", str(wrapper)))
    log = tmp_path / "hook.log"
    user = hooks / "post-checkout.theta-zarr-chained"
    user.write_text(USER_HOOK.format(log=log, model=MODEL, name="post-checkout"))
    user.chmod(0o755)
    direct.git("checkout", "-q", "old")
    assert log.read_text().splitlines()[-1] == f"post-checkout {h1}"
    assert not started.exists()  # the filter wrote the file, on the hook's signal
    assert_clean_without_filter(direct)


@pytest.mark.parametrize("changes", ["topic", "main"])
def test_a_rebase_over_a_changed_checkpoint_completes_clean(direct, changes):
    """rebase runs post-checkout when it has checked out <onto> and goes on with the index
    it holds in memory: the hook's write behind its back made the next pick refuse the
    file as a local change, or left the stale entry behind (` M` for good)."""
    def change(branch: str, note: str) -> str | None:
        """On ``branch``: a fine-tune if it is the side that changes the checkpoint, else a
        text file; the checkpoint's sha256, or None."""
        direct.git("checkout", "-q", *(["-b"] if branch == "topic" else []), branch)
        if changes == branch:
            return commit_model(direct, f"{branch} tunes", tuned=SHAPE.layer_names(1))
        (direct.path / note).write_text("x\n")
        direct.git("add", note)
        direct.git("commit", "-q", "-m", note)
        return None

    commit_model(direct, "base")
    h = next(x for x in [change("topic", "notes.txt"), change("main", "README")] if x)
    direct.git("checkout", "-q", "topic")
    direct.git("rebase", "-q", "main")
    assert file_sha(direct.path / MODEL) == h
    assert direct.out("status", "--porcelain") == ""
    direct.git("checkout", "-q", "main~1")  # not refused as a local change


def test_a_record_whose_pid_is_another_work_trees_filter_is_not_signalled(direct,
                                                                          make_repo):
    """A stale record whose pid now names another repository's theta-zarr filter: the
    hook signalled it (and SIGUSR1 killed a filter with nothing to write)."""
    commit_model(direct, "base")
    other = make_repo("other")
    other.git("init", "-q", "-b", "main")
    proc = subprocess.Popen(["git-theta-zarr", "filter-process"], cwd=other.path,
                            env=other.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        pending = direct.path / ".git" / "theta-zarr" / "pending"
        pending.mkdir(parents=True, exist_ok=True)
        (pending / str(proc.pid)).write_text('{"path": "model.safetensors", "blob": "0"}\n')
        direct.git("checkout", "-q", "-b", "x")  # runs post-checkout
        assert proc.poll() is None  # still alive: not signalled
        assert not (pending / str(proc.pid)).exists()  # dropped as stale
    finally:
        proc.kill()
        proc.communicate()


def test_a_record_of_a_filter_killed_but_not_yet_reaped_does_not_hang_the_hook(direct):
    """git reaps its filter only at exit: a filter killed meanwhile is a zombie, which
    `kill -0` still finds; the hook waited for its record forever."""
    commit_model(direct, "base")
    proc = subprocess.Popen(["git-theta-zarr", "filter-process"], cwd=direct.path,
                            env=direct.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.send_signal(signal.SIGKILL)
        time.sleep(0.5)  # dead, not reaped: a zombie (the pid stays ours until wait())
        pending = direct.path / ".git" / "theta-zarr" / "pending"
        pending.mkdir(parents=True, exist_ok=True)
        (pending / str(proc.pid)).write_text('{"path": "model.safetensors", "blob": "0"}\n')
        done = subprocess.run(["git", "checkout", "-q", "-b", "x"], cwd=direct.path,
                              env=direct.env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
    finally:
        proc.communicate()
