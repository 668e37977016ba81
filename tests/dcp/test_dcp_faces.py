"""A DCP ref is a ref like any other: pull (consolidated safetensors), load_state_dict,
ls, diff-refs, import into git, fsck and gc; racing saves; unsafe items refused.

Saves here run in this one process (a plain dcp.save without a process group), which
makes the same manifests a job of any size makes; test_dcp_distributed runs real jobs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from dcp_worker import MODEL, expected
from helpers import Case, env_for, make_case, tz
from safetensors.torch import load_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

import theta_zarr
import theta_zarr.dcp
from theta_zarr.dcp import ThetaZarrReader, ThetaZarrWriter
from theta_zarr.dcp import writer as writer_module
from theta_zarr.objects import MissingObjectError, ObjectStore, object_key
from theta_zarr.refs import RefConflict, RefError, Refs
from theta_zarr.remote import RemoteError
from theta_zarr.sync import SyncError, SyncRemote

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def save(case: Case, ref: str, step: int, writer_cls=ThetaZarrWriter, **kw) -> ThetaZarrWriter:
    state = {**{n: t.clone() for n, t in expected(step).items() if n in MODEL},
             "step": step, "opt": {"lr": 0.1 * step}}
    writer = writer_cls(case.url, ref, chunk_size=4096, **kw)
    dcp.save(state, storage_writer=writer)
    return writer


def load(case: Case, ref: str, loader=dcp.load) -> dict:
    """The state dict ``loader`` (torch's ``dcp.load`` or ``theta_zarr.dcp.load``) reads
    from ``ref``."""
    state = {n: torch.zeros(shape, dtype=dtype) for n, (shape, dtype, _) in MODEL.items()}
    state.update(step=-1, opt={"lr": 0.0})
    loader(state, storage_reader=ThetaZarrReader(case.url, ref))
    return state


@pytest.fixture
def case(tmp_path: Path) -> Case:
    c = Case("local", str(tmp_path / "bucket"), {}, [])
    save(c, "run/step-1", 1)
    save(c, "run/step-2", 2)
    return c


def test_pull_writes_one_consolidated_safetensors_file(case, tmp_path):
    env = env_for(case, tmp_path)
    out = tmp_path / "model.safetensors"
    tz(["pull", case.url, "run/step-2", "-o", str(out)], env)
    got, want = load_file(str(out)), expected(2)
    assert set(got) == set(MODEL)
    assert all(torch.equal(got[n].view(torch.uint8), want[n].view(torch.uint8)) for n in MODEL)
    part = tmp_path / "emb.safetensors"
    tz(["pull", case.url, "run/step-2", "-o", str(part), "--include", "emb"], env)
    assert set(load_file(str(part))) == {"emb"}
    # a pickle's name for that safetensors file: torch.load of it would fail, and its
    # message suggests weights_only=False
    proc = tz(["pull", case.url, "run/step-2", "-o", str(tmp_path / "model.pt")], env,
              check=False)
    assert proc.returncode == 1 and not (tmp_path / "model.pt").exists()
    assert proc.stderr.decode() == (
        "theta-zarr: run/step-2 is a distributed checkpoint, which pull writes as one "
        f"safetensors file, not a PyTorch pickle: name it {tmp_path / 'model'}.safetensors "
        "and read it with safetensors.torch.load_file\n")


def test_load_state_dict_reads_only_selected_parameters(case, tmp_path):
    cache = tmp_path / "cache"
    got = theta_zarr.load_state_dict(case.url, ref="run/step-2", include=["tp.*"],
                                     cache=str(cache))
    assert set(got) == {"tp.w"} and torch.equal(got["tp.w"], expected(2)["tp.w"])
    _, manifest = case.remote().resolve("run/step-2")
    fetched = {p.relative_to(cache).as_posix() for p in (cache / "objects").rglob("*")
               if p.is_file()}
    assert fetched == {object_key(d) for d in manifest.params["tp.w"].chunks}


def test_a_load_reads_only_the_chunks_its_tensors_need(case):
    """Every object but emb's is deleted from the remote: loading emb alone still works."""
    remote = case.remote()
    _, manifest = remote.resolve("run/step-2")
    keep = set(manifest.params["emb"].chunks)
    for d, _, _ in list(remote.objects.iter_digests()):
        if d not in keep:
            (Path(case.url) / object_key(d)).unlink()
    state = {"emb": torch.zeros(MODEL["emb"][0], dtype=MODEL["emb"][1])}
    dcp.load(state, storage_reader=ThetaZarrReader(case.url, "run/step-2"))
    assert torch.equal(state["emb"], expected(2)["emb"])


def test_a_reused_object_taken_by_gc_mid_save_is_put_back(case, monkeypatch):
    _, manifest = case.remote().resolve("run/step-2")
    victim = manifest.params["layers.0.w"].chunks[0]
    real_has, taken = ObjectStore.has, []

    def has_then_gc(self, digest):
        there = real_has(self, digest)
        if there and digest == victim and not taken:
            taken.append(digest)
            self.delete(digest)  # a gc sweeps it right after the writer looked
        return there

    monkeypatch.setattr(ObjectStore, "has", has_then_gc)
    save(case, "run/step-2-again", 2)
    monkeypatch.undo()
    assert taken and case.remote().objects.has(victim)
    assert torch.equal(load(case, "run/step-2-again")["layers.0.w"],
                       expected(2)["layers.0.w"])


def _gc_as_the_ref_moves(monkeypatch, root: str, victim: str, forget: bool = False) -> list:
    """Refs.set deletes ``victim`` first: a gc sweeping it after every rank's check;
    ``forget`` also drops the coordinator's chunks (as if another rank held it)."""
    real_set, taken = Refs.set, []

    def set_after_gc(self, name, digest, force=False):
        if not taken:
            taken.append(victim)
            (Path(root) / object_key(victim)).unlink()
            if forget:
                for writer in writers:
                    writer._held = None
        return real_set(self, name, digest, force)

    writers: list[ThetaZarrWriter] = []
    monkeypatch.setattr(Refs, "set", set_after_gc)
    return writers


def test_an_object_taken_by_gc_before_the_ref_moves_is_put_back(case, monkeypatch):
    _, manifest = case.remote().resolve("run/step-2")
    victim = manifest.params["layers.0.w"].chunks[0]
    _gc_as_the_ref_moves(monkeypatch, case.url, victim)
    save(case, "run/step-2-again", 2)
    monkeypatch.undo()
    assert case.remote().objects.has(victim)
    assert torch.equal(load(case, "run/step-2-again")["layers.0.w"],
                       expected(2)["layers.0.w"])


def test_an_object_only_another_rank_held_fails_the_save_clearly(case, monkeypatch):
    _, manifest = case.remote().resolve("run/step-2")
    victim = manifest.params["layers.0.w"].chunks[0]
    writers = _gc_as_the_ref_moves(monkeypatch, case.url, victim, forget=True)
    state = {**{n: t.clone() for n, t in expected(2).items() if n in MODEL},
             "step": 2, "opt": {"lr": 0.2}}
    writer = ThetaZarrWriter(case.url, "run/step-2-again", chunk_size=4096)
    writers.append(writer)
    with pytest.raises(CheckpointException, match="concurrent gc removed"):
        dcp.save(state, storage_writer=writer)
    monkeypatch.undo()
    assert not case.remote().objects.has(victim)
    again = ThetaZarrWriter(case.url, "run/step-2-again", chunk_size=4096, force=True)
    dcp.save(state, storage_writer=again)  # what the error says to do
    assert case.remote().objects.has(victim)


def test_a_save_asks_the_bucket_once_which_chunks_it_lacks(request, tmp_path, monkeypatch):
    """As publish: every chunk is hashed first, then one listing (where it costs fewer
    requests) says which are missing; a save sent one existence request per chunk."""
    case = make_case("s3", request, tmp_path, monkeypatch)
    asked: list[str] = []
    real_has = ObjectStore.has
    monkeypatch.setattr(ObjectStore, "has", lambda self, d: asked.append(d) or real_has(self, d))
    state = {f"layers.{i}.norm.weight": torch.randn(256) for i in range(64)}
    for ref, sent in (("run/step-1", 64), ("run/step-2", 0)):
        writer = ThetaZarrWriter(case.url, ref, options=case.opts())
        dcp.save(state, storage_writer=writer)
        assert writer.result is not None and writer.result.uploaded_objects == sent
    assert asked == []
    got = {n: torch.zeros(256) for n in state}
    dcp.load(got, storage_reader=ThetaZarrReader(case.url, "run/step-2", options=case.opts()))
    assert all(torch.equal(got[n], state[n]) for n in state)


def test_ls_and_diff_refs_between_steps(case, tmp_path):
    env = env_for(case, tmp_path)
    listing = tz(["ls", case.url, "run/"], env).stdout.decode()
    assert "run/step-1" in listing and "run/step-2" in listing
    # the tensors a reader gets, not the step and optimizer items stored beside them
    rows = [line.split("\t") for line in listing.splitlines()]
    assert {r[0]: r[4] for r in rows}["run/step-1"] == f"{len(MODEL)} params"
    res = tz(["diff-refs", case.url, "run/step-1", "run/step-2", "--json"], env)
    doc = json.loads(res.stdout)
    assert (doc["theta_zarr_diff"], doc["old"], doc["new"]) == (1, "run/step-1", "run/step-2")
    fd = doc["files"][0]
    changed = {p["name"]: p for p in fd["params"] if p["status"] == "changed"}
    assert {"emb", "tp.w"} <= set(changed) and "layers.0.w" not in changed
    # the step and optimizer items are non-tensor content, as a file's are, not numbers
    # (they were compared as uint8 tensors of pickle bytes: "|B-A| 461 ... elements 2.5%")
    assert {p["name"] for p in fd["params"]} <= set(MODEL)
    (step,) = [o for o in fd["other"] if o["key"] == "step"]
    assert step["status"] == "changed"
    assert re.fullmatch(r"\d+ bytes, [0-9a-f]{12}", step["old"]) and step["new"] != step["old"]
    emb = changed["emb"]
    assert 0 < emb["chunks_changed"] < emb["chunks"]  # only the changed rows' chunks
    assert fd["read"]["chunks"] < sum(p["chunks"] for p in fd["params"]) * 2


def test_import_into_git_then_fsck_and_gc_keep_every_chunk(case, repo, tmp_path):
    repo.tz("remote", "add", "origin", case.url)
    repo.tz("track", "*.safetensors")
    repo.tz("import", case.url, "run/step-2", "model.safetensors")
    repo.git("add", ".gitattributes")
    repo.git("commit", "-q", "-m", "step 2")
    assert repo.out("status", "--porcelain") == ""
    got = load_file(str(repo.path / "model.safetensors"))
    assert torch.equal(got["emb"], expected(2)["emb"])
    # through git as through the ref: the tensors, not the bytes items ("step", "opt")
    state = theta_zarr.load_state_dict(str(repo.path / "model.safetensors"))
    assert set(state) == set(MODEL) == set(theta_zarr.load_state_dict(case.url, ref="run/step-2"))
    # the file cleans back to the very manifest the ref names (clean(smudge(m)) == m)
    (repo.path / "model.safetensors").touch()
    repo.git("add", "--renormalize", ".")
    assert repo.out("status", "--porcelain") == ""
    blob = repo.out("show", "HEAD:model.safetensors").encode()
    _, manifest = case.remote().resolve("run/step-2")
    assert blob.strip() == manifest.to_bytes().strip()
    assert "ok:" in repo.tz("fsck", "--remote", "origin").stdout.decode()
    repo.tz("gc", "--remote", "origin", "--grace", "0")
    for step in (1, 2):
        state = load(case, f"run/step-{step}")
        assert state["step"] == step and state["opt"]["lr"] == pytest.approx(0.1 * step)
        assert torch.equal(state["emb"], expected(step)["emb"])


def test_a_fine_tune_step_goes_up_as_deltas_against_the_newest_step(case):
    state = {**{n: t.clone() for n, t in expected(2).items() if n in MODEL},
             "step": 3, "opt": {"lr": 0.3}}
    state["layers.0.w"] = (state["layers.0.w"] * (1 + 1e-3)).contiguous()
    writer = ThetaZarrWriter(case.url, "run/step-3", chunk_size=4096)
    dcp.save(state, storage_writer=writer)
    res = writer.result
    assert res.base_ref == "run/step-2" and res.deltas > 0
    assert res.uploaded_bytes < 0.9 * res.uploaded_raw_bytes
    got = load(case, "run/step-3")
    assert torch.equal(got["layers.0.w"], state["layers.0.w"])


def test_any_pushed_checkpoint_loads_through_dcp(case, tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "plain.safetensors"
    save_file({"emb": expected(1)["emb"]}, str(f))
    tz(["publish", str(f), case.url, "--ref", "plain/v1"], env_for(case, tmp_path))
    state = {"emb": torch.zeros(MODEL["emb"][0], dtype=MODEL["emb"][1])}
    dcp.load(state, storage_reader=ThetaZarrReader(case.url, "plain/v1"))
    assert torch.equal(state["emb"], expected(1)["emb"])


def test_bad_refs_get_one_line_errors(case, tmp_path):
    res = tz(["diff-refs", case.url, "run/nope", "run/step-1"], env_for(case, tmp_path),
             check=False)
    err = res.stderr.decode()
    assert res.returncode == 1 and err.startswith("theta-zarr: ") and "run/nope" in err
    assert "Traceback" not in err


def test_a_failed_metadata_read_is_not_retried_as_rank_local_metadata(case, monkeypatch):
    """A ref has no per-rank metadata: DCP must not retry a failed read with ``rank=``.
    A rank whose retry succeeded planned without collectives while the others waited
    for its plan (a hang until the process group timed out)."""
    with pytest.raises(CheckpointException, match="no ref run/nope") as bad_ref:
        dcp.load({"emb": torch.zeros(MODEL["emb"][0], dtype=MODEL["emb"][1])},
                 storage_reader=ThetaZarrReader(case.url, "run/nope"))
    assert "rank local" not in str(bad_ref.value)
    real, calls = SyncRemote.resolve, []

    def fails_once(self, ref):
        calls.append(ref)
        if len(calls) == 1:
            raise OSError("storage hiccup")
        return real(self, ref)

    monkeypatch.setattr(SyncRemote, "resolve", fails_once)
    with pytest.raises(CheckpointException, match="storage hiccup"):
        dcp.load({"emb": torch.zeros(MODEL["emb"][0], dtype=MODEL["emb"][1])},
                 storage_reader=ThetaZarrReader(case.url, "run/step-2"))
    assert calls == ["run/step-2"]


def test_theta_zarr_dcp_save_raises_theta_zarrs_own_one_line_error(case, monkeypatch):
    """dcp.save wraps what a rank raises in torch's CheckpointException (a BaseException,
    every rank's traceback in its text); theta_zarr.dcp.save raises theta-zarr's error
    itself, one line, before any upload, and torch's when something else failed."""
    remote = case.remote()
    before, first = set(remote.objects.iter_digests()), remote.refs.read("run/step-2").digest
    line = (f"ref run/step-2 already exists in {case.url} and points at {first}; nothing "
            "was uploaded: pass force=True to ThetaZarrWriter to move it, or save under a "
            "new ref")
    state = {"emb": torch.randn(MODEL["emb"][0]).to(MODEL["emb"][1]), "step": 9}
    with pytest.raises(CheckpointException) as wrapped:
        dcp.save(state, storage_writer=ThetaZarrWriter(case.url, "run/step-2"))
    assert str(wrapped.value).splitlines()[-1] == f"theta_zarr.refs.RefConflict: {line}"
    assert str(theta_zarr.dcp.own_error(wrapped.value)) == line
    with pytest.raises(RefConflict) as taken:
        theta_zarr.dcp.save(state, storage_writer=ThetaZarrWriter(case.url, "run/step-2"))
    assert str(taken.value) == line
    assert set(remote.objects.iter_digests()) == before
    assert remote.refs.read("run/step-2").digest == first

    def hiccup(self, name):
        raise OSError("storage hiccup")

    monkeypatch.setattr(Refs, "read", hiccup)  # not theta-zarr's: torch's report stays
    with pytest.raises(CheckpointException, match="storage hiccup") as other:
        theta_zarr.dcp.save(state, storage_writer=ThetaZarrWriter(case.url, "run/step-3"))
    assert theta_zarr.dcp.own_error(other.value) is None


def test_theta_zarr_dcp_load_raises_theta_zarrs_own_one_line_error(case, capfd, caplog):
    """dcp.load logs a missing ref's traceback as a warning, then raises an AssertionError
    inside torch's CheckpointException; theta_zarr.dcp.load raises the RefError itself and
    prints nothing, reads the ref once per load (checkpoint_id names it too), and raises a
    missing chunk's error as theta-zarr's own."""
    state = {"emb": torch.zeros(MODEL["emb"][0], dtype=MODEL["emb"][1]), "step": -1}
    def logged_tracebacks() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]

    with pytest.raises(CheckpointException):
        dcp.load(state, storage_reader=ThetaZarrReader(case.url, "run/nope"))
    assert logged_tracebacks()
    caplog.clear()
    capfd.readouterr()
    with pytest.raises(RefError) as missing:
        theta_zarr.dcp.load(state, storage_reader=ThetaZarrReader(case.url, "run/nope"))
    assert str(missing.value) == f"no ref run/nope in {case.url}"
    assert not logged_tracebacks() and capfd.readouterr().err == ""

    reader = ThetaZarrReader(case.url, "run/nope")
    reads = []
    real_resolve = SyncRemote.resolve

    def counted(self, ref):
        reads.append(ref)
        return real_resolve(self, ref)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SyncRemote, "resolve", counted)
        theta_zarr.dcp.load(state, storage_reader=reader, checkpoint_id="run/step-2")
    assert reads == ["run/step-2"]
    assert torch.equal(state["emb"], expected(2)["emb"]) and state["step"] == 2

    remote = case.remote()
    _, manifest = remote.resolve("run/step-1")
    lost = manifest.params["emb"].chunks[0]
    (Path(case.url) / object_key(lost)).unlink()
    with pytest.raises(MissingObjectError, match=f"object {lost} is missing from"):
        theta_zarr.dcp.load(state, storage_reader=ThetaZarrReader(case.url, "run/step-1"))
    with pytest.raises(CheckpointException, match="Missing key"):  # torch's own: unchanged
        theta_zarr.dcp.load({"nope": torch.zeros(2)},
                            storage_reader=ThetaZarrReader(case.url, "run/step-2"))


