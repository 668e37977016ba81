#!/usr/bin/env python3
"""Core benchmark: theta-zarr's git filter against the floor and against git-lfs.

Run (not collected by pytest)::

    python tests/benchmarks/bench_core.py --size 1GiB --big 4GiB --out docs/benchmarks.md

For each size it builds a synthetic transformer-shaped bf16 safetensors file
(``theta_zarr.demo``) in a temporary folder and, in one run, with a warm page
cache before every timed step (the input is read once, then ``sync``):

1. floor: read + blake3 the file and write the bytes that must be new as ~4 MiB
   files, in one pass, with as many blake3 threads as theta-zarr has workers;
2. first ``git add`` (real git, real filter-process) against that floor;
3. ``git add`` after a fine-tune of ~10% of the bytes against reading + hashing
   the whole file plus writing the changed bytes;
4. bytes the re-add wrote to the cache against the changed chunks' encoded size;
5. ``rm`` + ``git checkout --`` (smudge from the cache) against ``cp``, bit-exact;
6. peak RSS of the filter process (the filter runs under GNU time, or a Python
   wrapper reading ``RUSAGE_CHILDREN``) at the size and at ``--big``;
7. git-lfs (if installed): track + add + commit of the same file, the stored
   bytes after the same re-add, and its checkout.

Temporary folders are removed at the end (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import json
import os
import platform
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import blake3
from report import human, rate, write_section

from theta_zarr import codecs
from theta_zarr.demo import dir_bytes, scripts_path_env, shape_for_size, tensor_bytes, write_model
from theta_zarr.manifest import Manifest
from theta_zarr.objects import object_key
from theta_zarr.settings import Settings, parse_size

BLOCK = 4 << 20
MODEL = "model.safetensors"


# -- small helpers ------------------------------------------------------------------------
def warm(*paths: str) -> None:
    """Read files (or every file under folders) once, so timed steps see a warm page cache."""
    buf = bytearray(BLOCK)
    for p in paths:
        files = [p] if os.path.isfile(p) else [
            os.path.join(d, n) for d, _, ns in os.walk(p) for n in ns]
        for fp in files:
            with open(fp, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    os.sync()  # no writeback of an earlier step's dirty pages during the next one


def file_digest(path: str) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


def data_offset(path: str) -> int:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def floor_pass(path: str, out_dir: str, ranges: list[tuple[int, int]], threads: int,
               pipelined: bool) -> float:
    """One pass over ``path`` in 4 MiB blocks: blake3 all of it and write the bytes inside
    ``ranges`` (file offsets) as <= 4 MiB files into the fresh ``out_dir``; seconds taken.

    serial: one blake3 hasher with ``max_threads=threads`` over the whole file, each block
    written right after it is hashed.  pipelined: the main thread reads blocks into a ring
    of ``2 x threads`` buffers while ``threads`` workers hash (single-threaded blake3, one
    digest per block) and write them, which is how theta-zarr's clean is organised.
    """
    os.makedirs(out_dir)

    def pieces(pos: int, n: int):
        for a, b in ranges:
            lo, hi = max(a, pos), min(b, pos + n)
            if lo < hi:
                yield lo - pos, hi - pos

    def write(name: str, view: memoryview) -> None:
        with open(os.path.join(out_dir, name), "wb", buffering=0) as o:
            o.write(view)

    t = time.perf_counter()
    if not pipelined:
        buf = bytearray(BLOCK)
        mv = memoryview(buf)
        h = blake3.blake3(max_threads=threads)
        with open(path, "rb", buffering=0) as f:
            pos = i = 0
            while n := f.readinto(buf):
                h.update(mv[:n])
                for lo, hi in pieces(pos, n):
                    write(f"{i:07d}", mv[lo:hi])
                    i += 1
                pos += n
        h.hexdigest()
        return time.perf_counter() - t

    ring = [bytearray(BLOCK) for _ in range(2 * threads)]
    free = list(range(len(ring)))
    cond = threading.Condition()

    def work(slot: int, pos: int, n: int, i: int) -> None:
        mv = memoryview(ring[slot])[:n]
        blake3.blake3(mv).digest()
        for k, (lo, hi) in enumerate(pieces(pos, n)):
            write(f"{i:07d}-{k}", mv[lo:hi])
        with cond:
            free.append(slot)
            cond.notify()

    with cf.ThreadPoolExecutor(max_workers=threads) as pool, open(path, "rb", buffering=0) as f:
        futs = []
        pos = i = 0
        while True:
            with cond:
                cond.wait_for(lambda: free)
                slot = free.pop()
            n = f.readinto(ring[slot])
            if not n:
                break
            futs.append(pool.submit(work, slot, pos, n, i))
            pos += n
            i += 1
        for fut in futs:
            fut.result()
    return time.perf_counter() - t


def best_floor(path: str, scratch: str, ranges: list[tuple[int, int]], threads: int
               ) -> tuple[float, str]:
    """The faster of the serial and the pipelined floor (each run once, warm)."""
    out = []
    for pipelined in (False, True):
        warm(path)
        d = os.path.join(scratch, "floor")
        out.append((floor_pass(path, d, ranges, threads, pipelined),
                    "pipelined" if pipelined else "serial"))
        shutil.rmtree(d)
    return min(out)


class Git:
    """git in one repository, with an isolated config, timed, optionally watching RSS."""

    def __init__(self, top: str, env: dict[str, str]):
        self.top = top
        self.env = env

    def __call__(self, *args: str, check: bool = True) -> bytes:
        proc = subprocess.run(["git", *args], cwd=self.top, env=self.env, capture_output=True)
        if proc.returncode and check:
            raise RuntimeError(f"git {' '.join(args)} failed: "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def timed(self, *args: str, rss_file: str | None = None,
              env: dict[str, str] | None = None) -> tuple[float, int]:
        """(seconds, peak RSS of the git process itself in KiB, polled from /proc)."""
        env = {**self.env, **(env or {})}
        if rss_file:
            env["TZ_BENCH_RSS_FILE"] = rss_file
        t = time.perf_counter()
        proc = subprocess.Popen(["git", *args], cwd=self.top, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = [0]
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _vm_hwm(proc.pid))
                stop.wait(0.01)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, err = proc.communicate()
        dt = time.perf_counter() - t
        stop.set()
        th.join()
        if proc.returncode:
            raise RuntimeError(f"git {' '.join(args)} failed: {err.decode(errors='replace')}")
        return dt, peak[0]


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def read_rss(path: str) -> int:
    """Peak RSS in KiB that the filter wrapper wrote (last integer line)."""
    with open(path) as f:
        lines = [x.strip() for x in f if x.strip().isdigit()]
    if not lines:
        raise RuntimeError(f"the filter wrapper wrote no peak RSS to {path}")
    return int(lines[-1])


def gnu_time() -> str | None:
    path = shutil.which("time", path="/usr/bin:/bin") or None
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True)
    except OSError:
        return None
    return path if "GNU" in (out.stdout + out.stderr) else None


def write_wrapper(folder: str) -> tuple[str, str]:
    """A filter.theta-zarr.process command that records the filter's peak RSS.

    The filter is a child of git, so its RSS is measured by whoever waits for it:
    GNU time (``%M``) when installed, else a Python wrapper reading RUSAGE_CHILDREN.
    Either writes to $TZ_BENCH_RSS_FILE (or nowhere when unset).
    """
    path = os.path.join(folder, "tz-filter-rss")
    gt = gnu_time()
    if gt:
        text = ("#!/bin/sh\n"
                f'exec {gt} -f %M -o "${{TZ_BENCH_RSS_FILE:-/dev/null}}" '
                "git-theta-zarr filter-process\n")
        how = "GNU time %M around the filter process"
    else:
        text = (f"#!{sys.executable}\n"
                "import os, resource, subprocess, sys\n"
                "rc = subprocess.call(['git-theta-zarr', 'filter-process'])\n"
                "out = os.environ.get('TZ_BENCH_RSS_FILE')\n"
                "if out:\n"
                "    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
                "    with open(out, 'w') as f:\n"
                "        f.write('%d\\n' % peak)\n"
                "sys.exit(rc)\n")
        how = "Python wrapper, RUSAGE_CHILDREN ru_maxrss of the filter process"
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path, how


NULL_FILTER = """\
import os, sys
r = os.fdopen(0, "rb", buffering=1 << 20)
w = os.fdopen(1, "wb")
buf = memoryview(bytearray(1 << 16))


