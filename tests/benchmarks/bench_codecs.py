#!/usr/bin/env python3
"""Codec benchmark: storage codecs for weights and fine-tune deltas, side by side.

Run (not collected by pytest)::

    python tests/benchmarks/bench_codecs.py --size 64MiB --out docs/benchmarks.md
    python tests/benchmarks/bench_codecs.py --weights model.safetensors   # real weights

Data: a synthetic transformer (``theta_zarr.demo.shape_for_size``: embeddings, attention
and MLP matrices, norms; Gaussian weights of std 0.02 as freshly initialised layers)
in bf16 and in fp32, cut into 4 MiB chunks as theta-zarr stores them; and, for each
step size, the same weights after a dense fine-tune step (every weight w += w * N(0,1)
* step, in fp32), as XOR of the bit patterns (what an ``xor-delta`` holds) and as
theta-zarr's ``int-delta`` (zigzag of the wrapping integer difference).  With
``--weights`` the tensors of a real safetensors file are measured too.

Candidates, each on one thread (ratio = raw bytes / encoded bytes; MB/s of raw bytes):

- ``zstd-1``: numcodecs Zstd level 1 of the bytes (the remotes' codec before);
- ``shuffle+zstd-1``: numcodecs Shuffle by the item size, then Zstd level 1 (a
  numpy-level prototype of byte grouping);
- ``blosc``: c-blosc 1.x via numcodecs, byte shuffle, zstd level 1, 1 MiB blocks
  (``codecs.BloscCodec``: the floats' codec before ``expsplit``);
- ``auto (chosen)``: theta-zarr's writer policy (``codecs.choose``), which takes
  ``expsplit`` for these weights: the sign rotated into the low bit, the exponent
  plane coded by zstd as literals only (python-zstandard), the other bytes raw;
- ``blosc2 ...``: python-blosc2 with shuffle, bitshuffle or shuffle+bytedelta;
- ``pcodec-4``: numcodecs PCodec level 4 (bf16 and deltas as unsigned integers);
- ``zipnn``: ZipNN (Huffman over byte groups; it rewrites its input buffer in
  place, so it is handed a copy, and the copy is not timed).

Optional candidates are skipped when their package is missing (``pip install
blosc2 pcodec zipnn zstandard``).  The fine-tune series then compares, per step,
the bytes a push sends for the changed chunks: full objects (zstd before, ``auto``
now) against deltas (``xor-delta`` before, ``int-delta`` now), using theta-zarr's own
encoders.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from numcodecs import Shuffle, Zstd  # noqa: E402
from report import write_section  # noqa: E402

from theta_zarr import chunking, codecs, delta  # noqa: E402
from theta_zarr.demo import shape_for_size  # noqa: E402
from theta_zarr.settings import parse_size  # noqa: E402

CHUNK = 4 << 20
TARGETS = {"bf16 weights": 1.50, "fp32 weights": 1.20}
CHOSEN = "auto (chosen)"

Enc = Callable[[bytes, int], bytes]
Dec = Callable[[bytes, int], bytes]


def _u(elem: int) -> type:
    return {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[elem]


def candidates() -> dict[str, tuple[Enc, Dec]]:
    """name -> (encode(raw, elem), decode(encoded, elem)); optional ones when installed."""
    z = Zstd(level=1)
    out: dict[str, tuple[Enc, Dec]] = {
        "zstd-1": (lambda b, e: bytes(z.encode(b)), lambda c, e: bytes(z.decode(c))),
        "shuffle+zstd-1": (lambda b, e: bytes(z.encode(Shuffle(e).encode(b))),
                           lambda c, e: bytes(Shuffle(e).decode(z.decode(c)))),
        "blosc": (lambda b, e: codecs.blosc_encode(b, e), lambda c, e: codecs.blosc_decode(c)),
        CHOSEN: (lambda b, e: codecs.encode_bytes(b, codecs.AUTO, e),
                 lambda c, e: bytes(codecs.decode(c))),
    }
    try:
        import blosc2

        blosc2.set_nthreads(1)

        def b2(filters):
            def enc(b, e):
                return blosc2.compress2(b, codec=blosc2.Codec.ZSTD, clevel=1, typesize=e,
                                        filters=filters, filters_meta=[0] * len(filters),
                                        nthreads=1)
            return enc, lambda c, e: blosc2.decompress2(c)

        out["blosc2 shuffle"] = b2([blosc2.Filter.SHUFFLE])
        out["blosc2 bitshuffle"] = b2([blosc2.Filter.BITSHUFFLE])
        out["blosc2 shuffle+bytedelta"] = b2([blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA])
    except ImportError:
        pass
    try:
        from numcodecs import PCodec

        pc = PCodec(level=4)
        out["pcodec-4"] = (lambda b, e: bytes(pc.encode(np.frombuffer(b, _u(e)))),
                           lambda c, e: bytes(pc.decode(c)))
    except ImportError:
        pass
    try:
        import zipnn  # noqa: F401

        zs: dict[int, object] = {}

        def zn(e):
            if e not in zs:
                zs[e] = zipnn.ZipNN(bytearray_dtype="bfloat16" if e == 2 else "float32",
                                    threads=1)
            return zs[e]

        out["zipnn"] = (lambda b, e: bytes(zn(e).compress(b)),
                        lambda c, e: bytes(zn(e).decompress(c)))
    except ImportError:
        pass
    return out


def weights(size: int, seed: int = 0) -> np.ndarray:
    """fp32 weights of a synthetic transformer of about ``size`` fp32 bytes."""
    shape = shape_for_size(size, itemsize=4)
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(int(np.prod(dims)), dtype=np.float32) * np.float32(0.02)
             for _, dims in shape.tensors()]
    return np.concatenate(parts)


def tune(w: np.ndarray, step: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return w + w * rng.standard_normal(w.size, dtype=np.float32) * np.float32(step)


def bf16(w: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (truncation, as the demo generator writes them)."""
    return (w.view(np.uint32) >> 16).astype(np.uint16)


