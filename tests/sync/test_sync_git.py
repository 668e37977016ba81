"""import into git, fsck and gc: reachability from refs, reflogs, stashes and remote refs."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import CHUNK, Case, env_for, file_sha, init_bare, local_case, model, tz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from theta_zarr import chunking, gc
from theta_zarr.cache import Cache
from theta_zarr.git.reachability import git_roots
from theta_zarr.objects import object_key
from theta_zarr.sync import SyncRemote


def _push(case: Case, tmp_path: Path, f: Path, ref: str) -> None:
    tz(["publish", str(f), case.url, "--ref", ref, "--chunk-size", CHUNK], env_for(case, tmp_path))


def test_import_commit_then_plain_checkout_elsewhere(repo, make_repo, tmp_path):
    case = local_case(tmp_path)
    f = model(tmp_path / "m.safetensors", seed=3)
    _push(case, tmp_path, f, "run7/step-3000")
    repo.git("config", "theta-zarr.chunk-size", CHUNK)
    bare = tmp_path / "origin.git"
    init_bare(bare, repo.env)
    repo.git("remote", "add", "origin", str(bare))
    repo.tz("remote", "add", "origin", case.url, "--shared")
    out = repo.tz("import", case.url, "run7/step-3000", "model.safetensors").stdout.decode()
    assert "model.safetensors" in out
    assert file_sha(repo.path / "model.safetensors") == file_sha(f)
    assert "A  model.safetensors" in repo.out("status", "--porcelain").splitlines()
    repo.git("add", ".thetazarr")
    repo.git("commit", "-q", "-m", "step 3000")
    assert repo.out("status", "--porcelain") == ""
    repo.git("push", "-q", "origin", "main")
    clone = make_repo("clone")
    clone.path.rmdir()
    parent = type(repo)(tmp_path, repo.env)
    parent.run("git", "theta-zarr", "install", "--global")
    parent.run("git", "clone", "-q", str(bare), "clone")
    assert file_sha(clone.path / "model.safetensors") == file_sha(f)


def test_import_refuses_to_overwrite_local_content_git_does_not_have(repo, tmp_path):
    """An untracked file, a modified tracked one (a damaged one too), or a file where the
    set's folder must go: refused before anything is staged, unless --force; a clean
    tracked file is replaced."""
    case = local_case(tmp_path)
    _push(case, tmp_path, model(tmp_path / "m.safetensors", seed=3), "run/a")
    _push(case, tmp_path, model(tmp_path / "n.safetensors", seed=4), "run/b")
    target = repo.path / "model.safetensors"
    mine = model(tmp_path / "mine.safetensors", seed=5).read_bytes()
    target.write_bytes(mine)  # never added
    proc = repo.tz("import", case.url, "run/a", "model.safetensors", check=False)
    assert proc.returncode == 1 and b"model.safetensors: local content git does not have" \
        in proc.stderr
    assert target.read_bytes() == mine and repo.out("status", "--porcelain") == \
        "?? model.safetensors\n"
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "mine")
    target.write_bytes(model(tmp_path / "edit.safetensors", seed=6).read_bytes())  # modified
    assert repo.tz("import", case.url, "run/a", "model.safetensors", check=False).returncode == 1
    with target.open("ab") as f:  # damaged: the filter cannot read it (it said its parse error)
        f.write(b"junk")
    proc = repo.tz("import", case.url, "run/a", "model.safetensors", check=False)
    assert proc.returncode == 1 and proc.stderr.decode().startswith(
        "theta-zarr: model.safetensors: local content git does not have"), proc.stderr
    repo.git("checkout", "--", "model.safetensors")  # clean again: git has it, so replaced
    repo.tz("import", case.url, "run/a", "model.safetensors")
    assert file_sha(target) == file_sha(tmp_path / "m.safetensors")
    target.write_bytes(mine)
    repo.tz("import", case.url, "run/b", "model.safetensors", "--force")
    assert file_sha(target) == file_sha(tmp_path / "n.safetensors")
    (repo.path / "out").write_bytes(b"notes")  # a file where a folder must go
    proc = repo.tz("import", case.url, "run/a", "out/model.safetensors", check=False)
    assert proc.returncode == 1 and b"out: local content" in proc.stderr
    assert (repo.path / "out").read_bytes() == b"notes"


def test_import_into_a_git_folder_is_one_line(repo, tmp_path):
    """git's update-index refuses a .git path: that reached the user as an internal error."""
    case = local_case(tmp_path)
    _push(case, tmp_path, model(tmp_path / "m.safetensors", seed=3), "run/a")
    config = (repo.path / ".git" / "config").read_bytes()
    for path in (".git/m.safetensors", "sub/.GIT/m.safetensors", ".git/config"):
        proc = repo.tz("import", case.url, "run/a", path, "--force", check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err == f"theta-zarr: {path}: a path inside a .git " \
            "folder, where git stores no file; give a path in the work tree\n", err
    assert (repo.path / ".git" / "config").read_bytes() == config
    assert repo.out("status", "--porcelain") == ""



def test_import_while_the_index_is_locked_is_one_line(repo, tmp_path):
    """A ``.git/index.lock`` left by a killed git: git's update-index refused, and the user
    saw ``internal error (GitError: remove the file manually to continue.)``."""
    case = local_case(tmp_path)
    _push(case, tmp_path, model(tmp_path / "m.safetensors", seed=3), "run/a")
    lock = repo.path / ".git" / "index.lock"
    lock.write_bytes(b"")
    proc = repo.tz("import", case.url, "run/a", "m.safetensors", check=False)
    assert proc.returncode == 1 and proc.stderr.decode() == (
        f"theta-zarr: {lock} exists: another git command is running in this repository (if "
        "none is, one that was killed left the file: remove it)\n")
    lock.unlink()
    assert repo.out("status", "--porcelain") == ""

def test_import_of_a_folder_stores_plain_members_as_git_add_would(repo, tmp_path):
    """A published folder's other files (a pickle such as ``rng_state.pth``) went into git
    as raw bytes even where theta-zarr tracks their path, so the file cleaned to another
    blob and ``git status`` was never clean."""
    case = local_case(tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    model(ckpt / "model.safetensors", seed=1)
    (ckpt / "rng_state.pth").write_bytes(b"PK\x03\x04 not a checkpoint theta-zarr reads")
    (ckpt / "notes.txt").write_text("lr 3e-4\n")
    tz(["publish", str(ckpt), case.url, "--ref", "run/ck1", "--chunk-size", CHUNK],
       env_for(case, tmp_path))
    repo.tz("track", "*.pth")
    repo.git("add", ".gitattributes")
    repo.git("commit", "-q", "-m", "attrs")
    repo.tz("import", case.url, "run/ck1", "ck1")
    repo.git("commit", "-q", "-m", "import")
    assert repo.out("status", "--porcelain") == ""
    blob = repo.git("cat-file", "blob", "HEAD:ck1/rng_state.pth").stdout
    assert blob.startswith(b'{"theta_zarr"')  # an opaque manifest, as git add stores it
    assert repo.git("cat-file", "blob", "HEAD:ck1/notes.txt").stdout == b"lr 3e-4\n"
    for name in ("model.safetensors", "rng_state.pth", "notes.txt"):
        assert file_sha(repo.path / "ck1" / name) == file_sha(ckpt / name)


def _pushed_model(repo, tmp_path: Path, message: str):
    """A folder remote ``origin`` holding one committed and pushed model; its case."""
    case = local_case(tmp_path)
    repo.git("config", "theta-zarr.chunk-size", CHUNK)
    repo.tz("remote", "add", "origin", case.url)
    model(repo.path / "model.safetensors")
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", message)
    repo.tz("push", "origin")
    return case


def test_fsck_names_deleted_and_corrupt_objects(repo, tmp_path):
    case = _pushed_model(repo, tmp_path, "m")
    assert "ok:" in repo.tz("fsck", "--remote", "origin").stdout.decode()
    digests = sorted(SyncRemote.open(_spec(case)).objects.iter_digests())
    gone, bad = digests[0][0], digests[1][0]
    bucket = Path(case.url)
    os.unlink(bucket / object_key(gone))
    p = bucket / object_key(bad)
    os.chmod(p, 0o644)
    p.write_bytes(p.read_bytes()[:-1] + b"X")
    res = repo.tz("fsck", "--remote", "origin", check=False)
    text = res.stdout.decode()
    assert res.returncode == 1
    assert f"missing object {gone}" in text and f"corrupt object {bad}" in text
    assert "model.safetensors" in text  # who needs it
    # the cache: corrupt one object there too
    cache_obj = repo.objects_dir.parent / object_key(bad)
    os.chmod(cache_obj, 0o644)
    cache_obj.write_bytes(b"junk")
    res = repo.tz("fsck", check=False)
    assert res.returncode == 1 and f"corrupt object {bad}" in res.stdout.decode()


def test_fsck_says_when_the_remote_behind_the_cache_cannot_be_reached(repo, tmp_path):
    """An object the cache lacks is looked up on the remote; a remote that is gone was
    silent, and every such object was "missing in cache or remote"."""
    case = _pushed_model(repo, tmp_path, "m")
    repo.tz("remote", "add", "origin", case.url)
    cached = sorted(repo.objects_dir.rglob("*"))
    victim = next(p for p in cached if p.is_file())
    os.chmod(victim, 0o644)
    victim.unlink()
    assert "ok:" in repo.tz("fsck").stdout.decode()  # the remote has it
    os.rename(case.url, case.url + ".moved")
    res = repo.tz("fsck", check=False)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "cannot reach remote 'origin'" in err and "reported as missing" in err, err


def test_fsck_reads_and_verifies_on_the_remote_what_the_cache_lacks(repo, tmp_path):
    """An object the cache lacks is read from the remote behind it and verified, as a
    checkout would; only its existence was checked, and fsck said "ok" for objects the
    remote held corrupt, which no checkout could use."""
    case = _pushed_model(repo, tmp_path, "m")
    for p in sorted(repo.objects_dir.rglob("*")):
        if p.is_file():
            os.chmod(p, 0o644)
            p.unlink()
    assert "ok:" in repo.tz("fsck").stdout.decode()
    bad = sorted(SyncRemote.open(_spec(case)).objects.iter_digests())[0][0]
    p = Path(case.url) / object_key(bad)
    os.chmod(p, 0o644)
    p.write_bytes(p.read_bytes()[:-1] + b"X")
    res = repo.tz("fsck", check=False)
    text = res.stdout.decode()
    assert res.returncode == 1
    assert f"corrupt object {bad}" in text and f"in {case.url}" in text, text
    assert not any(p.is_file() for p in repo.objects_dir.rglob("*"))  # nothing was kept


def _spec(case: Case):
    from theta_zarr.remote import RemoteSpec

    return RemoteSpec("t", case.url, {})


def _age(root: Path, seconds: float) -> None:
    old = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (old, old))


def test_gc_deletes_unreachable_old_objects_and_dry_run_says_so(repo, tmp_path):
    case = _pushed_model(repo, tmp_path, "keep")
    # a checkpoint pushed under a remote ref, and one that nothing names any more
    _push(case, tmp_path, model(tmp_path / "ref.safetensors", seed=7), "run7/kept")
    _push(case, tmp_path, model(tmp_path / "gone.safetensors", seed=8), "run7/gone")
    remote = SyncRemote.open(_spec(case))
    gone_digests = remote.load(remote.refs.read("run7/gone").digest).digests()
    os.unlink(Path(case.url) / "refs" / "run7" / "gone")
    before = {d for d, _, _ in remote.objects.iter_digests()}
    # within the grace period nothing goes
    out = repo.tz("gc", "--remote", "origin", "--grace", "1h").stdout.decode()
    assert "deleted 0 blobs" in out and {d for d, _, _ in remote.objects.iter_digests()} == before
    _age(Path(case.url), 7200)
    _age(repo.objects_dir, 7200)
    dry = repo.tz("gc", "--remote", "origin", "--grace", "1h", "--dry-run").stdout.decode()
    assert "would delete" in dry and object_key(sorted(gone_digests)[0]) in dry
    assert {d for d, _, _ in remote.objects.iter_digests()} == before
    repo.tz("gc", "--remote", "origin", "--grace", "1h")
    after = {d for d, _, _ in remote.objects.iter_digests()}
    assert after == before - gone_digests
    assert "ok:" in repo.tz("fsck", "--remote", "origin").stdout.decode()
    tz(["pull", case.url, "run7/kept", "-o", str(tmp_path / "k.safetensors")],
       env_for(case, tmp_path))


def test_gc_leaves_a_shared_cache_unless_told(repo, make_repo, tmp_path):
    """Two repositories on one theta-zarr.cache: gc in one saw the other's unpushed
    commit's chunks as unreachable and deleted them."""
    shared = tmp_path / "shared-cache"
    other = make_repo("other")
    other.git("init", "-q", "-b", "main")
    other.tz("install")
    other.tz("track", "*.safetensors")
    for r in (repo, other):
        r.git("config", "theta-zarr.cache", str(shared))
    f = model(tmp_path / "m.safetensors", seed=3)
    (other.path / "model.safetensors").write_bytes(f.read_bytes())
    other.git("add", "model.safetensors")
    other.git("commit", "-q", "-m", "unpushed")
    def stored() -> set[Path]:  # the chunk objects (the cache also names its repositories)
        return {p for p in (shared / "objects").rglob("*") if p.is_file()}

    chunks = stored()
    assert chunks
    proc = repo.tz("gc", "--grace", "0", check=False)
    assert proc.returncode == 1 and b"--shared-cache" in proc.stderr
    case = local_case(tmp_path)
    Path(case.url).mkdir()
    repo.tz("remote", "add", "origin", case.url)
    out = repo.tz("gc", "--remote", "origin", "--grace", "0")
    assert b"left as it is" in out.stderr
    assert stored() >= chunks
    (other.path / "model.safetensors").unlink()
    other.git("checkout", "--", "model.safetensors")
    assert file_sha(other.path / "model.safetensors") == file_sha(f)
    # told to collect it, gc keeps what the other repository named in the cache needs
    out = repo.tz("gc", "--grace", "0", "--shared-cache").stderr.decode()
    assert f"what 1 other repository it names need is kept too ({other.path / '.git'})" \
        in out
    assert stored() >= chunks
    assert "ok:" in other.tz("fsck").stdout.decode()
    shutil.rmtree(other.path)  # gone: what only it needed goes
    repo.tz("gc", "--grace", "0", "--shared-cache")
    assert not chunks & stored()


def test_gc_in_a_repository_pointed_at_anothers_own_cache_keeps_that_ones_chunks(
        repo, make_repo, tmp_path):
    """B's theta-zarr.cache is A's own cache (A/.git/theta-zarr), where A, which sets no
    theta-zarr.cache, names itself nowhere: gc --shared-cache in B deleted the chunks of
    A's unpushed commit, and A could no longer check it out."""
    other = make_repo("other")
    other.git("init", "-q", "-b", "main")
    other.tz("install")
    other.tz("track", "*.safetensors")
    own = repo.path / ".git" / "theta-zarr"
    other.git("config", "theta-zarr.cache", str(own))
    f = model(tmp_path / "m.safetensors", seed=3)
    (repo.path / "model.safetensors").write_bytes(f.read_bytes())
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "unpushed")
    chunks = {p for p in (own / "objects").rglob("*") if p.is_file()}
    assert chunks
    out = other.tz("gc", "--grace", "0", "--shared-cache").stderr.decode()
    assert f"what 1 other repository it names need is kept too ({repo.path / '.git'})" \
        in out
    assert {p for p in (own / "objects").rglob("*") if p.is_file()} >= chunks
    (repo.path / "model.safetensors").unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert file_sha(repo.path / "model.safetensors") == file_sha(f)

