"""Delta pushes end to end: a full bf16 "optimizer step" pushed by git and by cluster push
is stored as deltas, a fresh clone (or pull) rebuilds it bit-exactly, gc keeps the
chains whole and fsck names a broken one."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest
from helpers import clone, file_sha, init_bare, manifest_at

from theta_zarr import codecs
from theta_zarr.demo import ModelShape, write_model
from theta_zarr.manifest import Manifest
from theta_zarr.objects import object_key
from theta_zarr.remote import RemoteSpec, open_remote
from theta_zarr.sync import SyncRemote

SHAPE = ModelShape(hidden=64, layers=2, vocab=256)
ALL = [n for n, _ in SHAPE.tensors()]


@pytest.fixture(params=["local", "s3"])
def remote_url(request, tmp_path, monkeypatch) -> tuple[str, dict[str, str], list[str]]:
    if request.param == "local":
        return str(tmp_path / "bucket"), {}, []
    backend = request.getfixturevalue("s3_server")
    for k, v in backend.env.items():
        monkeypatch.setenv(k, v)
    return backend.new_bucket() + "/models", dict(backend.env), \
        [f"endpoint-url={backend.endpoint}"]


def objects(url: str, options: list[str]):
    return open_remote(RemoteSpec("t", url, dict(o.split("=", 1) for o in options)))


def setup(repo, url, env, options, tmp_path) -> Path:
    repo.env.update(env)
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    bare = tmp_path / "origin.git"
    init_bare(bare)
    repo.git("remote", "add", "origin", str(bare))
    repo.tz("remote", "add", "origin", url, *[a for o in options for a in ("--remote-option", o)],
            "--shared")
    repo.git("add", ".thetazarr")
    repo.git("commit", "-q", "-m", "remote")
    return bare


def commit(repo, message: str, **kw) -> Manifest:
    write_model(str(repo.path / "model.safetensors"), SHAPE, **kw)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", message)
    return manifest_at(repo, "HEAD")


def codec_of(store, digest: str) -> str:
    return codecs.split(store.get_encoded(digest))[0]


def test_optimizer_step_is_pushed_as_deltas_and_clones_bit_exact(repo, remote_url, make_repo,
                                                                 tmp_path):
    url, env, options = remote_url
    bare = setup(repo, url, env, options, tmp_path)
    base = commit(repo, "base")
    repo.git("push", "-q", "origin", "main")
    step = commit(repo, "one optimizer step", tuned=ALL, step=1e-3)
    new = step.digests() - base.digests()
    assert len(new) == len(step.digests())  # every chunk changed
    out = repo.git("push", "-q", "origin", "main").stderr.decode()
    assert f"uploaded {len(new)} objects" in out and f"{len(new)} deltas " in out
    store = objects(url, options)
    forms = {d: codec_of(store, d) for d in new}
    assert set(forms.values()) == {"int-delta"}
    stored = sum(len(store.get_encoded(d)) for d in new)
    plain = sum(len(store.get_encoded(d)) for d in base.digests())
    assert stored < 0.5 * plain
    original = file_sha(repo.path / "model.safetensors")
    c = clone(make_repo, bare, "clone")
    assert file_sha(c.path / "model.safetensors") == original
    assert c.out("status", "--porcelain") == ""
    # the clone's cache holds raw objects
    for d in list(new)[:5]:
        data = (c.objects_dir / d[7:9] / d[9:]).read_bytes()
        assert data.startswith(b"TZO1\x03raw")
    # and the older version, too, from its full objects
    c.git("checkout", "-q", "HEAD~1", "--", "model.safetensors")
    c.git("checkout", "-q", "HEAD", "--", "model.safetensors")
    assert file_sha(c.path / "model.safetensors") == original


def test_several_steps_in_one_push_chain_and_respect_depth(repo, tmp_path, make_repo):
    url = str(tmp_path / "bucket")
    bare = setup(repo, url, {}, [], tmp_path)
    repo.git("config", "theta-zarr.delta-depth", "2")
    commit(repo, "base")
    manifests = [commit(repo, f"step {i}", seed=0, tuned=ALL, step=1e-3 * (i + 1))
                 for i in range(4)]
    repo.git("push", "-q", "origin", "main")  # base and four steps at once
    store = objects(url, [])
    digest = manifests[0].params["lm_head.weight"].chunks[0]
    depths = []
    for m in manifests:
        d = m.params["lm_head.weight"].chunks[0]
        header = store.delta_header(d)
        depths.append(0 if header is None else header.depth)
    assert digest and depths == [1, 2, 0, 1]
    c = clone(make_repo, bare, "clone")
    assert file_sha(c.path / "model.safetensors") == file_sha(repo.path / "model.safetensors")


def test_delta_off_pushes_plain_objects(repo, tmp_path):
    url = str(tmp_path / "bucket")
    setup(repo, url, {}, [], tmp_path)
    repo.git("config", "theta-zarr.delta", "false")
    commit(repo, "base")
    repo.git("push", "-q", "origin", "main")
    step = commit(repo, "step", tuned=ALL, step=1e-3)
    out = repo.git("push", "-q", "origin", "main").stderr.decode()
    assert " deltas " not in out and " full " in out
    store = objects(url, [])
    assert {codec_of(store, d) for d in step.digests()} == {"expsplit"}  # bf16: by dtype


def test_gc_keeps_chains_and_fsck_names_a_broken_one(repo, tmp_path):
    url = str(tmp_path / "bucket")
    setup(repo, url, {}, [], tmp_path)
    base = commit(repo, "base")
    repo.git("push", "-q", "origin", "main")
    step = commit(repo, "step", tuned=ALL, step=1e-3)
    repo.git("push", "-q", "origin", "main")
    # forget the base version in git: only the step's manifests are roots now
    repo.git("checkout", "-q", "--orphan", "only-step")
    repo.git("commit", "-q", "-m", "step alone")
    repo.git("branch", "-D", "main")
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    repo.tz("gc", "--remote", "origin", "--grace", "0")
    store = objects(url, [])
    remaining = {d for d, _, _ in store.iter_digests()}
    assert step.digests() <= remaining
    bases = {store.delta_header(d).base for d in step.digests()
             if codec_of(store, d) == "int-delta"}
    assert bases and bases <= remaining and bases <= base.digests()
    assert "ok:" in repo.tz("fsck", "--remote", "origin").stdout.decode()
    gone = sorted(bases)[0]
    os.remove(os.path.join(url, *object_key(gone).split("/")))
    res = repo.tz("fsck", "--remote", "origin", check=False)
    text = res.stdout.decode()
    assert res.returncode == 1 and "broken delta chain" in text and gone in text


def run_tz(args: list[str], cache: Path) -> str:
    env = dict(os.environ, THETA_ZARR_CACHE=str(cache))
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(["theta-zarr", *args], env=env, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode() + proc.stderr.decode()


def test_cluster_push_stores_deltas_against_the_ref(tmp_path):
    url = str(tmp_path / "bucket")
    f = tmp_path / "model.safetensors"
    write_model(str(f), SHAPE)
    push = ["publish", str(f), url, "--ref", "run/latest", "--chunk-size", "16KiB"]
    run_tz(push, tmp_path / "job-cache")
    write_model(str(f), SHAPE, tuned=ALL, step=1e-4)
    out = run_tz([*push, "--force"], tmp_path / "job-cache")
    remote = SyncRemote.open(RemoteSpec("t", url))
    _, target = remote.resolve("run/latest")
    forms = {codec_of(remote.objects, d) for d in target.digests()}
    assert "int-delta" in forms, out
    pulled = tmp_path / "pulled.safetensors"
    run_tz(["pull", url, "run/latest", "-o", str(pulled)], tmp_path / "other-cache")
    assert file_sha(pulled) == file_sha(f)


def test_cluster_push_of_a_new_step_deltas_against_base_ref(tmp_path):
    """Each training step gets its own ref; --base-ref names the step it continues."""
    url = str(tmp_path / "bucket")
    f = tmp_path / "model.safetensors"
    write_model(str(f), SHAPE)
    common = ["--chunk-size", "16KiB"]
    run_tz(["publish", str(f), url, "--ref", "run/step-1", *common], tmp_path / "job-cache")
    write_model(str(f), SHAPE, tuned=ALL, step=1e-4)
    out = run_tz(["publish", str(f), url, "--ref", "run/step-2", "--base-ref", "run/step-1",
                  *common], tmp_path / "job-cache")
    remote = SyncRemote.open(RemoteSpec("t", url))
    _, step1 = remote.resolve("run/step-1")
    _, step2 = remote.resolve("run/step-2")
    new = step2.digests() - step1.digests()
    forms = {codec_of(remote.objects, d) for d in new}
    assert new and forms == {"int-delta"}, out
    pulled = tmp_path / "pulled.safetensors"
    run_tz(["pull", url, "run/step-2", "-o", str(pulled)], tmp_path / "other-cache")
    assert file_sha(pulled) == file_sha(f)


def test_gc_repack_rewrites_deep_chains_as_full_objects(repo, tmp_path, make_repo):
    url = str(tmp_path / "bucket")
    bare = setup(repo, url, {}, [], tmp_path)
    commit(repo, "base")
    manifests = [commit(repo, f"step {i}", tuned=ALL, step=1e-3 * (i + 1)) for i in range(3)]
    repo.git("push", "-q", "origin", "main")
    store = objects(url, [])

    def depths() -> list[int]:
        headers = [store.delta_header(m.params["lm_head.weight"].chunks[0]) for m in manifests]
        return [0 if h is None else h.depth for h in headers]

    assert depths() == [1, 2, 3]
    dry = repo.tz("gc", "--remote", "origin", "--repack", "--repack-depth", "1",
                  "--dry-run").stdout.decode()
    assert "would rewrite" in dry and depths() == [1, 2, 3]
    out = repo.tz("gc", "--remote", "origin", "--repack", "--repack-depth", "1").stdout.decode()
    assert "rewrote" in out
    assert depths() == [1, 0, 0]
    assert codec_of(store, manifests[2].params["lm_head.weight"].chunks[0]) == "expsplit"
    c = clone(make_repo, bare, "after-repack")
    assert file_sha(c.path / "model.safetensors") == file_sha(repo.path / "model.safetensors")
    proc = repo.tz("gc", "--repack", check=False)
    assert proc.returncode == 1 and "--repack needs --remote" in proc.stderr.decode()
    # a depth without --repack was ignored: the user thought the chains were rewritten
    proc = repo.tz("gc", "--remote", "origin", "--repack-depth", "0", check=False)
    assert proc.returncode == 1 and "give --repack too" in proc.stderr.decode()
    assert depths() == [1, 0, 0]
