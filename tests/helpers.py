"""Plain helpers the tests share (no fixtures: those are in ``conftest.py`` and the
``servers`` plugin, and call these).  Imported as ``from helpers import ...``
(``pythonpath = ["tests"]``).

Git repositories
    ``GitRepo`` (a real repository driven through the CLI), ``isolated_git_env``,
    ``init_bare``, ``clone``, ``file_sha``, ``commit_checkpoint`` (the demo model,
    ``MODEL``, ``REMOTE_SHAPE``), ``manifest_at``, ``cached_object_path``.
Checkpoint files in and out of the cache
    ``settings``, ``clean``, ``clean_manifest``, ``smudge``; ``same_bits`` (torch
    tensors); the bytes of files: ``npz``, ``npy``, ``torch_saved``; ``to_torch``,
    ``commit_tensors``, ``read_tensors`` (safetensors of numpy arrays, bf16 as
    ``BF16``); ``tiny_llama`` (a transformers model).
Merges
    ``CountingCache``, ``make_store``, ``manifest``, ``read``, ``rng_arr``, ``table``;
    numpy references of the merge methods: ``f32``, ``topk_mask``, ``ties_ref``,
    ``dare_mask``.
Object-storage servers (moto S3, fake-gcs-server), and a static HTTP server
    ``Backend``, ``ServerProcess``, ``s3_backend``, ``gcs_backend``,
    ``unique_bucket_name``; ``HttpFolder`` (a folder served read-only over HTTP).
Cluster sync (``theta-zarr`` outside git) and bucket remotes
    ``Case`` (a folder, S3 or GCS remote), ``local_case``, ``make_case``; ``SHAPE``,
    ``CHUNK``, ``env_for``, ``tz``, ``model``.
Processes
    ``permissions_held`` (a prefix under which file modes hold, for root too),
    ``run_python`` (a snippet in a fresh interpreter: signals, exit paths), ``on_terminal``
    (a command on a pseudo-terminal: progress bars).
torch.distributed checkpoints
    ``run_job`` (``dcp/dcp_worker.py`` as N ranks), ``check_ranks``, ``save_result``,
    ``stored_objects``, ``free_port``.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import blake3
import ml_dtypes
import numpy as np
import pytest

from theta_zarr import checkpoint
from theta_zarr.cache import Cache
from theta_zarr.chunkreader import ChunkReader
from theta_zarr.chunkwriter import ChunkWriter
from theta_zarr.demo import ModelShape, write_model
from theta_zarr.dtypes import by_name, from_numpy
from theta_zarr.manifest import Manifest
from theta_zarr.merge import Rule, StrategyTable
from theta_zarr.merges import MergeOptions
from theta_zarr.objects import ObjectStore, object_key
from theta_zarr.remote import ReadThrough, RemoteSpec, open_remote
from theta_zarr.settings import Settings
from theta_zarr.sync import SyncRemote

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

REPO_ROOT = Path(__file__).resolve().parent.parent

#: bfloat16 as a numpy dtype
BF16 = np.dtype(ml_dtypes.bfloat16)


# -- git repositories -------------------------------------------------------------------

#: the file name the git tests commit checkpoints under
MODEL = "model.safetensors"
#: the demo model the git remote tests commit and push
REMOTE_SHAPE = ModelShape(hidden=64, layers=4, vocab=256)


def isolated_git_env() -> dict[str, str]:
    """This process's environment for git and theta-zarr subprocesses: this Python's
    scripts first on PATH, no system git config, fixed author, committer and dates."""
    env = dict(os.environ)
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = scripts + os.pathsep + os.path.dirname(sys.executable) + os.pathsep + \
        env.get("PATH", "")
    # isolate from the user's and the machine's git config
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "Test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@theta-zarr.invalid"
    env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = "2026-01-01T00:00:00Z"
    env.pop("GIT_THETA_ZARR_SKIP_SMUDGE", None)
    return env


class GitRepo:
    """A real git repository in a temporary folder, driven through the real CLI."""

    def __init__(self, path: Path, env: dict[str, str]):
        self.path = path
        self.env = env

    def run(self, *args: str, check: bool = True, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``args`` in the repository (``env`` added to its environment); with
        ``check``, a non-zero exit fails the test with both outputs."""
        proc = subprocess.run(list(args), cwd=self.path, env={**self.env, **(env or {})},
                              input=input, capture_output=True)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout.decode()}\n"
                f"stderr: {proc.stderr.decode()}")
        return proc

    def git(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """``git ARGS``."""
        return self.run("git", *args, **kw)

    def tz(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """``git theta-zarr ARGS``."""
        return self.run("git", "theta-zarr", *args, **kw)

    def out(self, *args: str) -> str:
        """The standard output of ``git ARGS``."""
        return self.git(*args).stdout.decode()

    @property
    def objects_dir(self) -> Path:
        """The repository's local chunk cache (``.git/theta-zarr/objects``)."""
        return self.path / ".git" / "theta-zarr" / "objects"

    def object_files(self) -> set[str]:
        """Paths (relative to ``objects_dir``) of the cached objects, no temporary files."""
        if not self.objects_dir.exists():
            return set()
        return {str(p.relative_to(self.objects_dir)) for p in self.objects_dir.rglob("*")
                if p.is_file() and not p.name.startswith(".tmp-")}


def init_bare(path: Path, env: dict[str, str] | None = None) -> Path:
    """``git init --bare -b main PATH`` (with ``env``, or this process's environment)."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True,
                   env=env)
    return path


def clone(make_repo: Callable[[str], GitRepo], bare: Path, name: str,
          env: dict[str, str] | None = None, check: bool = True) -> GitRepo:
    """A fresh clone of ``bare`` by a user who ran `git theta-zarr install --global` once
    (``make_repo`` is the fixture); git's result is ``.clone_result``."""
    c = make_repo(name)
    c.path.rmdir()
    parent = GitRepo(c.path.parent, c.env)
    parent.run("git", "theta-zarr", "install", "--global")
    c.clone_result = parent.run("git", "clone", "-q", str(bare), name, env=env, check=check)
    return c


def permissions_held() -> list[str]:
    """A command prefix under which file permissions hold (a folder of mode 0555 refuses a
    new file): nothing for a user, ``setpriv`` without the overriding capabilities for
    root, which ignores file modes.  Skips the test where neither is possible."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes do not hold")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def run_python(code: str, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) with this interpreter in a process of its own; its output is
    captured, and a hang ends in TimeoutExpired after 60 s."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, timeout=60)


def on_terminal(args: list[str], cwd: Path, env: dict[str, str], columns: int = 100
                ) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a new pseudo-terminal ``columns`` wide (as in
    an interactive shell: progress bars show); returns its exit status and everything it
    wrote there, carriage returns kept.  A hang ends in TimeoutExpired after 120 s."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave)
    os.close(slave)
    out = bytearray()
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
    return proc.wait(timeout=120), out.decode("utf-8", "replace")


def file_sha(path: Path | str) -> str:
    """sha256 (hex) of a file's bytes: checked-out checkpoints are compared bit for bit."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def commit_checkpoint(repo: GitRepo, message: str, *, shape: ModelShape, name: str = MODEL,
                      **kw) -> str:
    """Write the demo model of ``shape`` (``theta_zarr.demo.write_model``; ``kw`` such as
    ``tuned``/``seed`` go to it) to ``name`` in ``repo``, add and commit it; returns the
    file's sha256."""
    write_model(str(repo.path / name), shape, **kw)
    repo.git("add", name)
    repo.git("commit", "-q", "-m", message)
    return file_sha(repo.path / name)


def manifest_at(repo: GitRepo, rev: str, path: str = MODEL) -> Manifest:
    """The manifest git stores for ``path`` at ``rev``."""
    return Manifest.from_bytes(repo.git("cat-file", "blob", f"{rev}:{path}").stdout)


def cached_object_path(cache_root: Path | str, digest: str) -> Path:
    """Where a cache (or folder remote) rooted at ``cache_root`` keeps object ``digest``."""
    return Path(cache_root) / object_key(digest)


# -- checkpoint files in and out of the cache -------------------------------------------

def settings(tmp_path: Path, *, chunk_bytes: int = 4096, workers: int = 4) -> Settings:
    """Settings with the cache in ``tmp_path/cache``, small chunks and a few workers."""
    return Settings(cache_dir=str(tmp_path / "cache"), chunk_bytes=chunk_bytes, workers=workers)


def clean(data: bytes | BinaryIO, tmp_path: Path, name: str, *, path: str | None = None,
          opaque: bool | None = None, **kw) -> checkpoint.CleanResult:
    """Clean the checkpoint ``data`` (bytes or a stream) named ``name`` into the cache of
    ``settings(tmp_path, **kw)``; ``opaque=False`` refuses files that are not weights."""
    s = settings(tmp_path, **kw)
    cache = checkpoint.open_cache(s)
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return checkpoint.clean(checkpoint.open_source(stream, cache, name=name, path=path), s, cache,
                            opaque=opaque)


def clean_manifest(data: bytes | BinaryIO, tmp_path: Path, name: str, *,
                   path: str | None = None, **kw) -> Manifest:
    """``clean``'s manifest read back from its bytes, as git stores and gives it back."""
    text = clean(data, tmp_path, name, path=path, **kw).manifest.to_bytes()
    return Manifest.from_bytes(text, name)


def smudge(m: Manifest, tmp_path: Path, name: str = "checkpoint") -> bytes:
    """The checkpoint file ``m`` describes, rebuilt from the cache of ``settings(tmp_path)``."""
    s = settings(tmp_path)
    out = io.BytesIO()
    checkpoint.smudge(m, out, s, name=name, cache=checkpoint.open_cache(s))
    return out.getvalue()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().view(-1).view(torch.uint8),
                       b.contiguous().view(-1).view(torch.uint8))