def chunks(raw: bytes) -> list[bytes]:
    return [raw[i:i + CHUNK] for i in range(0, len(raw), CHUNK)]


def measure(enc: Enc, dec: Dec, raw: bytes, elem: int) -> tuple[float, float, float]:
    """(ratio, encode MB/s, decode MB/s) over 4 MiB chunks, one thread, verified.

    Speeds are per CPU second of this process (``time.process_time``, every thread,
    including those a library starts itself), so other processes competing for the
    cores do not lower them.
    """
    parts = chunks(raw)
    copies = [bytes(bytearray(p)) for p in parts]  # zipnn rewrites its input
    t = time.process_time()
    encoded = [enc(c, elem) for c in copies]
    t_enc = time.process_time() - t
    t = time.process_time()
    decoded = [dec(e, elem) for e in encoded]
    t_dec = time.process_time() - t
    for p, d in zip(parts, decoded, strict=True):
        if bytes(memoryview(d).cast("B")) != p:
            raise AssertionError("round trip is not bit-exact")
    n = sum(len(e) for e in encoded)
    return len(raw) / n, len(raw) / t_enc / 1e6, len(raw) / t_dec / 1e6


def int_delta(new: bytes, old: bytes, elem: int) -> tuple[Enc, Dec]:
    """theta-zarr's int-delta writer as a codec of the XOR stream's length (the object's
    raw is ``new``; the measured encode includes the difference, decode the addition)."""
    parts_new, parts_old = chunks(new), chunks(old)
    state = {"i": 0, "j": 0}

    def enc(_: bytes, e: int) -> bytes:
        i = state["i"]
        state["i"] += 1
        return delta.encode(parts_new[i], parts_old[i], chunking.digest(b""), e, form=delta.INT)

    def dec(obj: bytes, e: int) -> bytes:
        j = state["j"]
        state["j"] += 1
        header, body = delta.parse(codecs.split(obj)[1], delta.INT)
        raw = delta.apply(header, body, parts_old[j])
        return bytes(np.frombuffer(raw, np.uint8) ^ np.frombuffer(parts_old[j], np.uint8))

    return enc, dec


