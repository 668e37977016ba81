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


def test_git_add_of_a_large_file_shows_the_clean_bar_through_git(repo):
    save_file({"w": np.zeros((17, 1 << 20), np.float32)}, str(repo.path / "big.safetensors"))
    code, out = on_terminal(["git", "add", "big.safetensors"], repo.path, repo.env)
    assert code == 0, out
    assert "clean big.safetensors" in out and "/68.0M" in out  # 68 MiB, in bytes
    assert repo.git("add", "--renormalize", "big.safetensors").stderr == b""  # piped: quiet