def npz(arrays: dict[str, np.ndarray], *, compressed: bool = False) -> bytes:
    """What np.savez (or np.savez_compressed) writes for ``arrays``."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    """What np.save writes for ``array``."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def torch_saved(obj: Any, **kw) -> bytes:
    """What torch.save writes for ``obj`` (``kw`` go to it)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A numpy array as a torch tensor of the same bits (``BF16`` as torch.bfloat16)."""
    import torch

    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def commit_tensors(repo: GitRepo, tensors: dict[str, np.ndarray], message: str,
                   name: str = MODEL) -> None:
    """Save ``tensors`` as the safetensors file ``name`` in ``repo``, add and commit it."""
    from safetensors.torch import save_file

    save_file({k: to_torch(v) for k, v in tensors.items()}, str(repo.path / name))
    repo.git("add", name)
    repo.git("commit", "-q", "-m", message)


def read_tensors(path: Path | str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays (torch.bfloat16 as ``BF16``)."""
    import torch
    from safetensors.torch import load_file

    return {k: t.view(torch.uint16).numpy().view(BF16) if t.dtype == torch.bfloat16
            else t.numpy() for k, t in load_file(str(path)).items()}


#: the tiny Llama's configuration
LLAMA_CONFIG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A random-init two-layer Llama (made locally, nothing downloaded) of about 20 KB of
    float32 weights (several shards at 8KB)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**LLAMA_CONFIG))


# -- merges ------------------------------------------------------------------------------

class CountingCache(Cache):
    """A real cache that counts the chunks read from it."""

    def __init__(self, root: str):
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, digest: str, bases=None, size: int | None = None):
        self.reads.append(digest)
        return super().get(digest, bases, size)


def make_store(tmp_path: Path) -> ReadThrough:
    """A ReadThrough over a CountingCache in ``tmp_path/cache`` (no remote)."""
    return ReadThrough(CountingCache(str(tmp_path / "cache")), None)


def manifest(store: ReadThrough, tensors: dict[str, np.ndarray], chunk_bytes: int = 1024,
             fmt: dict | None = None) -> Manifest:
    """The manifest of ``tensors``, chunks written to ``store``'s cache."""
    with ChunkWriter(store.cache, chunk_bytes) as w:
        for name, arr in tensors.items():
            arr = np.ascontiguousarray(arr)
            raw = memoryview(arr.view(np.uint8).reshape(-1))
            w.add_buffer(name, from_numpy(arr.dtype), arr.shape, raw)
        params = w.finish()
    return Manifest(fmt or {"name": "safetensors", "order": list(tensors)}, params)


def read(store: ReadThrough, m: Manifest, name: str) -> np.ndarray:
    """Parameter ``name`` of ``m`` as an array, read from the cache."""
    e = m.params[name]
    out = bytearray(e.nbytes)
    ChunkReader(store.cache).read_into(e, memoryview(out))
    return np.frombuffer(bytes(out), dtype=by_name(e.dtype).numpy).reshape(e.shape)


def rng_arr(seed: int, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Standard normal numbers (drawn in float32) in ``dtype``."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).astype(dtype)


def table(strategy: str = "fail", **options) -> StrategyTable:
    """One rule: every parameter (``*``) merged by ``strategy`` with ``options``."""
    return StrategyTable([Rule("*", strategy, MergeOptions(options))])


# numpy references of the model-merging methods (whole tensors, float32)

def f32(*xs: np.ndarray) -> list[np.ndarray]:
    """Each array in float32."""
    return [x.astype(np.float32) for x in xs]


def topk_mask(tau: np.ndarray, density: float) -> np.ndarray:
    """TIES's trim: the top int(density * n) magnitudes (ties at the threshold kept)."""
    if density >= 1:
        return np.ones(tau.shape, bool)
    k = int(density * tau.size)
    if k == 0:
        return np.zeros(tau.shape, bool)
    thr = np.sort(np.abs(tau).ravel())[::-1][k - 1]
    return np.abs(tau) >= thr


def ties_ref(base: np.ndarray, tunes: list[np.ndarray], weights: list[float], density: float,
             lam: float = 1.0, normalize: bool = True, masks: list[np.ndarray] | None = None,
             taus: list[np.ndarray] | None = None) -> np.ndarray:
    """TIES (or, given sparsified ``taus``, any sign-consensus merge) in float32; the
    merged tensor, of ``base``'s shape."""
    b, *ms = f32(base, *tunes)
    ws = [np.float32(w) for w in weights]
    if taus is None:
        taus = [m - b for m in ms]
    if masks is None:
        masks = [topk_mask(t, density) for t in taus]
    tvs = [w * (t * mk.astype(np.float32)) for w, t, mk in zip(ws, taus, masks, strict=True)]
    total = tvs[0]
    for tv in tvs[1:]:
        total = total + tv
    sign = np.where(total >= 0, np.float32(1), np.float32(-1))
    agree = [(np.sign(tv) == sign).astype(np.float32) for tv in tvs]
    mixed = sum((tv * a for tv, a in zip(tvs, agree, strict=True)), np.zeros_like(b))
    div = sum((w * a for w, a in zip(ws, agree, strict=True)), np.zeros_like(b))
    div[div == 0] = 1
    if normalize:
        mixed = mixed / div
    return b + mixed * np.float32(lam)


def dare_mask(base_key: str, model_key: str, n: int, density: float) -> np.ndarray:
    """The documented DARE mask: blake3(seed) read as little-endian uint32 < density*2**32."""
    seed = b"theta-zarr dare 1\0" + base_key.encode() + b"\0" + model_key.encode()
    u = np.frombuffer(blake3.blake3(seed).digest(length=4 * n), "<u4")
    return u < np.uint32(int(density * 2**32))


# -- object-storage servers (moto S3, fake-gcs-server) ----------------------------------

BACKENDS_DIR = REPO_ROOT / "backends"

#: Seconds to wait for a server to print its endpoint line.
START_TIMEOUT = float(os.environ.get("TZ_TEST_SERVER_START_TIMEOUT", "60"))

S3_KEY = "testing"
S3_SECRET = "testing"
S3_REGION = "us-east-1"
GCS_PROJECT = "test"


@dataclass(frozen=True)
class Backend:
    """A running object-storage server and how to reach it.

    ``name``: ``"s3"`` or ``"gcs"``.  ``scheme``: URL scheme (``s3`` /
    ``gs``).  ``endpoint``: ``http://127.0.0.1:PORT``.  ``storage_options``:
    exactly the fsspec keyword arguments to reach the server.  ``env``: the
    environment variables a subprocess needs to reach it without
    ``storage_options`` (add them to ``os.environ``).
    """

    name: str
    scheme: str
    endpoint: str
    storage_options: dict[str, Any]
    env: dict[str, str]
    _make_bucket: Callable[[str], None] = field(repr=False, compare=False)

    def url(self, bucket: str, prefix: str = "") -> str:
        """``scheme://bucket`` or ``scheme://bucket/prefix``."""
        prefix = prefix.strip("/")
        return f"{self.scheme}://{bucket}/{prefix}" if prefix else f"{self.scheme}://{bucket}"

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error if this server already has it)."""
        self._make_bucket(name)

    def new_bucket(self) -> str:
        """Create a uniquely named bucket and return its base URL."""
        name = unique_bucket_name()
        self.make_bucket(name)
        return self.url(name)

    def filesystem(self):
        """A new fsspec filesystem (no instance cache) for this server."""
        import fsspec

        return fsspec.filesystem(self.scheme, skip_instance_cache=True, **self.storage_options)

    def objects(self, url: str) -> dict[str, int]:
        """Map ``bucket/key`` -> size for every object under ``url``.

        Cheap way to count what was uploaded (objects and bytes) below a
        bucket or prefix.
        """
        fs = self.filesystem()
        found = fs.find(url, detail=True)
        return {path: int(info["size"]) for path, info in found.items()}


def unique_bucket_name() -> str:
    """A bucket name valid on S3 and GCS: ``tz-`` + 32 hex digits."""
    return f"tz-{uuid.uuid4().hex}"


class ServerProcess:
    """A ``backends/<name>/serve`` subprocess."""

    def __init__(self, name: str, args: list[str] = ()):
        self.name = name
        script = BACKENDS_DIR / name / "serve"
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.endpoint = self._read_endpoint(START_TIMEOUT)

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def _read_endpoint(self, timeout: float) -> str:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout).strip()
        except queue.Empty:
            line = ""
            why = f"printed no endpoint within {timeout:g} s"
        else:
            why = "exited before printing its endpoint"
        if line.startswith("http://") or line.startswith("https://"):
            return line
        if line:
            why = f"printed {line!r} instead of an endpoint URL"
        self._terminate()
        stderr = self._stderr_text()
        self.stop()
        pytest.fail(
            f"{self.name} test server (backends/{self.name}/serve) {why}; "
            f"exit status {self.proc.returncode}; stderr:\n{stderr}",
            pytrace=False,
        )

    def _terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        """Terminate (SIGTERM), wait up to 15 s, then kill."""
        self._terminate()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


class HttpFolder:
    """``folder`` served over loopback HTTP at ``url`` by Python's ``http.server`` in a
    thread of this process, as a static server or a mirror serves files: GET and HEAD
    only (a PUT, POST or DELETE is answered 501).  ``requests`` holds every request's
    ``(method, path)``, in order, so a test can tell that a command sent nothing."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.requests: list[tuple[str, str]] = []
        seen = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any):
                super().__init__(*args, directory=str(folder), **kwargs)

            def parse_request(self) -> bool:
                ok = super().parse_request()
                if ok:
                    seen.append((self.command, self.path))
                return ok

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="http-folder")
        self._thread.start()

    def files(self) -> dict[str, bytes]:
        """Every file under the folder (relative path -> bytes)."""
        return {p.relative_to(self.folder).as_posix(): p.read_bytes()
                for p in self.folder.rglob("*") if p.is_file()}

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _http(method: str, url: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _s3_make_bucket(endpoint: str, name: str) -> None:
    # moto does not check signatures: an unsigned PUT creates the bucket.
    status, body = _http("PUT", f"{endpoint}/{urllib.parse.quote(name)}", b"")
    if status == 200 or (status == 409 and b"BucketAlreadyOwnedByYou" in body):
        return
    raise RuntimeError(f"cannot create S3 bucket {name!r}: HTTP {status}: {body[:500]!r}")


def _gcs_make_bucket(endpoint: str, name: str) -> None:
    status, body = _http(
        "POST",
        f"{endpoint}/storage/v1/b?project={GCS_PROJECT}",
        json.dumps({"name": name}).encode(),
        {"Content-Type": "application/json"},
    )
    if status == 200 or status == 409:
        return
    raise RuntimeError(f"cannot create GCS bucket {name!r}: HTTP {status}: {body[:500]!r}")


def s3_backend(endpoint: str) -> Backend:
    """The :class:`Backend` of the moto S3 server at ``endpoint``."""
    return Backend(
        name="s3",
        scheme="s3",
        endpoint=endpoint,
        storage_options={
            "key": S3_KEY,
            "secret": S3_SECRET,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_REGION},
        },
        env={
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        },
        _make_bucket=lambda name: _s3_make_bucket(endpoint, name),
    )