def test_gc_keeps_what_git_replace_hides_and_what_it_puts_in_place(repo, tmp_path):
    """A commit hidden by ``git replace`` is still on its branch, and git's own gc and
    push walk past replacements: gc walked through them, deleted the hidden commit's
    chunks, and its checkpoint was lost once the replacement went."""
    repo.git("config", "theta-zarr.chunk-size", CHUNK)
    path = repo.path / "model.safetensors"
    for seed in (1, 2, 3):
        model(path, seed=seed)
        repo.git("add", "model.safetensors")
        repo.git("commit", "-q", "-m", f"v{seed}")
    hidden = file_sha(model(tmp_path / "v2.safetensors", seed=2))
    # HEAD~1 replaced by a commit with HEAD's tree; a blob replaced by another manifest
    tree = repo.out("rev-parse", "HEAD^{tree}").strip()
    other = repo.out("commit-tree", tree, "-p", "HEAD~2", "-m", "replacement").strip()
    repo.git("replace", "HEAD~1", other)
    model(tmp_path / "v9.safetensors", seed=9)
    (repo.path / "v9.safetensors").write_bytes((tmp_path / "v9.safetensors").read_bytes())
    repo.git("add", "v9.safetensors")
    nine = repo.out("rev-parse", ":v9.safetensors").strip()
    repo.git("rm", "-q", "--cached", "v9.safetensors")
    (repo.path / "v9.safetensors").unlink()
    repo.git("replace", repo.out("rev-parse", "HEAD~2:model.safetensors").strip(), nine)
    _age(repo.objects_dir, 10)
    repo.tz("gc", "--grace", "0")
    assert repo.tz("fsck").returncode == 0
    # with the replacements in place (the v9 manifest stands for v1's) ...
    repo.git("checkout", "-q", "HEAD~2", "--", "model.safetensors")
    assert file_sha(path) == file_sha(tmp_path / "v9.safetensors")
    # ... and without them
    for ref in repo.out("replace", "-l").split():
        repo.git("replace", "-d", ref)
    repo.git("checkout", "-q", "HEAD~1", "--", "model.safetensors")
    assert file_sha(path) == hidden


