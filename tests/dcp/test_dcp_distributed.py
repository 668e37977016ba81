"""Real torch.distributed jobs (gloo, CPU, 2 and 4 ranks) saving into and loading from a
folder, the S3 server and the GCS server: only changed chunks go up, loads reshard
bit-exactly, and a rank killed mid-save leaves the ref where it was."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from dcp_worker import MODEL, expected
from helpers import check_ranks, make_case, run_job, save_result, stored_objects

from theta_zarr.dcp import ThetaZarrReader
from theta_zarr.manifest import Manifest

pytestmark = pytest.mark.slow


def load_here(case, ref: str) -> dict:
    """A plain dcp.load in this process (no process group): the 1-process reshard."""
    state = {n: torch.zeros(shape, dtype=dtype) for n, (shape, dtype, _) in MODEL.items()}
    state["step"] = -1
    dcp.load(state, storage_reader=ThetaZarrReader(case.url, ref, options=case.opts()))
    return state


def bit_exact(state: dict, step: int) -> bool:
    want = expected(step)
    return state["step"] == step and all(
        torch.equal(state[n].view(torch.uint8), want[n].view(torch.uint8)) for n in MODEL)


def changed_chunk_bytes(remote, old_ref: str, new_ref: str) -> int:
    """Raw bytes of the chunks step 2's manifest names that step 1's does not."""
    _, old = remote.resolve(old_ref)
    _, new = remote.resolve(new_ref)
    assert isinstance(old, Manifest) and isinstance(new, Manifest)
    sizes = {}
    for entry in new.params.values():
        if entry.inline is None:
            sizes.update(zip(entry.chunks, (n for _, n in entry.spans()), strict=True))
    return sum(n for d, n in sizes.items() if d not in old.digests())


# more ranks than cores (4) saved once; three ranks load two's rows unevenly; every rank is
# a process importing torch, so each backend gets the one world pair it adds most with
@pytest.mark.parametrize("kind,save_world,load_world", [
    ("local", 4, 2), ("s3", 2, 4), ("gcs", 2, 3)])
def test_save_two_steps_then_reshard(kind, save_world, load_world, request, tmp_path,
                                     monkeypatch):
    case = make_case(kind, request, tmp_path, monkeypatch)
    check_ranks(run_job("save", save_world, case, tmp_path, "run7/step-1", 1))
    before = stored_objects(case)
    # step 2 (about 10% of the bytes changed); on the folder remote as an async save
    check_ranks(run_job("save", save_world, case, tmp_path, "run7/step-2", 2,
                  **({"async": True} if kind == "local" else {})))
    after = stored_objects(case)
    remote = case.remote()
    uploaded = sum(n for d, n in after.items() if d not in before)
    changed = changed_chunk_bytes(remote, "run7/step-1", "run7/step-2")
    assert 0 < changed < 0.2 * remote.resolve("run7/step-2")[1].nbytes
    assert uploaded <= 1.1 * changed, (uploaded, changed)
    res = save_result(tmp_path, "run7/step-2", save_world)
    assert res["action"] == "created" and res["base_ref"] == "run7/step-1"
    # a different world size, then one process without a process group: bit-exact
    check_ranks(run_job("load", load_world, case, tmp_path, "run7/step-2", 2))
    assert bit_exact(load_here(case, "run7/step-2"), 2)
    assert bit_exact(load_here(case, "run7/step-1"), 1)


def test_rank_killed_mid_save_leaves_ref_then_next_save_completes(request, tmp_path,
                                                                  monkeypatch):
    case = make_case("local", request, tmp_path, monkeypatch)
    check_ranks(run_job("save", 2, case, tmp_path, "run/step-1", 1))
    first = case.remote().refs.read("run/step-1").digest
    procs = run_job("save", 2, case, tmp_path, "run/step-2", 2, die_rank=1)
    assert procs[1].returncode == 17 and procs[0].returncode != 0
    refs = case.remote().refs
    assert refs.read("run/step-2") is None
    assert refs.read("run/step-1").digest == first
    check_ranks(run_job("save", 2, case, tmp_path, "run/step-2", 2))
    assert bit_exact(load_here(case, "run/step-2"), 2)


def test_a_taken_ref_to_save_and_a_missing_ref_to_load_fail_every_rank_in_one_line(
        request, tmp_path, monkeypatch):
    """torch wraps what a rank raises in its CheckpointException, every rank's traceback;
    theta_zarr.dcp.save raises the writer's own RefConflict on every rank instead, one
    line naming the ref and the remote and the way out, before any chunk went up.
    theta_zarr.dcp.load raises RefError for a ref that does not exist, on every rank even
    when only one rank's read failed (no rank is left waiting in DCP's collectives)."""
    case = make_case("local", request, tmp_path, monkeypatch)
    check_ranks(run_job("save", 2, case, tmp_path, "run/step-1", 1))
    first = case.remote().refs.read("run/step-1").digest
    before = stored_objects(case)
    procs = run_job("save", 2, case, tmp_path, "run/step-1", 2, unwrap=True)
    assert [p.returncode for p in procs] == [3, 3], [p.stderr.decode()[-2000:] for p in procs]
    for p in procs:
        assert p.stdout.decode() == (
            f"RefConflict: ref run/step-1 already exists in {case.url} and points at "
            f"{first}; nothing was uploaded: pass force=True to ThetaZarrWriter to move it, "
            "or save under a new ref\n")
        assert p.stderr.decode() == ""
    assert stored_objects(case) == before
    assert case.remote().refs.read("run/step-1").digest == first
    # loads through theta_zarr.dcp.load: one that works, then one whose rank 1 names a
    # ref that does not exist (rank 0's read succeeds, and it raises rank 1's error)
    check_ranks(run_job("load", 2, case, tmp_path, "run/step-1", 1, unwrap=True))
    procs = run_job("load", 2, case, tmp_path, "run/step-1", 1, unwrap=True,
                    rank_refs={"1": "run/nope"})
    assert [p.returncode for p in procs] == [3, 3], [p.stderr.decode()[-2000:] for p in procs]
    for p in procs:
        assert p.stdout.decode() == f"RefError: no ref run/nope in {case.url}\n"
        assert "Traceback" not in p.stderr.decode()