def gcs_backend(endpoint: str) -> Backend:
    """The :class:`Backend` of the fake-gcs-server at ``endpoint``."""
    return Backend(
        name="gcs",
        scheme="gs",
        endpoint=endpoint,
        storage_options={
            "endpoint_url": endpoint,
            "token": "anon",
            "project": GCS_PROJECT,
        },
        env={
            "STORAGE_EMULATOR_HOST": endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # fsspec default kwarg for gs:// -> no credential lookup at all.
            "FSSPEC_GS_TOKEN": "anon",
            "GCSFS_DEFAULT_PROJECT": GCS_PROJECT,
            "NO_GCE_CHECK": "true",
        },
        _make_bucket=lambda name: _gcs_make_bucket(endpoint, name),
    )



# -- cluster sync (theta-zarr outside git) -----------------------------------------------

#: the demo model the sync tests push
SHAPE = ModelShape(hidden=32, layers=2, vocab=64)
#: the chunk size they cut it in
CHUNK = "16KiB"


@dataclass
class Case:
    """A remote the sync and git remote tests run against: ``kind`` (local, s3, gcs), its
    ``url``, the environment that reaches it and its ``key=value`` options."""

    kind: str
    url: str
    env: dict[str, str]
    options: list[str]

    def opts(self) -> dict[str, str]:
        """The options as a dict."""
        return dict(o.split("=", 1) for o in self.options)

    def remote(self) -> SyncRemote:
        """The remote, opened in this process."""
        return SyncRemote.open(RemoteSpec("t", self.url, self.opts()))

    def objects(self) -> ObjectStore:
        """The remote's object store, opened in this process."""
        return open_remote(RemoteSpec("t", self.url, self.opts()))

    def cli_options(self) -> list[str]:
        """The options as ``--option key=value`` arguments."""
        return [a for o in self.options for a in ("--option", o)]


