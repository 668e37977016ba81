"""Shared pieces of the DCP tests: start a gloo job of N ranks; count a remote's objects."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from sync.sync_helpers import Case

WORKER = Path(__file__).with_name("dcp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(action: str, world: int, case: Case, tmp_path: Path, ref: str, step: int,
            **extra) -> list[subprocess.CompletedProcess]:
    """Run ``dcp_worker.py ACTION`` as ``world`` ranks (like torchrun); their results."""
    out = tmp_path / f"{action}-{ref.replace('/', '_')}-{world}.json"
    spec = {"url": case.url, "options": case.opts(), "ref": ref, "step": step,
            "out": str(out), **extra}
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = {**os.environ, **case.env, "RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), action, json.dumps(spec)],
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def check(procs: list[subprocess.CompletedProcess]) -> None:
    bad = [p for p in procs if p.returncode != 0]
    if bad:
        raise AssertionError("\n".join(f"rank exited {p.returncode}:\n{p.stderr.decode()[-3000:]}"
                                       for p in bad))


def result(tmp_path: Path, ref: str, world: int) -> dict:
    return json.loads((tmp_path / f"save-{ref.replace('/', '_')}-{world}.json").read_text())


def stored_objects(case: Case) -> dict[str, int]:
    """digest -> stored size of every object in the case's remote."""
    return {d: n for d, n, _ in case.remote().objects.iter_digests()}
