#!/usr/bin/env python3
"""Checkout, add and start-up benchmark: direct checkout against ``cp`` and git's pipe.

Run (not collected by pytest)::

    python tests/benchmarks/bench_checkout.py --sizes 256MiB,1GiB --out docs/benchmarks.md

For each size, in one run, on a bf16 safetensors file from ``theta_zarr.demo`` with a warm
page cache before every timed step:

1. ``rm`` + ``git checkout -- f`` with direct checkout (the default above 64 MiB) and
   through git's pipe (``theta-zarr.direct-checkout=off``), against ``cp`` of the same file
   (each the best of three), and against git-lfs's checkout of it where git-lfs is installed;
2. ``git switch`` between two commits that differ by one layer, against ``cp``;
3. peak RSS of git with its children, and of the filter process alone (GNU time);
4. whether the first ``git status`` after each checkout starts the filter (racy re-clean);
5. ``materialize`` after a lazy checkout, against ``cp``;
6. first ``git add`` against the floor (read + blake3 of the same bytes in one process),
   re-add of a touched file, re-add whose stat git forgot (answered from the stat record),
   re-add after a ~10% change;

and once: the filter's handshake latency against bare ``python -c pass``, parse + validate of
a 100,000-parameter manifest against ``json.loads`` of it, and add / checkout of a file of
100,000 parameters of 1 KiB against one of 100 parameters of the same total bytes.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import blake3
import numpy as np
from report import write_section

from theta_zarr import chunking
from theta_zarr.demo import scripts_path_env, shape_for_size, write_model
from theta_zarr.manifest import Manifest, ParamEntry
from theta_zarr.settings import Settings, parse_size

MODEL = "model.safetensors"
ENV = {**scripts_path_env(), "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "b",
       "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
rows: list[tuple[str, str, str, str]] = []


def human(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def run(*args: str, cwd: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env={**ENV, **(env or {})}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def timed_rss(args: list[str], cwd: str, env: dict | None = None) -> tuple[float, int]:
    """(seconds, peak RSS in bytes of the process and its children) under GNU time."""
    out = os.path.join(cwd, "..", "rss.txt")
    seconds = run("/usr/bin/time", "-f", "%M", "-o", out, *args, cwd=cwd, env=env)
    with open(out) as f:
        return seconds, int(f.read().split()[-1]) * 1024


def warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 << 20)
        while f.readinto(buf):
            pass
    os.sync()


def cp_time(src: str, tmp: str) -> float:
    """The best of three ``cp`` runs (a shared disk is noisy)."""
    best = float("inf")
    for _ in range(3):
        warm(src)
        dest = os.path.join(tmp, "cp.out")
        best = min(best, run("cp", src, dest, cwd=tmp))
        os.unlink(dest)
    return best


def checkout_time(repo: str, name: str) -> tuple[float, int]:
    """The best of three ``rm`` + ``git checkout -- name`` runs, as ``cp`` is measured,
    and the highest peak RSS of git with its children among them."""
    best, peak = float("inf"), 0
    for _ in range(3):
        os.unlink(os.path.join(repo, name))
        os.sync()
        t, rss = timed_rss(["git", "checkout", "--", name], cwd=repo)
        best, peak = min(best, t), max(peak, rss)
    return best, peak


def lfs_checkout_time(tmp: str, src: str) -> float:
    """``checkout_time`` of the same file tracked by git-lfs (its local store warm)."""
    repo = os.path.join(tmp, "lfs")
    subprocess.run(["git", "init", "-q", "-b", "main", repo], env=ENV, check=True)
    run("git", "lfs", "install", "--local", cwd=repo)
    run("git", "lfs", "track", "*.safetensors", cwd=repo)
    shutil.copyfile(src, os.path.join(repo, MODEL))
    run("git", "add", ".gitattributes", MODEL, cwd=repo)
    run("git", "commit", "-q", "-m", "lfs", cwd=repo)
    try:
        return checkout_time(repo, MODEL)[0]
    finally:
        shutil.rmtree(repo)


def floor_hash(path: str, workers: int) -> float:
    warm(path)
    start = time.perf_counter()
    h = blake3.blake3(max_threads=workers)
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(16 << 20)
        view = memoryview(buf)
        while (n := f.readinto(buf)):
            h.update(view[:n])
    return time.perf_counter() - start


def status_runs_filter(repo: str) -> tuple[bool, float]:
    start = time.perf_counter()
    proc = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                          env={**ENV, "GIT_TRACE": "1"}, check=True)
    assert proc.stdout == b"", proc.stdout
    return b"filter-process" in proc.stderr, time.perf_counter() - start


def settle(repo: str) -> None:
    """Let the index vouch for a file the script just wrote and committed, as it does for a
    user who switches more than a second after committing: an entry whose file changed in
    the same second as the index is racily clean, and git re-reads that whole file
    through the filter before it switches away from it (git's racy-git rule)."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    run("git", "status", "--porcelain", cwd=repo)  # re-cleans it once, from the stat record


def row(what: str, value: str, baseline: str, ratio: str) -> None:
    rows.append((what, value, baseline, ratio))
    print(f"{what:60s} {value:>14s} {baseline:>14s} {ratio:>8s}", flush=True)


def make_repo(tmp: str, name: str) -> str:
    repo = os.path.join(tmp, name)
    subprocess.run(["git", "init", "-q", "-b", "main", repo], env=ENV, check=True)
    run("git", "theta-zarr", "install", cwd=repo)
    run("git", "theta-zarr", "track", "*.safetensors", cwd=repo)
    run("git", "add", ".gitattributes", cwd=repo)
    run("git", "commit", "-q", "-m", "track", cwd=repo)
    # the filter's own peak RSS, written by GNU time around it
    run("git", "config", "filter.theta-zarr.process",
        f"/usr/bin/time -f %M -o {tmp}/filter-rss.txt git-theta-zarr filter-process", cwd=repo)
    return repo


def filter_rss(tmp: str) -> int:
    with open(os.path.join(tmp, "filter-rss.txt")) as f:
        return int(f.read().split()[-1]) * 1024


def bench_size(size: int, tmp: str, workers: int) -> dict[str, float]:
    repo = make_repo(tmp, f"repo-{size}")
    path = os.path.join(repo, MODEL)
    shape = shape_for_size(size)
    nbytes = write_model(path, shape)
    src = os.path.join(tmp, "src.safetensors")
    shutil.copyfile(path, src)
    label = human(nbytes)
    print(f"\n## {label}", flush=True)
    floor = floor_hash(path, workers)
    warm(path)
    t_add, rss_add = timed_rss(["git", "add", MODEL], cwd=repo)
    f_add = filter_rss(tmp)
    run("git", "commit", "-q", "-m", "v1", cwd=repo)
    row(f"{label}: first git add", f"{t_add:.2f} s", f"floor {floor:.2f} s",
        f"{floor / t_add:.0%}")
    cp = cp_time(src, tmp)
    out: dict[str, float] = {}
    for mode, cfg in (("direct", "64MiB"), ("pipe", "off")):
        run("git", "config", "theta-zarr.direct-checkout", cfg, cwd=repo)
        t, rss = checkout_time(repo, MODEL)
        assert subprocess.run(["cmp", "-s", src, path]).returncode == 0
        racy, t_status = status_runs_filter(repo)
        row(f"{label}: checkout -- f ({mode})", f"{t:.2f} s", f"cp {cp:.2f} s",
            f"{cp / t:.0%}")
        row(f"{label}: peak RSS git+children / filter ({mode})",
            f"{human(rss)} / {human(filter_rss(tmp))}", "", "")
        row(f"{label}: first status after checkout ({mode})",
            f"{t_status:.2f} s", "filter started" if racy else "no filter", "")
        out[f"checkout_{mode}"] = t
    if shutil.which("git-lfs"):
        t_lfs = lfs_checkout_time(tmp, src)
        row(f"{label}: checkout -- f (git-lfs)", f"{t_lfs:.2f} s",
            f"direct {out['checkout_direct']:.2f} s",
            f"{t_lfs / out['checkout_direct']:.1f}x faster")
    run("git", "config", "theta-zarr.direct-checkout", "64MiB", cwd=repo)
    # switch between commits that differ by one layer
    run("git", "switch", "-q", "-c", "tuned", cwd=repo)
    write_model(path, shape, tuned=shape.layer_names(0))
    run("git", "commit", "-q", "-am", "v2", cwd=repo)
    settle(repo)
    t_sw, rss_sw = timed_rss(["git", "switch", "-q", "main"], cwd=repo)
    racy, _ = status_runs_filter(repo)
    row(f"{label}: git switch (one layer differs)", f"{t_sw:.2f} s", f"cp {cp:.2f} s",
        f"{cp / t_sw:.0%}")
    row(f"{label}: peak RSS git+children / filter (switch)",
        f"{human(rss_sw)} / {human(filter_rss(tmp))}", "", "no filter" if not racy else "racy")
    # materialize after a lazy checkout
    os.unlink(path)
    run("git", "-c", "theta-zarr.lazy=true", "checkout", "--", MODEL, cwd=repo)
    t_mat, rss_mat = timed_rss(["git", "theta-zarr", "materialize", MODEL], cwd=repo)
    racy, _ = status_runs_filter(repo)
    row(f"{label}: materialize", f"{t_mat:.2f} s", f"cp {cp:.2f} s", f"{cp / t_mat:.0%}")
    row(f"{label}: peak RSS materialize", human(rss_mat), "",
        "no filter" if not racy else "racy")
    # re-adds
    row(f"{label}: peak RSS git+children / filter (first add)",
        f"{human(rss_add)} / {human(f_add)}", "", "")
    warm(path)
    os.utime(path)
    t_touch = run("git", "add", MODEL, cwd=repo)
    row(f"{label}: re-add, touched", f"{t_touch:.2f} s", f"floor {floor:.2f} s",
        f"{t_touch / floor:.2f}x")
    blob = subprocess.run(["git", "rev-parse", f":{MODEL}"], cwd=repo, env=ENV,
                          capture_output=True, check=True).stdout.decode().strip()
    subprocess.run(["git", "update-index", "--index-info"], cwd=repo, env=ENV, check=True,
                   input=f"100644 {blob}\t{MODEL}\n".encode())
    t_same = run("git", "add", MODEL, cwd=repo)
    row(f"{label}: re-add, stat forgotten by git (stat record)", f"{t_same:.2f} s",
        f"floor {floor:.2f} s", f"{t_same / floor:.2f}x")
    names = shape.layer_names(1) + shape.layer_names(2)
    write_model(path, shape, tuned=names[: max(1, len(names) // 2)])
    warm(path)
    t_ten = run("git", "add", MODEL, cwd=repo)
    row(f"{label}: re-add after ~10% change", f"{t_ten:.2f} s", f"floor {floor:.2f} s",
        f"{t_ten / floor:.2f}x")
    shutil.rmtree(repo)
    os.unlink(src)
    return out


def bench_startup(tmp: str) -> None:
    repo = make_repo(tmp, "startup")

    def handshake(cmd: list[str]) -> float:
        start = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=repo, env=ENV, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        if cmd[0] == "git-theta-zarr":
            def pkt(s: str) -> bytes:
                return b"%04x" % (len(s) + 5) + s.encode() + b"\n"
            p.stdin.write(pkt("git-filter-client") + pkt("version=2") + b"0000" +
                          pkt("capability=clean") + pkt("capability=smudge") + b"0000")
            p.stdin.flush()
            got = b""
            while got.count(b"0000") < 2:
                got += p.stdout.read1(4096)
            elapsed = time.perf_counter() - start
            p.stdin.close()
            p.wait()
            return elapsed
        p.communicate()
        return time.perf_counter() - start

    ours = statistics.median(handshake(["git-theta-zarr", "filter-process"]) for _ in range(7))
    bare = statistics.median(handshake([sys.executable, "-c", "pass"]) for _ in range(7))
    row("filter process: start to handshake done", f"{ours * 1000:.0f} ms",
        f"python -c pass {bare * 1000:.0f} ms", f"+{(ours - bare) * 1000:.0f} ms")


def bench_manifest() -> None:
    digest = chunking.digest(b"x")
    params = {f"model.layers.{i // 128}.mlp.experts.{i % 128}.w": ParamEntry(
        (16, 32), "bfloat16", (16, 32), (digest,)) for i in range(100_000)}
    data = Manifest({"name": "safetensors"}, params).to_bytes()
    t_json = min(_timed(lambda: json.loads(data)) for _ in range(3))
    t_parse = min(_timed(lambda: Manifest.from_bytes(data)) for _ in range(3))
    row(f"100,000-parameter manifest ({len(data) / 2**20:.1f} MiB): parse + validate",
        f"{t_parse:.2f} s", f"json.loads {t_json:.2f} s", f"{t_parse / t_json:.1f}x")


def bench_many_params(tmp: str) -> None:
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    times = {}
    for n, shape in ((100, (512, 1024)), (100_000, (512,))):
        repo = make_repo(tmp, f"many-{n}")
        save_file({f"p.{i}": rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
                   for i in range(n)}, os.path.join(repo, MODEL))
        t_add = run("git", "add", MODEL, cwd=repo)
        run("git", "commit", "-q", "-m", "m", cwd=repo)
        os.unlink(os.path.join(repo, MODEL))
        t_co = run("git", "-c", "theta-zarr.direct-checkout=1", "checkout", "--", MODEL,
                   cwd=repo)
        times[n] = (t_add, t_co)
        shutil.rmtree(repo)
    for i, what in enumerate(("add", "checkout")):
        row(f"100,000 x 1 KiB parameters against 100 x 1 MiB: {what}",
            f"{times[100_000][i]:.2f} s", f"{times[100][i]:.2f} s",
            f"{times[100_000][i] / times[100][i]:.1f}x")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256MiB,1GiB")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--out", default=None, help="markdown file to update between markers")
    args = ap.parse_args()
    workers = Settings(cache_dir=".").workers
    # byte-compiled as an installed package is: every git command starts the filter, and
    # compiling theta-zarr's modules from source (PYTHONDONTWRITEBYTECODE, a read-only
    # checkout) would add about 0.4 s to each start
    compileall.compile_dir(os.path.dirname(chunking.__file__), quiet=1)
    tmp = tempfile.mkdtemp(prefix="bench-checkout-", dir=args.tmp)
    try:
        os.environ["HOME"] = tmp
        ENV["HOME"] = tmp
        bench_startup(tmp)
        bench_manifest()
        for size in args.sizes.split(","):
            bench_size(parse_size(size), tmp, workers)
        bench_many_params(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Run {stamp} on {os.cpu_count()} CPUs, {platform.release()}, "
             f"{subprocess.run(['git', '--version'], capture_output=True).stdout.decode().strip()}"
             f"; command: `python tests/benchmarks/bench_checkout.py --sizes {args.sizes}`.",
             "", "| measurement | value | floor / baseline | ratio |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines)
    if args.out:
        write_section(args.out, "bench_checkout", text)
    else:
        print(text)


if __name__ == "__main__":
    main()
