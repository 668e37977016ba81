"""Cluster-sync faults: symlinks out of a pushed folder, ref names checked before any
upload, unreadable refs under fsck and gc, and the debris of killed writers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import blake3
import pytest
import zstandard
from helpers import (
    CHUNK,
    Case,
    env_for,
    local_case,
    make_case,
    model,
    permissions_held,
    put_folder_marker,
    tz,
)

from theta_zarr import codecs
from theta_zarr.cache import Cache, QuarantinedError
from theta_zarr.objects import object_key
from theta_zarr.refs import RefError, check_ref_name
from theta_zarr.remote import RemoteSpec
from theta_zarr.storage.local import LocalStore
from theta_zarr.sync import SyncRemote


def _one_line(proc, *fragments: str) -> str:
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("theta-zarr:")]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def _uploaded(case: Case) -> list[str]:
    root = Path(case.url)
    return [str(p) for p in root.rglob("*") if p.is_file()] if root.exists() else []


# -- item 8: symlinks ---------------------------------------------------------------------------
def test_a_link_out_of_the_pushed_folder_is_refused_and_nothing_uploaded(tmp_path):
    case = local_case(tmp_path)
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = hunter2\n")
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    model(ckpt / "model.safetensors")
    (ckpt / "notes").symlink_to(secret)
    proc = tz(["publish", str(ckpt), case.url, "--ref", "r/1", "--chunk-size", CHUNK],
              env_for(case, tmp_path), check=False)
    _one_line(proc, "notes", "symbolic link")
    assert _uploaded(case) == []


def test_a_folder_that_cannot_be_read_is_refused_not_left_out(tmp_path):
    """A subfolder of the published checkpoint that cannot be read (another user's, mode
    0700): os.walk skipped it without a word, and the ref was created without its files,
    exit 0; watch pushed such a folder the same way.  Now publish refuses it, and watch
    says so once and pushes the others."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    runs = tmp_path / "runs"
    ckpt = runs / "step-1"
    (ckpt / "adapter").mkdir(parents=True)
    model(ckpt / "model.safetensors")
    model(ckpt / "adapter" / "adapter_model.safetensors", seed=1)
    model(runs / "step-2.safetensors", seed=2)
    held = permissions_held()
    (ckpt / "adapter").chmod(0)
    try:
        proc = tz(["publish", str(ckpt), case.url, "--ref", "r/1", "--chunk-size", CHUNK],
                  env, check=False, prefix=held)
        _one_line(proc, f"{ckpt / 'adapter'}: Permission denied", "left out",
                  "nothing was uploaded")
        assert _uploaded(case) == []
        proc = tz(["watch", str(runs), case.url, "--ref-prefix", "w/", "--interval", "0.2",
                   "--once", "--chunk-size", CHUNK], env, check=False, prefix=held)
    finally:
        (ckpt / "adapter").chmod(0o755)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert err.count(f"w/step-1: not pushed: {ckpt / 'adapter'}: Permission denied") == 1, err
    remote = SyncRemote.open(RemoteSpec("t", case.url, {}))
    assert [n for n, _ in remote.refs.list("w/")] == ["w/step-2"]


