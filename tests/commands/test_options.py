"""One CLI vocabulary: -o is --output, remote options are --remote-option; push is git's."""

from __future__ import annotations

from theta_zarr.demo import ModelShape, write_model

SHAPE = ModelShape(hidden=32, layers=2, vocab=64)


def test_old_dash_o_remote_option_still_works_with_a_warning(repo):
    proc = repo.tz("remote", "add", "origin", "s3://b/models", "-o", "region=eu-west-1")
    assert "deprecated" in proc.stderr.decode() and "--remote-option" in proc.stderr.decode()
    assert repo.out("config", "theta-zarr.remote.origin.region").strip() == "eu-west-1"


def test_pull_output_that_is_a_remote_option_is_refused(repo, tmp_path):
    """`pull URL REF -o endpoint-url=...` once meant a remote option: never a file name."""
    proc = repo.run("theta-zarr", "pull", str(tmp_path / "r"), "x",
                    "-o", "endpoint-url=http://127.0.0.1:1", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "looks like a remote option" in err
    assert not list(tmp_path.glob("endpoint-url*")) and not list(repo.path.glob("endpoint*"))


def test_each_push_help_shows_one_usage(repo):
    push = repo.tz("push", "--help").stdout.decode()
    assert "--ref" not in push and "--combine" not in push and "publish" in push
    publish = repo.tz("publish", "--help").stdout.decode()
    assert "publish [OPTIONS] CKPT REMOTE" in publish and "--remote-option" in publish
    assert "combine [OPTIONS] REMOTE" in repo.tz("combine", "--help").stdout.decode()


def test_old_cluster_push_spelling_forwards_with_a_warning(repo, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    write_model(str(ckpt), SHAPE)
    proc = repo.run("theta-zarr", "push", str(ckpt), str(tmp_path / "bucket"),
                    "--ref", "run/1")
    err = proc.stderr.decode()
    assert "deprecated" in err and "theta-zarr publish" in err
    assert (tmp_path / "bucket" / "refs" / "run" / "1").exists()
    pulled = tmp_path / "p.safetensors"
    repo.run("theta-zarr", "pull", str(tmp_path / "bucket"), "run/1", "--output", str(pulled))
    assert pulled.read_bytes() == ckpt.read_bytes()


def test_pull_lists_no_chunk_size_it_would_ignore():
    """pull writes files and chunks nothing, yet its help listed --chunk-size ("target raw
    chunk size"), which it ignored; the option is still accepted, unlisted."""
    from click.testing import CliRunner

    from theta_zarr.cli import main

    runner = CliRunner()
    assert "--chunk-size" not in runner.invoke(main, ["pull", "--help"]).output
    assert "--chunk-size" in runner.invoke(main, ["publish", "--help"]).output
    assert "--chunk-size" in runner.invoke(main, ["watch", "--help"]).output
    parsed = runner.invoke(main, ["pull", "--chunk-size", "1MiB", "--help"])
    assert parsed.exit_code == 0, parsed.output
