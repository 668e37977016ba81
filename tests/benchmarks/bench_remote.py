#!/usr/bin/env python3
"""Remote benchmark: theta-zarr's push, pull and lazy load against a raw fsspec baseline.

Run (not collected by pytest)::

    python tests/benchmarks/bench_remote.py --size 1GiB --out docs/benchmarks.md

In one run it writes a synthetic transformer-shaped bf16 safetensors checkpoint
(``theta_zarr.demo``), commits it in a git repository (real filter-process), starts
the loopback object-storage server(s) itself (``backends/s3/serve``, and with
``--gcs`` also ``backends/gcs/serve``) and measures, per server:

1. push: ``git push`` to a bare repository whose theta remote is a bucket (the
   pre-push hook checks and uploads the objects), with the remote's default codec
   (``auto``: expsplit for the bf16 chunks) and with ``--remote-option compression=raw``;
   baseline: the same encoded objects (read from the cache / encoded beforehand, held in
   memory) written by fsspec's async API with the same concurrency (``asyncio`` + a
   semaphore), into a fresh bucket;
2. pull: a fresh ``git clone`` (filter installed ``--global`` in a temporary HOME)
   whose checkout fetches every chunk from the bucket, against a raw concurrent
   fsspec get of the same objects into memory; diagnostic: ``git theta-zarr fetch``
   alone (no checkout) in a lazy clone;
3. lazy load: a clone with ``GIT_THETA_ZARR_SKIP_SMUDGE=1``, then
   ``theta_zarr.load_state_dict(..., include=['lm_head.*'])`` in a subprocess: bytes
   that entered the clone's cache and bytes fetched from the bucket against the layer.

The servers keep their data in memory and are stopped at the end; temporary
folders are removed (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import datetime as _dt
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "model.safetensors"
LOAD: list[str] = []
# gcsfs reads this once, at import: set before anything imports it
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
sys.path.insert(0, str(REPO_ROOT / "tests"))

from helpers import ServerProcess, gcs_backend, s3_backend  # noqa: E402
from report import human, rate, write_section  # noqa: E402

from theta_zarr import codecs  # noqa: E402
from theta_zarr.demo import dir_bytes, scripts_path_env, shape_for_size, write_model  # noqa: E402
from theta_zarr.manifest import Manifest  # noqa: E402
from theta_zarr.objects import DEFAULT_CONCURRENCY, object_key  # noqa: E402
from theta_zarr.remote import storage_options  # noqa: E402
from theta_zarr.settings import parse_size  # noqa: E402


def file_digest(path: str) -> str:
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.hexdigest()


def loadavg() -> str:
    try:
        return " / ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- servers ------------------------------------------------------------------------------
class Server(ServerProcess):
    """``backends/<kind>/serve`` holding ``buckets``, started as the tests start it, with the
    environment that reaches it (the tests' ``Backend``)."""

    def __init__(self, kind: str, buckets: list[str]):
        super().__init__(kind, [arg for b in buckets for arg in ("--bucket", b)])
        self.kind = kind
        backend = (s3_backend if kind == "s3" else gcs_backend)(self.endpoint)
        self.scheme, self.env = backend.scheme, dict(backend.env)

    def url(self, bucket: str, prefix: str = "models") -> str:
        return f"{self.scheme}://{bucket}/{prefix}"

    def rss_kib(self) -> int:
        """Peak RSS of the server process (VmHWM) in KiB; 0 when unknown."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0


def raw_fs(server: Server, url: str, concurrency: int = DEFAULT_CONCURRENCY):
    """A fresh fsspec filesystem with theta-zarr's own storage options for this remote."""
    import fsspec

    opts = storage_options(url, {"endpoint-url": server.endpoint}, concurrency)
    if server.kind == "gcs":
        opts["token"] = "anon"
    return fsspec.filesystem(server.scheme, skip_instance_cache=True,
                             use_listings_cache=False, **opts)


def bucket_objects(server: Server, url: str) -> dict[str, int]:
    fs = raw_fs(server, url)
    try:
        found = fs.find(url + "/objects", detail=True)
    except FileNotFoundError:
        return {}
    return {p: int(i["size"]) for p, i in found.items()}


# -- the raw baseline: fsspec's async API, bounded concurrency -------------------------------
def raw_put(server: Server, url: str, objects: dict[str, bytes], concurrency: int) -> float:
    fs = raw_fs(server, url, concurrency)
    root = fs._strip_protocol(url).rstrip("/")

    async def run() -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(key: str, data: bytes) -> None:
            async with sem:
                await fs._pipe_file(f"{root}/{key}", data)

        await asyncio.gather(*(one(k, v) for k, v in objects.items()))

    import fsspec.asyn

    fs.exists(root)  # opens the session and connection pool outside the timing
    t = time.perf_counter()
    fsspec.asyn.sync(fs.loop, run)
    return time.perf_counter() - t


def raw_get(server: Server, url: str, keys: list[str], concurrency: int,
            into: str | None = None) -> tuple[float, int]:
    """Get every object, ``concurrency`` requests in flight; with ``into``, each is then
    written to a file of that folder (as ``aws s3 cp --recursive`` stores what it gets),
    in a thread, while the other requests go on."""
    fs = raw_fs(server, url, concurrency)
    root = fs._strip_protocol(url).rstrip("/")
    total = 0
    # one GetObject per object, as theta-zarr reads them: s3fs's default sends a
    # HeadObject first, which would slow the baseline down
    one_request = {"max_concurrency": 1} if server.kind == "s3" else {}

    def store(key: str, data: bytes) -> None:
        path = os.path.join(into, key.replace("/", "-"))
        with open(path, "wb") as f:
            f.write(data)

    async def run() -> None:
        nonlocal total
        sem = asyncio.Semaphore(concurrency)

        async def one(key: str) -> None:
            nonlocal total
            async with sem:
                data = await fs._cat_file(f"{root}/{key}", **one_request)
                if into is not None:
                    await asyncio.to_thread(store, key, data)
            total += len(data)

        await asyncio.gather(*(one(k) for k in keys))

    import fsspec.asyn

    fs.exists(root)  # opens the session and connection pool outside the timing
    t = time.perf_counter()
    fsspec.asyn.sync(fs.loop, run)
    return time.perf_counter() - t, total


def raw_rm(server: Server, url: str) -> None:
    fs = raw_fs(server, url)
    try:
        fs.rm(url, recursive=True)
    except FileNotFoundError:
        pass


# -- git ------------------------------------------------------------------------------------
class Git:
    def __init__(self, cwd: str, env: dict[str, str]):
        self.cwd = cwd
        self.env = env

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> bytes:
        return self.run(["git", *args], env)[0]

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[bytes, bytes]:
        proc = subprocess.run(argv, cwd=self.cwd, env={**self.env, **(env or {})},
                              capture_output=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed in {self.cwd}: "
                               f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
        return proc.stdout, proc.stderr

    def timed(self, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
        t = time.perf_counter()
        _, err = self.run(["git", *args], env)
        return time.perf_counter() - t, err.decode(errors="replace")


# -- results --------------------------------------------------------------------------------
@dataclass
class Row:
    what: str
    value: str
    base: str = ""
    ratio: float | None = None
    ratio_fmt: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Result:
    kind: str
    rows: list[Row] = field(default_factory=list)
    diag: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def throughput_row(what: str, nbytes: int, t: float, base_what: str, base_t: float,
                   target: float = 0.8) -> Row:
    r = base_t / t  # throughput ratio over the same bytes
    return Row(what, f"{t:.2f} s ({rate(nbytes, t)})",
               f"{base_what}: {base_t:.2f} s ({rate(nbytes, base_t)})", r, f"{r:.0%}",
               f">= {target:.0%} of raw", r >= target)


def verdict(met: bool | None) -> str:
    return "" if met is None else ("met" if met else "**not met**")


# -- the benchmark ----------------------------------------------------------------------------
def run_backend(kind: str, model: str, file_size: int, shape, work: str, base_env: dict,
                concurrency: int, keep: bool) -> Result:
    res = Result(kind)
    tag = uuid.uuid4().hex[:12]
    buckets = {name: f"tz-{name}-{tag}" for name in ("auto", "raw", "basez", "baser")}
    server = Server(kind, list(buckets.values()))
    try:
        env = {**base_env, **server.env}
        os.environ.update(server.env)
        src_dir = os.path.join(work, f"{kind}-src")
        os.makedirs(src_dir)
        git = Git(src_dir, env)
        git("init", "-q", "-b", "main")
        git.run(["git-theta-zarr", "install"])
        git.run(["git-theta-zarr", "track", "*.safetensors"])
        url_z, url_r = server.url(buckets["auto"]), server.url(buckets["raw"])
        git.run(["git-theta-zarr", "remote", "add", "origin", url_z, "--remote-option",
                 f"endpoint-url={server.endpoint}", "--shared"])
        bare_z, bare_r = os.path.join(work, f"{kind}-z.git"), os.path.join(work, f"{kind}-r.git")
        for b in (bare_z, bare_r):
            Git(work, env)("init", "-q", "--bare", "-b", "main", b)
        git("remote", "add", "origin", bare_z)
        git("remote", "add", "rawo", bare_r)
        git.run(["git-theta-zarr", "remote", "add", "rawo", url_r, "--remote-option",
                 f"endpoint-url={server.endpoint}", "--remote-option", "compression=raw"])
        shutil.copyfile(model, os.path.join(src_dir, MODEL))
        log(f"[{kind}] git add + commit")
        git("add", ".gitattributes", ".thetazarr", MODEL)
        git("commit", "-q", "-m", "model")
        m = Manifest.from_bytes(git("cat-file", "blob", f"HEAD:{MODEL}"))
        digests = sorted(m.digests())
        keys = [object_key(d) for d in digests]
        cache = os.path.join(src_dir, ".git", "theta-zarr")
        raw_objs = {}
        for k in keys:
            with open(os.path.join(cache, *k.split("/")), "rb") as f:
                raw_objs[k] = f.read()
        raw_bytes = sum(len(codecs.decode(v)) for v in raw_objs.values())
        log(f"[{kind}] encoding {len(keys)} objects (auto codec) for the baseline")
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
            encoded = pool.map(lambda v: codecs.encode_bytes(codecs.decode(v), "auto", 2),
                               raw_objs.values())
            z_objs = dict(zip(keys, encoded, strict=True))
        t_encode = time.perf_counter() - t
        z_bytes = sum(len(v) for v in z_objs.values())
        r_bytes = sum(len(v) for v in raw_objs.values())
        res.diag.append((f"auto-codec encode of all {len(keys)} chunks, {os.cpu_count()} threads, "
                         "no I/O", f"{t_encode:.2f} s ({rate(raw_bytes, t_encode)})"))

        # 1. push: baseline then theta-zarr, per codec
        pushes = {}
        for codec, objs, bare_remote, url, base_bucket, nbytes in (
                ("auto", z_objs, "origin", url_z, buckets["basez"], z_bytes),
                ("raw", raw_objs, "rawo", url_r, buckets["baser"], r_bytes)):
            base_url = server.url(base_bucket)
            log(f"[{kind}] raw put, {codec} objects ({human(nbytes)})")
            t_base = raw_put(server, base_url, {f"{k}": v for k, v in objs.items()},
                             concurrency)
            raw_rm(server, base_url)  # the server holds everything in memory
            log(f"[{kind}] git push, {codec} remote")
            t_push, err = git.timed("push", "-q", bare_remote, "main")
            stored = bucket_objects(server, url)
            pushes[codec] = (t_push, sum(stored.values()))
            row = throughput_row(f"push, {codec} (`git push`, {len(keys)} objects, "
                                 f"{human(nbytes)} stored)", raw_bytes, t_push,
                                 f"raw put of the {codec} objects", t_base)
            res.rows.append(row)
            if len(stored) != len(keys):
                res.notes.append(f"push {codec}: the bucket holds {len(stored)} objects, "
                                 f"expected {len(keys)}")
            summary = [ln for ln in err.splitlines() if "uploaded" in ln]
            if summary:
                res.diag.append((f"pre-push report, {codec}", summary[-1].strip()))
        for codec in ("auto", "raw"):
            sb = pushes[codec][1]
            res.rows.append(Row(f"bytes uploaded, {codec} (objects in the bucket)",
                                f"{human(sb)}", f"file size: {human(file_size)}",
                                sb / file_size, f"{sb / file_size:.3f}x", "", None))

        # 2. pull: fresh clones by a user who ran `install --global` (in HOME)
        for codec, url in (("auto", url_z), ("raw", url_r)):
            log(f"[{kind}] raw get, {codec} objects")
            t_base, got = raw_get(server, url, keys, concurrency)
            log(f"[{kind}] raw get to files, {codec} objects")
            files_dir = os.path.join(work, f"{kind}-get-{codec}")
            os.makedirs(files_dir)
            t_files, _ = raw_get(server, url, keys, concurrency, into=files_dir)
            shutil.rmtree(files_dir)
            dest = os.path.join(work, f"{kind}-clone-{codec}")
            extra = [] if codec == "auto" else ["-c", f"theta-zarr.remote.origin.url={url}"]
            log(f"[{kind}] git clone, {codec} bucket")
            t_clone, _ = Git(work, env).timed("clone", "-q", *extra, bare_z, dest)
            cache_n, _ = dir_bytes(os.path.join(dest, ".git", "theta-zarr", "objects"))
            same = file_digest(os.path.join(dest, MODEL)) == file_digest(model)
            clean = Git(dest, env)("status", "--porcelain", "--untracked-files=no").strip() == b""
            row = throughput_row(f"pull, {codec} (`git clone` + checkout, {cache_n} objects "
                                 f"fetched)", raw_bytes, t_clone,
                                 f"raw get of the {codec} objects ({human(got)})", t_base)
            res.rows.append(row)
            if not (same and clean and cache_n == len(keys)):
                res.notes.append(f"pull {codec}: bit-exact={same}, status clean={clean}, "
                                 f"{cache_n}/{len(keys)} objects in the clone's cache")
                row.met = False
            if not keep:
                shutil.rmtree(dest)
            # diagnostic: the fetch alone, no checkout
            lazy = os.path.join(work, f"{kind}-fetch-{codec}")
            Git(work, env)("clone", "-q", *extra, bare_z, lazy,
                           env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            Git(lazy, env).run(["git-theta-zarr", "fetch", "origin", "HEAD"])
            t_fetch = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            res.diag.append((f"fetch only, {codec}: CPU time of the command, page faults",
                             f"{after.ru_utime - before.ru_utime:.2f} s user, "
                             f"{after.ru_stime - before.ru_stime:.2f} s system, "
                             f"{after.ru_minflt - before.ru_minflt:,} minor faults"))
            res.rows.append(throughput_row(f"fetch only, {codec} (`git theta-zarr fetch` in a "
                                           "lazy clone)", raw_bytes, t_fetch,
                                           f"raw get of the {codec} objects", t_base))
            # a fetch stores what it gets: against a get that writes its files too
            res.diag.append((f"fetch only, {codec}, against a raw get that writes each object "
                             "to a file", f"{t_fetch:.2f} s against {t_files:.2f} s: "
                             f"{t_files / t_fetch:.0%}"))
            if not keep:
                shutil.rmtree(lazy)

        # 3. lazy one-layer load
        log(f"[{kind}] lazy clone + load_state_dict(include=['lm_head.*'])")
        lazy = os.path.join(work, f"{kind}-lazy")
        Git(work, env)("clone", "-q", bare_z, lazy, env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
        objdir = os.path.join(lazy, ".git", "theta-zarr", "objects")
        before = dir_bytes(objdir) if os.path.isdir(objdir) else (0, 0)
        code = ("import theta_zarr; sd = theta_zarr.load_state_dict('model.safetensors', "
                "include=['lm_head.*']); print(sorted(sd), sum(t.numel() * t.element_size() "
                "for t in sd.values()))")
        t = time.perf_counter()
        out, _ = Git(lazy, env).run([sys.executable, "-c", code])
        t_lazy = time.perf_counter() - t
        layer_digests = {d for n, e in m.params.items() if n.startswith("lm_head.")
                         for d in e.chunks}
        layer_bytes = sum(e.nbytes for n, e in m.params.items() if n.startswith("lm_head."))
        files = []
        if os.path.isdir(objdir):
            for d, _, ns in os.walk(objdir):
                files += [os.path.join(d, n) for n in ns if not n.startswith(".tmp-")]
        header = len(codecs.header("raw"))
        entered = sum(os.path.getsize(f) - header for f in files) - (before[1] - before[0] * header)
        got_digests = {"blake3:" + os.path.basename(os.path.dirname(f)) + os.path.basename(f)
                       for f in files}
        stored = bucket_objects(server, url_z)
        fetched_stored = sum(size for p, size in stored.items()
                             if "blake3:" + "".join(p.split("/")[-2:]) in got_digests)
        res.rows.append(Row("lazy load of `lm_head.*`: raw bytes that entered the clone's cache "
                            f"({len(files)} objects)", human(entered),
                            f"the layer: {human(layer_bytes)} ({len(layer_digests)} chunks)",
                            entered / layer_bytes, f"{entered / layer_bytes:.3f}x", "equal",
                            entered == layer_bytes and got_digests == layer_digests))
        res.rows.append(Row("lazy load: bytes fetched from the bucket (auto objects)",
                            human(fetched_stored), f"the layer: {human(layer_bytes)}",
                            fetched_stored / layer_bytes, f"{fetched_stored / layer_bytes:.3f}x",
                            "", None))
        res.diag.append(("lazy load subprocess (python start, torch import, fetch, decode)",
                         f"{t_lazy:.2f} s; loaded {out.decode().strip()[-60:]}"))
        if not keep:
            shutil.rmtree(lazy)
        res.diag.append((f"{kind} server peak RSS", human(server.rss_kib() * 1024)))
    finally:
        server.stop()
        for k in server.env:
            if k != "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT":
                os.environ.pop(k, None)
    return res


def render(results: list[Result], argv: list[str], file_size: int, shape, concurrency: int
           ) -> str:
    import fsspec

    from theta_zarr import __version__ as tz_version

    def ver(mod: str) -> str:
        try:
            return __import__(mod).__version__
        except Exception:
            return "-"

    git_v = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Run {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}; {git_v}, Python {platform.python_version()}, "
        f"theta-zarr {tz_version}, fsspec {fsspec.__version__}, s3fs {ver('s3fs')}, "
        f"gcsfs {ver('gcsfs')}, moto {ver('moto')}.  Command: `python tests/benchmarks/"
        f"bench_remote.py {' '.join(argv)}`.",
        "",
        f"Load average (1/5/15 min) at the start: {LOAD[0]}, at the end: {loadavg()}; other "
        "processes on this machine compete for the same cores.  "
        f"Checkpoint: {human(file_size)} bf16 safetensors (hidden={shape.hidden}, "
        f"layers={shape.layers}, vocab={shape.vocab}).  Concurrency {concurrency} for "
        "theta-zarr and the baseline.  Ratios are throughput ratios (baseline time / "
        "theta-zarr time) over the same bytes.",
        "",
    ]
    for res in results:
        server = "moto, `backends/s3/serve`" if res.kind == "s3" else \
            "fake-gcs-server, `backends/gcs/serve`"
        lines += [f"### {res.kind.upper()} ({server}, loopback)", "",
                  "| measurement | value | baseline | ratio | target | result |",
                  "|---|---|---|---|---|---|"]
        for r in res.rows:
            lines.append(f"| {r.what} | {r.value} | {r.base} | {r.ratio_fmt} | {r.target} | "
                         f"{verdict(r.met)} |")
        if res.diag:
            lines += ["", "| diagnostic (not a target) | value |", "|---|---|"]
            lines += [f"| {a} | {b} |" for a, b in res.diag]
        if res.notes:
            lines.append("")
            lines += [f"- {n}" for n in res.notes]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="checkpoint size (default 1GiB)")
    ap.add_argument("--gcs", action="store_true", help="also run against backends/gcs/serve")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 server")
    ap.add_argument("--out", help="markdown file whose bench_remote section to (re)write")
    ap.add_argument("--tmp", default=None, help="parent of the temporary folders")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    concurrency = DEFAULT_CONCURRENCY
    work = tempfile.mkdtemp(prefix="tz-bench-remote-", dir=args.tmp)
    home = os.path.join(work, "home")
    os.makedirs(home)
    env = scripts_path_env()
    env.update({"HOME": home, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
                "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@theta-zarr.invalid",
                "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@theta-zarr.invalid"})
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    results = []
    LOAD.append(loadavg())
    try:
        subprocess.run(["git-theta-zarr", "install", "--global"], env=env, cwd=work, check=True,
                       capture_output=True)
        shape = shape_for_size(size)
        model = os.path.join(work, MODEL)
        log(f"writing {human(size)} model")
        file_size = write_model(model, shape)
        kinds = ([] if args.no_s3 else ["s3"]) + (["gcs"] if args.gcs else [])
        for kind in kinds:
            log(f"== {kind}")
            results.append(run_backend(kind, model, file_size, shape, work, env, concurrency,
                                       args.keep))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    body = render(results, argv, file_size, shape, concurrency)
    print(body)
    if args.out:
        write_section(args.out, "bench_remote", body, "Remotes (bench_remote.py)")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
