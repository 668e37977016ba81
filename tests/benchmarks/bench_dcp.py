#!/usr/bin/env python3
"""Distributed-checkpoint benchmark: ThetaZarrWriter against DCP's own FsspecWriter.

Run (not collected by pytest)::

    python tests/benchmarks/bench_dcp.py --size 1GiB --world 4 --out docs/benchmarks.md

One run starts the loopback S3 server (``backends/s3/serve``) with two buckets and a
gloo job of ``--world`` CPU ranks (this script again, one process per rank, as
torchrun would).  Each rank holds its Shard(0) rows of every bf16 weight (FSDP2's
layout, as DTensors).  Then, in this order:

1. step 1 with ``FsspecWriter`` (one file per rank into a fresh prefix),
2. step 1 with ``ThetaZarrWriter`` (ref ``bench/step-1``),
3. ``--changed`` of the weights get new values (whole tensors, spread out),
4. step 2 with each writer again (FsspecWriter into a new prefix, as it must to
   keep step 1; ThetaZarrWriter to ref ``bench/step-2``, delta base step 1).

Wall time is from a barrier before ``dcp.save`` to a barrier after it (rank 0's
clock); bytes uploaded are the bytes the bucket gained (listed after each save).
Goal: step 2 uploads at most 0.15x what FsspecWriter uploads, in less time; step 1
within 1.3x of FsspecWriter's time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_section

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_remote import S3_ENV, Server, human, raw_fs  # noqa: E402

ROWS, COLS = 1024, 4096  # one weight: 8 MiB of bf16


def parse_size(text: str) -> int:
    from theta_zarr.settings import parse_size as parse

    return parse(text)


def bucket_bytes(server: Server, url: str) -> int:
    fs = raw_fs(server, url)
    try:
        return sum(int(i["size"]) for i in fs.find(url, detail=True).values())
    except FileNotFoundError:
        return 0


def changed_tensors(n: int, fraction: float) -> list[int]:
    """Which of ``n`` weights step 2 changes: ``round(n * fraction)`` of them, spread out."""
    k = max(1, round(n * fraction))
    return sorted({i * n // k for i in range(k)})


# -- one rank ------------------------------------------------------------------------------
def rank_main(spec: dict) -> int:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    from theta_zarr.dcp import ThetaZarrWriter

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", timeout=_dt.timedelta(seconds=600))
    mesh = init_device_mesh("cpu", (world,))
    n = spec["tensors"]
    local = ROWS // world

    def shard(i: int, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i * 7919 + rank + 1000 * step)
        return torch.randn(local, COLS, generator=g).to(torch.bfloat16)

    state = {f"layers.{i}.w": DTensor.from_local(shard(i, 1), mesh, [Shard(0)])
             for i in range(n)}
    opts = {"endpoint-url": spec["endpoint"]}
    fs_kwargs = {"client_kwargs": {"endpoint_url": spec["endpoint"]}}
    server = Server.__new__(Server)
    server.kind, server.scheme, server.endpoint = "s3", "s3", spec["endpoint"]
    rows = []

    def timed(label: str, writer, bucket_url: str) -> None:
        before = bucket_bytes(server, bucket_url) if rank == 0 else 0
        dist.barrier()
        t0 = time.perf_counter()
        dcp.save(state, storage_writer=writer)
        dist.barrier()
        seconds = time.perf_counter() - t0
        if rank == 0:
            up = bucket_bytes(server, bucket_url) - before
            rows.append({"label": label, "seconds": seconds, "uploaded": up})
            print(f"{label}: {seconds:.2f} s, {human(up)} uploaded", file=sys.stderr)

    fs_url, tz_url = spec["fs_url"], spec["tz_url"]
    timed("fsspec step 1", FsspecWriter(f"{fs_url}/step-1", **fs_kwargs), fs_url)
    timed("theta-zarr step 1", ThetaZarrWriter(tz_url, "bench/step-1", options=opts), tz_url)
    for i in changed_tensors(n, spec["changed"]):
        state[f"layers.{i}.w"] = DTensor.from_local(shard(i, 2), mesh, [Shard(0)])
    timed("fsspec step 2", FsspecWriter(f"{fs_url}/step-2", **fs_kwargs), fs_url)
    timed("theta-zarr step 2", ThetaZarrWriter(tz_url, "bench/step-2", options=opts), tz_url)
    if rank == 0:
        Path(spec["out"]).write_text(json.dumps(rows))
    dist.destroy_process_group()
    return 0


# -- the driver ------------------------------------------------------------------------------
def run(size: int, world: int, changed: float, tmp: str) -> tuple[list[dict], dict]:
    tensors = max(world, size // (ROWS * COLS * 2))
    server = Server("s3", ["bench-fs", "bench-tz"], tmp)
    out = os.path.join(tmp, "rows.json")
    spec = {"endpoint": server.endpoint, "fs_url": "s3://bench-fs/ckpt",
            "tz_url": "s3://bench-tz/llm", "tensors": tensors, "changed": changed, "out": out}
    env = {**os.environ, **S3_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517",
           "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
    try:
        procs = [subprocess.Popen([sys.executable, __file__, "--rank-spec", json.dumps(spec)],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r in range(world)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"a rank failed: exit codes {codes}")
        rows = json.loads(Path(out).read_text())
    finally:
        server.stop()
    return rows, {"tensors": tensors, "bytes": tensors * ROWS * COLS * 2}


def report(rows: list[dict], info: dict, world: int, changed: float) -> str:
    by = {r["label"]: r for r in rows}
    lines = [
        f"{world} ranks (gloo, CPU), {info['tensors']} bf16 weights of {ROWS}x{COLS} "
        f"({human(info['bytes'])}), Shard(0) as FSDP2 lays them out; step 2 changes "
        f"{len(changed_tensors(info['tensors'], changed))} of them "
        f"({len(changed_tensors(info['tensors'], changed)) / info['tensors']:.1%}); "
        "loopback S3 server; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d}.",
        "",
        "| save | FsspecWriter | ThetaZarrWriter | ratio (theta-zarr / fsspec) |",
        "| --- | --- | --- | --- |",
    ]
    verdicts = []
    for step, goal_t in (("step 1", 1.3), ("step 2", 1.0)):
        f, t = by[f"fsspec {step}"], by[f"theta-zarr {step}"]
        rt = t["seconds"] / f["seconds"]
        ru = t["uploaded"] / max(f["uploaded"], 1)
        lines.append(f"| {step} time | {f['seconds']:.2f} s | {t['seconds']:.2f} s | "
                     f"{rt:.2f}x |")
        lines.append(f"| {step} uploaded | {human(f['uploaded'])} | {human(t['uploaded'])} | "
                     f"{ru:.2f}x |")
        verdicts.append(f"{step} time {rt:.2f}x (goal < {goal_t}x): "
                        f"{'met' if rt < goal_t else 'NOT met'}")
        if step == "step 2":
            verdicts.append(f"step 2 bytes {ru:.3f}x (goal <= 0.15x): "
                            f"{'met' if ru <= 0.15 else 'NOT met'}")
    return "\n".join(lines + ["", "; ".join(verdicts) + "."])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--changed", type=float, default=0.1)
    ap.add_argument("--out", default=None, help="markdown file to update (docs/benchmarks.md)")
    ap.add_argument("--rank-spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_spec:
        return rank_main(json.loads(args.rank_spec))
    with tempfile.TemporaryDirectory(prefix="bench-dcp-") as tmp:
        rows, info = run(parse_size(args.size), args.world, args.changed, tmp)
    body = report(rows, info, args.world, args.changed)
    print(body)
    if args.out:
        write_section(args.out, "bench_dcp", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