def test_a_folder_with_a_file_name_no_set_can_hold_is_refused_before_upload(tmp_path):
    """A file in a published folder whose name is not UTF-8 (or holds a control
    character) was published with the rest; pull, ls and import then
    refused the ref ("invalid parameter name"), so the upload could never be read."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    for i, (bad, words) in enumerate((
            (b"d\xe9j\xe0/notes.txt", ["d\\xe9j\\xe0/notes.txt", "not UTF-8"]),
            (b"a\tb.txt", ["control character"]))):
        ckpt = tmp_path / f"step-{i}"
        model(ckpt.mkdir() or ckpt / "model.safetensors")
        full = os.path.join(os.fsencode(ckpt), bad)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(b"{}")
        proc = tz(["publish", str(ckpt), case.url, "--ref", "r/1", "--chunk-size", CHUNK],
                  env, check=False)
        _one_line(proc, "rename it", *words)
        assert _uploaded(case) == []


@pytest.mark.parametrize("name, words", [
    (".git/config", ["'.git/config'", "'.git' component"]),
    ("sub/.GIT/hooks/pre-commit", ["'.git' component"]),
    ("sub", ["'sub' is both a file and the folder of 'sub/model.safetensors'"]),
])
def test_a_set_naming_a_git_folder_or_a_file_that_is_a_folder_is_refused(tmp_path, name, words):
    """A hand-made set pulled into a work tree wrote .git/config (git runs what its
    core.fsmonitor names); a file named like another one's folder failed half-way with a
    raw "Is a directory" naming a temporary file."""
    case = local_case(tmp_path)
    ckpt = tmp_path / "step-1"
    (ckpt / "sub").mkdir(parents=True)
    model(ckpt / "sub" / "model.safetensors")
    (ckpt / "config.json").write_text("{}")
    env = env_for(case, tmp_path)
    tz(["publish", str(ckpt), case.url, "--ref", "r/1", "--chunk-size", CHUNK], env)
    ref = Path(case.url) / "refs" / "r" / "1"
    first, rest = ref.read_text().split("\n", 1)
    obj = json.loads((Path(case.url) / "manifests" / f"{first[7:]}.json").read_bytes())
    obj["files"][name] = obj["files"].pop("config.json")
    data = json.dumps(obj, separators=(",", ":")).encode()
    digest = blake3.blake3(data).hexdigest()
    (Path(case.url) / "manifests" / f"{digest}.json").write_bytes(data)
    ref.write_text(f"blake3:{digest}\n{rest}")
    _one_line(tz(["pull", case.url, "r/1", "-o", str(tmp_path / "out")], env, check=False),
              *words)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_a_link_inside_the_folder_is_pushed_as_its_content(tmp_path):
    case = local_case(tmp_path)
    ckpt = tmp_path / "step-1"
    ckpt.mkdir()
    model(ckpt / "model.safetensors")
    (ckpt / "config.json").write_text("{}")
    (ckpt / "alias.json").symlink_to("config.json")
    env = env_for(case, tmp_path)
    tz(["publish", str(ckpt), case.url, "--ref", "r/1", "--chunk-size", CHUNK], env)
    tz(["pull", case.url, "r/1", "-o", str(tmp_path / "out")], env)
    assert (tmp_path / "out" / "alias.json").read_text() == "{}"
    assert not (tmp_path / "out" / "alias.json").is_symlink()


def test_a_single_non_checkpoint_file_is_refused(tmp_path):
    case = local_case(tmp_path)
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0::/root:/bin/sh\n")
    link = tmp_path / "model.safetensors"
    link.symlink_to(target)
    proc = tz(["publish", str(link), case.url, "--ref", "r/1"], env_for(case, tmp_path),
              check=False)
    _one_line(proc, "not a checkpoint")
    assert _uploaded(case) == []


def test_watch_skips_a_link_out_of_its_folder(tmp_path):
    case = local_case(tmp_path)
    watched = tmp_path / "ckpts"
    watched.mkdir()
    outside = model(tmp_path / "elsewhere.safetensors")
    (watched / "step-1.safetensors").symlink_to(outside)
    proc = tz(["watch", str(watched), case.url, "--ref-prefix", "run/", "--interval", "0",
               "--once", "--chunk-size", CHUNK], env_for(case, tmp_path), check=False)
    assert "symbolic link" in proc.stderr.decode()
    assert _uploaded(case) == []


# -- item 13: ref names ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["run/" + "x" * 300, "run/\u202egnp.exe", "a\u200bb",
                                  "run/\u00a0step", "cafe\u0301", "r/" + "a/" * 300 + "b"])
def test_names_no_backend_or_reader_can_trust_are_refused(name):
    with pytest.raises(RefError):
        check_ref_name(name)


@pytest.mark.parametrize("args", [["--ref"], ["--base-ref"]])
def test_a_bad_ref_fails_before_anything_is_uploaded(tmp_path, args):
    case = local_case(tmp_path)
    f = model(tmp_path / "m.safetensors")
    extra = ["--ref", "ok"] if args == ["--base-ref"] else []
    proc = tz(["publish", str(f), case.url, *args, "run/" + "x" * 300, *extra],
              env_for(case, tmp_path), check=False)
    _one_line(proc, "300 bytes long")
    assert _uploaded(case) == []
    assert not (tmp_path / "job-cache").exists()  # refused before clean, too


def test_a_base_ref_that_does_not_exist_or_a_taken_ref_fail_before_any_upload(tmp_path):
    """A mistyped --base-ref was taken as "no base" while the summary named it; a publish
    to a ref that names another version uploaded its objects before the ref refused."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    tz(["publish", str(model(tmp_path / "a.safetensors", seed=1)), case.url, "--ref",
        "run/step-1", "--chunk-size", CHUNK], env)
    before = sorted(_uploaded(case))
    b = model(tmp_path / "b.safetensors", seed=2)
    _one_line(tz(["publish", str(b), case.url, "--ref", "run/step-2", "--base-ref",
                  "run/step-l", "--chunk-size", CHUNK], env, check=False),
              "base ref run/step-l does not exist")
    assert sorted(_uploaded(case)) == before
    _one_line(tz(["publish", str(b), case.url, "--ref", "run/step-1", "--chunk-size", CHUNK],
                 env, check=False), "run/step-1 already exists", "--force")
    assert sorted(_uploaded(case)) == before
    # with the right base, the same step goes up as deltas over it and names it
    err = tz(["publish", str(b), case.url, "--ref", "run/step-2", "--base-ref", "run/step-1",
              "--chunk-size", CHUNK], env).stderr.decode()
    assert "delta base run/step-1" in err


