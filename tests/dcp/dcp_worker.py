"""The torch.distributed jobs of the DCP tests (gloo, CPU), launched for helpers.run_job.

    python dcp_worker.py      (reads one job a line on stdin, answers one line each)

A job is ``{"action": "save"|"load", "world": N, "spec": {...}, "env": {...}}``.  The
launcher imports torch once and forks N ranks for each job (multiprocessing's "fork" start
method, which ``torch.multiprocessing.start_processes`` offers too): each rank is its own
process with its own gloo process group, the job's environment plus RANK / WORLD_SIZE /
LOCAL_RANK, and its stdout and stderr in ``SPEC["logs"]``-named files.  The answer is
every rank's exit code, a JSON list.  The launcher itself never touches torch.distributed,
and forking spares every rank the seconds of CPU that importing torch costs.

The model is a few tiny tensors laid out as a training job lays them out: rows
sharded across ranks (FSDP2's Shard(0), one uneven), columns sharded
(tensor-parallel Shard(1)), a replicated bias, and a non-tensor step counter.
"""

from __future__ import annotations

import datetime
import faulthandler
import json
import multiprocessing
import os
import sys
import threading
import traceback

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

import theta_zarr.dcp
from theta_zarr.dcp import ThetaZarrReader, ThetaZarrWriter
from theta_zarr.refs import RefConflict, RefError

#: name -> (shape, dtype, placement)
MODEL = {
    "layers.0.w": ((64, 96), torch.float32, Shard(0)),
    "layers.0.b": ((96,), torch.bfloat16, Replicate()),
    "layers.1.w": ((66, 32), torch.float32, Shard(0)),
    "tp.w": ((24, 400), torch.float32, Shard(1)),
    "emb": ((128, 64), torch.bfloat16, Shard(0)),
}
#: what step 2 changes (about 10% of the bytes)
CHANGED = {"tp.w": slice(0, 2), "emb": slice(0, 32)}


def full(name: str, step: int) -> torch.Tensor:
    """The global tensor ``name`` at ``step`` (the same on every rank and in the test)."""
    shape, dtype, _ = MODEL[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    t = torch.randn(shape, generator=g).to(dtype)
    if step >= 2 and name in CHANGED:
        g2 = torch.Generator().manual_seed(step * 1000 + len(name))
        t[CHANGED[name]] = torch.randn(t[CHANGED[name]].shape, generator=g2).to(dtype)
    return t


def expected(step: int) -> dict:
    return {**{n: full(n, step) for n in MODEL}, "step": step}


class DyingWriter(ThetaZarrWriter):
    """Dies (like a preempted node) in the middle of writing, after uploading part."""

    def __init__(self, *args, die: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.die = die

    def write_data(self, plan, planner):
        if self.die:
            half = dict(plan.__dict__)
            half["items"] = plan.items[: len(plan.items) // 2]
            super().write_data(type(plan)(**half), planner)
            os._exit(17)
        return super().write_data(plan, planner)


def caught(spec: dict, plain, ours, error: type[Exception], *args, **kwargs) -> bool:
    """torch's ``plain`` save or load, or theta_zarr.dcp's (``ours``) when the job says
    ``unwrap``: then ``error`` (a taken or missing ref) is caught as such and printed as
    ``NAME: message`` on stdout; True when it was."""
    if not spec.get("unwrap"):
        plain(*args, **kwargs)
        return False
    try:
        ours(*args, **kwargs)
    except error as e:
        print(f"{type(e).__name__}: {e}")
        return True
    return False


def main(action: str, spec: dict) -> int:
    """One rank's job; its exit code."""
    faulthandler.enable()  # a rank that aborts (SIGABRT) prints every thread's stack
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    mesh = init_device_mesh("cpu", (world,))
    step = spec["step"]
    if action == "save":
        state = {n: distribute_tensor(full(n, step), mesh, [MODEL[n][2]]) for n in MODEL}
        state["step"] = step
        writer = DyingWriter(spec["url"], spec["ref"], options=spec["options"],
                             chunk_size=4096, die=rank == spec.get("die_rank"))
        if spec.get("async"):
            dcp.async_save(state, storage_writer=writer).result()
        elif caught(spec, dcp.save, theta_zarr.dcp.save, RefConflict, state,
                    storage_writer=writer):
            return 3
        if rank == 0:
            with open(spec["out"], "w") as f:
                json.dump(writer.result.__dict__, f)
    else:
        state = {n: distribute_tensor(torch.zeros(MODEL[n][0], dtype=MODEL[n][1]), mesh,
                                      [MODEL[n][2]]) for n in MODEL}
        state["step"] = -1
        reader = ThetaZarrReader(spec["url"], spec.get("rank_refs", {}).get(str(rank),
                                                                             spec["ref"]),
                                 options=spec["options"])
        if caught(spec, dcp.load, theta_zarr.dcp.load, RefError, state,
                  storage_reader=reader):
            return 3
        want = expected(step)
        bad = [n for n in MODEL if not torch.equal(state[n].full_tensor().view(torch.uint8),
                                                   want[n].view(torch.uint8))]
        if state["step"] != step:
            bad.append("step")
        if bad:
            print(f"rank {rank}: not bit-exact: {bad}", file=sys.stderr)
            return 1
    # every rank is done before any tears its connections down
    dist.barrier()
    dist.destroy_process_group()
    # theta-zarr's thread pools are all shut down (every thread it starts is named
    # theta-zarr* or tz-*); torch's (AsyncCheckpointExecutor) and fsspec's are not ours
    left = [t.name for t in threading.enumerate()
            if t.name.startswith(("theta-zarr", "tz-"))]
    if left:
        print(f"rank {rank}: threads still running: {left}", file=sys.stderr)
        return 1
    return 0


def rank_main(action: str, spec: dict, rank: int, world: int, logs: str) -> None:
    """A forked rank: its environment and output files, then ``main``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    for fd, suffix in ((1, "out"), (2, "err")):
        out = os.open(f"{logs}.rank{rank}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, fd)
        os.close(out)
    try:
        code = main(action, spec)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without the interpreter's teardown: with every rank done and no thread of ours
    # left (checked above), the C++ static destructors of torch's native threads (gloo,
    # the TCP store) at exit intermittently abort a rank ("terminate called without an
    # active exception") on a loaded machine, which is no result of the job.
    os._exit(code)


def launch(action: str, world: int, spec: dict, env: dict) -> list:
    """Fork ``world`` ranks of one job and wait for them; their exit codes (None: killed
    after 300 s)."""
    os.environ.update(env)
    fork = multiprocessing.get_context("fork")
    ranks = [fork.Process(target=rank_main, args=(action, spec, rank, world, spec["logs"]))
             for rank in range(world)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(300)
        if p.exitcode is None:
            p.kill()
            p.join()
    return [p.exitcode for p in ranks]


if __name__ == "__main__":
    base = dict(os.environ)
    for line in sys.stdin:
        job = json.loads(line)
        os.environ.clear()
        os.environ.update(base)
        codes = launch(job["action"], job["world"], job["spec"], job["env"])
        print(json.dumps(codes), flush=True)
