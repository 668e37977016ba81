"""publish / pull / ls from the command line against a folder, S3 and GCS."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import (
    CHUNK,
    SHAPE,
    Case,
    env_for,
    file_sha,
    local_case,
    make_case,
    model,
    permissions_held,
    tz,
)

from theta_zarr import sync
from theta_zarr.manifest import Manifest
from theta_zarr.settings import Settings
from theta_zarr.sync import SyncError
from theta_zarr.wording import counted


def test_eight_concurrent_pushes_to_one_ref_have_one_winner(case, tmp_path):  # noqa: F811
    env = env_for(case, tmp_path)
    files = [model(tmp_path / f"m{i}.safetensors", seed=i) for i in range(8)]
    procs = [subprocess.Popen(
        ["theta-zarr", "publish", str(f), case.url, "--ref", "run7/step-1", "--chunk-size", CHUNK,
         "--cache", str(tmp_path / f"cache{i}"), *case.cli_options()],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i, f in enumerate(files)]
    results = [(p.wait(), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    won = [i for i, (rc, _) in enumerate(results) if rc == 0]
    assert len(won) == 1, results
    for i, (rc, err) in enumerate(results):
        if i not in won:
            assert rc == 1 and "run7/step-1" in err and "--force" in err or \
                "concurrently" in err, err
    # the ref names a complete manifest, and pulling it gives the winner's bytes
    out = tmp_path / "pulled.safetensors"
    tz(["pull", case.url, "run7/step-1", "-o", str(out), *case.cli_options()], env)
    assert file_sha(out) == file_sha(files[won[0]])
    # nothing half-written: every manifest a push stored has all its objects (a push that
    # found the ref taken before uploading stored nothing)
    remote = case.remote()
    manifests = dict(remote.iter_manifests())
    assert remote.refs.read("run7/step-1").digest in manifests and len(manifests) <= 8
    for digest in manifests:
        target = remote.load(digest)
        assert remote.objects.missing(target.digests()) == set()


def test_second_push_uploads_only_changed_chunks_and_pull_is_bit_exact(case, tmp_path):  # noqa: F811
    env = env_for(case, tmp_path)
    base = model(tmp_path / "base.safetensors")
    opts = ["--chunk-size", CHUNK, *case.cli_options()]
    tz(["publish", str(base), case.url, "--ref", "run7/step-1", *opts], env)
    remote = case.remote()
    before = {d for d, _, _ in remote.objects.iter_digests()}
    # about 10% of the parameters change
    tuned = [n for n, _ in SHAPE.tensors()][::10]
    step2 = model(tmp_path / "step2.safetensors", tuned=tuned)
    err = tz(["publish", str(step2), case.url, "--ref", "run7/step-2", *opts], env).stderr.decode()
    after = {d for d, _, _ in remote.objects.iter_digests()}
    m1 = remote.load(remote.refs.read("run7/step-1").digest)
    m2 = remote.load(remote.refs.read("run7/step-2").digest)
    changed = m2.digests() - m1.digests()
    assert changed and after - before == changed
    assert f": {counted(len(changed), 'object')} sent, " in err
    assert "MB raw -> " in err and "MB total" in err and " s" in err
    assert "delta base run7/step-1" in err  # the newest ref in the folder
    # pull into a fresh folder: bit-exact
    out = tmp_path / "fresh" / "model.safetensors"
    tz(["pull", case.url, "run7/step-2", "-o", str(out), *case.cli_options(),
        "--cache", str(tmp_path / "fresh-cache")], env)
    assert file_sha(out) == file_sha(step2)
    # --include: only the selected parameters
    part = tmp_path / "part.safetensors"
    tz(["pull", case.url, "run7/step-2", "-o", str(part), "--include", "lm_head.*",
        *case.cli_options()], env)
    from safetensors import safe_open

    with safe_open(str(part), "np") as f:
        assert list(f.keys()) == ["lm_head.weight"]
    # ls: both refs, sizes and parameter counts
    rows = tz(["ls", case.url, "run7/", *case.cli_options()], env).stdout.decode().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["run7/step-1", "run7/step-2"]
    assert f"{len(m1.params)} params" in rows[0]
    assert isinstance(m1, Manifest)


def test_sharded_directory_and_rank_pushes_with_combine(case, tmp_path):  # noqa: F811
    env = env_for(case, tmp_path)
    opts = ["--chunk-size", CHUNK, *case.cli_options()]
    ckpt = tmp_path / "step-5"
    ckpt.mkdir()
    for r in range(4):
        model(ckpt / f"rank-{r}.safetensors", seed=10 + r)
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "b"}}))
    # the whole folder as one ref
    tz(["publish", str(ckpt), case.url, "--ref", "run7/step-5", *opts], env)
    out = tmp_path / "pulled-dir"
    tz(["pull", case.url, "run7/step-5", "-o", str(out), *case.cli_options()], env)
    for f in ckpt.iterdir():
        assert file_sha(out / f.name) == file_sha(f)
    # ranks push their shards concurrently (threads here: one process per rank costs
    # seconds of start-up on a small test machine), then one combine records the set
    settings = Settings(cache_dir=str(tmp_path / "rank-cache"), chunk_bytes=16 << 10)
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda f: sync.push(str(f), case.remote(), "run7/step-6", settings,
                                          shard=f.name), sorted(ckpt.iterdir())))
    assert case.remote().refs.read("run7/step-6") is None  # nothing named before combine
    bad = tz(["combine", case.url, "--ref", "run7/step-6", "--expect", "9",
              *case.cli_options()], env, check=False)
    assert bad.returncode == 1 and "expected 9" in bad.stderr.decode()
    tz(["combine", case.url, "--ref", "run7/step-6", *case.cli_options()], env)
    # the same files give the same set: both refs name one digest
    remote = case.remote()
    assert remote.refs.read("run7/step-6").digest == remote.refs.read("run7/step-5").digest
    assert remote.staged("run7/step-6") == {}
    if case.kind == "local":  # no empty staging/run7/step-6/.parts/ folders left behind
        assert not (Path(case.url) / "staging").exists()
    # two ranks' files of one name: the second is refused (it silently replaced the
    # first, and combine recorded a set without it); the same file again is a retry
    for seed, code in ((20, 0), (20, 0), (21, 1)):
        (tmp_path / f"seed-{seed}").mkdir(exist_ok=True)
        f = model(tmp_path / f"seed-{seed}" / "model.safetensors", seed=seed)
        proc = tz(["publish", str(f), case.url, "--ref", "run7/step-7", "--shard", *opts],
                  env, check=False)
        assert proc.returncode == code, proc.stderr.decode()
    assert "already staged with other content" in proc.stderr.decode()
    staged = case.remote().staged("run7/step-7")["model.safetensors"]
    tz(["publish", str(f), case.url, "--ref", "run7/step-7", "--shard", "--force", *opts], env)
    assert case.remote().staged("run7/step-7")["model.safetensors"] != staged


def test_push_errors_are_one_line(tmp_path):
    case_env = env_for(type("C", (), {"env": {}})(), tmp_path)
    f = model(tmp_path / "m.safetensors")
    bad = tz(["publish", str(f), str(tmp_path / "b"), "--ref", "../x"], case_env, check=False)
    assert bad.returncode == 1 and "invalid ref name" in bad.stderr.decode()
    assert len(bad.stderr.decode().strip().splitlines()) == 1
    (tmp_path / "b").mkdir()  # a missing folder is its own error (tests/storage/test_urls.py)
    missing = tz(["pull", str(tmp_path / "b"), "nope", "-o", str(tmp_path / "o")], case_env,
                 check=False)
    assert missing.returncode == 1 and "no ref nope" in missing.stderr.decode()


def test_a_bare_word_outside_a_repository_says_to_give_a_url_or_a_path(tmp_path):
    """A REMOTE that is no URL and no folder here is a theta remote's name, which needs a
    git repository: the line said only "not inside a git repository", as if publish needed
    one; it names the argument and the path that makes it a folder."""
    env = env_for(type("C", (), {"env": {}})(), tmp_path)
    f = model(tmp_path / "m.safetensors")
    for args in (["publish", str(f), "newremote", "--ref", "run7/step-1"],
                 ["pull", "newremote", "run7/step-1", "-o", "out.safetensors"],
                 ["ls", "newremote"]):
        proc = tz(args, env, check=False, cwd=tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("theta-zarr: REMOTE 'newremote' is not a URL or an existing "
                              "folder") and "(./newremote)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_pull_never_writes_over_what_is_there_unless_forced(request, tmp_path, monkeypatch):
    """An existing file, or a folder that is not empty, is refused before anything is
    fetched (as git clone refuses), and so is an --include that matches nothing."""
    local = make_case("local", request, tmp_path, monkeypatch)
    env = env_for(local, tmp_path)
    one = model(tmp_path / "one.safetensors")
    folder = tmp_path / "ck"
    folder.mkdir()
    model(folder / "model.safetensors", seed=1)
    (folder / "config.json").write_text("{}")
    tz(["publish", str(one), local.url, "--ref", "run7/file"], env)
    tz(["publish", str(folder), local.url, "--ref", "run7/folder"], env)

    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"my notes")
    proc = tz(["pull", local.url, "run7/file", "-o", str(mine)], env, check=False)
    assert proc.returncode == 1 and "already exists" in proc.stderr.decode()
    assert mine.read_bytes() == b"my notes"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "model.safetensors").write_bytes(b"my notes")
    proc = tz(["pull", local.url, "run7/folder", "-o", str(busy)], env, check=False)
    assert proc.returncode == 1 and "not an empty folder" in proc.stderr.decode()
    assert (busy / "model.safetensors").read_bytes() == b"my notes"
    for ref, out in (("run7/file", tmp_path / "x.safetensors"), ("run7/folder", tmp_path / "x")):
        proc = tz(["pull", local.url, ref, "-o", str(out), "--include", "nomatch*"], env,
                  check=False)
        assert proc.returncode == 1 and "no parameter matches nomatch*" in proc.stderr.decode()
        assert not out.exists()
    # --force writes over: the ref's bytes, exactly
    tz(["pull", local.url, "run7/file", "-o", str(mine), "--force"], env)
    assert file_sha(mine) == file_sha(one)
    tz(["pull", local.url, "run7/folder", "-o", str(busy), "--force"], env)
    assert file_sha(busy / "model.safetensors") == file_sha(folder / "model.safetensors")
    # where a file and a folder clash, one line before anything is written, --force or
    # not (they gave a raw errno naming a temporary file, after part of a set was written)
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "model.safetensors").mkdir()
    for ref, force, said in (
            ("run7/file", [], "clash is a folder, and run7/file is one checkpoint file"),
            ("run7/file", ["--force"], "clash is a folder, and run7/file is one checkpoint"),
            ("run7/folder", ["--force"], "model.safetensors is a folder; the ref has a file")):
        proc = tz(["pull", local.url, ref, "-o", str(clash), *force], env, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and said in err and "Errno" not in err, err
    assert sorted(p.name for p in clash.iterdir()) == ["model.safetensors"]
    # a folder not made yet, named with a trailing '/': that line too, before any fetch (it
    # fetched every chunk, then said only "new/: Not a directory")
    proc = tz(["pull", local.url, "run7/file", "-o", f"{tmp_path / 'new'}/"], env, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "new/ ends in '/' (a folder), and run7/file is one " \
        "checkpoint file" in err and "Errno" not in err, err
    assert not (tmp_path / "new").exists()


def test_a_pull_into_a_folder_it_cannot_write_fails_before_fetching(tmp_path):
    """A read-only output folder (a share mounted read-only, another user's folder): one
    line naming the folder, and the cache untouched; it fetched every chunk of the ref
    into the cache first, then said only "OUT: Permission denied"."""
    prefix = permissions_held()
    local = local_case(tmp_path)
    env = env_for(local, tmp_path)
    tz(["publish", str(model(tmp_path / "m.safetensors")), local.url, "--ref", "run7/file"], env)
    folder = tmp_path / "ck"
    folder.mkdir()
    model(folder / "model.safetensors", seed=1)
    tz(["publish", str(folder), local.url, "--ref", "run7/folder"], env)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    fresh = {**env, "THETA_ZARR_CACHE": str(tmp_path / "fresh-cache")}
    try:
        for ref, out, first in (("run7/file", ro / "m.safetensors", ro / "m.safetensors"),
                                ("run7/file", ro / "sub" / "m.safetensors",
                                 ro / "sub" / "m.safetensors"),
                                ("run7/folder", ro / "set", ro / "set" / "model.safetensors")):
            proc = tz(["pull", local.url, ref, "-o", str(out)], fresh, check=False,
                      prefix=prefix)
            err = proc.stderr.decode()
            assert proc.returncode == 1 and err.strip().splitlines() == [
                f"theta-zarr: cannot write {first}: {ro} is not writable (nothing was "
                "fetched)"], err
            assert not (tmp_path / "fresh-cache").exists()
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_ctrl_c_is_one_line_and_status_130(tmp_path):
    """SIGINT while a publish waits on the network: `theta-zarr: interrupted`, status 130
    (128 + SIGINT, as git and the shell report it), no traceback."""
    import signal
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(120)
        env = {**env_for(Case("s3", "", {}, []), tmp_path), "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        proc = subprocess.Popen(
            ["theta-zarr", "publish", str(model(tmp_path / "m.safetensors")), "s3://b/m",
             "--ref", "run/step-1", "--remote-option",
             f"endpoint-url=http://127.0.0.1:{server.getsockname()[1]}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        conn, _ = server.accept()  # the command is inside its work, waiting on us
        try:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            conn.close()
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines() == ["theta-zarr: interrupted"], err


def test_diff_refs_compares_two_folders_file_by_file(case, tmp_path):  # noqa: F811
    env = env_for(case, tmp_path)
    opts = ["--chunk-size", CHUNK, *case.cli_options()]
    one, two = tmp_path / "step-1", tmp_path / "step-2"
    for folder in (one, two):
        folder.mkdir()
        model(folder / "rank-0.safetensors", seed=1)
    model(one / "rank-1.safetensors", seed=2)
    model(two / "rank-1.safetensors", seed=3)  # every tensor differs
    model(two / "rank-2.safetensors", seed=4)  # a new shard
    (one / "notes.txt").write_text("a")
    (two / "notes.txt").write_text("bb")
    for folder in (one, two):
        tz(["publish", str(folder), case.url, "--ref", f"run9/{folder.name}", *opts], env)
    doc = json.loads(tz(["diff-refs", case.url, "run9/step-1", "run9/step-2", "--json",
                         *case.cli_options()], env).stdout)
    files = {f["path"]: f for f in doc["files"]}
    assert sorted(files) == ["notes.txt", "rank-1.safetensors", "rank-2.safetensors"]
    assert {p["status"] for p in files["rank-1.safetensors"]["params"]} == {"changed"}
    assert {p["status"] for p in files["rank-2.safetensors"]["params"]} == {"added"}
    assert files["notes.txt"]["foreign"]["new"]["size"] == 2
    text = tz(["diff-refs", case.url, "run9/step-1", "run9/step-2", *case.cli_options()],
              env).stdout.decode()
    assert "rank-0" not in text and "notes.txt" in text
    # a checkpoint against a set: one line, status 1
    tz(["publish", str(one / "rank-0.safetensors"), case.url, "--ref", "run9/one", *opts], env)
    bad = tz(["diff-refs", case.url, "run9/one", "run9/step-1", *case.cli_options()], env,
             check=False)
    assert bad.returncode == 1
    assert bad.stderr.decode().startswith("theta-zarr: ref run9/one names one checkpoint")


def test_a_combine_that_cannot_remove_the_staged_shards_still_records_the_set(tmp_path):
    """A staging folder the combining job cannot write (another user's, a read-only
    share): combine moved the ref, then failed with exit 1 and a bare "PATH: Permission
    denied", as if nothing had been recorded."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    ref = "run7/step-6"
    settings = Settings(cache_dir=str(tmp_path / "rank-cache"), chunk_bytes=16 << 10)
    sync.push(str(model(tmp_path / "rank-0.safetensors")), case.remote(), ref, settings,
              shard="rank-0.safetensors")
    staging = Path(case.url) / "staging"
    folders = [staging, *(p for p in staging.rglob("*") if p.is_dir())]
    for p in folders:
        p.chmod(0o555)
    try:
        proc = tz(["combine", case.url, "--ref", ref], env, prefix=permissions_held())
    finally:
        for p in folders:
            p.chmod(0o755)
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith(f"theta-zarr: created (1 shards) {ref} -> blake3:"), line
    assert line.endswith(f"rank-0.safetensors: Permission denied); 'theta-zarr combine "
                         f"{case.url} --ref {ref} --abort' drops them"), line
    assert case.remote().refs.read(ref) is not None
    assert sync.abort_combine(case.remote(), ref) == ["rank-0.safetensors"]
    assert not staging.exists()


def test_combine_abort_drops_a_dead_attempts_staged_shards(tmp_path):
    """Three ranks staged run7/step-6 and the job died before combine; the restarted job
    has two.  The dead attempt's shards could not be removed: rank 0's new file was
    refused, combine --expect 2 refused for good, and combine without it would have put
    rank-2's stale file in the set (gc keeps staged shards as roots forever)."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    settings = Settings(cache_dir=str(tmp_path / "rank-cache"), chunk_bytes=16 << 10)
    ref = "run7/step-6"

    def stage(attempt: int, ranks: int, **kw) -> None:
        for r in range(ranks):
            f = model(tmp_path / f"a{attempt}" / f"rank-{r}.safetensors", seed=10 * attempt + r)
            sync.push(str(f), case.remote(), ref, settings, shard=f.name, **kw)

    (tmp_path / "a1").mkdir()
    (tmp_path / "a2").mkdir()
    stage(1, 3)
    with pytest.raises(SyncError, match=f"earlier attempt .*combine REMOTE --ref {ref} --abort"):
        stage(2, 2)
    stage(2, 2, force=True)
    with pytest.raises(SyncError, match=f"3 shard.*expected 2.*'combine --ref {ref} --abort'"):
        sync.combine(case.remote(), ref, expect=2)
    bad = tz(["combine", case.url, "--ref", ref, "--abort", "--expect", "2"], env, check=False)
    assert bad.returncode == 129 and "takes neither --force nor --expect" in bad.stderr.decode()
    err = tz(["combine", case.url, "--ref", ref, "--abort"], env).stderr.decode()
    assert err == (f"theta-zarr: dropped 3 shard(s) staged for {ref}: rank-0.safetensors, "
                   "rank-1.safetensors, rank-2.safetensors\n")
    assert case.remote().staged(ref) == {} and not (Path(case.url) / "staging").exists()
    assert case.remote().refs.read(ref) is None
    stage(2, 2)  # the restarted job's shards now stage, and combine records them alone
    result = sync.combine(case.remote(), ref, expect=2)
    # its line gives the set's raw size, as ls does (it said "0.0 MB total")
    (row,) = sync.ls(case.remote(), ref)
    assert result.total_bytes == row.nbytes > 0
    assert f"{row.nbytes / 1e6:.1f} MB total" in result.summary()
    assert sorted(case.remote().resolve(ref)[1].files) == ["rank-0.safetensors",
                                                          "rank-1.safetensors"]
    assert sync.abort_combine(case.remote(), ref) == []  # nothing staged: nothing to drop



def test_a_dcp_folder_saved_to_disk_round_trips_with_its_hidden_metadata(tmp_path):
    """A job saving with DCP's FileSystemWriter (`.metadata` beside `__0_0.distcp`), its
    folder published (or watched) into a bucket: `.metadata`, which makes the folder
    loadable, was left out with every hidden file, and the pulled step could not be
    loaded.  Hidden folders (a `.cache/` of the Hub, `.git/`) and git's own files (a
    worktree's `.git`, a Hub snapshot's `.gitattributes` naming `filter=lfs`) stay out."""
    case = local_case(tmp_path)
    settings = Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=16 << 10)
    step = tmp_path / "ckpt" / "step-5"
    (step / ".cache" / "huggingface").mkdir(parents=True)
    (step / ".cache" / "huggingface" / "x.lock").write_text("")
    (step / ".git").write_text("gitdir: ../.git/worktrees/step-5\n")
    (step / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (step / ".metadata").write_bytes(b"\x80\x04metadata" * 50)
    (step / "__0_0.distcp").write_bytes(bytes(range(256)) * 100)
    sync.push(str(step), case.remote(), "run7/step-5", settings)
    out = tmp_path / "pulled"
    written = sync.pull(case.remote(), "run7/step-5", str(out), settings)
    assert sorted(written) == [str(out / ".metadata"), str(out / "__0_0.distcp")]
    for name in (".metadata", "__0_0.distcp"):
        assert file_sha(out / name) == file_sha(step / name)


def test_a_sets_member_manifests_are_read_together_not_one_after_another(tmp_path):
    """A published folder is a set naming one manifest per file: pull (and gc's walk of
    what a ref needs, import, diff-refs, a publish's delta bases) read them one after
    another, a remote round trip per file, which took most of a pull of 200 shards
    from S3.  Each read of a member here waits until all three are in flight: read one
    at a time, the first would wait for ever (a broken barrier after 60 s)."""
    import threading

    case = local_case(tmp_path)
    settings = Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=16 << 10)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for i in range(3):
        model(folder / f"model-{i + 1:05d}-of-00003.safetensors", seed=i)
    sync.push(str(folder), case.remote(), "run7/step-1", settings)
    remote = case.remote()
    members = {e.manifest for e in remote.resolve("run7/step-1")[1].files.values()}
    together = threading.Barrier(len(members), timeout=60)
    load = remote.load

    def load_together(digest: str):
        if digest in members:
            together.wait()
        return load(digest)

    remote.load = load_together
    out = tmp_path / "pulled"
    written = sync.pull(remote, "run7/step-1", str(out), Settings(
        cache_dir=str(tmp_path / "cache2"), chunk_bytes=16 << 10))
    assert len(written) == 3
    for path in folder.iterdir():
        assert file_sha(out / path.name) == file_sha(path)
    chunks, manifests, _ = sync.objects_of(remote, remote.resolve("run7/step-1")[1])
    assert manifests == members and chunks