def test_a_publish_repairs_a_damaged_copy_of_its_manifest_on_the_remote(tmp_path):
    """A manifest already on the remote was trusted by its name: a damaged copy stayed, the
    new ref named a checkpoint nobody could pull, and publishing again never repaired it."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    f = model(tmp_path / "a.safetensors", seed=1)
    tz(["publish", str(f), case.url, "--ref", "run/step-1", "--chunk-size", CHUNK], env)
    [stored] = (Path(case.url) / "manifests").iterdir()
    good = stored.read_bytes()
    os.chmod(stored, 0o644)
    stored.write_bytes(good[:-20])
    tz(["publish", str(f), case.url, "--ref", "run/copy", "--chunk-size", CHUNK], env)
    assert stored.read_bytes() == good
    tz(["pull", case.url, "run/copy", "-o", str(tmp_path / "out.safetensors")], env)
    assert (tmp_path / "out.safetensors").read_bytes() == f.read_bytes()


def _published_pair(tmp_path: Path, ref: str) -> tuple[Case, dict[str, str]]:
    """A folder remote holding ``ref``: a published folder of two models, ``a.safetensors``
    and ``b.safetensors``; the remote and the environment that reaches it."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    model(folder / "a.safetensors", seed=1)
    model(folder / "b.safetensors", seed=2)
    tz(["publish", str(folder), case.url, "--ref", ref, "--chunk-size", CHUNK], env)
    return case, env


def test_a_pull_meeting_a_corrupt_object_names_the_file_that_needs_it(tmp_path):
    """The line named the object and the remote only: with a folder of files the user
    could not tell which one the remote could not give back."""
    case, env = _published_pair(tmp_path, "run/step-1")
    remote = case.remote()
    _, files = remote.resolve("run/step-1")
    digest = min(remote.load(files.files["b.safetensors"].manifest).digests())
    obj = Path(case.url) / object_key(digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + bytes([obj.read_bytes()[-1] ^ 1]))
    out = tmp_path / "out"
    proc = tz(["pull", case.url, "run/step-1", "-o", str(out)],
              env_for(case, tmp_path, THETA_ZARR_CACHE=str(tmp_path / "fresh-cache")), check=False)
    _one_line(proc, f"object {digest}", "is corrupt", f"needed by {out / 'b.safetensors'}",
              "nothing was written")
    assert not out.exists()