def _abandoned_in_cache(repo, record: bool, seed: int) -> Path:
    """A model whose commit was abandoned: its chunks are in the cache, 30 days old and
    unreachable, the file still in the work tree (its stat record kept when ``record``).
    Returns the file's path."""
    repo.git("config", "theta-zarr.chunk-size", CHUNK)
    path = repo.path / "model.safetensors"
    model(path, seed=seed)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "abandoned")
    repo.git("reset", "-q", "--soft", "HEAD~1")
    repo.git("rm", "-q", "--cached", "model.safetensors")
    repo.git("reflog", "expire", "--expire=now", "--all")
    _age(repo.objects_dir, 30 * 86400)
    if not record:  # hashed again (no stat record answers), its chunks found in the cache
        shutil.rmtree(repo.path / ".git" / "theta-zarr" / "stat")
    return path


@pytest.mark.parametrize("record", [True, False])
def test_gc_keeps_old_chunks_a_new_clean_found_again(repo, tmp_path, record):
    """git freshens a loose object it would write again, so its gc keeps what was just
    written; a clean that found its chunks already in the cache (garbage of an abandoned
    commit, older than the grace period) left them old, and a gc before the manifest
    reached the index (a script's GIT_INDEX_FILE, a long ``git add``) deleted them."""
    path = _abandoned_in_cache(repo, record, seed=5)
    env = {"GIT_INDEX_FILE": str(repo.path / ".git" / "script-index")}
    repo.git("add", "model.safetensors", env=env)
    repo.tz("gc")  # the default grace: 7 days
    repo.git("commit", "-q", "-m", "from a script", env=env)
    repo.git("reset", "-q", "--hard")
    path.unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert repo.tz("fsck").returncode == 0