def test_a_job_resumes_from_the_newest_ref_of_its_folder(case, tmp_path):
    """theta_zarr.newest_ref names the checkpoint a restarted job loads (the docs' resume
    pattern): the newest ref directly in the folder, natural order within a second, None
    for a first start; a remote that does not exist is an error, never a first start."""
    assert theta_zarr.newest_ref(case.url, "run/") == "run/step-2"
    save(case, "run/step-10", 3)  # written last; by name alone it would sort before 2
    save(case, "run/eval/step-99", 4)  # a subfolder: another series
    assert theta_zarr.newest_ref(case.url, "run") == "run/step-10"
    assert load(case, theta_zarr.newest_ref(case.url, "run/"), theta_zarr.dcp.load)["step"] == 3
    assert theta_zarr.newest_ref(case.url, "run/eval") == "run/eval/step-99"
    assert theta_zarr.newest_ref(case.url, "run7/") is None
    assert theta_zarr.newest_ref(case.url) is None  # no ref outside a folder
    with pytest.raises(RefError, match="invalid ref name"):
        theta_zarr.newest_ref(case.url, "run 7/")
    with pytest.raises(OSError, match="does not exist"):
        theta_zarr.newest_ref(str(tmp_path / "no-such-folder"), "run/")


def test_a_reader_and_a_writer_used_again_start_afresh(tmp_path):
    """An eval job reloading "run/latest" with one reader, which the training job moves
    with one forced writer: each load reads the ref as it is then (the first manifest
    was kept for the reader's life), and a failed save leaves no earlier result."""
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    writer = ThetaZarrWriter(case.url, "run/latest", force=True)
    reader = ThetaZarrReader(case.url, "run/latest")
    for step in range(3):
        dcp.save({"w": torch.full((4,), float(step)), "step": step}, storage_writer=writer)
        assert writer.result is not None and writer.result.action in ("created", "moved")
        state = {"w": torch.zeros(4), "step": -1}
        dcp.load(state, storage_reader=reader)
        assert state["step"] == step and torch.equal(state["w"], torch.full((4,), float(step)))
    with pytest.raises(CheckpointException):
        dcp.save({"w": torch.ones(4), "step": np.int64(3)}, storage_writer=writer)
    assert writer.result is None


