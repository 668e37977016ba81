#!/usr/bin/env python3
"""Delta benchmark: bytes pushed for one full fine-tune step, deltas vs plain zstd vs git-lfs.

Run (not collected by pytest)::

    python tests/benchmarks/bench_delta.py --size 1GiB --out docs/benchmarks.md

It writes a synthetic transformer-shaped bf16 safetensors model
(``theta_zarr.demo.write_model``), cleans it into a local cache and pushes it to
two local-folder remotes (the previous version both remotes hold).  Then, for each
step size, it writes the same model with *every* tensor nudged by a relative
Gaussian step (``tuned=all``, ``step``; Adam's update is about ``lr`` relative per
weight), cleans it, and pushes the new chunks once with deltas off (plain zstd
objects) and once with deltas on (``xor-delta`` over the previous version's
chunks, ``delta-ratio`` 0.8), recording bytes stored and push time.  Fetch time is
measured into a cache that holds the previous version (bases come from the cache,
the usual case: you had the last step) and, for deltas, into an empty cache (every
base comes from the remote).  git-lfs stores and moves the whole file, so its cost
per step is the file size.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from report import write_section  # noqa: E402

from theta_zarr import delta  # noqa: E402
from theta_zarr.cache import Cache  # noqa: E402
from theta_zarr.demo import shape_for_size, write_model  # noqa: E402
from theta_zarr.manifest import Manifest  # noqa: E402
from theta_zarr.objects import ObjectStore  # noqa: E402
from theta_zarr.remote import fetch_objects, push_objects  # noqa: E402
from theta_zarr.settings import Settings, parse_size  # noqa: E402
from theta_zarr.storage import open_store  # noqa: E402
from theta_zarr.sync import clean_file  # noqa: E402

TARGET = 0.25  # at least 25% fewer bytes than plain zstd at the 1e-4 step


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def remote_at(path: str) -> ObjectStore:
    return ObjectStore(open_store(path), codec="zstd", retries=0)


def clean(path: str, settings: Settings, cache: Cache) -> Manifest:
    c = clean_file(path, settings, cache)
    return Manifest.from_bytes(c.manifest_bytes, path)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def run(size: int, steps: list[float], work: str, command: str) -> str:
    shape = shape_for_size(size)
    names = [n for n, _ in shape.tensors()]
    model = os.path.join(work, "model.safetensors")
    settings = Settings(cache_dir=os.path.join(work, "cache"))
    cache = Cache(settings.cache_dir)
    file_size = write_model(model, shape)
    base = clean(model, settings, cache)
    plain_remote = remote_at(os.path.join(work, "remote-plain"))
    delta_remote = remote_at(os.path.join(work, "remote-delta"))
    base_stats, t_base = timed(push_objects, cache, plain_remote, base.digests())
    shutil.copytree(plain_remote.blobs.root, delta_remote.blobs.root)
    rows = []
    for step in steps:
        write_model(model, shape, tuned=names, step=step)
        tuned = clean(model, settings, cache)
        new = tuned.digests() - base.digests()
        raw_new = sum(n for e in tuned.params.values() if e.inline is None
                      for (_, n) in e.spans())
        bases = delta.candidates(tuned, base)
        plain, t_plain = timed(push_objects, cache, plain_remote, new, bases,
                               delta.DeltaPolicy(enabled=False))
        dstats, t_delta = timed(push_objects, cache, delta_remote, new, bases,
                                delta.DeltaPolicy())
        # fetch into a cache holding the previous version (bases local)
        warm = os.path.join(work, f"warm-{step}")
        shutil.copytree(settings.cache_dir, warm,
                        ignore=lambda d, files: [f for f in files if f == "tmp"])
        warm_cache = Cache(warm)
        for d in new:
            warm_cache.delete(d)
        plain_warm = os.path.join(work, f"plain-warm-{step}")
        shutil.copytree(warm, plain_warm)
        _, t_fetch_plain = timed(fetch_objects, remote_at(plain_remote.blobs.root),
                                 Cache(plain_warm), new)
        shutil.rmtree(plain_warm)
        _, t_fetch_delta = timed(fetch_objects, remote_at(delta_remote.blobs.root),
                                 warm_cache, new)
        shutil.rmtree(warm)
        cold = os.path.join(work, f"cold-{step}")
        _, t_fetch_cold = timed(fetch_objects, remote_at(delta_remote.blobs.root),
                                Cache(cold), new)
        shutil.rmtree(cold)
        rows.append(dict(step=step, new=len(new), raw=raw_new, plain=plain.stored_bytes,
                         delta=dstats.stored_bytes, deltas=dstats.deltas, t_plain=t_plain,
                         t_delta=t_delta, f_plain=t_fetch_plain, f_delta=t_fetch_delta,
                         f_cold=t_fetch_cold))
        # the next step starts again from the base version in the cache
        for d in new:
            cache.delete(d)
    return report(command, shape, file_size, base_stats, t_base, rows)


def report(command, shape, file_size, base_stats, t_base, rows) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run {now} on {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}.  Command: `{command}`.",
        "",
        f"Model: hidden={shape.hidden} layers={shape.layers} vocab={shape.vocab}, "
        f"{len(shape.tensors())} bf16 tensors, {file_size:,} bytes; 4 MiB chunks; remotes are "
        f"local folders (zstd level 1 objects).  The previous version, pushed plain, "
        f"took {mib(base_stats.stored_bytes)} in {t_base:.1f} s.  Each step nudges every weight "
        "(`write_model(..., tuned=all, step=s)`: w += w * N(0,1) * s in float32, then bf16).",
        "",
        "| step | chunks changed | git-lfs (whole file) | plain zstd chunks | xor-delta chunks "
        "| deltas vs zstd | target (>= 25% fewer at 1e-4) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        saving = 1 - r["delta"] / r["plain"] if r["plain"] else 0.0
        target = ("met" if saving >= TARGET else "**not met**") if r["step"] == 1e-4 else "-"
        lines.append(
            f"| {r['step']:g} | {r['new']} ({mib(r['raw'])} raw) | {mib(file_size)} | "
            f"{mib(r['plain'])} | {mib(r['delta'])} ({r['deltas']} of {r['new']} as deltas) | "
            f"{saving:.1%} fewer bytes ({r['plain'] / max(r['delta'], 1):.1f}x smaller) | "
            f"{target} |")
    lines.append("")
    lines.append("Plain zstd chunks and git-lfs cost the same whatever the step size; the delta "
                 "shrinks with the step.")
    lines += [
        "",
        "| step | push plain | push deltas | fetch plain (cache has previous version) "
        "| fetch deltas (bases from the cache) | fetch deltas into an empty cache "
        "(bases from the remote) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']:g} | {r['t_plain']:.2f} s | {r['t_delta']:.2f} s | "
            f"{r['f_plain']:.2f} s | {r['f_delta']:.2f} s | {r['f_cold']:.2f} s |")
    lines += [
        "",
        "Push with deltas encodes each chunk twice (plain zstd, to compare against the "
        "0.8 ratio, and the delta: XOR, byte shuffle, zstd) and reads the base's 48-byte "
        "header from the remote for its chain depth; fetch resolves each delta against its "
        "base (from the cache, else from the remote, verified) and hashes the result.  "
        "Times are on a local-folder remote, so they show CPU cost, not network time: on a "
        "real network the bytes saved dominate.",
        "",
        "Reading the numbers honestly: bf16 keeps 8 significant bits, so neighbouring values "
        "are 2^-8 to 2^-7 apart relative to the weight.  A relative step of 1e-4 moves only "
        "about 1.5% of the weights to a neighbouring bf16 value (the rest keep their bits), "
        "which is why the delta is so small; at 1e-3 about 15% of the weights change, at "
        "1e-2 about 78% (measured on the generator's numbers), yet only in their low "
        "mantissa bits, so the shuffled XOR still compresses well.  A real "
        "optimizer's step relative to each weight varies (Adam's update is about the learning "
        "rate in absolute terms, so small weights move relatively more): measure your own "
        "runs with `git push` output, which reports the bytes deltas saved.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1GiB")
    p.add_argument("--steps", default="1e-4,1e-3,1e-2")
    p.add_argument("--out", help="markdown file whose bench_delta section to rewrite")
    p.add_argument("--tmp", default=None, help="folder for temporary files")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="tz-bench-delta-", dir=args.tmp)
    try:
        command = " ".join(["python tests/benchmarks/bench_delta.py", *sys.argv[1:]])
        text = run(parse_size(args.size), [float(s) for s in args.steps.split(",")], work,
                   command)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(text)
    if args.out:
        write_section(args.out, "bench_delta", text, "Delta pushes (bench_delta)")


if __name__ == "__main__":
    main()
