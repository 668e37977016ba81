#!/usr/bin/env python3
"""Model-merging benchmark.  Run (not collected by pytest)::

    python tests/benchmarks/bench_merge.py --size 64MiB

A bf16 base and two fine-tunes that changed every parameter, chunked into the local
cache; then the merge of the three manifests with each method, in this process.  The
floor is reading and hashing, once, every chunk of the three versions (what any
merge that combines every tensor must at least do).  Methods with whole-tensor
statistics read each parameter again per statistics pass (TIES and breadcrumbs: two
passes; slerp and model_stock: one), so their ratio to the floor is expected to be
about 1 + passes plus the arithmetic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import BF16, make_store, manifest  # noqa: E402

from theta_zarr.chunking import digest  # noqa: E402
from theta_zarr.merge import Rule, StrategyTable, merge_manifests  # noqa: E402
from theta_zarr.merges import MergeOptions  # noqa: E402
from theta_zarr.settings import parse_size  # noqa: E402

METHODS = {"linear": {}, "ties": {"density": 0.2}, "dare": {"density": 0.2},
           "breadcrumbs": {"density": 0.2, "gamma": 0.01}, "slerp": {"t": 0.5},
           "model_stock": {}}
CHUNK = 4 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64MiB", help="bytes of one model version")
    args = ap.parse_args()
    size = parse_size(args.size)
    rows = max(1, size // (2 * 1024) // 8)  # 8 parameters of rows x 1024 bf16
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp))
        base = {f"p{i}": rng.standard_normal((rows, 1024), dtype=np.float32).astype(BF16)
                for i in range(8)}
        tunes = [{k: (v.astype(np.float32) + 0.01 * rng.standard_normal(
            v.shape, dtype=np.float32)).astype(BF16) for k, v in base.items()}
            for _ in range(2)]
        ms = [manifest(store, t, CHUNK) for t in (base, *tunes)]
        digests = [d for m in ms for e in m.params.values() for d in e.chunks]
        start = time.perf_counter()
        nbytes = 0
        for d in digests:
            raw = store.cache.get(d)
            nbytes += len(raw)
            digest(raw)
        floor = time.perf_counter() - start
        print(f"model {nbytes / 3 / 2**20:.0f} MiB bf16, 3 versions; floor (read + hash "
              f"{len(digests)} chunks): {floor:.3f} s\n")
        print("| method | seconds | x floor |\n| --- | --- | --- |")
        for name, values in METHODS.items():
            table = StrategyTable([Rule("*", name, MergeOptions(values))])
            start = time.perf_counter()
            merged, _ = merge_manifests(*ms, table, store)
            took = time.perf_counter() - start
            assert merged is not None
            print(f"| {name} | {took:.3f} | {took / floor:.1f} |")


if __name__ == "__main__":
    main()
