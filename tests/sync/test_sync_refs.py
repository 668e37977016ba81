"""Refs: conditional create and compare-and-swap on a folder, S3 and GCS; name checks."""

from __future__ import annotations

import os
import re
import threading

import pytest
from helpers import CHUNK, Case, env_for, local_case, model, tz

import theta_zarr
from theta_zarr import refs
from theta_zarr.refs import RefConflict, RefError, Refs, check_ref_name
from theta_zarr.storage import ConditionalWritesUnsupported, ConditionFailed, open_store

D1 = "blake3:" + "1" * 64
D2 = "blake3:" + "2" * 64


@pytest.mark.parametrize("name", ["", "/a", "a/", "a//b", "a/../b", "a..b", ".hidden",
                                  "a/.x", "x.lock", "a b", "a\x01", "a:b", "a~1", "a^", "a?",
                                  "a*", "a[", "a\\b", "a@{1}", "a."])
def test_bad_ref_names_are_refused(name):
    with pytest.raises(RefError):
        check_ref_name(name)


@pytest.mark.parametrize("name", ["main", "run7/step-3000", "a.b/c_d-e", "v1.2"])
def test_good_ref_names(name):
    assert check_ref_name(name) == name


def test_create_conflict_and_compare_and_swap(case):  # noqa: F811
    r = case.remote().refs
    assert r.read("run/a") is None
    assert r.set("run/a", D1) == (None, "created")
    assert r.read("run/a").digest == D1
    assert r.set("run/a", D1)[1] == "unchanged"
    with pytest.raises(RefConflict, match="already exists .* use --force"):
        r.set("run/a", D2)
    old = r.read("run/a")
    assert r.set("run/a", D2, force=True)[1] == "moved"
    # a CAS against the stale value loses, and nothing is overwritten
    with pytest.raises(RefConflict, match="moved concurrently"):
        r._write("run/a", D1, old)
    assert r.read("run/a").digest == D2
    # a create that another writer's create beat: a plain re-run would be refused, so the
    # message says to re-run with --force (it said "re-run to try again")
    with pytest.raises(RefConflict, match="was created concurrently .* nothing was "
                                          "overwritten: re-run with --force to replace it"):
        r._write("run/a", D1, None)
    assert r.read("run/a").digest == D2
    assert [n for n, _ in r.list("run/")] == ["run/a"]


def test_a_name_is_either_a_ref_or_a_folder_of_refs_on_every_backend(case):  # noqa: F811
    """git's rule: a folder remote cannot hold ``run7`` beside ``run7/step-1`` (it gave raw
    "Is a directory" errors) and an object store could; now no backend takes both."""
    r = case.remote().refs
    r.set("run7/step-1", D1)
    for name in ("run7", "run7/step-1/eval"):
        with pytest.raises(RefError, match=f"ref {name} cannot be created .* ref run7/step-1 "
                                           "exists"):
            r.check_free(name, D1)
        with pytest.raises(RefError, match="run7/step-1 exists"):
            r.set(name, D1, force=True)
        assert r.read(name) is None  # not a ref, whatever the folder remote holds there
    assert [n for n, _ in r.list("run7")] == ["run7/step-1"]
    assert r.set("run7/step-2", D2)[1] == "created"  # siblings are fine


def test_a_ref_whose_folder_of_refs_was_deleted_by_hand_can_be_created(tmp_path):
    """``rm refs/run7/*`` on a folder remote leaves the empty folder ``refs/run7/``; a new
    ref ``run7`` then failed for good with "created concurrently by another writer (was
    deleted) ... re-run to try again".  Empty folders in the way go, as git removes them
    for a new ref; one holding other files is named in one line."""
    from theta_zarr.storage import StorageError

    root = tmp_path / "remote"
    r = Refs(open_store(str(root)))
    r.set("run7/step-1", D1)
    r.set("a/b/c", D1)
    (root / "refs" / "run7" / "step-1").unlink()
    (root / "refs" / "a" / "b" / "c").unlink()
    assert r.set("run7", D2)[1] == "created"
    assert r.set("a", D2)[1] == "created"
    assert (r.read("run7").digest, r.read("a").digest) == (D2, D2)
    (root / "refs" / "x" / "y").mkdir(parents=True)
    (root / "refs" / "x" / "y" / ".keep").write_text("")
    with pytest.raises(StorageError, match="refs/x .* a folder is in the way, holding files"):
        r.set("x", D1)
    assert (root / "refs" / "x" / "y" / ".keep").exists()