def test_a_decompression_bomb_on_the_remote_is_refused_at_the_chunks_size(tmp_path):
    """A compromised remote put, at a chunk's name, 5 KB of zstd whose header declares no
    size and which expands to 64 MiB: pull (and every fetch) decoded it whole before the
    digest check, so a bucket of such objects took a node's memory.  Decoding now stops
    at the size the manifest gives the chunk."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    model(tmp_path / "m.safetensors", seed=1)
    tz(["publish", str(tmp_path / "m.safetensors"), case.url, "--ref", "run/step-1",
        "--chunk-size", CHUNK], env)
    remote = case.remote()
    manifest = remote.resolve("run/step-1")[1]
    digest, size = max(manifest.chunk_sizes().items(), key=lambda kv: kv[1])
    obj = Path(case.url) / object_key(digest)
    os.chmod(obj, 0o644)
    co = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    obj.write_bytes(codecs.header("zstd") + co.compress(bytes(64 << 20)) + co.flush())
    out = tmp_path / "out.safetensors"
    proc = tz(["pull", case.url, "run/step-1", "-o", str(out)],
              env_for(case, tmp_path, THETA_ZARR_CACHE=str(tmp_path / "fresh-cache")), check=False)
    _one_line(proc, f"object {digest}", f"decodes to more than the {size} bytes its manifest "
              "gives the chunk", f"needed by {out}", "nothing was written")
    assert not out.exists()


def test_a_fifo_a_device_or_a_sparse_file_in_a_folder_remote_is_refused_not_read(
        tmp_path):
    """On a shared folder remote, a FIFO at a ref's name hung `ls` for good, and a link
    to /dev/zero, or a sparse file of 100 GB, at a ref's or an object's name was read
    until the memory ran out (`internal error (MemoryError)`).  Only regular files are
    blobs now, and a ref or an object of a known chunk has a most size (devices at
    objects: tests/storage/test_stores.py)."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    model(tmp_path / "m.safetensors", seed=1)
    tz(["publish", str(tmp_path / "m.safetensors"), case.url, "--ref", "run/a",
        "--chunk-size", CHUNK], env)
    refs = Path(case.url) / "refs" / "run"
    os.mkfifo(refs / "fifo")
    (refs / "zero").symlink_to("/dev/zero")
    with open(refs / "zz", "wb") as f:
        f.truncate(100 << 30)  # sparse: costs no disk
    digest = max(case.remote().resolve("run/a")[1].digests())
    obj = Path(case.url) / object_key(digest)
    os.chmod(obj, 0o644)
    os.truncate(obj, 100 << 30)
    proc = subprocess.run(["theta-zarr", "ls", case.url], env=env, capture_output=True,
                          timeout=120)  # a hang guard only: it hung for good
    assert proc.returncode == 1, proc.stderr
    rows = proc.stdout.decode().splitlines()
    assert len(rows) == 4 and rows[0].startswith("run/a\t") and "blake3:" in rows[0], rows
    assert "error: cannot read refs/run/fifo" in rows[1] and "a FIFO (named pipe)" in rows[1]
    assert "error: cannot read refs/run/zero" in rows[2] and "a device, not a file" in rows[2]
    assert "error: cannot read refs/run/zz" in rows[3] and \
        f"it holds {100 << 30} bytes, more than the 4096 it may" in rows[3]
    out = tmp_path / "out.safetensors"
    proc = tz(["pull", case.url, "run/a", "-o", str(out)],
              env_for(case, tmp_path, THETA_ZARR_CACHE=str(tmp_path / "c2")), check=False)
    _one_line(proc, f"object {digest}", f"is corrupt (it holds {100 << 30} bytes, more than",
              f"needed by {out}", "nothing was written")