def put_folder_marker(case: Case, key: str) -> None:
    """Write the empty object ``key`` (ending in ``/``) under ``case``'s bucket prefix,
    as the S3 and GCS consoles' "Create folder" (and s3fs or rclone ``mkdir``) leave one;
    fsspec would drop the trailing ``/``, so it goes over the servers' plain HTTP APIs."""
    assert key.endswith("/") and case.kind in ("s3", "gcs")
    endpoint = case.opts()["endpoint-url"]
    bucket, _, prefix = case.url.split("://", 1)[1].partition("/")
    name = f"{prefix}/{key}" if prefix else key
    if case.kind == "s3":
        status, body = _http("PUT", f"{endpoint}/{bucket}/{urllib.parse.quote(name)}", b"")
    else:
        status, body = _http("POST", f"{endpoint}/upload/storage/v1/b/{bucket}/o?uploadType="
                             f"media&name={urllib.parse.quote(name, safe='')}", b"",
                             {"Content-Type": "application/octet-stream"})
    assert status == 200, (status, body[:300])


def local_case(tmp_path: Path) -> Case:
    """A folder remote at ``tmp_path/bucket``."""
    return Case("local", str(tmp_path / "bucket"), {}, [])


def make_case(kind: str, request, tmp_path: Path, monkeypatch, prefix: str = "team") -> Case:
    """The ``kind`` remote (a folder, or ``prefix`` in a new bucket on the S3 or GCS server,
    started through ``request``), its environment set in this process through
    ``monkeypatch``."""
    if kind == "local":
        case = local_case(tmp_path)
    else:
        backend = request.getfixturevalue(f"{kind}_server")
        case = Case(kind, f"{backend.new_bucket()}/{prefix}", dict(backend.env),
                    [f"endpoint-url={backend.endpoint}"])
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    return case


