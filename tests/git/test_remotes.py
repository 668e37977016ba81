"""Bucket remotes end to end, against a local folder and the loopback S3 and GCS servers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    REMOTE_SHAPE,
    Case,
    GitRepo,
    ServerProcess,
    clone,
    commit_checkpoint,
    file_sha,
    gcs_backend,
    init_bare,
    local_case,
    make_case,
    manifest_at,
    s3_backend,
)

from theta_zarr.demo import write_model
from theta_zarr.manifest import Manifest


@pytest.fixture(params=["local", "s3", "gcs"])
def remote_case(request, tmp_path, monkeypatch) -> Case:
    """Each remote in turn: a folder, ``models`` in a bucket on the S3 and GCS servers."""
    return make_case(request.param, request, tmp_path, monkeypatch, prefix="models")


def setup_origin(repo, case: Case, tmp_path: Path) -> Path:
    """A bare git remote plus the theta remote, shared through a committed .thetazarr."""
    repo.env.update(case.env)  # credentials and emulator hosts: environment only
    bare = tmp_path / "origin.git"
    init_bare(bare, repo.env)
    repo.git("remote", "add", "origin", str(bare))
    args = [a for o in case.options for a in ("--remote-option", o)]
    repo.tz("remote", "add", "origin", case.url, *args, "--shared")
    repo.git("add", ".thetazarr")
    repo.git("commit", "-q", "-m", "remote")
    return bare


def commit_model(repo, message: str, **kw) -> Manifest:
    commit_checkpoint(repo, message, shape=REMOTE_SHAPE, **kw)
    return manifest_at(repo, "HEAD")


def test_push_then_clone_is_bit_exact(repo, remote_case, make_repo, tmp_path):
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    bare = setup_origin(repo, remote_case, tmp_path)
    m = commit_model(repo, "base")
    original = file_sha(repo.path / "model.safetensors")
    push = repo.git("push", "-q", "origin", "main")
    assert b"uploaded" in push.stderr
    assert remote_case.objects().missing(m.digests()) == set()
    c = clone(make_repo, bare, "clone")
    assert file_sha(c.path / "model.safetensors") == original
    assert c.out("status", "--porcelain") == ""
    # the clone's cache was filled from the bucket
    assert c.object_files() == {f"{d[7:9]}/{d[9:]}" for d in m.digests()}


def test_second_push_uploads_only_changed_chunks(repo, remote_case, tmp_path):
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    setup_origin(repo, remote_case, tmp_path)
    base = commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    remote = remote_case.objects()
    before = {d for d, _, _ in remote.iter_digests()}
    assert before == base.digests()
    tuned = commit_model(repo, "tuned",
                         tuned=REMOTE_SHAPE.layer_names(1) + REMOTE_SHAPE.layer_names(2))
    out = repo.git("push", "-q", "origin", "main").stderr.decode()
    after = {d for d, _, _ in remote.iter_digests()}
    new = tuned.digests() - base.digests()
    assert new and after - before == new
    assert f"uploaded {len(new)} objects" in out


def test_lazy_load_fetches_exactly_one_layer(repo, remote_case, make_repo, tmp_path):
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    bare = setup_origin(repo, remote_case, tmp_path)
    m = commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    c = clone(make_repo, bare, "lazy", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    assert (c.path / "model.safetensors").read_bytes().startswith(b'{"theta_zarr"')
    assert c.object_files() == set()
    code = ("import theta_zarr, sys; sd = theta_zarr.load_state_dict('model.safetensors', "
            "include=['lm_head.*']); print(sorted(sd))")
    out = c.run("python", "-c", code).stdout.decode()
    assert "lm_head.weight" in out
    layer = {d for n, e in m.params.items() if n.startswith("lm_head.") for d in e.chunks}
    assert c.object_files() == {f"{d[7:9]}/{d[9:]}" for d in layer}
    # bytes fetched equal the layer's bytes (the cache stores raw chunks)
    fetched = sum((c.objects_dir / f).stat().st_size - len(b"TZO1\x03raw")
                  for f in c.object_files())
    assert fetched == sum(e.nbytes for n, e in m.params.items() if n.startswith("lm_head."))
    # a partial materialize goes to a separate file
    out = c.tz("materialize", "model.safetensors", "--include", "layers.1.*").stdout.decode()
    assert "model.partial.safetensors" in out
    assert (c.path / "model.safetensors").read_bytes().startswith(b'{"theta_zarr"')
    import safetensors

    with safetensors.safe_open(str(c.path / "model.partial.safetensors"), "np") as f:
        assert set(f.keys()) == set(REMOTE_SHAPE.layer_names(1))
    # a full materialize rebuilds the real file; git sees no change
    c.tz("materialize")
    assert file_sha(c.path / "model.safetensors") == file_sha(repo.path / "model.safetensors")
    assert c.out("status", "--porcelain", "--untracked-files=no") == ""


def test_smudge_command_fetches_what_the_cache_lacks(repo, remote_case, make_repo, tmp_path):
    """``git show REV:file | git theta-zarr smudge file`` gives the real bytes in a lazy
    clone; it said "no remote is configured" while one was."""
    bare = setup_origin(repo, remote_case, tmp_path)
    commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    c = clone(make_repo, bare, "show", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    manifest = c.git("show", "HEAD:model.safetensors").stdout
    out = c.tz("smudge", "model.safetensors", input=manifest).stdout
    assert out == (repo.path / "model.safetensors").read_bytes()


def test_fetch_command_prefetches_selected_params(repo, remote_case, make_repo, tmp_path):
    bare = setup_origin(repo, remote_case, tmp_path)
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    m = commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    c = clone(make_repo, bare, "pre", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    c.tz("fetch", "origin", "HEAD", "--include", "embed_tokens.*")
    want = {d for d in m.params["embed_tokens.weight"].chunks}
    assert c.object_files() == {f"{d[7:9]}/{d[9:]}" for d in want}


def test_fetch_of_what_the_cache_holds_does_not_ask_the_remote(repo, make_repo, tmp_path):
    """As git-lfs: objects already in the cache are not fetched, and with none lacking the
    remote is not opened at all (a remote that is gone does not fail the fetch)."""
    case = local_case(tmp_path)
    bare = setup_origin(repo, case, tmp_path)
    m = commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    c = clone(make_repo, bare, "again", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    first = c.tz("fetch").stdout.decode()
    assert f"fetched {len(m.digests())} objects" in first
    (tmp_path / "bucket").rename(tmp_path / "gone")
    again = c.tz("fetch").stdout.decode()
    assert "fetched 0 objects" in again and f"{len(m.digests())} already there" in again


def test_a_clone_fetches_the_history_for_a_first_push_to_another_remote(repo, make_repo,
                                                                       tmp_path):
    """A clone's cache holds what it checked out; its first push to a mirror needs the
    older commits' chunks too.  The push said "fetch them", and fetch took one revision
    only: ``fetch --all`` gets the whole history's, as ``git lfs fetch --all`` does."""
    case = local_case(tmp_path)
    bare = setup_origin(repo, case, tmp_path)
    old = commit_model(repo, "base")
    commit_model(repo, "tuned", seed=1)
    repo.git("push", "-q", "origin", "main")
    c = clone(make_repo, bare, "c")
    c.tz("remote", "add", "mirror", str(tmp_path / "mirror-store"))
    c.git("remote", "add", "mirror", str(init_bare(tmp_path / "mirror.git", c.env)))
    stuck = c.git("push", "-q", "mirror", "main", check=False)
    assert stuck.returncode != 0, stuck
    assert "('git theta-zarr fetch --all origin')" in stuck.stderr.decode()
    assert c.tz("fetch", "--all", "origin", "HEAD", check=False).returncode == 129
    c.tz("fetch", "--all", "origin")
    c.git("push", "-q", "mirror", "main")
    mirror = Case("mirror", str(tmp_path / "mirror-store"), {}, [])
    assert mirror.objects().missing(old.digests()) == set()