@pytest.mark.parametrize("record", [True, False])
def test_an_add_while_gc_deletes_keeps_the_old_chunks_it_found(repo, record):
    """gc lists the cache, then deletes.  A git add in between (another terminal) found
    the chunks of an abandoned commit, older than the grace period, and freshened them,
    but gc went by the mtimes it had listed: the commit made a moment later named chunks
    that existed nowhere.  gc now moves each object aside and reads its mtime again first."""
    from theta_zarr.git.repo import Repo

    path = _abandoned_in_cache(repo, record, seed=7)
    git_repo = Repo.discover(str(repo.path))
    cache = Cache(str(repo.objects_dir.parent))

    def roots() -> gc.Roots:
        r = gc.Roots()
        git_roots(git_repo, r)
        return r

    def add_meanwhile(step: str) -> None:
        if step == "planned":
            repo.git("add", "model.safetensors")
            repo.git("commit", "-q", "-m", "again")

    result = gc.collect(cache, roots, grace=7 * 86400, hook=add_meanwhile)
    assert result.sweeps[0].keys == []  # listed, then kept: nothing reported deleted
    path.unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert repo.tz("fsck").returncode == 0
    assert not [p for p in repo.objects_dir.rglob(".tmp-*")]


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(["commit", "branch", "reset", "stash", "drop-branch"]),
                      min_size=1, max_size=5))