class CoordinatorRead(ThetaZarrReader):
    """A rank whose coordinator read the ref as naming ``digest`` (it moved between the
    two ranks' reads)."""

    digest_seen_by_rank0 = ""

    def prepare_global_plan(self, plans):
        return [dataclasses.replace(p, storage_data=self.digest_seen_by_rank0)
                for p in super().prepare_global_plan(plans)]


def test_every_rank_loads_the_checkpoint_the_coordinator_read(case):
    """Each rank reads the ref on its own: one that read another checkpoint than rank 0
    loads rank 0's (a moved "latest" mixed two steps' shards into one tensor), or, when
    the plan made for its own does not fit, the load fails saying so."""
    refs = case.remote().refs
    CoordinatorRead.digest_seen_by_rank0 = refs.read("run/step-1").digest
    got = {n: torch.zeros(shape, dtype=dtype) for n, (shape, dtype, _) in MODEL.items()}
    got["step"] = -1
    dcp.load(got, storage_reader=CoordinatorRead(case.url, "run/step-2"))
    assert got["step"] == 1
    assert all(torch.equal(got[n], expected(1)[n]) for n in MODEL)
    dcp.save({"emb": torch.zeros(3)}, storage_writer=ThetaZarrWriter(case.url, "run/other"))
    CoordinatorRead.digest_seen_by_rank0 = refs.read("run/other").digest
    with pytest.raises(CheckpointException, match="ref run/step-2 moved while this job "
                                                  "loaded it.*load again"):
        dcp.load({"emb": torch.zeros(MODEL["emb"][0], dtype=MODEL["emb"][1])},
                 storage_reader=CoordinatorRead(case.url, "run/step-2"))


