#!/usr/bin/env python3
"""Diff benchmark (issue 4, part 7).  Run (not collected by pytest)::

    python tests/benchmarks/bench_diff.py --size 1GiB --out docs/benchmarks.md

1. Two versions of a synthetic transformer-shaped bf16 model (``theta_zarr.demo``),
   committed through real git; the second fine-tunes whole tensors holding ~10% of
   the parameters.  ``git theta-zarr diff v1 v2 --json`` (the code path, run in this
   process so every object read can be counted at the object store) must read no
   more than 1.1x the bytes of the chunks whose digests differ (old and new side).
2. The manifest-only summary of a 300-parameter model: parse two manifests, compare
   digests, format the lines (``--summary-only``; textconv does the same per side),
   target < 100 ms.  The same through the CLI (a Python start) is shown beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

from report import write_section

from theta_zarr import objects
from theta_zarr.chunking import digest
from theta_zarr.demo import shape_for_size, write_model
from theta_zarr.diff import format_text, summarize, textconv_lines
from theta_zarr.manifest import Manifest, ParamEntry
from theta_zarr.settings import parse_size


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
    env.update(GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@x", GIT_COMMITTER_NAME="b",
               GIT_COMMITTER_EMAIL="b@x", GIT_CONFIG_NOSYSTEM="1")
    return env


def git(cwd: str, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, env=_env(), check=True,
                          capture_output=True).stdout


class ReadCounter:
    """Counts every object read from any ObjectStore (encoded bytes, as stored)."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._orig = objects.ObjectStore.get_encoded

    @contextlib.contextmanager
    def active(self):
        counter = self

        def get_encoded(store, d):
            data = counter._orig(store, d)
            with counter._lock:
                counter.count += 1
                counter.bytes += len(data)
            return data

        objects.ObjectStore.get_encoded = get_encoded  # type: ignore[method-assign]
        try:
            yield self
        finally:
            objects.ObjectStore.get_encoded = self._orig  # type: ignore[method-assign]


def bench_bytes_read(size: int, tmp: str) -> dict:
    from theta_zarr.git import drivers, sides
    from theta_zarr.git.push import read_through
    from theta_zarr.git.repo import Repo

    repo_dir = os.path.join(tmp, "repo")
    os.makedirs(repo_dir)
    git(repo_dir, "init", "-q", "-b", "main")
    git(repo_dir, "theta-zarr", "install")
    git(repo_dir, "theta-zarr", "track", "*.safetensors")
    shape = shape_for_size(size)
    path = os.path.join(repo_dir, "model.safetensors")
    file_bytes = write_model(path, shape)
    git(repo_dir, "add", "-A")
    git(repo_dir, "commit", "-q", "-m", "v1")
    names = [n for n, _ in shape.tensors()]
    tuned = names[1:1 + max(1, round(0.1 * len(names)))]
    write_model(path, shape, tuned=tuned)
    git(repo_dir, "commit", "-q", "-am", "v2")
    repo = Repo.discover(repo_dir)
    old = sides.manifest_of(repo, "model.safetensors", "HEAD~1")
    new = sides.manifest_of(repo, "model.safetensors", "HEAD")
    assert old and new
    stored = {}
    for m in (old, new):
        for n in names:
            e = m.params[n]
            for d in e.chunks:
                stored[d] = os.path.getsize(os.path.join(
                    repo.common_dir, "theta-zarr", "objects", d[7:9], d[9:]))
    diff_digests = {d for n in names for x, y in zip(old.params[n].chunks, new.params[n].chunks,
                                                     strict=True) if x != y for d in (x, y)}
    changed = sum(stored[d] for d in diff_digests)
    counter = ReadCounter()
    cwd = os.getcwd()
    os.chdir(repo_dir)
    try:
        t = time.perf_counter()
        with counter.active():
            (fd,) = drivers.diff_sides(repo, ["model.safetensors"], "HEAD~1", "HEAD",
                                       objects=read_through(repo),
                                       workers=repo.settings().workers)
        seconds = time.perf_counter() - t
    finally:
        os.chdir(cwd)
    return {"shape": shape, "file_bytes": file_bytes, "params": len(names), "tuned": len(tuned),
            "changed_params": fd.counts()["changed"], "changed_bytes": changed,
            "changed_chunks": len(diff_digests), "read_bytes": counter.bytes,
            "read_chunks": counter.count, "seconds": seconds}


