"""What the command group itself reports (theta_zarr.commands.reporting): usage mistakes,
the help, and output that cannot be written, outside any command's own handling."""

from __future__ import annotations

import os
import subprocess

import pytest


def run_to(repo, stdout, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["theta-zarr", *args], cwd=repo.path, env=repo.env, stdout=stdout,
                          stderr=subprocess.PIPE)


def test_theta_zarr_alone_prints_the_readable_help_as_a_usage_mistake(repo):
    proc = repo.run("theta-zarr", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 129 and err.startswith("Usage: ")
    assert "\n  publish " in err and not err.startswith("theta-zarr:")


@pytest.mark.parametrize("args", [["--version"], ["-h"], ["help", "ls"]])
def test_help_and_version_to_a_full_disk_is_one_line(repo, args):
    with open("/dev/full", "wb") as full:
        proc = run_to(repo, full, *args)
    assert proc.returncode == 1
    assert proc.stderr.decode() == "theta-zarr: [Errno 28] No space left on device\n"


@pytest.mark.parametrize("args", [["help", "ls"], ["--version"], ["-h"], ["ls", "-h"],
                                  ["remote", "add", "-h"]])
def test_help_into_a_closed_pipe_ends_quietly_with_141(repo, args):
    read, write = os.pipe()
    os.close(read)
    try:
        proc = run_to(repo, write, *args)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")


@pytest.mark.parametrize("args", [["pull", "r", "run/1", "-o"], ["ls", "r", "--remote-option"]])
def test_an_option_missing_its_value_names_the_command_help(repo, args):
    proc = repo.run("theta-zarr", *args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 129 and err.count("\n") == 1
    assert err.startswith("theta-zarr: ") and f"(see 'theta-zarr {args[0]} --help')" in err


def test_a_usage_mistake_a_command_finds_itself_is_129(repo):
    proc = repo.tz("materialize", "--output", "out.safetensors", check=False)
    assert proc.returncode == 129
    assert "--output needs exactly one PATH" in proc.stderr.decode()
    assert "(see 'git theta-zarr materialize --help')" in proc.stderr.decode()
