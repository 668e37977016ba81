#!/usr/bin/env python3
"""Random-timing race trials: ``gc --grace 0`` against a push that reuses its garbage.

Run (not collected by pytest; bounded by ``--trials``)::

    python tests/benchmarks/bench_gc_race.py --trials 200 --out docs/reliability.md

It starts the loopback S3 server (backends/s3).  Each trial, in a fresh prefix of one
bucket: a small checkpoint is pushed under ref ``old`` and the ref is deleted, so all
its objects and its manifest are garbage; then a gc (grace 0) and a push of the same
checkpoint under ref ``new`` (which finds every object present and reuses it) start
in two threads, each after a random delay of up to ``--spread`` seconds.  Once both
are done the trial counts every problem of the remote's refs (a missing or corrupt
manifest or object, as ``fsck --remote`` finds them).  The target is zero problems
in every trial; the deterministic interleavings are tests/sync/test_gc_races.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from helpers import ServerProcess, s3_backend  # noqa: E402
from report import write_section  # noqa: E402

from theta_zarr import gc, sync  # noqa: E402
from theta_zarr.cache import Cache  # noqa: E402
from theta_zarr.demo import ModelShape, write_model  # noqa: E402
from theta_zarr.remote import RemoteSpec  # noqa: E402
from theta_zarr.settings import Settings  # noqa: E402


def problems(remote: sync.SyncRemote) -> list[str]:
    roots = gc.Roots()
    found = gc.remote_roots(remote, roots, young_after=0.0, strict=True)
    return found + gc.check_objects(remote.objects, roots)


def trial(url: str, endpoint: str, ckpt: str, work: Path, spread: float, rng: random.Random
          ) -> dict:
    spec = RemoteSpec("bench", url, {"endpoint-url": endpoint})
    settings = Settings(cache_dir=str(work / "cache"), chunk_bytes=16 << 10, workers=2,
                        concurrency=4)
    remote = sync.SyncRemote.open(spec, settings.concurrency)
    sync.push(ckpt, remote, "old", settings)
    remote.blobs.delete("refs/old")
    out: dict = {}

    def run_gc() -> None:
        time.sleep(rng.uniform(0, spread))
        r = gc.collect(Cache(str(work / "gc-cache")), gc.Roots, 0.0,
                       sync.SyncRemote.open(spec, settings.concurrency), now=time.time() + 2)
        out["trashed"] = sum(len(s.keys) for s in r.sweeps[2:4]) + r.restored
        out["restored"] = r.restored

    def run_push() -> None:
        time.sleep(rng.uniform(0, spread))
        sync.push(ckpt, sync.SyncRemote.open(spec, settings.concurrency), "new", settings)

    threads = [threading.Thread(target=run_gc), threading.Thread(target=run_push)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["problems"] = len(problems(remote))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--spread", type=float, default=0.6,
                    help="largest random start delay of each side, seconds")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--out", default=None, help="markdown file to update between markers")
    ap.add_argument("--without-fix", action="store_true",
                    help="control run: gc does not give back from its trash and a push does "
                         "not re-check after its ref moves (shows the trials reach the race)")
    args = ap.parse_args()
    if args.without_fix:
        gc.Trash.give_back = lambda self, digests: set()
        sync.settle = lambda *a, **k: 0
    rng = random.Random(args.seed)
    server = ServerProcess("s3", ["--bucket", "race"])
    backend = s3_backend(server.endpoint)
    import os

    os.environ.update(backend.env)
    rows = []
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = str(Path(tmp) / "model.safetensors")
            write_model(ckpt, ModelShape(hidden=32, layers=2, vocab=64), seed=7)
            for i in range(args.trials):
                work = Path(tmp) / f"t{i}"
                rows.append(trial(f"s3://race/t{i}", server.endpoint, ckpt, work, args.spread,
                                  rng))
                print(f"trial {i + 1}/{args.trials}: {rows[-1]}", file=sys.stderr)
    finally:
        server.stop()
    seconds = time.perf_counter() - start
    bad = sum(1 for r in rows if r["problems"])
    overlapped = sum(1 for r in rows if r["restored"])
    swept = sum(1 for r in rows if r["trashed"])
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        f"Run {when} on {platform.machine()}, Python {platform.python_version()}, against "
        f"the loopback S3 server.  Command: `python tests/benchmarks/bench_gc_race.py "
        f"--trials {args.trials} --spread {args.spread} --seed {args.seed}"
        f"{' --without-fix' if args.without_fix else ''}`.",
        "",
        "| trials | gc moved garbage to its trash | gc gave objects back to a push | "
        "trials ending with a ref naming a missing object | target |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {len(rows)} | {swept} | {overlapped} | {bad} | 0 |",
        "",
        f"{seconds:.0f} s in all.",
    ])
    print(text)
    if args.out and not args.without_fix:
        write_section(args.out, "bench_gc_race", text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
