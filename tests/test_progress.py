"""Progress bars (theta_zarr.progress): on a terminal for long operations, never in a pipe."""

from __future__ import annotations

import re

import numpy as np
from helpers import REMOTE_SHAPE, commit_checkpoint, on_terminal
from safetensors.numpy import save_file

#: a tqdm frame: "<desc>:  63%|████▌   | 62/99 [00:00<00:00, 161obj/s]"
FRAME = re.compile(r"(\d+)/(\d+) \[[^\]]*obj/s\]")


def test_push_shows_a_bar_of_whole_objects_on_a_terminal_and_none_in_a_pipe(repo, tmp_path):
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    commit_checkpoint(repo, "base", shape=REMOTE_SHAPE)
    for name in ("tty", "piped"):
        (tmp_path / name).mkdir()
        repo.tz("remote", "add", name, str(tmp_path / name))
    code, out = on_terminal(["git", "theta-zarr", "push", "tty"], repo.path, repo.env, 80)
    assert code == 0, out
    total = int(re.search(r"uploaded (\d+) objects", out).group(1))
    frames = FRAME.findall(out)
    assert frames and {int(t) for _, t in frames} == {total}, out  # whole objects
    assert ".0/" not in out
    piped = repo.tz("push", "piped").stderr.decode()
    assert f"uploaded {total} objects" in piped
    assert "\r" not in piped and "obj/s" not in piped
    code, out = on_terminal(["git", "theta-zarr", "fsck"], repo.path, repo.env, 80)
    assert code == 0, out
    checked = int(re.search(r"ok: (\d+) reachable objects checked", out).group(1))
    assert checked in {int(t) for _, t in FRAME.findall(out)}, out


def test_a_large_file_shows_bars_through_git_and_in_materialize(repo):
    """add (the clean), a direct checkout (the filter writes the file once git is done)
    and materialize, each 68 MiB: a bar of bytes on a terminal, nothing in a pipe."""
    big = repo.path / "big.safetensors"
    save_file({"w": np.zeros((17, 1 << 20), np.float32)}, str(big))
    steps = [(["git", "add", "big.safetensors"], "clean big.safetensors"),
             (["git", "checkout", "--", "big.safetensors"], "write big.safetensors"),
             (["git", "theta-zarr", "materialize", "big.safetensors"],
              "write big.safetensors")]
    for args, desc in steps:
        if args[1] == "checkout":
            big.unlink()
        if args[2] == "materialize":
            big.unlink()
            repo.git("-c", "theta-zarr.lazy=true", "checkout", "--", "big.safetensors")
        code, out = on_terminal(args, repo.path, repo.env)
        assert code == 0, out
        assert f"{desc}:" in out and "/68.0M" in out, (args, out)  # 68 MiB, in bytes
    big.unlink()
    assert repo.git("checkout", "--", "big.safetensors").stderr == b""  # piped: quiet
    assert big.stat().st_size > 68 << 20
