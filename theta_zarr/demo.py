"""Synthetic transformer-shaped checkpoints and the ``theta-zarr demo`` walk-through.

The generator streams a bf16 safetensors file tensor by tensor, block by block,
from seeded random numbers, so a model of any size costs no more memory than a
block; a "fine-tune" adds small noise to chosen tensors.  The demo, the tests
and the benchmarks all build their models here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import subprocess
import sysconfig
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from . import interrupts
from .cache import Cache

BLOCK_ELEMS = 1 << 22


@dataclass(frozen=True)
class ModelShape:
    """The shape of a synthetic decoder-only transformer (Llama-like names): ``hidden``
    width, ``layers`` blocks of four ``hidden x hidden`` attention projections, an MLP of
    width ``4 x hidden`` and two norms, and a ``vocab``-row embedding and LM head."""

    hidden: int
    layers: int
    vocab: int

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every tensor, in file order."""
        h, v = self.hidden, self.vocab
        out: list[tuple[str, tuple[int, ...]]] = [("embed_tokens.weight", (v, h))]
        for i in range(self.layers):
            p = f"layers.{i}."
            out += [(p + "attn.q_proj.weight", (h, h)), (p + "attn.k_proj.weight", (h, h)),
                    (p + "attn.v_proj.weight", (h, h)), (p + "attn.o_proj.weight", (h, h)),
                    (p + "mlp.up_proj.weight", (4 * h, h)),
                    (p + "mlp.down_proj.weight", (h, 4 * h)),
                    (p + "input_norm.weight", (h,)), (p + "post_attn_norm.weight", (h,))]
        out += [("norm.weight", (h,)), ("lm_head.weight", (v, h))]
        return out

    def layer_names(self, i: int) -> list[str]:
        """The names of block ``i``'s tensors (``layers.{i}.*``), in file order."""
        return [n for n, _ in self.tensors() if n.startswith(f"layers.{i}.")]