def env_for(case: Case, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``theta-zarr`` job reaching ``case``: this Python's scripts on
    PATH, its own cache in ``tmp_path/job-cache``, plus ``extra``."""
    env = dict(os.environ)
    env.update(case.env)
    env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.path.dirname(sys.executable) \
        + os.pathsep + env.get("PATH", "")
    env["THETA_ZARR_CACHE"] = str(tmp_path / "job-cache")
    env.update(extra)
    return env


def tz(args: list[str], env: dict[str, str], check: bool = True, cwd: Path | None = None,
       prefix: list[str] | tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``theta-zarr ARGS`` (after ``prefix``: ``permissions_held()``); with ``check``, a
    non-zero exit fails the test."""
    proc = subprocess.run([*prefix, "theta-zarr", *args], env=env, capture_output=True,
                          cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"theta-zarr {' '.join(args)} exited {proc.returncode}\n"
                             f"{proc.stderr.decode()}")
    return proc


def model(path: Path, seed: int = 0, tuned: list[str] | None = None) -> Path:
    """The demo model of ``SHAPE`` written to ``path`` (``tuned``: layers changed)."""
    write_model(str(path), SHAPE, seed=seed, tuned=tuned or [])
    return path


# -- torch.distributed checkpoints -------------------------------------------------------

#: the DCP tests' job launcher: ``python dcp_worker.py``, one job a line on stdin
WORKER = Path(__file__).resolve().parent / "dcp" / "dcp_worker.py"
#: this test process's launcher (started on first use; it ends when this process does)
_launcher: list[subprocess.Popen] = []


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(action: str, world: int, case: Case, tmp_path: Path, ref: str, step: int,
            **extra) -> list[subprocess.CompletedProcess]:
    """Run ``dcp_worker.py``'s ``action`` as ``world`` ranks (real processes in one gloo
    process group, as torchrun starts them); each rank's exit code, stdout and stderr."""
    if not _launcher or _launcher[0].poll() is not None:
        _launcher[:] = [subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})]
    launcher = _launcher[0]
    name = f"{action}-{ref.replace('/', '_')}-{world}"
    logs = tmp_path / name
    spec = {"url": case.url, "options": case.opts(), "ref": ref, "step": step,
            "out": str(tmp_path / f"{name}.json"), "logs": str(logs), **extra}
    env = {**case.env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    launcher.stdin.write(json.dumps({"action": action, "world": world, "spec": spec,
                                     "env": env}).encode() + b"\n")
    launcher.stdin.flush()
    answer = launcher.stdout.readline()
    if not answer:
        raise AssertionError(f"the job launcher exited {launcher.wait()}")
    return [subprocess.CompletedProcess(
                [str(WORKER), action, f"rank {rank}"], code,
                Path(f"{logs}.rank{rank}.out").read_bytes(),
                Path(f"{logs}.rank{rank}.err").read_bytes())
            for rank, code in enumerate(json.loads(answer))]


def check_ranks(procs: list[subprocess.CompletedProcess]) -> None:
    """Fail with the end of each failed rank's stderr if any rank exited non-zero."""
    bad = [p for p in procs if p.returncode != 0]
    if bad:
        raise AssertionError("\n".join(f"rank exited {p.returncode}:\n{p.stderr.decode()[-3000:]}"
                                       for p in bad))


def save_result(tmp_path: Path, ref: str, world: int) -> dict:
    """The writer's result (a dict) that rank 0 of a ``run_job("save", ...)`` recorded."""
    return json.loads((tmp_path / f"save-{ref.replace('/', '_')}-{world}.json").read_text())


def stored_objects(case: Case) -> dict[str, int]:
    """digest -> stored size of every object in the case's remote."""
    return {d: n for d, n, _ in case.remote().objects.iter_digests()}