class SlowWriter(ThetaZarrWriter):
    """Another job saves the same ref while this one is about to publish."""

    def finish(self, metadata, results):
        save(Case("local", self.remote_url, {}, []), self.ref, 2)
        super().finish(metadata, results)


def test_racing_saves_have_one_winner_and_the_loser_says_so(tmp_path):
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    with pytest.raises(CheckpointException, match="published by another job"):
        save(case, "run/step-3", 1, writer_cls=SlowWriter)
    assert load(case, "run/step-3")["step"] == 2  # the winner's checkpoint, whole
    # a save to a ref that exists fails before uploading anything
    before = set(case.remote().objects.iter_digests())
    with pytest.raises(CheckpointException, match="already exists"):
        save(case, "run/step-3", 5)
    assert set(case.remote().objects.iter_digests()) == before


def test_a_ref_name_no_ref_can_take_fails_the_save_before_any_upload(case):
    """A new ref beginning with '-', or the folder of an existing ref, was refused when
    the ref moved, after every rank's chunks had gone up."""
    before = set(case.remote().objects.iter_digests())
    for ref in ("-x", "run"):
        with pytest.raises(CheckpointException, match=f"ref {ref} cannot be created"):
            save(case, ref, 5)
    assert set(case.remote().objects.iter_digests()) == before