def shape_for_size(nbytes: int, itemsize: int = 2) -> ModelShape:
    """A transformer shape whose bf16 weights come to about ``nbytes``."""
    layers = 4 if nbytes < (64 << 20) else 12 if nbytes < (512 << 20) else 24
    n = nbytes / itemsize
    hidden = max(64, int(math.sqrt(n / (12 * layers + 16)) // 64 * 64))
    return ModelShape(hidden=hidden, layers=layers, vocab=8 * hidden)


def _seed(name: str, salt: int) -> int:
    return zlib.crc32(name.encode()) ^ (salt * 0x9E3779B1)


def _bf16_blocks(name: str, count: int, seed: int, tuned: bool,
                 step: float) -> Iterable[bytes]:
    rng = np.random.default_rng(_seed(name, seed))
    noise = np.random.default_rng(_seed(name, seed + 1_000_003)) if tuned else None
    for start in range(0, count, BLOCK_ELEMS):
        n = min(BLOCK_ELEMS, count - start)
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        if noise is not None:
            x += x * noise.standard_normal(n, dtype=np.float32) * np.float32(step)
        yield (x.view(np.uint32) >> 16).astype("<u2").tobytes()


def write_model(path: str, shape: ModelShape, seed: int = 0, tuned: Iterable[str] = (),
                step: float = 1e-2, metadata: dict[str, str] | None = None) -> int:
    """Write a bf16 safetensors model, streaming; returns the file size."""
    tuned = set(tuned)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    pos = 0
    specs = shape.tensors()
    for name, dims in specs:
        size = math.prod(dims) * 2
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [pos, pos + size]}
        pos += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, dims in specs:
            for block in _bf16_blocks(name, math.prod(dims), seed, name in tuned, step):
                f.write(block)
    return 8 + len(text) + pos


def tensor_bytes(shape: ModelShape, names: Iterable[str]) -> int:
    """The bytes of the named tensors of ``shape`` in bf16 (2 bytes an element), headers
    not counted; KeyError for a name the shape lacks."""
    dims = dict(shape.tensors())
    return sum(math.prod(dims[n]) * 2 for n in names)


def scripts_path_env() -> dict[str, str]:
    """The environment for git subprocesses: this interpreter's scripts dir on PATH,
    so git finds ``git-theta-zarr`` even from an unactivated virtual environment."""
    env = dict(os.environ)
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
    return env


def dir_bytes(path: str) -> tuple[int, int]:
    """(files, bytes) of everything under ``path`` (an object store, a cache), leaving out
    the ``.tmp-*`` files of writes in progress; (0, 0) when ``path`` does not exist."""
    files = total = 0
    for folder, _, names in os.walk(path):
        for n in names:
            if not n.startswith(".tmp-"):
                files += 1
                total += os.path.getsize(os.path.join(folder, n))
    return files, total


def cache_size(root: str) -> tuple[int, int]:
    """(objects, stored bytes) of the cache at ``root``, loose and packed alike."""
    n = total = 0
    for _, size, _ in Cache(root).iter_digests():
        n += 1
        total += size
    return n, total


def run_demo(size: int, keep: str | None, echo: Callable[[str], None] = print) -> None:
    """The walk-through, in a temporary folder or in ``keep``, which must be new or empty:
    the demo runs ``git init`` there, sets the repository's user, overwrites
    ``model.safetensors`` and commits, which must never happen to a project's own folder."""
    from .errors import UserError
    from .wording import human

    if keep and os.path.lexists(keep) and (not os.path.isdir(keep) or os.listdir(keep)):
        raise UserError(f"--keep {keep}: not an empty folder; the demo builds its own "
                        "repository there, so give a new or empty folder")
    work = keep or tempfile.mkdtemp(prefix="theta-zarr-demo-")
    os.makedirs(work, exist_ok=True)
    env = scripts_path_env()

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def tz(*args: str) -> str:
        proc = subprocess.run(["git", "theta-zarr", *args], cwd=work, env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"git theta-zarr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    # a SIGTERM (a job's timeout) ends the process at once: the folder goes then too
    removal = interrupts.removed_on_signal(work) if keep is None else contextlib.nullcontext()
    with removal:
        try:
            git("init", "-q", "-b", "main")
            git("config", "user.name", "theta-zarr demo")
            git("config", "user.email", "demo@theta-zarr.invalid")
            tz("install")
            tz("track", "*.safetensors")
            shape = shape_for_size(size)
            model = os.path.join(work, "model.safetensors")
            file_size = write_model(model, shape)
            with open(model, "rb") as f:
                base_hash = _file_digest(f)
            echo(f"repo: {work}" if keep else
                 "repo: a temporary folder, removed at the end (--keep DIR keeps it)")
            echo(f"model: hidden={shape.hidden} layers={shape.layers} vocab={shape.vocab}, "
                 f"{len(shape.tensors())} tensors, {human(file_size)} (bf16 safetensors)")
            objects = os.path.join(git("rev-parse", "--git-common-dir").strip(), "theta-zarr")
            objects = os.path.join(work, objects) if not os.path.isabs(objects) else objects

            t = time.perf_counter()
            git("add", ".gitattributes", "model.safetensors")
            git("commit", "-q", "-m", "base model")
            t_base = time.perf_counter() - t
            n1, b1 = cache_size(objects)
            echo(f"commit base:  {t_base:6.2f} s  stored {n1} objects, {human(b1)}")

            tuned = shape.layer_names(0) + shape.layer_names(shape.layers - 1)
            write_model(model, shape, tuned=tuned)
            t = time.perf_counter()
            git("add", "model.safetensors")
            git("commit", "-q", "-m", "fine-tune first and last layer")
            t_tune = time.perf_counter() - t
            n2, b2 = cache_size(objects)
            echo(f"commit tuned: {t_tune:6.2f} s  new {n2 - n1} objects, {human(b2 - b1)} "
                 f"(the two tuned layers hold {human(tensor_bytes(shape, tuned))})")
            blob = git("cat-file", "-s", "HEAD:model.safetensors").strip()
            echo(f"git stores a {blob}-byte manifest per version instead of {human(file_size)}")

            t = time.perf_counter()
            git("checkout", "HEAD~1", "--", "model.safetensors")
            t_co = time.perf_counter() - t
            with open(model, "rb") as f:
                same = _file_digest(f) == base_hash
            # The working tree must match the index exactly: clean(smudge(m)) == m.
            unstaged = git("diff", "--name-only").strip()
            echo(f"checkout HEAD~1: {t_co:6.2f} s  bit-exact: {'yes' if same else 'NO'}  "
                 f"working tree: {'clean' if unstaged == '' else 'MODIFIED ' + unstaged}")
            if not same or unstaged:
                raise RuntimeError("the checked-out model differs from the committed one")
            echo(tz("ls-files").rstrip())
        finally:
            if keep is None:
                shutil.rmtree(work, ignore_errors=True)


def _file_digest(f) -> str:
    import blake3

    h = blake3.blake3()
    while block := f.read(1 << 22):
        h.update(block)
    return h.hexdigest()
