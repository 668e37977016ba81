"""``theta-zarr cache prune``: the node cache of publish and pull is trimmed by age and size,
least recently written first, and never a repository's own cache."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
from helpers import CHUNK, MODEL, SHAPE, env_for, file_sha, local_case, model, tz
from safetensors.numpy import save_file

from theta_zarr.cache import Cache
from theta_zarr.objects import object_key


def test_prune_trims_by_age_and_size_and_a_pull_fetches_what_went(tmp_path):
    case = local_case(tmp_path)
    env = env_for(case, tmp_path)
    cache = Cache(env["THETA_ZARR_CACHE"])
    step1 = model(tmp_path / "s1.safetensors")
    tz(["publish", str(step1), case.url, "--ref", "run/step-1", "--chunk-size", CHUNK], env)
    first = {d for d, _, _ in cache.iter_digests()}
    old = time.time() - 2 * 86400  # step 1's chunks: written two days ago
    for digest in first:
        os.utime(cache._object_path(digest), (old, old))
    step2 = model(tmp_path / "s2.safetensors", tuned=[n for n, _ in SHAPE.tensors()][::2])
    tz(["publish", str(step2), case.url, "--ref", "run/step-2", "--chunk-size", CHUNK], env)
    sizes = {d: n for d, n, _ in cache.iter_digests()}
    only_old = first - case.remote().load(case.remote().refs.read("run/step-2").digest).digests()
    assert only_old and set(sizes) > first  # step 2 added chunks of its own
    # a dry run lists what would go and deletes nothing
    out = tz(["cache", "prune", "--older-than", "1d", "--dry-run"], env).stdout.decode()
    listed = {line.split("\t")[0] for line in out.splitlines() if "\t" in line}
    assert listed == {object_key(d) for d in only_old}
    assert f"would keep {len(sizes) - len(only_old)} objects" in out
    assert {d for d, _, _ in cache.iter_digests()} == set(sizes)
    # --max-size keeps the newest objects within the size, never one younger than the age
    budget = sum(n for d, n in sizes.items() if d not in only_old)
    tz(["cache", "prune", "--max-size", str(budget + min(sizes.values()) - 1),
        "--older-than", "1d"], env)
    assert {d for d, _, _ in cache.iter_digests()} == set(sizes) - only_old
    tz(["cache", "prune", "--max-size", "0"], env)  # every object is younger than an hour
    assert {d for d, _, _ in cache.iter_digests()} == set(sizes) - only_old
    out = tz(["cache", "prune", "--older-than", "0"], env).stdout.decode()
    assert not list(cache.iter_digests()) and "kept 0 objects (0 B)" in out
    # nothing was lost: a pull fetches again from the remote what went
    pulled = tmp_path / "pulled.safetensors"
    tz(["pull", case.url, "run/step-1", "-o", str(pulled)], env)
    assert file_sha(pulled) == file_sha(step1)
    # a step published onto a pruned cache says its base's chunks were not there to delta
    # against (they went whole), and how to get deltas again
    tz(["cache", "prune", "--older-than", "0"], env)
    step3 = model(tmp_path / "s3.safetensors", tuned=[n for n, _ in SHAPE.tensors()][1::2])
    line = tz(["publish", str(step3), case.url, "--ref", "run/step-3", "--chunk-size", CHUNK],
              env).stderr.decode()
    assert "delta base run/step-2 (" in line and "not in the node cache" in line, line
    assert "theta-zarr pull" in line


def test_prune_refuses_a_repository_cache_and_what_is_no_cache(repo, tmp_path):
    own = repo.path / ".git" / "theta-zarr"
    (own / "objects").mkdir(parents=True, exist_ok=True)
    env = env_for(local_case(tmp_path), tmp_path)
    for folder, says in ((own, "is a git repository's own cache"),
                         (tmp_path, "is no theta-zarr cache")):
        proc = tz(["cache", "prune", "--cache", str(folder), "--older-than", "0"], env,
                  check=False)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and says in lines[0], lines
    # no cache yet (no job ran on this node): nothing to do, and nothing is made
    out = tz(["cache", "prune", "--cache", str(tmp_path / "none")], env).stdout.decode()
    assert out == f"no cache at {tmp_path / 'none'}: nothing to prune\n"
    assert not (tmp_path / "none").exists()
    bad = tz(["cache", "prune", "--older-than", "soon"], env, check=False)
    assert bad.returncode == 1 and "--older-than: not a duration" in bad.stderr.decode()


def test_prune_refuses_a_cache_a_repository_shares(repo, tmp_path):
    """A repository whose theta-zarr.cache is the node cache (or any folder several
    repositories share) keeps its unpushed commits' only chunks there: cache prune
    deleted them by age, and the commit could no longer be checked out."""
    env = env_for(local_case(tmp_path), tmp_path)
    shared = env["THETA_ZARR_CACHE"]
    repo.git("config", "theta-zarr.cache", shared)
    save_file({"w": np.arange(4096, dtype=np.float32)}, str(repo.path / MODEL))
    repo.git("add", MODEL)
    repo.git("commit", "-qm", "unpushed")
    proc = tz(["cache", "prune", "--older-than", "0"], env, check=False)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, lines
    assert "theta-zarr.cache of 1 git repository" in lines[0]
    assert str(repo.path / ".git") in lines[0]
    assert len(list(Cache(shared).iter_digests())) == 1  # nothing was deleted
    (repo.path / MODEL).unlink()
    repo.git("checkout", "--", MODEL)  # the commit's chunks are still there
    # a repository that is gone no longer holds the cache
    shutil.rmtree(repo.path)
    out = tz(["cache", "prune", "--older-than", "0"], env).stdout.decode()
    assert "kept 0 objects" in out


def test_prune_names_the_malformed_packs_it_moves_to_quarantine(tmp_path):
    """A pack whose index is malformed is moved to quarantine by prune (and gc): it said
    only "deleted 0 blobs", so the move went unseen."""
    from theta_zarr import chunking, codecs, packs

    env = env_for(local_case(tmp_path), tmp_path)
    cache = Cache(env["THETA_ZARR_CACHE"])
    raws = [os.urandom(1024) for _ in range(3)]
    cache.put(chunking.digest(raws[0]), raws[0])
    [path] = packs.write_pack(os.path.join(cache.root, packs.FOLDER),
                              iter([(chunking.digest(r), codecs.header("raw") + r)
                                    for r in raws[1:]]))
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # the trailer's magic: no longer a pack
        f.seek(-len(packs.MAGIC) - 16, os.SEEK_END)
        f.write(b"NOTAPACK")
    name = os.path.basename(path)
    quarantine = os.path.join(cache.root, "quarantine")
    out = tz(["cache", "prune", "--older-than", "1d", "--dry-run"], env).stdout.decode()
    assert f"would move 1 malformed pack (its objects unreadable) to {quarantine}: {name}\n" \
        in out
    assert os.path.exists(path)
    out = tz(["cache", "prune", "--older-than", "1d"], env).stdout.decode()
    assert f"moved 1 malformed pack (its objects unreadable) to {quarantine}: {name}\n" in out
    assert os.listdir(quarantine) == [name] and not os.path.exists(path)
    out = tz(["cache", "prune", "--older-than", "1d"], env).stdout.decode()
    assert "malformed pack" not in out