def test_a_name_no_manifest_can_hold_fails_the_save_before_any_upload(tmp_path):
    """A non-tensor item's name is checked while planning, as a tensor's is; it was
    checked in finish, after every chunk had gone up."""
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    for state in ({"w": torch.randn(100, 100), "bad\nkey": 5},
                  {"bad\nkey": torch.randn(100, 100)}):
        with pytest.raises(CheckpointException, match="invalid parameter name"):
            dcp.save(state, storage_writer=ThetaZarrWriter(case.url, "run/step-1"))
        assert not list(case.remote().objects.iter_digests())


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_an_item_that_needs_unpickling_code_is_refused(tmp_path, capsys, monkeypatch):
    """The reader refuses such an item (a bucket another tool wrote); the writer refuses
    it at save time, naming the global, rather than leave a step no job can resume from
    (a numpy scalar step counter is the usual one)."""
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    for extra, name in ((Evil(), "GLOBAL print"),
                        (np.int64(3), "numpy._core.multiarray.scalar")):
        with pytest.raises(CheckpointException, match=f"item 'extra' does not load back "
                                                      f"with weights_only=True .*{name}"):
            dcp.save({"w": torch.ones(4), "extra": extra},
                     storage_writer=ThetaZarrWriter(case.url, "bad"))
        assert case.remote().refs.read("bad") is None
    monkeypatch.setattr(writer_module, "unsafe_reason", lambda data: None)
    dcp.save({"w": torch.ones(4), "extra": Evil()},
             storage_writer=ThetaZarrWriter(case.url, "bad"))
    state = {"w": torch.zeros(4), "extra": None}
    with pytest.raises(CheckpointException, match="GLOBAL print.*never unpickles"):
        dcp.load(state, storage_reader=ThetaZarrReader(case.url, "bad"))
    assert "pwned" not in capsys.readouterr().out


