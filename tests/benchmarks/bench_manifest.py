#!/usr/bin/env python3
"""Manifest parse + validate benchmark (moved here from the test suite: speed is reported, never
asserted).  Run (not collected by pytest)::

    python tests/benchmarks/bench_manifest.py [--params 300,100000] [--out docs/benchmarks.md]

Builds a manifest of N bf16 parameters of 8 chunks each, then reports the best of 5 runs of
``Manifest.from_bytes`` (parse + schema validation) against the floor measured in the same run:
``json.loads`` of the same bytes.  Targets: < 50 ms for 300 parameters; < 0.5 s for 100,000
(bench_checkout.py measures that one with one chunk per parameter).
"""

from __future__ import annotations

import argparse
import json
import math
import time

from report import write_section

from theta_zarr import chunking
from theta_zarr.manifest import Manifest


def manifest_bytes(n: int) -> bytes:
    """A version-1 manifest of ``n`` [4096, 4096] bfloat16 parameters, 8 chunks each."""
    params = {}
    for i in range(n):
        params[f"layers.{i // 8}.p{i}.weight"] = {
            "shape": [4096, 4096], "dtype": "bfloat16", "chunk_shape": [512, 4096],
            "chunks": [chunking.digest(f"{i}-{k}".encode()) for k in range(8)]}
    return Manifest.from_json({"theta_zarr": 1, "format": {"name": "safetensors"},
                               "params": params}).to_bytes()


def best_of(fn, data: bytes, runs: int = 5) -> float:
    """The fastest of ``runs`` calls of ``fn(data)``, in seconds."""
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="300,100000", help="comma-separated counts")
    ap.add_argument("--out", help="a markdown file whose results block is replaced")
    args = ap.parse_args(argv)
    rows = []
    for n in (int(v) for v in args.params.split(",")):
        data = manifest_bytes(n)
        Manifest.from_bytes(data)  # builds the decoder
        parse = best_of(Manifest.from_bytes, data)
        floor = best_of(json.loads, data)
        rows.append(f"| {n:,} | {len(data):,} | {parse * 1e3:.1f} ms | {floor * 1e3:.1f} ms "
                    f"| {parse / floor:.1f}x |")
    text = "\n".join(["| parameters | manifest bytes | parse + validate | json.loads (floor) "
                      "| ratio |", "|---|---|---|---|---|", *rows])
    print(text)
    if args.out:
        write_section(args.out, "bench_manifest", text, "Manifest parsing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
