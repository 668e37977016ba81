"""One rank of a torch.distributed job in the DCP tests (gloo, CPU), started by helpers.run_job.

    python dcp_worker.py save|load SPEC_JSON     (env RANK, WORLD_SIZE, MASTER_ADDR/PORT)

The model is a few tiny tensors laid out as a training job lays them out: rows
sharded across ranks (FSDP2's Shard(0), one uneven), columns sharded
(tensor-parallel Shard(1)), a replicated bias, and a non-tensor step counter.
"""

from __future__ import annotations

import datetime
import faulthandler
import json
import os
import sys
import threading

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from theta_zarr.dcp import ThetaZarrReader, ThetaZarrWriter

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


def main() -> int:
    faulthandler.enable()  # a rank that aborts (SIGABRT) prints every thread's stack
    action, spec = sys.argv[1], json.loads(sys.argv[2])
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
        else:
            dcp.save(state, storage_writer=writer)
        if rank == 0:
            with open(spec["out"], "w") as f:
                json.dump(writer.result.__dict__, f)
    else:
        state = {n: distribute_tensor(torch.zeros(MODEL[n][0], dtype=MODEL[n][1]), mesh,
                                      [MODEL[n][2]]) for n in MODEL}
        state["step"] = -1
        dcp.load(state, storage_reader=ThetaZarrReader(spec["url"], spec["ref"],
                                                       options=spec["options"]))
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


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without the interpreter's teardown: with every rank done and no thread of ours
    # left (checked above), the C++ static destructors of torch's native threads (gloo,
    # the TCP store) at exit intermittently abort a rank ("terminate called without an
    # active exception") on a loaded machine, which is no result of the job.
    os._exit(code)
