"""Commands the docs show that no other test runs: demo, untrack, uninstall, remote list/remove."""

from __future__ import annotations


def test_demo_runs_and_is_bit_exact(repo, tmp_path):
    out = repo.run("theta-zarr", "demo", "--size", "2MiB", "--keep", str(tmp_path / "d"))
    text = out.stdout.decode()
    assert "bit-exact: yes" in text and "working tree: clean" in text
    assert (tmp_path / "d" / ".git").is_dir()
    assert f"repo: {tmp_path / 'd'}" in text


def test_demo_without_keep_names_no_deleted_folder(repo):
    out = repo.run("theta-zarr", "demo", "--size", "1MiB")
    text = out.stdout.decode()
    assert "bit-exact: yes" in text
    assert "theta-zarr-demo-" not in text and "removed at the end" in text


def test_remote_list_and_remove(repo):
    repo.tz("remote", "add", "origin", "s3://b/models", "--remote-option", "region=eu-west-1")
    repo.tz("remote", "add", "team", "gs://c/m", "--shared")
    listed = repo.tz("remote", "list").stdout.decode().splitlines()
    assert "origin\ts3://b/models  region=eu-west-1" in listed
    assert "team\tgs://c/m" in listed
    repo.tz("remote", "remove", "origin")
    repo.tz("remote", "remove", "team", "--shared")
    assert repo.tz("remote", "list").stdout.decode() == ""
    proc = repo.tz("remote", "remove", "origin", check=False)
    assert proc.returncode == 1 and "no remote 'origin' in git config" in proc.stderr.decode()


def test_untrack_and_uninstall(repo):
    out = repo.tz("untrack", "*.pt").stdout.decode()
    assert 'Untracking "*.pt"' in out
    assert "*.pt" not in repo.tz("track").stdout.decode().split()
    hook = repo.path / ".git" / "hooks" / "pre-push"
    assert hook.exists()
    repo.tz("uninstall")
    assert repo.git("config", "--get", "filter.theta-zarr.process", check=False).returncode == 1
    assert not hook.exists()