def packet():
    head = r.read(4)
    if len(head) < 4:
        raise EOFError
    n = int(head, 16)
    return None if n == 0 else r.read(n - 4)


def text_list():
    while packet() is not None:
        pass


def send(*lines):
    for line in lines:
        d = line.encode() + b"\\n"
        w.write(b"%04x" % (len(d) + 4) + d)
    w.write(b"0000")
    w.flush()


def headers():
    out = []
    while (p := packet()) is not None:
        out.append(p.decode().rstrip("\\n"))
    return out


text_list()
send("git-filter-server", "version=2")
text_list()
send("capability=clean", "capability=smudge")
zeros = bytes(65516)
try:
    while True:
        smudge = "command=smudge" in headers()
        while (n := int(r.read(4), 16)) != 0:
            r.readinto(buf[:n - 4])
        send("status=success")
        if smudge:  # $TZ_NULL_SMUDGE_BYTES zero bytes from one buffer: git's side alone
            left = int(os.environ.get("TZ_NULL_SMUDGE_BYTES", "1"))
            while left:
                k = min(left, len(zeros))
                w.write(b"%04x" % (k + 4))
                w.write(zeros[:k])
                left -= k
            w.write(b"0000")
        else:
            w.write(b"0005x0000")
        send()
except (EOFError, ValueError):
    pass