def test_gc_never_deletes_a_reachable_object(repo, tmp_path, steps):
    """Random small histories: after gc with no grace, every reachable checkpoint rebuilds."""
    repo.git("config", "theta-zarr.chunk-size", CHUNK)
    seed = int(time.time() * 1000) % 100000
    for i, step in enumerate(steps):
        path = repo.path / "model.safetensors"
        if step in ("commit", "stash"):
            model(path, seed=seed + i)
            repo.git("add", "model.safetensors")
            if step == "commit":
                repo.git("commit", "-q", "-m", f"c{i}")
            else:
                repo.git("stash", "-q")
        elif step == "branch":
            repo.git("checkout", "-q", "-B", f"b{i}")
        elif step == "reset" and repo.git("rev-parse", "-q", "--verify", "HEAD~1",
                                          check=False).returncode == 0:
            repo.git("reset", "-q", "--hard", "HEAD~1")
        elif step == "drop-branch":
            repo.git("checkout", "-q", "main")
            for b in repo.out("branch", "--format=%(refname:short)").split():
                if b != "main":
                    repo.git("branch", "-q", "-D", b)
    cache = Cache(str(repo.objects_dir.parent))
    junk = os.urandom(64)
    junk_digest = chunking.digest(junk)
    cache.put(junk_digest, junk)  # an object nobody names
    _age(repo.objects_dir, 10)
    repo.tz("gc", "--grace", "0")
    res = repo.tz("fsck", check=False)
    assert res.returncode == 0, res.stdout.decode()
    roots = gc.Roots()
    from theta_zarr.git.repo import Repo

    git_roots(Repo.discover(str(repo.path)), roots)
    assert cache.missing(roots.chunks) == set()
    assert not cache.has(junk_digest)