def test_racing_creates_have_one_winner(case):  # noqa: F811
    r = case.remote().refs
    digests = [f"blake3:{i:064x}" for i in range(8)]
    outcome: dict[str, str] = {}

    def go(d: str) -> None:
        try:
            Refs(r.blobs).set("race", d)
            outcome[d] = "won"
        except RefConflict:
            outcome[d] = "lost"

    threads = [threading.Thread(target=go, args=(d,)) for d in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [d for d, o in outcome.items() if o == "won"]
    assert len(winners) == 1
    assert r.read("race").digest == winners[0]


def test_lost_response_is_recognised_by_write_id(case):  # noqa: F811
    """A conditional PUT that succeeded but whose answer was lost, retried: 412, yet ours."""
    r = case.remote().refs
    real = r.blobs.put_if

    def lost_then_retried(key, data, expect):
        real(key, data, expect)  # the first attempt lands...
        raise ConditionFailed("412 on the retry")  # ...the retry sees it as a conflict

    r.blobs.put_if = lost_then_retried
    try:
        assert r.set("lost", D1) == (None, "created")
    finally:
        r.blobs.put_if = real
    value = r.read("lost")
    assert value.digest == D1 and value.write_id


def test_backend_without_conditional_writes_makes_no_refs():
    store = open_store("memory://tz-no-cas")
    assert not store.conditional_writes
    with pytest.raises(ConditionalWritesUnsupported, match="refs need"):
        Refs(store).set("x", D1)


def test_every_ref_command_refuses_an_http_url_in_one_line_before_any_request(
        tmp_path, http_folder):
    """An HTTP server (a mirror of a folder remote, or MinIO by its HTTP URL) holds no
    refs theta-zarr can read, and takes no writes: each command says so in one line with
    the s3:// spelling, asking the server nothing; ls printed an error row per ref."""
    env = env_for(local_case(tmp_path), tmp_path)
    ckpt = model(tmp_path / "m.safetensors")
    tz(["publish", str(ckpt), str(http_folder.folder), "--ref", "run/step-1"], env)
    url = f"{http_folder.url}/models/team"
    hint = (f"HTTP remotes are read-only (git clones and fetches only); an S3-compatible "
            f"server (MinIO) is s3://models/team --remote-option endpoint-url="
            f"{http_folder.url}\n")
    (tmp_path / "watched").mkdir()
    writes = (["publish", str(ckpt), url, "--ref", "run/step-2"],
              ["combine", url, "--ref", "run/step-2"], ["delete-ref", url, "run/step-1"],
              ["watch", str(tmp_path / "watched"), url, "--ref-prefix", "run/", "--once",
               "--interval", "0"])
    reads = (["ls", url], ["pull", url, "run/step-1", "-o", str(tmp_path / "out")],
             ["diff-refs", url, "run/step-1", "run/step-1"],
             ["delete-ref", url, "run/step-1", "--dry-run"])
    for args, what in [(a, "cannot be written:") for a in writes] + \
                      [(a, "holds no refs theta-zarr can read (refs need S3, GCS or a "
                           "folder):") for a in reads]:
        proc = tz(args, env, check=False)
        assert proc.returncode == 1, args
        assert proc.stdout == b"", args
        assert proc.stderr.decode() == \
            f"theta-zarr: remote 'command line' ({url}) {what} {hint}", args
    assert http_folder.requests == []
    assert not (tmp_path / "out").exists()
    # the API reads refs as ls does: the same words
    with pytest.raises(ConditionalWritesUnsupported, match=re.escape(
            f"{http_folder.url} holds no refs theta-zarr can read (refs need S3, GCS or a "
            f"folder): {hint.rstrip().replace('models/team', 'BUCKET/PREFIX')}")):
        theta_zarr.load_state_dict(http_folder.url, ref="run/step-1",
                                   cache=str(tmp_path / "cache"))


def test_ref_blob_format():
    data = refs.encode(D1, "ab" * 16)
    assert data == f"{D1}\nwrite-id {'ab' * 16}\n".encode()
    assert refs.decode("x", data, "t").digest == D1
    assert refs.decode("x", D1.encode(), "t").write_id is None
    with pytest.raises(RefError):
        refs.decode("x", b"../../etc/passwd\n", "t")


def test_a_remote_whose_folder_holds_no_ref_says_so(tmp_path):
    """A typo in a bucket URL's prefix (s3://team-models/lm for .../llm) is a place no
    storage refuses: ls printed nothing and exited 0, pull said only 'no ref'."""
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    tz(["publish", str(model(tmp_path / "m.safetensors")), case.url, "--ref", "run7/step-1"],
       env)
    typo = tmp_path / "lm"
    typo.mkdir()  # there, and empty: as a bucket prefix nothing was written under
    ls = tz(["ls", str(typo)], env)
    assert ls.stdout == b"" and ls.stderr.decode() == f"theta-zarr: no refs in {typo}\n"
    assert tz(["ls", case.url, "run8/"], env).stderr.decode() == \
        f"theta-zarr: no refs match run8/ in {case.url}\n"
    proc = tz(["pull", str(typo), "run7/step-1", "-o", str(tmp_path / "o.safetensors")], env,
              check=False)
    assert proc.returncode == 1 and proc.stderr.decode() == (
        f"theta-zarr: no ref run7/step-1 in {typo} (nor any ref in run7/: is the URL right? "
        f"'theta-zarr ls {typo}' lists its refs)\n")
    # a step not saved yet, in a folder that has others: no more than that
    proc = tz(["pull", case.url, "run7/step-2", "-o", str(tmp_path / "o.safetensors")], env,
              check=False)
    assert proc.stderr.decode() == f"theta-zarr: no ref run7/step-2 in {case.url}\n"


def test_delete_ref_deletes_the_ref_only_and_says_which_were_not_there(case, tmp_path):
    """No command deleted a ref: a run's old steps had to be removed from the bucket by
    hand before gc could collect them."""
    env = env_for(case, tmp_path)
    opts = [*case.cli_options(), "--chunk-size", CHUNK]
    for step in (1, 2):
        f = model(tmp_path / f"s{step}.safetensors", seed=step)
        tz(["publish", str(f), case.url, "--ref", f"run7/step-{step}", *opts], env)
    r = case.remote().refs
    one = r.read("run7/step-1")
    dry = tz(["delete-ref", case.url, "run7/step-1", "--dry-run", *case.cli_options()], env)
    assert dry.stdout.decode() == f"would delete run7/step-1 (was {one.digest[:19]})\n"
    assert r.read("run7/step-1") == one
    proc = tz(["delete-ref", case.url, "run7/step-1", "run7/nope", *case.cli_options()],
              env, check=False)
    assert proc.returncode == 1
    assert proc.stdout.decode() == f"deleted run7/step-1 (was {one.digest[:19]})\n"
    assert proc.stderr.decode().splitlines() == [f"theta-zarr: no ref run7/nope in {case.url}"]
    assert r.read("run7/step-1") is None and r.read("run7/step-2") is not None
    # its manifest stays for gc; the name is free for a new publish
    assert case.remote().load(one.digest) is not None
    f = model(tmp_path / "s3.safetensors", seed=3)
    tz(["publish", str(f), case.url, "--ref", "run7/step-1", *opts], env)
    assert r.read("run7/step-1").digest != one.digest


def test_a_new_ref_may_not_begin_with_a_dash_and_an_old_one_stays_readable(tmp_path):
    """publish --ref -n made a ref that every later command read as an option."""
    r = Refs(open_store(str(tmp_path / "remote")))
    with pytest.raises(RefError, match="beginning with '-' reads as an option"):
        r.set("-n", D1)
    with pytest.raises(RefError, match="beginning with '-'"):
        r.check_free("-n", D1)
    (tmp_path / "remote" / "refs").mkdir(parents=True)  # one made by an older version
    r.set("old", D1)
    os.rename(tmp_path / "remote" / "refs" / "old", tmp_path / "remote" / "refs" / "-old")
    assert r.read("-old").digest == D1 and [n for n, _ in r.list()] == ["-old"]


def test_delete_ref_deletes_a_ref_that_cannot_be_read(case, tmp_path):  # noqa: F811
    """A ref ls marks 'error:' (garbage bytes, another tool's file), which makes gc keep
    every manifest, could not be deleted: delete-ref failed on reading it."""
    env = env_for(case, tmp_path)
    f = model(tmp_path / "s1.safetensors", seed=1)
    tz(["publish", str(f), case.url, "--ref", "run7/step-1", "--chunk-size", CHUNK,
        *case.cli_options()], env)
    r = case.remote().refs
    r.blobs.put("refs/run7/junk", [b"garbage\n"])
    r.blobs.put("refs/run7/big", [b"x" * (refs.MAX_REF_FILE + 1)])
    dry = tz(["delete-ref", case.url, "run7/junk", "--dry-run", *case.cli_options()], env)
    assert dry.stdout.decode() == "would delete run7/junk (was unreadable)\n"
    proc = tz(["delete-ref", case.url, "run7/junk", "run7/big", *case.cli_options()], env)
    assert proc.stdout.decode().splitlines() == ["deleted run7/junk (was unreadable)",
                                                 "deleted run7/big (was unreadable)"]
    assert [n for n, _ in r.list()] == ["run7/step-1"]
    assert tz(["ls", case.url, *case.cli_options()], env).returncode == 0


def test_a_name_no_ref_can_take_is_refused_before_a_forced_publish_or_a_shard_uploads(
        tmp_path):
    """publish --force and --shard checked a name set refuses ('-x', the folder of an
    existing ref) only when the ref moved: after every chunk had gone up, or at combine."""
    remote = tmp_path / "remote"
    env = env_for(Case("local", str(remote), {}, []), tmp_path)
    f = model(tmp_path / "s1.safetensors", seed=1)
    tz(["publish", str(f), str(remote), "--ref", "run7/step-1", "--chunk-size", CHUNK], env)
    objects = sorted(p.name for p in (remote / "objects").rglob("*"))
    g = model(tmp_path / "s2.safetensors", seed=2)
    for ref, flag in (("-x", "--force"), ("-x", "--shard"), ("run7", "--force"),
                      ("run7", "--shard")):
        proc = tz(["publish", str(g), str(remote), f"--ref={ref}", flag, "--chunk-size",
                   CHUNK], env, check=False)
        want = "theta-zarr: --ref: a ref name beginning with '-'" if ref.startswith("-") \
            else f"theta-zarr: ref {ref} cannot be created"
        assert proc.returncode == 1 and proc.stderr.decode().startswith(want), \
            proc.stderr.decode()
    assert sorted(p.name for p in (remote / "objects").rglob("*")) == objects
    assert not (remote / "staging").exists()


def test_ref_names_on_the_command_line_are_refused_once_under_their_own_label(tmp_path):
    """watch --ref-prefix=- started and failed every checkpoint it found; delete-ref's
    bad name was labelled 'REFS:' where its usage says REF."""
    env = env_for(local_case(tmp_path), tmp_path)
    (tmp_path / "w" / "a").mkdir(parents=True)
    model(tmp_path / "w" / "a" / "model.safetensors")
    proc = tz(["watch", str(tmp_path / "w"), str(tmp_path / "r"), "--ref-prefix=-",
               "--once"], env, check=False)
    assert proc.returncode == 1 and proc.stderr.decode().splitlines() == [
        "theta-zarr: --ref-prefix: a ref name beginning with '-' reads as an option on "
        "the command line (git refuses such branch names); choose another"]
    assert not (tmp_path / "r").exists()
    proc = tz(["delete-ref", str(tmp_path / "r"), "bad..name"], env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("theta-zarr: REF: invalid ref name 'bad..name'")