def table(rows: list[tuple[str, int, bytes, dict]], cands: dict) -> str:
    names = list(cands)
    out = ["| data | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    results = {}
    for label, elem, raw, extra in rows:
        cells = []
        for name in names:
            enc, dec = extra.get(name, cands[name])
            try:
                r, e, d = measure(enc, dec, raw, elem)
                results[(label, name)] = (r, e, d)
                cells.append(f"{r:.3f} ({e:,.0f} / {d:,.0f})")
            except Exception as ex:  # a candidate that fails is reported, not fatal
                cells.append(f"failed: {type(ex).__name__}")
        out.append(f"| {label} ({len(raw) / (1 << 20):,.0f} MiB) | " + " | ".join(cells) + " |")
    return "\n".join(out), results


def series(w: np.ndarray, steps: list[float]) -> str:
    """Bytes a push sends for the changed chunks of one dense step: full vs delta."""
    out = ["| dtype | step | chunks | zstd-1 full (before) | auto full (now) | xor-delta "
           "(before) | int-delta (now) | now vs before | delta vs full, now |",
           "|---|---|---|---|---|---|---|---|---|"]
    for dtype, conv, elem in (("bf16", bf16, 2), ("fp32", lambda a: a, 4)):
        old = conv(w).tobytes()
        for step in steps:
            new = conv(tune(w, step)).tobytes()
            sizes = {"zstd": 0, "auto": 0, "xor": 0, "int": 0}
            changed = 0
            for a, b in zip(chunks(new), chunks(old), strict=True):
                if a == b:
                    continue
                changed += 1
                d = chunking.digest(b)
                sizes["zstd"] += len(codecs.encode_bytes(a, "zstd"))
                sizes["auto"] += len(codecs.encode_bytes(a, "auto", elem))
                sizes["xor"] += len(delta.encode(a, b, d, elem))
                sizes["int"] += len(delta.encode(a, b, d, elem, form=delta.INT))
            before = min(sizes["zstd"], sizes["xor"])
            now = min(sizes["auto"], sizes["int"])
            out.append(
                f"| {dtype} | {step:g} | {changed} | {mib(sizes['zstd'])} | "
                f"{mib(sizes['auto'])} | {mib(sizes['xor'])} | {mib(sizes['int'])} | "
                f"{100 * (1 - now / before):.0f}% fewer bytes | "
                f"{sizes['int'] / sizes['auto']:.2f}x |")
    return "\n".join(out)


def parallel(w: np.ndarray) -> str:
    """Cores busy while a thread pool encodes (process CPU seconds / wall seconds): Blosc
    releases the GIL, so threads encode at once (what a push does while uploads are in
    flight); one thread stays at 1.0 at most."""
    raw = bf16(w).tobytes()
    parts = chunks(raw) * 4
    lines = []
    for workers in sorted({1, os.cpu_count() or 1}):
        t, c = time.perf_counter(), time.process_time()
        with cf.ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda p: codecs.encode_bytes(p, "auto", 2), parts))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        lines.append(f"{workers} thread(s): {cpu / wall:.2f} cores busy, "
                     f"{len(raw) * 4 / wall / 1e6:,.0f} MB/s wall")
    return "; ".join(lines)


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def real_rows(path: str) -> list[tuple[str, int, bytes, dict]]:
    from safetensors import safe_open

    by: dict[str, list[bytes]] = {}
    with safe_open(path, "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            key = str(t.dtype).replace("torch.", "")
            by.setdefault(key, []).append(t.contiguous().view(-1).view(
                __import__("torch").uint8).numpy().tobytes())
    rows = []
    for dtype, blobs in sorted(by.items()):
        elem = {"bfloat16": 2, "float16": 2, "float32": 4}.get(dtype)
        if elem:
            rows.append((f"{os.path.basename(path)} {dtype} weights", elem, b"".join(blobs), {}))
    return rows


def run(size: int, steps: list[float], weights_file: str | None, command: str) -> str:
    warnings.filterwarnings("ignore")
    w = weights(size)
    cands = candidates()
    t1 = tune(w, 1e-3)
    rows = [("bf16 weights", 2, bf16(w).tobytes(), {}),
            ("fp32 weights", 4, w.tobytes(), {})]
    x32 = (w.view(np.uint32) ^ t1.view(np.uint32)).tobytes()
    x16 = (bf16(w) ^ bf16(t1)).tobytes()
    rows += [("fp32 XOR-delta, 1e-3 step", 4, x32,
              {CHOSEN: int_delta(t1.tobytes(), w.tobytes(), 4)}),
             ("bf16 XOR-delta, 1e-3 step", 2, x16,
              {CHOSEN: int_delta(bf16(t1).tobytes(), bf16(w).tobytes(), 2)})]
    if weights_file:
        rows = real_rows(weights_file) + rows
    text, results = table(rows, cands)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"Run {now} on {os.cpu_count()} CPUs ({platform.machine()}), load average "
        f"{load} at the end; Python {platform.python_version()}.  Command: `{command}`.",
        "",
        f"Synthetic transformer of {len(w):,} parameters ({mib(w.nbytes)} as fp32), 4 MiB "
        "chunks, one thread.  Each cell: ratio (encode MB/s / decode MB/s, raw bytes per "
        "CPU second of this process, so competing processes do not lower them).  "
        "In the delta rows the chosen column is theta-zarr's int-delta object (zigzag "
        "of the integer difference, Blosc), whose ratio is over the same raw bytes; the "
        "other columns compress the XOR.  Missing candidates were not installed."
        + ("" if weights_file else "  No real weights were available to this run "
           "(`--weights FILE.safetensors` adds them)."),
        "",
        text,
        "",
    ]
    for label, target in TARGETS.items():
        got = results.get((label, CHOSEN))
        best = max((v[0], k[1]) for k, v in results.items() if k[0] == label)
        if got:
            lines.append(f"- {label}: chosen codec {got[0]:.3f} against a target of "
                         f"{target:.2f} ({'met' if got[0] >= target else '**not met**'}); "
                         f"best candidate {best[1]} {best[0]:.3f}.")
    for label in ("fp32 XOR-delta, 1e-3 step", "bf16 XOR-delta, 1e-3 step"):
        base, got = results.get((label, "zstd-1")), results.get((label, CHOSEN))
        if base and got:
            fewer = 1 - base[0] / got[0]
            lines.append(f"- {label}: int-delta {got[0]:.2f} against zstd-1 of the XOR "
                         f"{base[0]:.2f}: {100 * fewer:.0f}% fewer bytes (target >= 20%: "
                         f"{'met' if fewer >= 0.2 else '**not met**'}).")
    speeds = [(results[k][1], results[k][2]) for k in results if k[1] == CHOSEN]
    lines.append(f"- chosen codec speed, one core: encode {min(s[0] for s in speeds):,.0f}"
                 f"-{max(s[0] for s in speeds):,.0f} MB/s (target >= 400), decode "
                 f"{min(s[1] for s in speeds):,.0f}-{max(s[1] for s in speeds):,.0f} MB/s "
                 "(target >= 800).")
    lines += [f"- thread pool encoding the bf16 chunks (auto codec): {parallel(w)}.", "",
              "Dense fine-tune series: bytes a push sends for the chunks one step changed "
              "(theta-zarr's encoders, no I/O; the writer takes the smaller of full and "
              "delta per chunk).", "", series(w, steps)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="64MiB", help="fp32 size of the synthetic model")
    p.add_argument("--steps", default="1e-4,1e-3,1e-2")
    p.add_argument("--weights", default=None, help="a real .safetensors file to measure")
    p.add_argument("--out", help="markdown file whose bench_codecs section to rewrite")
    args = p.parse_args()
    command = "python tests/benchmarks/bench_codecs.py " + " ".join(sys.argv[1:])
    text = run(parse_size(args.size), [float(s) for s in args.steps.split(",")],
               args.weights, command.strip())
    print(text)
    if args.out:
        write_section(args.out, "bench_codecs", text)


if __name__ == "__main__":
    main()