def test_a_save_to_a_folder_that_is_not_there_fails_and_creates_nothing(tmp_path):
    """A node whose shared folder is not mounted: the save fails naming the folder, and
    no folder appears on the local disk (where the other ranks would never see it)."""
    missing = tmp_path / "mnt" / "share"
    with pytest.raises(CheckpointException, match="does not exist"):
        save(Case("local", str(missing / "models"), {}, []), "run/step-1", 1)
    assert not (tmp_path / "mnt").exists()
    # a folder inside an existing one is created, as publish creates it
    (tmp_path / "mnt").mkdir()
    save(Case("local", str(tmp_path / "mnt" / "models"), {}, []), "run/step-1", 1)
    assert (tmp_path / "mnt" / "models" / "refs").is_dir()


def test_a_writer_to_an_http_url_is_refused_when_made(http_folder):
    """An HTTP remote is read-only (MinIO given by its HTTP URL): refused by the writer's
    constructor on every rank in one line, with the s3:// spelling, not inside dcp.save
    after the ranks planned; the server is asked nothing."""
    url = f"{http_folder.url}/models/llm"
    with pytest.raises(RemoteError) as refused:
        ThetaZarrWriter(url, "run/step-1")
    assert str(refused.value) == (
        f"remote 'dcp' ({url}) cannot be written: HTTP remotes are read-only (git clones "
        f"and fetches only); an S3-compatible server (MinIO) is s3://models/llm "
        f"--remote-option endpoint-url={http_folder.url}")
    assert http_folder.requests == []


