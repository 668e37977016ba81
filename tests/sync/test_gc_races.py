"""gc against concurrent pushes, interleaved deterministically at every step boundary.

Each test makes a checkpoint's objects unreachable (its ref is deleted), then runs a
gc with ``--grace 0`` and a push of the same checkpoint, which reuses those objects,
with one of them stopped between two of its steps while the other runs whole.  In
every order, once both are done, no ref names a missing object or manifest.
(Random-timing trials against the S3 server: tests/benchmarks/bench_gc_race.py.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import SHAPE, Case, make_case

from theta_zarr import gc, sync
from theta_zarr.cache import Cache
from theta_zarr.demo import write_model
from theta_zarr.settings import Settings, parse_size


def _settings(tmp_path: Path) -> Settings:
    return Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=parse_size("16KiB"),
                    workers=2, concurrency=4)


def dangling(remote: sync.SyncRemote) -> list[str]:
    """Every problem of the remote's refs: a missing or corrupt manifest or object."""
    roots = gc.Roots()
    problems = gc.remote_roots(remote, roots, young_after=0.0, strict=True)
    return problems + gc.check_objects(remote.objects, roots)


@pytest.fixture
def orphaned(tmp_path):
    """(checkpoint path, settings): pushed once under ``old``, then ``old`` deleted."""
    def make(case: Case):
        remote = case.remote()
        ckpt = tmp_path / "model.safetensors"
        write_model(str(ckpt), SHAPE, seed=1)
        settings = _settings(tmp_path)
        sync.push(str(ckpt), remote, "old", settings)
        remote.blobs.delete("refs/old")
        return remote, ckpt, settings
    return make


def _gc(remote: sync.SyncRemote, settings: Settings, hook=None) -> gc.GcResult:
    cache = Cache(str(tmp_cache(settings)))
    return gc.collect(cache, gc.Roots, grace=0.0, remote=remote, now=time.time() + 5,
                      hook=hook)


def tmp_cache(settings: Settings) -> Path:
    return Path(settings.cache_dir).parent / "gc-cache"


@pytest.mark.parametrize("step", ["planned", "trashed", "restored"])
def test_a_whole_push_between_two_gc_steps(orphaned, tmp_path, step):
    remote, ckpt, settings = orphaned(Case("local", str(tmp_path / "bucket"), {}, []))
    pushed = []

    def hook(name: str) -> None:
        if name == step:
            pushed.append(sync.push(str(ckpt), remote, "new", settings))

    result = _gc(remote, settings, hook)
    assert pushed and remote.refs.read("new") is not None
    assert dangling(remote) == []
    if step == "planned":  # gc had planned to delete exactly what the push reused
        assert result.restored > 0


def test_a_whole_gc_just_before_the_push_moves_its_ref(orphaned, tmp_path, monkeypatch):
    remote, ckpt, settings = orphaned(Case("local", str(tmp_path / "bucket"), {}, []))
    real_set = remote.refs.set
    swept = []

    def set_after_gc(name, digest, force=False):
        swept.append(_gc(remote, settings))  # takes every object the push just reused
        return real_set(name, digest, force)

    monkeypatch.setattr(remote.refs, "set", set_after_gc)
    sync.push(str(ckpt), remote, "new", settings)
    assert sum(len(s.keys) for s in swept[0].sweeps[2:4]) > 0
    assert dangling(remote) == []


def test_the_ref_moves_while_gc_holds_the_objects_in_its_trash(orphaned, request, tmp_path,
                                                               monkeypatch):
    """The push checked its objects before gc started and moves its ref between gc's
    move to the trash and its second listing: gc must give the objects back."""
    case = make_case("s3", request, tmp_path, monkeypatch)
    remote, ckpt, settings = orphaned(case)
    real_set = remote.refs.set
    order = []

    def set_inside_gc(name, digest, force=False):
        out = []

        def hook(step: str) -> None:
            if step == "trashed":
                out.append(real_set(name, digest, force))
                order.append("ref moved")

        result = _gc(remote, settings, hook)
        order.append(f"gc gave back {result.restored}")
        return out[0]

    monkeypatch.setattr(remote.refs, "set", set_inside_gc)
    sync.push(str(ckpt), remote, "new", settings)
    assert order[0] == "ref moved" and order[1] != "gc gave back 0"
    assert dangling(remote) == []


def test_gc_moves_back_what_an_interrupted_gc_left_in_its_trash(orphaned, tmp_path):
    remote, ckpt, settings = orphaned(Case("local", str(tmp_path / "bucket"), {}, []))
    sync.push(str(ckpt), remote, "new", settings)
    victims = [k for k in (i.key for i in remote.blobs.list("objects/"))][:3]
    trash = gc.Trash(remote, "killed-run")
    trash.take(victims)  # a gc killed here: reachable objects sit in its trash
    assert dangling(remote) != []
    _gc(remote, settings)
    assert dangling(remote) == []
    assert list(remote.blobs.list(gc.TRASH_PREFIX)) == []
    assert not (tmp_path / "bucket" / "trash").exists()  # no empty folders left either


def test_a_gc_that_deletes_garbage_leaves_no_empty_trash_folders(orphaned, tmp_path):
    remote, _, settings = orphaned(Case("local", str(tmp_path / "bucket"), {}, []))
    assert list(remote.blobs.list("objects/")) != []
    _gc(remote, settings)
    assert list(remote.blobs.list("objects/")) == []  # every object was garbage
    assert not any((tmp_path / "bucket" / "trash").rglob("*"))