def test_corrupt_object_in_bucket_is_named_and_not_used(repo, remote_case, make_repo,
                                                         tmp_path):
    bare = setup_origin(repo, remote_case, tmp_path)
    m = commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    digest = m.params["lm_head.weight"].chunks[0]
    remote = remote_case.objects()
    key = f"objects/{digest[7:9]}/{digest[9:]}"
    remote.blobs.put(key, [b"TZO1\x03raw", b"\0" * 100])
    c = clone(make_repo, bare, "c", check=False)
    # the clone's checkout of the model fails, naming the digest and the remote
    proc = c.clone_result
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert digest in err and "corrupt" in err
    assert remote_case.url.split("://")[-1] in err
    assert f"{digest[7:9]}/{digest[9:]}" not in c.object_files()


def test_push_killed_midway_then_rerun_completes(repo, remote_case, tmp_path):
    repo.git("config", "theta-zarr.chunk-size", "1KiB")
    repo.git("config", "theta-zarr.concurrency", "1")
    setup_origin(repo, remote_case, tmp_path)
    m = commit_model(repo, "base")
    remote = remote_case.objects()
    # the program itself (git would leave its child running when killed)
    proc = subprocess.Popen(["git-theta-zarr", "push", "origin"], cwd=repo.path,
                            env=repo.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        # counted while it is stopped: a push to a folder can otherwise finish while the
        # listing runs, leaving nothing to kill midway
        proc.send_signal(signal.SIGSTOP)
        if sum(1 for _ in remote.iter_digests()) >= 5:
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = {d for d, _, _ in remote.iter_digests()}
    assert 0 < len(partial) < len(m.digests()), "the push finished before it could be killed"
    out = repo.tz("push", "origin").stderr.decode()
    assert f"{len(partial)} already there" in out
    assert remote.missing(m.digests()) == set()


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_unreachable_server_fails_push_clearly(repo, tmp_path, kind):
    """The server stops mid-push: retries bounded by the retry budget across every layer
    (theta-zarr's and the storage library's), one clear line, no library logging, git
    push refused."""
    server = ServerProcess(kind, ["--bucket", "dying"])
    scheme = "s3" if kind == "s3" else "gs"
    try:
        backend = (s3_backend if kind == "s3" else gcs_backend)(server.endpoint)
        repo.env.update(backend.env)
        repo.env["THETA_ZARR_RETRY_TIMEOUT"] = "5"
        repo.git("config", "theta-zarr.chunk-size", "1KiB")
        repo.git("config", "theta-zarr.concurrency", "1")
        bare = tmp_path / "origin.git"
        init_bare(bare)
        repo.git("remote", "add", "origin", str(bare))
        repo.tz("remote", "add", "origin", f"{scheme}://dying/models", "--remote-option",
                f"endpoint-url={server.endpoint}")
        commit_model(repo, "base")
        # stderr to a file: a pipe nobody reads while we poll could fill and block git
        err_file = open(tmp_path / "push.err", "w+b")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(["git", "push", "origin", "main"], cwd=repo.path, env=repo.env,
                                stdout=subprocess.DEVNULL, stderr=err_file)
        # watch the bucket with the test's own credentials until the upload is under way
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline and proc.poll() is None and seen < 3:
            seen = len(backend.objects(f"{scheme}://dying/models"))
            time.sleep(0.05)
        server.proc.kill()  # abruptly: a graceful stop could finish serving the upload
    finally:
        server.stop()
    proc.wait(timeout=120)
    assert seen >= 3, "the push ended before the server could be stopped mid-way"
    assert proc.returncode != 0
    err_file.seek(0)
    text = err_file.read().decode()
    err_file.close()
    assert "theta-zarr:" in text and f"{scheme}://dying/models" in text
    # one line from theta-zarr, a few from git; nothing from the storage library's logger
    assert "Traceback" not in text and "retrying" not in text.lower(), text
    assert len(text.splitlines()) <= 8, text
    # git refused the push: the bare remote has no branch naming missing objects
    refs = subprocess.run(["git", "-C", str(bare), "for-each-ref"], capture_output=True)
    assert refs.stdout == b""


@pytest.mark.parametrize("remote_case", ["local", "s3"], indirect=True)
def test_clone_delays_smudges_and_fetches_in_one_batch(repo, remote_case, make_repo, tmp_path):
    """With capability=delay git hands over every smudge of a checkout; one batch fetch."""
    bare = setup_origin(repo, remote_case, tmp_path)
    hashes = {}
    for i in range(3):
        name = f"m{i}.safetensors"
        write_model(str(repo.path / name), REMOTE_SHAPE, seed=i)
        hashes[name] = file_sha(repo.path / name)
    repo.git("add", ".")
    repo.git("commit", "-q", "-m", "three models")
    repo.git("push", "-q", "origin", "main")
    trace = tmp_path / "packets.log"
    c = clone(make_repo, bare, "batch", env={"GIT_TRACE_PACKET": str(trace)})
    for name, h in hashes.items():
        assert file_sha(c.path / name) == h
    log = trace.read_text(errors="replace")
    assert log.count("status=delayed") == 3
    assert "command=list_available_blobs" in log
    assert c.out("status", "--porcelain") == ""


@pytest.mark.parametrize("remote_case", ["local"], indirect=True)
def test_clone_before_install_then_materialize(repo, remote_case, make_repo, tmp_path):
    """Cloned before theta-zarr was installed: manifests in the tree until materialize."""
    bare = setup_origin(repo, remote_case, tmp_path)
    commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    c = make_repo("plain")
    c.path.rmdir()
    GitRepo(c.path.parent, c.env).run("git", "clone", "-q", str(bare), "plain")
    assert (c.path / "model.safetensors").read_bytes().startswith(b'{"theta_zarr"')
    out = c.tz("install").stdout.decode()
    assert "run 'git theta-zarr materialize'" in out
    c.tz("materialize")
    assert file_sha(c.path / "model.safetensors") == file_sha(repo.path / "model.safetensors")
    assert c.out("status", "--porcelain") == ""


@pytest.mark.parametrize("remote_case", ["local"], indirect=True)
def test_pre_push_falls_back_to_the_default_theta_remote(repo, remote_case, tmp_path):
    """A git remote 'origin' elsewhere, the chunks in a theta remote named 'models'."""
    bare = tmp_path / "origin.git"
    init_bare(bare)
    repo.git("remote", "add", "origin", f"file://{bare}")
    repo.tz("remote", "add", "models", remote_case.url)
    repo.git("config", "theta-zarr.default-remote", "models")
    m = commit_model(repo, "base")
    repo.git("push", "-q", "origin", "main")
    assert remote_case.objects().missing(m.digests()) == set()


def test_a_push_of_many_tags_asks_git_once_not_once_a_tag(repo, tmp_path):
    """``git push --tags`` of a run's step tags: the pre-push hook started a ``git
    cat-file -e`` for each pushed ref (and another for each one the remote had), and
    put every tag's commit on one command line.  One ``cat-file`` now answers for all,
    the revisions go to git on its standard input, and what is pushed is the same: every
    chunk of both commits, the fine-tune's as deltas against its parent; tags moved
    later bound the range by what the remote had, so nothing is sent again."""
    case = local_case(tmp_path)
    setup_origin(repo, case, tmp_path)
    old = commit_model(repo, "base")
    new = commit_model(repo, "tuned", tuned=REMOTE_SHAPE.layer_names(1))
    tags = "".join(f"create refs/tags/step-{i} HEAD{'~1' if i % 2 else ''}\n"
                   for i in range(40))
    repo.git("update-ref", "--stdin", input=tags.encode())
    trace = tmp_path / "trace.json"
    err = repo.git("push", "-q", "origin", "main", "--tags",
                   env={"GIT_TRACE2_EVENT": str(trace)}).stderr.decode()
    assert "delta" in err and case.objects().missing(old.digests() | new.digests()) == set()
    argvs = [json.loads(line).get("argv") or [] for line in trace.read_text().splitlines()]
    assert len([a for a in argvs if a[:2] == ["git", "cat-file"]]) < 10
    moved = "".join(f"update refs/tags/step-{i} HEAD\n" for i in range(1, 40, 2))
    repo.git("update-ref", "--stdin", input=moved.encode())
    err = repo.git("push", "-q", "-f", "origin", "--tags",
                   env={"GIT_TRACE2_EVENT": str(trace)}).stderr.decode()
    assert "uploaded" not in err  # the remote's commits bound the range: nothing to send
    argvs = [json.loads(line).get("argv") or [] for line in trace.read_text().splitlines()]
    assert len([a for a in argvs if a[:2] == ["git", "cat-file"]]) < 20


@pytest.mark.parametrize("how", [("git", "push", "--dry-run"), ("git", "push", "-fn"),
                                 ("git", "push", "--dry"), ("tz", "push", "-n")])
def test_a_dry_run_push_says_what_it_would_upload_and_uploads_nothing(repo, tmp_path, how):
    case = local_case(tmp_path)
    bare = setup_origin(repo, case, tmp_path)
    m = commit_model(repo, "base")
    tool, *args = how
    run = repo.git if tool == "git" else repo.tz
    out = run(*args, "origin", *(["main"] if tool == "git" else [])).stderr.decode()
    assert f"dry run: would upload {len(m.digests())} objects to origin" in out
    assert "nothing uploaded" in out
    assert case.objects().missing(m.digests()) == m.digests()
    assert repo.git("ls-remote", str(bare)).stdout == b""  # git's own dry run, too
    repo.git("push", "-q", "origin", "main")  # the real push uploads them all
    assert case.objects().missing(m.digests()) == set()


def test_a_checkpoint_of_many_small_tensors_is_one_pack_through_git_push_and_gc(
        repo, make_repo, tmp_path):
    """10^4-10^5 small tensors (an MoE's experts) made one cache file each; a clean of
    that many now writes one pack, and push, a clone's checkout, fsck and gc see its
    objects as loose ones."""
    import numpy as np
    from helpers import commit_tensors

    from theta_zarr import packs
    case = local_case(tmp_path)
    bare = setup_origin(repo, case, tmp_path)
    rng = np.random.default_rng(0)
    n = packs.PACK_MIN + 20
    tensors = {f"experts.{i}.w": rng.standard_normal(256, dtype=np.float32) for i in range(n)}
    commit_tensors(repo, tensors, "base")
    base = manifest_at(repo, "HEAD")
    pack_dir = repo.path / ".git" / "theta-zarr" / packs.FOLDER
    assert len(packs.list_packs(str(pack_dir))) == 1 and repo.object_files() == set()
    assert repo.out("status", "--porcelain") == ""
    repo.git("push", "-q", "origin", "main")
    assert case.objects().missing(base.digests()) == set()
    c = clone(make_repo, bare, "clone")
    assert file_sha(c.path / "model.safetensors") == file_sha(repo.path / "model.safetensors")
    # the clone's fetch stored them in a pack too
    assert len(packs.list_packs(str(c.path / ".git" / "theta-zarr" / packs.FOLDER))) == 1
    assert c.object_files() == set()
    (repo.path / "model.safetensors").unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert repo.out("status", "--porcelain") == ""
    assert "ok: " in repo.tz("fsck").stdout.decode()
    # a new version of a third of the experts, the old version gone from every ref
    for i in range(0, n, 3):
        tensors[f"experts.{i}.w"] = tensors[f"experts.{i}.w"] + 1
    commit_tensors(repo, tensors, "tuned")
    tuned = manifest_at(repo, "HEAD")
    repo.git("reset", "-q", "--soft", "HEAD~2")
    repo.git("commit", "-q", "-m", "only the tuned version")
    repo.git("update-ref", "-d", "refs/remotes/origin/main")  # the pushed base, unreachable
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.tz("gc", "--grace", "0")
    from theta_zarr.cache import Cache
    cache = Cache(str(repo.path / ".git" / "theta-zarr"))
    assert cache.missing(tuned.digests()) == set()
    assert cache.missing(base.digests()) == base.digests() - tuned.digests()
    (repo.path / "model.safetensors").unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert repo.out("status", "--porcelain") == ""
    # a malformed pack goes to quarantine, and gc says so
    junk = pack_dir / f"pack-{'0' * 64}{packs.SUFFIX}"
    junk.write_bytes(b"junk" * 100)
    out = repo.tz("gc", "--grace", "0").stdout.decode()
    assert f"moved 1 malformed pack (its objects unreadable) to {cache.root}/quarantine: " \
        f"{junk.name}\n" in out
    assert not junk.exists()


def test_an_http_remote_serves_clones_and_refuses_writes_before_sending_anything(
        repo, make_repo, tmp_path, http_folder):
    """A static server or a mirror over HTTP, or MinIO given by its HTTP URL (the usual
    mistake): remote add warns in one line with the s3:// spelling; a clone fetches from
    it; push and gc --remote refuse, naming the remote, before a request is made."""
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    bare = init_bare(tmp_path / "origin.git", repo.env)
    repo.git("remote", "add", "origin", str(bare))
    repo.tz("remote", "add", "origin", str(http_folder.folder))  # the mirror's source
    commit_model(repo, "base")
    original = file_sha(repo.path / "model.safetensors")
    repo.git("push", "-q", "origin", "main")
    c = clone(make_repo, bare, "clone", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    added = c.tz("remote", "add", "origin", http_folder.url).stderr.decode()
    assert added == (f"theta-zarr: warning: remote 'origin': HTTP remotes are read-only (git "
                     f"clones and fetches only); an S3-compatible server (MinIO) is "
                     f"s3://BUCKET/PREFIX --remote-option endpoint-url={http_folder.url}\n")
    assert c.git("config", "theta-zarr.remote.origin.url").stdout.decode().strip() == \
        http_folder.url
    c.tz("materialize")  # reads over HTTP
    assert file_sha(c.path / "model.safetensors") == original
    assert any(m == "GET" and p.startswith("/objects/") for m, p in http_folder.requests)
    served = http_folder.files()
    heads = c.git("ls-remote", str(bare)).stdout
    commit_model(c, "tuned", tuned=REMOTE_SHAPE.layer_names(1))
    before = len(http_folder.requests)
    for args in (("git", "push", "origin", "main"), ("git", "theta-zarr", "push", "origin"),
                 ("git", "theta-zarr", "gc", "--remote", "origin", "--grace", "0")):
        out = c.run(*args, check=False)
        assert out.returncode != 0, args
        assert f"theta-zarr: remote 'origin' ({http_folder.url}) cannot be written: HTTP " \
               f"remotes are read-only (git clones and fetches only); an S3-compatible " \
               f"server (MinIO) is s3://BUCKET/PREFIX --remote-option endpoint-url=" \
               f"{http_folder.url}\n" in out.stderr.decode(), args
        assert b"Traceback" not in out.stderr
    assert http_folder.requests[before:] == []  # refused before anything was asked
    assert http_folder.files() == served
    assert c.git("ls-remote", str(bare)).stdout == heads  # the hook stopped git's push too