def test_a_base_ref_that_does_not_exist_fails_the_save_and_a_forced_move_continues_itself(
        case):
    """As publish: a mistyped base is refused, not taken as "no base"; a forced move of an
    existing ref deltas against what that ref named (not the newest other ref)."""
    with pytest.raises(CheckpointException, match="base ref run/step-l does not exist"):
        save(case, "run/step-3", 3, base_ref="run/step-l")
    assert case.remote().refs.read("run/step-3") is None
    writer = save(case, "run/step-1", 3, force=True)
    assert writer.result is not None and writer.result.base_ref == "run/step-1"


def _plans(writers: list[ThetaZarrWriter]) -> list:
    """The local plans DCP gathers from a job whose rank r saves with ``writers[r]``: rank
    r holding rows r of a two-row tensor, as a sharded model does."""
    plans = []
    for rank, writer in enumerate(writers):
        planner = DefaultSavePlanner()
        planner.set_up_planner({f"rows.{rank}": torch.full((64, 64), float(rank)),
                                "step": 7}, is_coordinator=rank == 0)
        writer.set_up_storage_writer(rank == 0)
        plans.append(writer.prepare_local_plan(planner.create_local_plan()))
    return plans


def test_ranks_whose_writers_disagree_fail_the_save_before_any_upload(tmp_path):
    """A rank computing another step number (or given another bucket) made a save where
    only rank 0's ref moved, holding the other ranks' chunks, and nothing said so; with
    another remote, rank 0's ref named objects its bucket lacked."""
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    other = tmp_path / "other"
    other.mkdir()
    for rank1, what in ((ThetaZarrWriter(case.url, "run/step-2"),
                         r"ref differs \(rank 0: run/step-1; rank 1: run/step-2\)"),
                        (ThetaZarrWriter(str(other), "run/step-1"), "remote differs"),
                        (ThetaZarrWriter(case.url, "run/step-1", force=True),
                         r"force differs \(rank 0: False; rank 1: True\)")):
        coordinator = ThetaZarrWriter(case.url, "run/step-1")
        with pytest.raises(SyncError, match=f"dcp save run/step-1: the ranks' "
                                            f"ThetaZarrWriter {what}.*nothing was uploaded"):
            coordinator.prepare_global_plan(_plans([coordinator, rank1]))
    assert not (tmp_path / "bucket" / "objects").exists()
    assert not (other / "objects").exists()
    # ranks that differ only in how they transfer (concurrency) save together
    writers = [ThetaZarrWriter(case.url, "run/step-1"),
               ThetaZarrWriter(case.url, "run/step-1", options={"concurrency": "4"})]
    plans = writers[0].prepare_global_plan(_plans(writers))
    assert [sorted(p.storage_data.shapes) for p in plans] == [["rows.0"], ["rows.1"]]