def test_race_on_every_backend(orphaned, case):  # noqa: F811
    remote, ckpt, settings = orphaned(case)

    def hook(name: str) -> None:
        if name == "planned":
            sync.push(str(ckpt), remote, "new", settings)

    _gc(remote, settings, hook)
    assert dangling(remote) == []
    assert list(remote.blobs.list(gc.TRASH_PREFIX)) == []


def _old_version_and_its_fine_tune(tmp_path):
    """A folder remote holding v1 under ref "old", and v2 on disk (every tensor nudged by
    1e-3, so its push stores deltas over v1's chunks): (remote, settings, v2, old ref blob)."""
    remote = Case("local", str(tmp_path / "bucket"), {}, []).remote()
    settings = _settings(tmp_path)
    v1, v2 = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    write_model(str(v1), SHAPE, seed=1)
    write_model(str(v2), SHAPE, seed=1, tuned=[n for n, _ in SHAPE.tensors()], step=1e-3)
    sync.push(str(v1), remote, "old", settings)
    return remote, settings, v2, remote.blobs.get("refs/old")


def test_a_delta_pushed_during_gc_keeps_the_base_gc_had_planned_to_delete(tmp_path):
    """The push stores its chunks as deltas over the old version's chunks, which gc
    planned to delete; gc must give the bases back along with the refs' objects."""
    remote, settings, v2, old_ref = _old_version_and_its_fine_tune(tmp_path)
    remote.blobs.delete("refs/old")  # v1 is garbage now
    deltas = []

    def hook(name: str) -> None:
        if name == "planned":  # a push that continues v1 starts after gc planned
            remote.blobs.put("refs/old", [old_ref])
            sync.push(str(v2), remote, "new", settings, base_ref="old")
            remote.blobs.delete("refs/old")
            new = sync.Manifest.from_bytes(remote.get_bytes(remote.refs.read("new").digest))
            deltas.extend(d for d in new.digests() if remote.objects.delta_header(d))

    _gc(remote, settings, hook)
    assert deltas, "the push stored no delta: nothing tested"
    assert dangling(remote) == []


def test_a_delta_base_gc_takes_after_the_push_checked_it_is_put_back(tmp_path, monkeypatch):
    """gc plans; the push finds its delta base present and uploads deltas over it; gc
    moves the base to its trash and lists refs again; only then does the push's ref
    move.  The push's own re-check must cover the bases its deltas need."""
    import threading

    remote, settings, v2, old_ref = _old_version_and_its_fine_tune(tmp_path)
    remote.blobs.delete("refs/old")  # v1, and so every delta base, is garbage
    real_set = remote.refs.set
    at_set, go = threading.Event(), threading.Event()

    def paused_set(name, digest, force=False):
        remote.blobs.delete("refs/old")
        at_set.set()
        go.wait()
        return real_set(name, digest, force)

    monkeypatch.setattr(remote.refs, "set", paused_set)
    errors = []

    def push() -> None:
        try:
            sync.push(str(v2), remote, "new", settings, base_ref="old")
        except BaseException as e:  # reported below
            errors.append(e)

    pusher = threading.Thread(target=push)

    def hook(step: str) -> None:
        if step == "planned":  # the push continues v1: its ref is there while it starts
            remote.blobs.put("refs/old", [old_ref])
            pusher.start()
            at_set.wait()
        elif step == "restored":
            go.set()
            pusher.join()

    _gc(remote, settings, hook)
    assert not errors, errors
    new = sync.Manifest.from_bytes(remote.get_bytes(remote.refs.read("new").digest))
    assert any(remote.objects.delta_header(d) for d in new.digests())
    assert dangling(remote) == []


def test_gc_reads_a_remotes_refs_and_manifests_together(tmp_path):
    """gc --remote (and fsck --remote) read every ref, then every manifest, one after
    another: two round trips per ref, minutes for the 2,000 refs of a long run on S3.
    Each read here waits until all the reads of its kind are in flight: read one at a
    time, the first would wait for ever (a broken barrier after 60 s).  The walk still
    finds everything: each ref's manifest and chunks, and a set's member manifests."""
    import threading

    from helpers import local_case, model

    remote = local_case(tmp_path).remote()
    settings = _settings(tmp_path)
    for i in range(3):
        model(tmp_path / f"step-{i}.safetensors", seed=i)
        sync.push(str(tmp_path / f"step-{i}.safetensors"), remote, f"run/step-{i}", settings)
    (tmp_path / "set").mkdir()
    for i in range(2):
        model(tmp_path / "set" / f"part-{i}.safetensors", seed=10 + i)
    sync.push(str(tmp_path / "set"), remote, "run/set", settings)
    tops = {remote.refs.read(n).digest for n, _ in remote.refs.list()}
    members = {e.manifest for e in remote.load(remote.refs.read("run/set").digest)
               .files.values()}
    refs_together = threading.Barrier(4, timeout=60)
    tops_together = threading.Barrier(4, timeout=60)
    read, get_bytes = remote.refs.read, remote.get_bytes

    def read_together(name: str):
        refs_together.wait()
        return read(name)

    def get_together(digest: str):
        if digest in tops:
            tops_together.wait()
        return get_bytes(digest)

    remote.refs.read, remote.get_bytes = read_together, get_together
    roots = gc.Roots()
    assert gc.remote_roots(remote, roots, young_after=0.0, strict=True) == []
    remote.refs.read, remote.get_bytes = read, get_bytes
    assert roots.manifests == tops | members and len(members) == 2
    for digest in tops - {read("run/set").digest} | members:
        assert remote.load(digest).digests() <= roots.chunks.keys()