"""


def write_null_filter(folder: str) -> str:
    """A filter-process that reads each file and answers "x": git's transport cost alone."""
    path = os.path.join(folder, "null-filter")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n" + NULL_FILTER)
    os.chmod(path, 0o755)
    return path


def tuned_names(shape, fraction: float = 0.10) -> list[str]:
    """Whole tensors from layers spread over the model, until ~``fraction`` of the bytes."""
    total = tensor_bytes(shape, [n for n, _ in shape.tensors()])
    order = []
    for i in range(shape.layers):  # 0, last, middle, quarter, ...: spread out
        j = [0, shape.layers - 1, shape.layers // 2, shape.layers // 4,
             3 * shape.layers // 4][i] if i < 5 else i
        if j not in order:
            order.append(j)
    for j in range(shape.layers):
        if j not in order:
            order.append(j)
    names: list[str] = []
    for j in order:
        for n in shape.layer_names(j):
            if tensor_bytes(shape, names) >= fraction * total:
                return names
            names.append(n)
    return names


def tensor_ranges(path: str, names: list[str]) -> list[tuple[int, int]]:
    """File byte ranges of the named tensors of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    return sorted((base + header[t]["data_offsets"][0], base + header[t]["data_offsets"][1])
                  for t in names)


def chunk_sizes(m: Manifest) -> dict[str, int]:
    out = {}
    for entry in m.params.values():
        for (_, length), d in zip(entry.spans(), entry.chunks, strict=True):
            out[d] = length
    return out


# -- one size -------------------------------------------------------------------------------
@dataclass
class Row:
    what: str
    value: str
    base_label: str
    base: str
    ratio: float | None
    ratio_fmt: str
    target: str
    met: bool | None


@dataclass
class SizeResult:
    size: int
    file_bytes: int = 0
    shape: str = ""
    rows: list[Row] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)  # KiB
    git_rss: dict[str, int] = field(default_factory=dict)  # KiB
    lfs: list[tuple[str, str, str]] = field(default_factory=list)
    diag: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_size(size: int, parent: str, threads: int, keep: bool, lfs: bool, repeat: int,
             log) -> SizeResult:
    res = SizeResult(size)
    work = tempfile.mkdtemp(prefix="tz-bench-", dir=parent)
    try:
        _run_size(res, work, threads, lfs, repeat, log)
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


def _run_size(res: SizeResult, work: str, threads: int, lfs: bool, repeat: int, log) -> None:
    env = scripts_path_env()
    gitconfig = os.path.join(work, "gitconfig")
    with open(gitconfig, "w") as f:
        f.write("[user]\n\tname = bench\n\temail = bench@theta-zarr.invalid\n"
                "[init]\n\tdefaultBranch = main\n")
    env.update(GIT_CONFIG_GLOBAL=gitconfig, GIT_CONFIG_NOSYSTEM="1")
    env.pop("GIT_THETA_ZARR_SKIP_SMUDGE", None)
    wrapper, how = write_wrapper(work)
    res.notes.append(f"filter peak RSS: {how}; git's own peak RSS: VmHWM polled every 10 ms")

    shape = shape_for_size(res.size)
    tuned = tuned_names(shape)
    base_src = os.path.join(work, "base.safetensors")
    tuned_src = os.path.join(work, "tuned.safetensors")
    t = time.perf_counter()
    res.file_bytes = size = write_model(base_src, shape)
    write_model(tuned_src, shape, tuned=tuned)
    log(f"generated 2 x {human(size)} in {time.perf_counter() - t:.1f} s")
    changed = tensor_bytes(shape, tuned)
    res.shape = (f"hidden={shape.hidden} layers={shape.layers} vocab={shape.vocab}, "
                 f"{len(shape.tensors())} tensors, {size:,} bytes")
    res.notes.append(f"fine-tune: {len(tuned)} whole tensors, {human(changed)} = "
                     f"{100 * changed / size:.1f}% of the file")
    res.notes.append(f"each timed step is run {repeat} time(s), alternating with its "
                     "floor/baseline; the tables give the fastest run of each")

    # -- theta-zarr repository ---------------------------------------------------------------
    repo = os.path.join(work, "tz")
    os.makedirs(repo)
    g = Git(repo, env)
    g("init", "-q")
    g("theta-zarr", "install")
    g("theta-zarr", "track", "*.safetensors")
    g("config", "filter.theta-zarr.process", wrapper)
    g("add", ".gitattributes")
    g("commit", "-q", "-m", "attributes")
    common = g("rev-parse", "--git-common-dir").decode().strip()
    common = common if os.path.isabs(common) else os.path.join(repo, common)
    objects = os.path.join(common, "theta-zarr", "objects")
    model = os.path.join(repo, MODEL)
    rss_file = os.path.join(work, "rss")

    def add(key: str) -> float:
        warm(model)
        dt, grss = g.timed("add", MODEL, rss_file=rss_file)
        res.rss[key] = max(res.rss.get(key, 0), read_rss(rss_file))
        res.git_rss[key] = max(res.git_rss.get(key, 0), grss)
        return dt

    # 1 + 2. first add against the floor: read + hash + write everything as 4 MiB files.
    shutil.copyfile(base_src, model)
    floors, adds = [], []
    for k in range(repeat):
        floors.append(best_floor(model, work, [(0, size)], threads))
        if k:  # start again from an empty cache and an index without the model
            g("rm", "-q", "--cached", MODEL)
            shutil.rmtree(objects, ignore_errors=True)
        adds.append(add("first add"))
    (t_floor1, how1), t_add1 = min(floors), min(adds)
    log(f"floor(first add) {[round(x, 2) for x, _ in floors]}, first add "
        f"{[round(x, 2) for x in adds]}")
    r = t_floor1 / t_add1
    res.rows.append(Row("first `git add` (clean)", f"{t_add1:.2f} s, {rate(size, t_add1)}",
                        f"floor ({how1})", f"{t_floor1:.2f} s, {rate(size, t_floor1)}", r,
                        f"{100 * r:.0f}% of floor throughput", ">= 70%", r >= 0.70))
    t_c1, _ = g.timed("commit", "-q", "-m", "base", rss_file=rss_file)
    _, stored1 = dir_bytes(objects)
    m1 = Manifest.from_bytes(g("cat-file", "blob", f":{MODEL}"), MODEL)

    # 3. re-add after a ~10% fine-tune against read + hash all + write the changed bytes.
    os.unlink(model)
    shutil.copyfile(tuned_src, model)
    ranges = tensor_ranges(model, tuned)
    floors, adds = [], []
    for k in range(repeat):
        floors.append(best_floor(model, work, ranges, threads))
        if k:  # back to the base version in the index, the re-add's new objects gone
            m2 = Manifest.from_bytes(g("cat-file", "blob", f":{MODEL}"), MODEL)
            g("read-tree", "HEAD")
            for d in m2.digests() - m1.digests():
                os.unlink(os.path.join(common, "theta-zarr", *object_key(d).split("/")))
        adds.append(add("re-add"))
    (t_floor2, how2), t_add2 = min(floors), min(adds)
    log(f"floor(re-add) {[round(x, 2) for x, _ in floors]}, re-add "
        f"{[round(x, 2) for x in adds]}")
    r = t_add2 / t_floor2
    res.rows.append(Row(f"re-add after {100 * changed / size:.0f}% changed (`git add`)",
                        f"{t_add2:.2f} s, {rate(size, t_add2)}",
                        f"read+hash all, write changed ({how2})",
                        f"{t_floor2:.2f} s, {rate(size, t_floor2)}", r,
                        f"{r:.2f}x floor time", "<= 1.3x", r <= 1.3))
    t_c2, _ = g.timed("commit", "-q", "-m", "tuned", rss_file=rss_file)
    _, stored2 = dir_bytes(objects)

    # 4. bytes written by the re-add against the changed chunks' encoded size
    m2 = Manifest.from_bytes(g("cat-file", "blob", f":{MODEL}"), MODEL)
    sizes = chunk_sizes(m2)
    new = m2.digests() - m1.digests()
    codec = g("config", "--get", "theta-zarr.cache-compression", check=False).decode().strip()
    if codec not in ("", "raw"):
        res.notes.append(f"cache codec {codec}: the expected size below is the raw size")
    expected = sum(sizes[d] + len(codecs.header("raw")) for d in new)
    written = stored2 - stored1
    r = written / expected if expected else float("inf")
    res.rows.append(Row("new bytes in the cache after re-add",
                        f"{human(written)} ({len(new)} new chunks)",
                        "changed chunks, encoded", human(expected), r, f"{r:.3f}x",
                        "<= 1.1x", r <= 1.1))
    res.notes.append(f"changed tensors hold {human(changed)} raw; the cache held "
                     f"{human(stored1)} after the first add and {human(stored2)} after the "
                     f"re-add; `git commit` took {t_c1:.2f} s and {t_c2:.2f} s")

    # 5. checkout from the cache against cp of the same file
    want = file_digest(model)
    copy = os.path.join(work, "copy.safetensors")
    cos, cps = [], []
    same = True
    status = ""
    for _ in range(repeat):
        warm(tuned_src)
        t = time.perf_counter()
        subprocess.run(["cp", tuned_src, copy], check=True)
        cps.append(time.perf_counter() - t)
        os.unlink(copy)
        os.unlink(model)
        warm(objects)
        dt, grss = g.timed("checkout", "--", MODEL, rss_file=rss_file)
        cos.append(dt)
        res.rss["checkout"] = max(res.rss.get("checkout", 0), read_rss(rss_file))
        res.git_rss["checkout"] = max(res.git_rss.get("checkout", 0), grss)
        same = same and file_digest(model) == want
        status = status or g("status", "--porcelain").decode().strip()
    t_co, t_cp = min(cos), min(cps)
    log(f"checkout {[round(x, 2) for x in cos]}, cp {[round(x, 2) for x in cps]}, "
        f"bit-exact={same}")
    r = t_cp / t_co
    res.rows.append(Row("`rm` + `git checkout --` (smudge from cache)",
                        f"{t_co:.2f} s, {rate(size, t_co)}", "`cp` of the file",
                        f"{t_cp:.2f} s, {rate(size, t_cp)}", r,
                        f"{100 * r:.0f}% of cp throughput", ">= 70%", r >= 0.70))
    res.rows.append(Row("checked-out bytes identical (blake3) and tree clean",
                        f"{'yes' if same else 'NO'}, {'clean' if not status else status}",
                        "", "", None, "", "bit-exact", same and not status))

    # Diagnostics: the filter alone, without git in between (one-file clean/smudge commands).
    pointer = os.path.join(work, "pointer")
    with open(pointer, "wb") as f:
        f.write(g("cat-file", "blob", f":{MODEL}"))
    warm(objects)
    t_sm = _timed_shell(["git-theta-zarr", "smudge", "--", MODEL], pointer, copy, repo, env)
    ok = file_digest(copy) == want
    os.unlink(copy)
    warm(model)
    t_cl = _timed_shell(["git-theta-zarr", "clean", "--", MODEL], model, os.devnull, repo, env)
    res.diag = [
        ("`git-theta-zarr smudge` alone: manifest -> file (no git)",
         f"{t_sm:.2f} s, {rate(size, t_sm)}{'' if ok else ' (BYTES DIFFER)'}"),
        ("`git-theta-zarr clean` alone: unchanged file -> manifest (no git)",
         f"{t_cl:.2f} s, {rate(size, t_cl)}"),
    ]
    # git's own share of `git add`: the same file through a filter-process that reads the
    # content with 64 KiB readinto calls and throws it away (no hashing, no writes).
    g("config", "filter.theta-zarr.process", write_null_filter(work))
    nulls = []
    for _ in range(repeat):
        g("read-tree", "HEAD")  # forget the stat data, so git add must run the filter
        warm(model)
        nulls.append(g.timed("add", MODEL)[0])
    t_null = min(nulls)
    res.diag.append(("`git add` of the fine-tuned file through a null filter-process "
                     "(git's read + pkt-line pipe only)", f"{t_null:.2f} s, {rate(size, t_null)}"))
    nulls = []
    for _ in range(repeat):
        os.unlink(model)
        warm(objects)
        nulls.append(g.timed("checkout", "HEAD", "--", MODEL,
                             env={"TZ_NULL_SMUDGE_BYTES": str(size)})[0])
    t_nullco = min(nulls)
    res.diag.append(("`rm` + `git checkout --` through a null filter-process that answers "
                     "with as many zero bytes from one buffer (git's side of a checkout)",
                     f"{t_nullco:.2f} s, {rate(size, t_nullco)}"))
    log(f"smudge alone {t_sm:.2f} s, clean alone {t_cl:.2f} s, null-filter add {t_null:.2f} s, "
        f"null-filter checkout {t_nullco:.2f} s")
    tz_totals = (t_add1, t_c1, t_add2, t_c2, stored1, stored2, t_co)
    shutil.rmtree(repo)

    # 7. git-lfs on the same files
    if not lfs:
        res.notes.append("git-lfs: skipped (--no-lfs)")
        return
    if subprocess.run(["git", "lfs", "version"], capture_output=True, env=env).returncode:
        res.notes.append("git-lfs: not installed, comparison skipped "
                         "(apt-get install git-lfs to include it)")
        return
    lrepo = os.path.join(work, "lfs")
    os.makedirs(lrepo)
    lg = Git(lrepo, env)
    lg("init", "-q")
    lg("lfs", "install", "--local")
    lmodel = os.path.join(lrepo, MODEL)
    shutil.copyfile(base_src, lmodel)
    warm(lmodel)
    t0 = time.perf_counter()
    lg("lfs", "track", "*.safetensors")
    t_ladd, _ = lg.timed("add", ".gitattributes", MODEL)
    lg("commit", "-q", "-m", "base")
    t_l1 = time.perf_counter() - t0
    lobj = os.path.join(lrepo, ".git", "lfs", "objects")
    _, lstored1 = dir_bytes(lobj)
    os.unlink(lmodel)
    shutil.copyfile(tuned_src, lmodel)
    warm(lmodel)
    t0 = time.perf_counter()
    t_ladd2, _ = lg.timed("add", MODEL)
    lg("commit", "-q", "-m", "tuned")
    t_l2 = time.perf_counter() - t0
    _, lstored2 = dir_bytes(lobj)
    os.unlink(lmodel)
    warm(lobj)
    t_lco, lgrss = lg.timed("checkout", "--", MODEL)
    lsame = file_digest(lmodel) == want
    a1, c1, a2, c2, s1, s2, co = tz_totals
    res.lfs = [
        ("first version: track + add + commit", f"{t_l1:.2f} s (add {t_ladd:.2f} s)",
         f"{a1 + c1:.2f} s (add {a1:.2f} s; install/track untimed)"),
        ("re-add after the fine-tune: add + commit", f"{t_l2:.2f} s (add {t_ladd2:.2f} s)",
         f"{a2 + c2:.2f} s (add {a2:.2f} s)"),
        ("local store after the first version", human(lstored1), human(s1)),
        ("new bytes stored by the re-add", human(lstored2 - lstored1), human(s2 - s1)),
        ("local store after both versions", human(lstored2), human(s2)),
        ("`rm` + `git checkout --`", f"{t_lco:.2f} s (bit-exact: {'yes' if lsame else 'NO'})",
         f"{co:.2f} s"),
        ("peak RSS of git itself during that checkout", human(lgrss * 1024),
         human(res.git_rss.get("checkout", 0) * 1024)),
    ]
    res.notes.append("git-lfs runs once per step (no repeats)")
    log(f"git-lfs: first {t_l1:.2f} s, re-add {t_l2:.2f} s, +{human(lstored2 - lstored1)}, "
        f"checkout {t_lco:.2f} s")
    shutil.rmtree(lrepo)


def _timed_shell(cmd: list[str], stdin: str, stdout: str, cwd: str, env: dict[str, str]
                 ) -> float:
    with open(stdin, "rb") as i, open(stdout, "wb") as o:
        t = time.perf_counter()
        subprocess.run(cmd, stdin=i, stdout=o, cwd=cwd, env=env, check=True)
        return time.perf_counter() - t


# -- report ----------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return human(kib * 1024)
    except (OSError, ValueError, IndexError):
        return "unknown"


def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**not met**")


def render(results: list[SizeResult], threads: int, argv: list[str]) -> str:
    from theta_zarr import __version__ as tz_version

    git_v = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Run {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {os.cpu_count()} CPUs "
        f"({cpu_model()}), {mem_total()} RAM, Linux {platform.release()}; {git_v}, "
        f"Python {platform.python_version()}, theta-zarr {tz_version}, blake3 "
        f"{getattr(blake3, '__version__', '?')}.  Command: `python tests/benchmarks/"
        f"bench_core.py {' '.join(argv)}`.",
        "",
        f"Floors hash with blake3 `max_threads={threads}`, the number of worker threads "
        f"theta-zarr uses here (settings.workers = max(2, CPUs)); every timed step starts "
        f"from a warm page cache (its input read once, then `sync`).",
        "",
    ]
    for res in results:
        lines += [f"### {human(res.size)} checkpoint ({res.shape})", "",
                  "| measurement | value | floor / baseline | ratio | target | result |",
                  "|---|---|---|---|---|---|"]
        for row in res.rows:
            base = f"{row.base_label}: {row.base}" if row.base_label else row.base
            lines.append(f"| {row.what} | {row.value} | {base} | {row.ratio_fmt} | "
                         f"{row.target} | {verdict(row.met)} |")
        rss = ", ".join(f"{k} {human(v * 1024)}" for k, v in res.rss.items())
        grss = ", ".join(f"{k} {human(v * 1024)}" for k, v in res.git_rss.items())
        lines += ["", f"Peak RSS of the filter process: {rss}.  Of git itself: {grss}."]
        lines.append("")
        for n in res.notes:
            lines.append(f"- {n}")
        if res.diag:
            lines += ["", "| diagnostic (not a target) | time |", "|---|---|"]
            lines += [f"| {a} | {b} |" for a, b in res.diag]
        if res.lfs:
            lines += ["", "| git-lfs comparison | git-lfs | theta-zarr |", "|---|---|---|"]
            lines += [f"| {a} | {b} | {c} |" for a, b, c in res.lfs]
        lines.append("")
    if len(results) == 2:
        small, big = results
        lines += ["### Peak RSS of the filter process, small against big", "",
                  f"| step | {human(small.size)} | {human(big.size)} | big / small | target | "
                  "result |", "|---|---|---|---|---|---|"]
        for k in small.rss:
            a, b = small.rss[k], big.rss.get(k, 0)
            r = b / a if a else float("inf")
            lines.append(f"| {k} | {human(a * 1024)} | {human(b * 1024)} | {r:.2f}x | "
                         f"within 20% | {verdict(r <= 1.2)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="checkpoint size (default 1GiB)")
    ap.add_argument("--big", default="4GiB",
                    help="second size, for the peak-RSS comparison (default 4GiB; 0 skips)")
    ap.add_argument("--out", help="markdown file to write the results into")
    ap.add_argument("--tmp", default=None, help="parent of the temporary folders "
                    "(default: the system temp dir; keep it on the disk you measure)")
    ap.add_argument("--no-lfs", action="store_true", help="skip the git-lfs comparison")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each timed step and of its floor, fastest kept (default 2)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args(argv)
    sizes = [parse_size(args.size)]
    big = parse_size(args.big) if args.big not in ("0", "") else 0
    if big:
        sizes.append(big)
    threads = Settings(cache_dir=".").workers

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    results = []
    for s in sizes:
        log(f"== {human(s)}")
        results.append(run_size(s, args.tmp or tempfile.gettempdir(), threads, args.keep,
                                not args.no_lfs, args.repeat, log))
    body = render(results, threads, argv)
    print(body)
    if args.out:
        write_section(args.out, "bench_core", body, "Results")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