# -- item 7: one unreadable ref ----------------------------------------------------------------
@pytest.fixture
def shared(repo, tmp_path):
    """A repository with a folder remote holding refs ``good`` and ``gone`` (deleted),
    plus a garbage ref and a key with a space in its name."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    tz(["publish", str(model(tmp_path / "a.safetensors", seed=1)), case.url, "--ref", "good",
        "--chunk-size", CHUNK], env)
    tz(["publish", str(model(tmp_path / "b.safetensors", seed=2)), case.url, "--ref", "gone",
        "--chunk-size", CHUNK], env)
    refs = Path(case.url) / "refs"
    (refs / "gone").unlink()
    (refs / "garbage").write_bytes(b"\x00\xff not a digest")
    (refs / "has space").write_bytes((refs / "good").read_bytes())
    repo.tz("remote", "add", "shared", case.url)
    return case


def test_fsck_reports_every_unreadable_ref_and_goes_on(repo, shared):
    victim = next(p for p in (Path(shared.url) / "objects").rglob("*") if p.is_file())
    os.chmod(victim, 0o644)
    victim.unlink()  # a real problem after the bad refs
    proc = repo.tz("fsck", "--remote", "shared", check=False)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "garbage" in out and "has space" in out
    assert "missing object" in out  # found after the unreadable refs


def test_ls_lists_every_ref_and_fails_when_one_cannot_be_read(repo, shared, tmp_path):
    """``ls`` exited 0 with a row reading "error: ... not a theta-zarr ref": a job picking
    the newest ref to resume from took the listing for good."""
    env = env_for(shared, tmp_path)
    proc = tz(["ls", shared.url], env, check=False)
    rows = proc.stdout.decode().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["garbage", "good", "has space"]
    assert ["error: " in r for r in rows] == [True, False, True]
    _one_line(proc, "2 refs of 3 could not be read", "'error:'")
    assert proc.returncode == 1
    assert tz(["ls", shared.url, "good"], env).returncode == 0


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_folder_markers_in_a_bucket_are_no_refs(kind, request, tmp_path, monkeypatch):
    """A bucket browsed in its console, where someone clicked "Create folder" (or a tool
    ran ``mkdir``), holds empty objects named ``refs/``, ``refs/run7/``: ``ls`` listed
    them as refs that cannot be read and exited 1, and publish took ``run7/`` for the
    newest ref of the folder, so its chunks went up whole (``delta base run7/
    (unreadable: no deltas)``)."""
    case = make_case(kind, request, tmp_path, monkeypatch)
    env = env_for(case, tmp_path)
    opts = case.cli_options()
    tz(["publish", str(model(tmp_path / "a.safetensors", seed=1)), case.url, *opts, "--ref",
        "run7/step-1", "--chunk-size", CHUNK], env)
    for key in ("refs/", "refs/run7/", "manifests/", "objects/"):
        put_folder_marker(case, key)
    proc = tz(["ls", case.url, *opts], env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [r.split("\t")[0] for r in proc.stdout.decode().splitlines()] == ["run7/step-1"]
    step2 = model(tmp_path / "b.safetensors", seed=1, tuned=["layers.0"])
    err = tz(["publish", str(step2), case.url, *opts, "--ref", "run7/step-2", "--chunk-size",
              CHUNK], env).stderr.decode()
    assert "delta base run7/step-1;" in err, err
    out = tmp_path / "back.safetensors"
    tz(["pull", case.url, *opts, "run7/step-2", "-o", str(out)], env)
    assert out.read_bytes() == step2.read_bytes()


def test_ls_lists_a_set_whose_member_cannot_be_read_as_an_error_row(tmp_path):
    """A set whose member manifest is gone (a published folder, one file's manifest
    deleted by hand): ``ls`` printed no row at all, only the missing manifest's line,
    naming no ref.  The set's row now says which file cannot be read, every other row
    is listed, and ls exits 1, as for any ref that cannot be read.  (The members of all
    sets are read together, after the refs, no longer one after another per row.)"""
    case, env = _published_pair(tmp_path, "run/set")
    tz(["publish", str(model(tmp_path / "c.safetensors", seed=3)), case.url, "--ref",
        "run/one", "--chunk-size", CHUNK], env)
    remote = case.remote()
    member = remote.load(remote.refs.read("run/set").digest).files["b.safetensors"].manifest
    (Path(case.url) / remote.manifest_key(member)).unlink()
    proc = tz(["ls", case.url, "run/"], env, check=False)
    rows = proc.stdout.decode().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["run/one", "run/set"]
    assert "error: " not in rows[0]
    assert f"error: b.safetensors: manifest {member} is missing" in rows[1]
    _one_line(proc, "1 ref of 2 could not be read", "'error:'")
    assert proc.returncode == 1


def test_gc_keeps_every_manifest_when_a_ref_cannot_be_read(repo, shared):
    before = {p for p in Path(shared.url).rglob("*") if p.is_file()}
    proc = repo.tz("gc", "--remote", "shared", "--grace", "0")
    assert "unreadable ref" in proc.stderr.decode()
    after = {p for p in Path(shared.url).rglob("*") if p.is_file()}
    # the manifest of the deleted ref "gone" is kept (an unreadable ref might name it)
    assert {p for p in before if "manifests" in p.parts} <= after


def test_gc_deletes_nothing_when_a_refs_folder_cannot_be_listed(repo, tmp_path):
    """Another group's refs/team/ (mode 0700) on a shared folder remote: the listing
    skipped it without a word, and gc --remote deleted the manifest and the objects its
    refs named; they then named missing data."""
    from theta_zarr import sync
    from theta_zarr.settings import Settings

    case = local_case(tmp_path)
    settings = Settings(cache_dir=str(tmp_path / "job-cache"), chunk_bytes=16 << 10)
    sync.push(str(model(tmp_path / "a.safetensors")), case.remote(), "team/step-1", settings)
    root = Path(case.url)
    before = sorted(p for p in root.rglob("*") if p.is_file())
    repo.tz("remote", "add", "shared", case.url)
    team = root / "refs" / "team"
    team.chmod(0o000)
    try:
        proc = repo.run(*permissions_held(), "git", "theta-zarr", "gc", "--remote", "shared",
                        "--grace", "0", check=False)
    finally:
        team.chmod(0o755)
    _one_line(proc, f"cannot list refs/team/ in {case.url}: Permission denied")
    assert sorted(p for p in root.rglob("*") if p.is_file()) == before


# -- item 6: debris of killed writers ------------------------------------------------------------
def test_gc_removes_old_temporary_files_and_keeps_young_ones_and_held_locks(repo, tmp_path):
    import fcntl

    case = local_case(tmp_path)
    tz(["publish", str(model(tmp_path / "a.safetensors")), case.url, "--ref", "r",
        "--chunk-size", CHUNK], env_for(case, tmp_path))
    root = Path(case.url)
    old = time.time() - 7200
    debris = [root / "objects" / "ab" / ".tmp-killed1", root / "refs" / ".tmp-killed2",
              root / "manifests" / ".tmp-killed3", root / "refs" / ".tmp-lock.idle"]
    for p in debris:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
        os.utime(p, (old, old))
    young = root / "refs" / ".tmp-inflight"
    young.write_bytes(b"")
    held = root / "refs" / ".tmp-lock.busy"
    held.write_bytes(b"")
    os.utime(held, (old, old))
    repo.tz("remote", "add", "shared", case.url)
    cache_debris = repo.objects_dir.parent / "tmp" / ".tmp-spool-killed"
    cache_debris.parent.mkdir(parents=True, exist_ok=True)
    cache_debris.write_bytes(b"spool")
    os.utime(cache_debris, (old, old))
    fd = os.open(held, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        repo.tz("gc", "--remote", "shared", "--grace", "1h")
    finally:
        os.close(fd)
    assert not any(p.exists() for p in debris) and not cache_debris.exists()
    assert young.exists() and held.exists()
    assert [i.key for i in LocalStore(case.url).debris()] == ["refs/.tmp-inflight",
                                                              "refs/.tmp-lock.busy"]


def test_gc_empties_the_quarantine_after_the_grace_period(repo):
    """A corrupt object a read moved aside stayed in <cache>/quarantine/ for good."""
    model(repo.path / "m.safetensors")
    repo.git("add", "m.safetensors")
    repo.git("commit", "-q", "-m", "base")
    cache = Cache(str(repo.objects_dir.parent))
    digest = min(d for d, _, _ in cache.iter_digests())
    path = Path(cache.root) / object_key(digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    old = time.time() - 7200
    os.utime(path, (old, old))  # written two hours ago, moved aside now
    with pytest.raises(QuarantinedError):
        cache.get(digest)
    [moved] = (Path(cache.root) / "quarantine").iterdir()
    repo.tz("gc", "--grace", "1h")
    assert moved.exists()  # dated by the move, not the write: kept to look into
    os.utime(moved, (old, old))
    out = repo.tz("gc", "--grace", "1h", "--dry-run").stdout.decode()
    assert "(quarantined objects)" in out and moved.exists()
    assert "(quarantined objects)" in repo.tz("gc", "--grace", "1h").stdout.decode()
    assert not moved.exists()


def test_watch_names_files_that_would_share_a_ref_and_pushes_neither(tmp_path):
    """step-1.pt beside step-1.safetensors: both are ref run/step-1; one silently
    replaced the other and was never pushed."""
    case = local_case(tmp_path)
    watched = tmp_path / "ckpts"
    watched.mkdir()
    model(watched / "step-1.safetensors", seed=1)
    model(watched / "step-1.bin", seed=2)
    model(watched / "step-2.safetensors", seed=3)
    proc = tz(["watch", str(watched), case.url, "--ref-prefix", "run/", "--interval", "0",
               "--once", "--chunk-size", CHUNK, "--pattern", "*.safetensors",
               "--pattern", "*.bin"], env_for(case, tmp_path), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "step-1.bin and " in err and "step-1.safetensors: not pushed: all would be ref " \
        "'run/step-1'" in err
    assert err.count("would be ref") == 1  # said once, not at every scan
    remote = SyncRemote.open(RemoteSpec("t", case.url, {}))
    assert [n for n, _ in remote.refs.list("run/")] == ["run/step-2"]  # the others go on


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e12"])
def test_watch_refuses_an_interval_that_is_no_pause(tmp_path, value):
    case = local_case(tmp_path)
    proc = tz(["watch", str(tmp_path), case.url, "--ref-prefix", "run/", "--interval", value,
               "--exit-after", "5"], env_for(case, tmp_path), check=False)
    _one_line(proc, "not between 0 and a year of seconds")
    assert proc.returncode == 129