def fake_manifest(n: int, salt: str) -> Manifest:
    params = {}
    for i in range(n):
        chunks = tuple(digest(f"{salt if i % 10 == 0 else ''}{i}.{c}".encode())
                       for c in range(4))
        params[f"model.layers.{i // 12}.param_{i % 12}.weight"] = ParamEntry(
            (4096, 1024), "bfloat16", (1024, 1024), chunks)
    return Manifest({"name": "safetensors", "order": sorted(params)}, params)


def bench_summary(n: int, repeat: int, tmp: str) -> dict:
    a_bytes, b_bytes = fake_manifest(n, "a").to_bytes(), fake_manifest(n, "b").to_bytes()
    best = best_tc = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a, b = Manifest.from_bytes(a_bytes), Manifest.from_bytes(b_bytes)
        lines = format_text(summarize(a, b, "model.safetensors"))
        best = min(best, time.perf_counter() - t)
        t = time.perf_counter()
        tc = list(textconv_lines(Manifest.from_bytes(b_bytes)))
        best_tc = min(best_tc, time.perf_counter() - t)
    f = os.path.join(tmp, "m.json")
    with open(f, "wb") as fh:
        fh.write(b_bytes)
    exe = shutil.which("git-theta-zarr", path=_env()["PATH"]) or "git-theta-zarr"
    os.makedirs(os.path.join(tmp, "tc"), exist_ok=True)
    git(os.path.join(tmp, "tc"), "init", "-q")
    cli = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([exe, "textconv", f], cwd=os.path.join(tmp, "tc"), check=True,
                       capture_output=True, env=_env())
        cli = min(cli, time.perf_counter() - t)
    return {"params": n, "manifest_bytes": len(b_bytes), "seconds": best, "lines": len(lines),
            "textconv_seconds": best_tc, "textconv_lines": len(tc), "cli_seconds": cli}


def report(r: dict, s: dict, argv: list[str]) -> str:
    ratio = r["read_bytes"] / r["changed_bytes"]
    sh = r["shape"]
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    ok = lambda good: "met" if good else "**not met**"  # noqa: E731
    return "\n".join([
        f"Run {when} on {os.cpu_count()} CPUs, load average {load:.1f}; Python "
        f"{platform.python_version()}.  Command: `python tests/benchmarks/bench_diff.py "
        f"{' '.join(argv)}`.",
        "",
        f"Model: hidden={sh.hidden} layers={sh.layers} vocab={sh.vocab}, {r['params']} tensors, "
        f"{r['file_bytes']:,} bytes; v2 fine-tunes {r['tuned']} whole tensors "
        f"({r['tuned'] / r['params']:.0%} of the parameters).",
        "",
        "| measurement | value | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|",
        f"| bytes read by `diff v1 v2` (objects read at the store) | {r['read_bytes']:,} B "
        f"({r['read_chunks']} objects) | changed chunks, old + new: {r['changed_bytes']:,} B "
        f"({r['changed_chunks']} objects) | {ratio:.3f}x | <= 1.1x | {ok(ratio <= 1.1)} |",
        f"| time of that diff (statistics included) | {r['seconds']:.2f} s | | | | |",
        f"| manifest-only summary, {s['params']} parameters (parse both manifests, compare "
        f"digests, format) | {s['seconds'] * 1000:.1f} ms | | | < 100 ms | "
        f"{ok(s['seconds'] < 0.1)} |",
        f"| textconv lines of one {s['params']}-parameter manifest, in process | "
        f"{s['textconv_seconds'] * 1000:.1f} ms | | | | |",
        f"| `git-theta-zarr textconv` of that manifest (a process: Python start + imports) | "
        f"{s['cli_seconds'] * 1000:.0f} ms | | | | diagnostic |",
        "",
        f"The diff found {r['changed_params']} changed parameters; every object it read was "
        "a chunk whose digest differs (unchanged parameters cost no read).",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="size of each version (default 1GiB)")
    ap.add_argument("--params", type=int, default=300, help="parameters of the summary model")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", help="markdown file whose bench_diff section is (re)written")
    ap.add_argument("--tmp", default=None, help="parent of the temporary folder")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="tz-bench-diff-", dir=args.tmp)
    try:
        r = bench_bytes_read(parse_size(args.size), tmp)
        s = bench_summary(args.params, args.repeat, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(r, s, argv)
    print(text)
    if args.out:
        write_section(args.out, "bench_diff", text, "Diff (bench_diff.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
