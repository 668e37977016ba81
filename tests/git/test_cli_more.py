"""Commands the docs show that no other test runs: demo, untrack, uninstall, remote list/remove,
ls-files with folders."""

from __future__ import annotations

import functools
import os
import subprocess

import numpy as np
import pytest
import safetensors.numpy


def test_demo_runs_and_is_bit_exact(repo, tmp_path):
    out = repo.run("theta-zarr", "demo", "--size", "2MiB", "--keep", str(tmp_path / "d"))
    text = out.stdout.decode()
    assert "bit-exact: yes" in text and "working tree: clean" in text
    assert (tmp_path / "d" / ".git").is_dir()
    assert f"repo: {tmp_path / 'd'}" in text


def test_demo_keep_refuses_a_folder_that_is_not_empty(repo):
    """--keep in a project's own folder would commit the demo model into it."""
    (repo.path / "model.safetensors").write_bytes(b"my weights")
    proc = repo.run("theta-zarr", "demo", "--size", "1MiB", "--keep", str(repo.path),
                    check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith(f"theta-zarr: --keep {repo.path}: not an empty folder")
    assert (repo.path / "model.safetensors").read_bytes() == b"my weights"
    assert repo.out("rev-list", "--count", "--all").strip() == "1"  # the fixture's commit


def test_demo_without_keep_names_no_deleted_folder(repo):
    out = repo.run("theta-zarr", "demo", "--size", "1MiB")
    text = out.stdout.decode()
    assert "bit-exact: yes" in text
    assert "theta-zarr-demo-" not in text and "removed at the end" in text


def test_remote_add_refuses_options_that_do_nothing_for_its_url(repo):
    """A folder remote took --remote-option endpoint-url=... and region=..., and every
    later command ignored them (a MinIO endpoint meant for an s3:// URL, a region on
    GCS); remote add now refuses them, and takes what the URL's storage library uses.
    MinIO's own URL with its endpoint is spelt the s3:// way from the URL given."""
    cases = (("/tmp/nowhere", "endpoint-url=http://127.0.0.1:9000",
              "; an S3-compatible server (MinIO) is s3://BUCKET/PREFIX --remote-option "
              "endpoint-url=http://127.0.0.1:9000"),
             ("http://127.0.0.1:9000/models/team", "endpoint-url=http://127.0.0.1:9000",
              "; an S3-compatible server (MinIO) is s3://models/team --remote-option "
              "endpoint-url=http://127.0.0.1:9000"),
             ("s3://b/m", "project=p1", ""), ("gs://b/m", "region=eu-west-1", ""))
    for url, option, hint in cases:
        key = option.split("=")[0]
        takes = "gs://" if key == "project" else "s3://" if key == "region" else \
            "s3:// and gs://"
        proc = repo.tz("remote", "add", "x", url, "--remote-option", option, check=False)
        assert proc.returncode == 1 and proc.stderr.decode() == (
            f"theta-zarr: remote 'x': option {key!r} does nothing for {url} (it is for "
            f"{takes} remotes): drop it, or give the URL it is meant for{hint}\n")
    assert repo.tz("remote", "list").stdout.decode() == ""
    repo.tz("remote", "add", "x", "gs://b/m", "--remote-option", "project=p1",
            "--remote-option", "compression=zstd")
    assert repo.tz("remote", "list").stdout.decode().splitlines() == [
        "x\tgs://b/m  compression=zstd project=p1"]


def test_remote_list_and_remove(repo):
    repo.tz("remote", "add", "origin", "s3://b/models", "--remote-option", "region=eu-west-1")
    repo.tz("remote", "add", "team", "gs://c/m", "--shared")
    listed = repo.tz("remote", "list").stdout.decode().splitlines()
    assert "origin\ts3://b/models  region=eu-west-1" in listed
    assert "team\tgs://c/m" in listed
    # adding a name again replaces that remote whole, and says so: the old region (an
    # endpoint-url alike) was kept for the new URL
    out = repo.tz("remote", "add", "origin", "s3://prod/models").stdout.decode()
    assert out == "theta-zarr remote origin -> s3://prod/models " \
                  "(replaces s3://b/models region=eu-west-1)\n"
    assert "origin\ts3://prod/models" in repo.tz("remote", "list").stdout.decode().splitlines()
    repo.tz("remote", "remove", "origin")
    repo.tz("remote", "remove", "team", "--shared")
    assert repo.tz("remote", "list").stdout.decode() == ""
    proc = repo.tz("remote", "remove", "origin", check=False)
    assert proc.returncode == 1 and "no remote 'origin' in git config" in proc.stderr.decode()
    # a remote recorded in the other place is named there: `remove` alone left a user who
    # had cloned a repository with a .thetazarr with no idea where the remote was
    repo.tz("remote", "add", "team", "gs://c/m", "--shared")
    repo.tz("remote", "add", "mine", "/srv/m")
    err = repo.tz("remote", "remove", "team", check=False).stderr.decode()
    assert err == "theta-zarr: no remote 'team' in git config (it is in the committed " \
                  ".thetazarr: add --shared to remove it there)\n"
    err = repo.tz("remote", "remove", "mine", "--shared", check=False).stderr.decode()
    assert err == "theta-zarr: no remote 'mine' in .thetazarr (it is in git config: drop " \
                  "--shared)\n"


def test_remote_add_of_a_bucket_opens_no_storage_library(repo):
    """Recording a bucket remote asks nothing of the bucket: opening gcsfs looked for
    credentials on the network (16 s waiting for a cloud metadata server that was not
    there).  Python lists every import under ``PYTHONPROFILEIMPORTTIME``."""
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    for name, url in (("origin", "s3://b/models"), ("team", "gs://c/m")):
        err = repo.tz("remote", "add", name, url, env=env).stderr.decode()
        imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines()
                    if line.startswith("import time:")}
        assert "theta_zarr.git.remotes" in imported  # the import log is there
        assert not {"s3fs", "gcsfs"} & {m.split(".")[0] for m in imported}, url


def test_track_refuses_what_a_gitattributes_line_cannot_say(repo):
    """An empty pattern wrote a line git reads as the pattern 'filter=theta-zarr'; a
    negative one is ignored by git, which warned in every later command."""
    before = (repo.path / ".gitattributes").read_bytes()
    for pattern, words in (("", "an empty pattern"), ("  ", "an empty pattern"),
                           ("!*.pt", "negative patterns"), ("#x.pt", "a comment"),
                           ("a\tb", "control character")):
        proc = repo.tz("track", "*.npy", pattern, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.startswith("theta-zarr: ") and words in err, err
        assert (repo.path / ".gitattributes").read_bytes() == before  # not even *.npy


@pytest.mark.parametrize("pattern, name", [
    ("*", ".gitattributes"), ("*.*", ".gitattributes"), (".git*", ".gitattributes"),
    (".thetazarr", ".thetazarr")])
def test_track_refuses_a_pattern_matching_gitattributes(repo, pattern, name):
    """track '*' routed .gitattributes itself through the filter: git stored it as a
    manifest, and a clone checked out every file, .gitattributes too, as manifest text."""
    before = (repo.path / ".gitattributes").read_bytes()
    proc = repo.tz("track", "*.npy", pattern, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith(f"theta-zarr: pattern '{pattern}' matches "
                                                   f"{name}"), err
    assert (repo.path / ".gitattributes").read_bytes() == before  # not even *.npy
    assert "Tracking" in repo.tz("track", "models/*", "a b.pt").stdout.decode()


def test_track_without_the_filter_installed_warns(make_repo):
    """git skips a filter it has no command for: 'git add' then stored the checkpoint in
    git as it is, after a track that said only 'Tracking'."""
    r = make_repo("plain")
    r.git("init", "-q", "-b", "main")
    proc = r.tz("track", "*.safetensors")
    assert proc.stdout.decode() == 'Tracking "*.safetensors"\n'
    err = proc.stderr.decode()
    assert err.startswith("theta-zarr: warning: the theta-zarr filter is not installed") \
        and "git theta-zarr install" in err and err.count("\n") == 1, err
    r.tz("install")
    assert r.tz("track", "*.pt").stderr == b""


def test_two_install_scopes_are_a_usage_error(repo, tmp_path):
    """install --global --system wrote the system config only, and said nothing."""
    env = {"GIT_CONFIG_SYSTEM": str(tmp_path / "system"), "GIT_CONFIG_NOSYSTEM": "0",
           "GIT_CONFIG_GLOBAL": str(tmp_path / "global")}
    for cmd in ("install", "uninstall"):
        proc = repo.tz(cmd, "--global", "--system", check=False, env=env)
        assert proc.returncode == 129
        assert b"--system and --global cannot be combined" in proc.stderr
    assert not (tmp_path / "system").exists() and not (tmp_path / "global").exists()
    repo.tz("install", "--global", env=env)
    assert b"theta-zarr" in (tmp_path / "global").read_bytes()



def test_install_global_says_a_local_setting_wins_over_it(repo, tmp_path):
    """The repository's local config names a removed environment's program (installed from
    an old venv); ``install --global`` from the new one said "installed" and every
    ``git add`` still failed with the old path, as git reads the local value first."""
    env = {"GIT_CONFIG_GLOBAL": str(tmp_path / "global")}
    repo.git("config", "filter.theta-zarr.process", "/gone/venv/bin/git-theta-zarr filter-process")
    err = repo.tz("install", "--global", env=env).stderr.decode()
    assert err == ("theta-zarr: warning: the local git config sets filter.theta-zarr.process = "
                   "'/gone/venv/bin/git-theta-zarr filter-process', and git uses that here, not "
                   "the global one just written: run 'git theta-zarr install --local' to update "
                   "it, or 'git theta-zarr uninstall --local'\n")
    repo.tz("install", env=env)
    assert repo.tz("install", "--global", env=env).stderr == b""

def test_untrack_and_uninstall(repo):
    out = repo.tz("untrack", "*.pt").stdout.decode()
    assert 'Untracking "*.pt"' in out
    assert "*.pt" not in repo.tz("track").stdout.decode().split()
    hooks = repo.path / ".git" / "hooks"
    names = ("pre-push", "post-checkout", "post-merge")
    assert all((hooks / n).exists() for n in names)
    # a pattern with a space is written C-quoted, and said as the user typed it
    repo.tz("track", "my run/*.pt")
    assert '"my run/*.pt" filter=theta-zarr' in (repo.path / ".gitattributes").read_text()
    assert 'Untracking "my run/*.pt"' in repo.tz("untrack", "my run/*.pt").stdout.decode()
    assert "my run" not in (repo.path / ".gitattributes").read_text()
    out = repo.tz("uninstall").stdout.decode()
    assert "filter removed" in out
    # the patterns stay, and git now commits those files whole: said, as git-lfs does not
    assert "note: .gitattributes still tracks *.safetensors, *.npz; without the filter" in out
    assert repo.git("config", "--get", "filter.theta-zarr.process", check=False).returncode == 1
    assert not any((hooks / n).exists() for n in names)
    # again: nothing was there to remove, and it says so rather than "removed"
    again = repo.tz("uninstall").stdout.decode()
    assert "was not installed in the local git config" in again and "removed" not in again


def test_track_and_untrack_keep_crlf_lines_and_complete_a_hand_written_line(repo):
    """A .gitattributes written on Windows lost every '\r' when track or untrack rewrote
    it (a whole-file diff); a hand-written line routing files through the filter without
    the diff and merge drivers made track say "Already tracking" and add nothing, so git's
    plain diff and merge handled those files."""
    attrs = repo.path / ".gitattributes"
    attrs.write_bytes(b"*.txt text\r\n*.bin filter=theta-zarr diff=lfs\r\n")
    out = repo.tz("track", "*.bin", "*.pt").stdout.decode()
    assert out.splitlines()[:2] == ['Tracking "*.bin"', 'Tracking "*.pt"']
    assert attrs.read_bytes() == (
        b"*.txt text\r\n"
        b"*.bin filter=theta-zarr diff=theta-zarr merge=theta-zarr -text\r\n"
        b"*.pt filter=theta-zarr diff=theta-zarr merge=theta-zarr -text\r\n")
    assert repo.out("check-attr", "diff", "merge", "--", "x.bin").splitlines() == [
        "x.bin: diff: theta-zarr", "x.bin: merge: theta-zarr"]
    assert 'Already tracking "*.bin"' in repo.tz("track", "*.bin").stdout.decode()
    repo.tz("untrack", "*.pt")
    assert attrs.read_bytes() == (
        b"*.txt text\r\n"
        b"*.bin filter=theta-zarr diff=theta-zarr merge=theta-zarr -text\r\n")


def test_ls_files_takes_folders_and_lists_the_current_folder(repo):
    """As git ls-files: a folder lists the files under it, a subfolder's files are what a
    plain ls-files there lists, and a path no tracked file matches is an error."""
    (repo.path / "ckpt").mkdir()
    for rel in ("top.safetensors", "ckpt/model.safetensors"):
        safetensors.numpy.save_file({"w": np.ones(8, np.float32)}, str(repo.path / rel))
    repo.git("add", "-A")
    listed = {ln.split()[0] for ln in repo.tz("ls-files", "ckpt").stdout.decode().splitlines()}
    assert listed == {"ckpt/model.safetensors"}
    here = repo.run("git", "-C", "ckpt", "theta-zarr", "ls-files").stdout.decode()
    assert [ln.split()[0] for ln in here.splitlines()] == ["ckpt/model.safetensors"]
    assert len(repo.tz("ls-files").stdout.decode().splitlines()) == 2
    proc = repo.tz("ls-files", "nosuch.safetensors", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode() == ("theta-zarr: nosuch.safetensors: no file theta-zarr "
                                    "tracks matches it\n")


def test_track_in_a_subfolder_writes_the_pattern_from_the_top(repo):
    """``track 'ckpt/*.safetensors'`` run in exp1/: the pattern went to the top-level
    .gitattributes unchanged, so exp1/ckpt/m.safetensors was committed raw, silently."""
    sub = repo.path / "exp1"
    (sub / "ckpt").mkdir(parents=True)
    run = functools.partial(subprocess.run, cwd=sub, env=repo.env, capture_output=True,
                            check=True)
    out = run(["git", "theta-zarr", "track", "ckpt/*.safetensors", "*.ckpt"]).stdout.decode()
    assert 'Tracking "exp1/ckpt/*.safetensors"' in out and 'Tracking "*.ckpt"' in out
    attrs = run(["git", "check-attr", "filter", "ckpt/m.safetensors", "x/y.ckpt"]).stdout
    assert attrs.decode().splitlines() == ["ckpt/m.safetensors: filter: theta-zarr",
                                           "x/y.ckpt: filter: theta-zarr"]
    out = run(["git", "theta-zarr", "untrack", "ckpt/*.safetensors"]).stdout.decode()
    assert 'Untracking "exp1/ckpt/*.safetensors"' in out


def test_track_takes_dotdot_back_and_refuses_patterns_that_match_no_file(repo):
    """``track '../*.pt'`` in a subfolder was written as ``exp1/../*.pt``, and ``track
    'ckpt/'`` as it is: git matches neither to any file (gitattributes(5): a folder's
    attributes do not reach its files), so the checkpoints were committed raw, silently."""
    sub = repo.path / "exp1"
    sub.mkdir()
    run = functools.partial(subprocess.run, cwd=sub, env=repo.env, capture_output=True)
    out = run(["git", "theta-zarr", "track", "../*.tzx"], check=True).stdout.decode()
    assert 'Tracking "/*.tzx"' in out  # the top's .tzx files, as '../*.tzx' says from exp1/
    attrs = run(["git", "check-attr", "filter", "../m.tzx", "m.tzx"], check=True).stdout
    assert attrs.decode().splitlines() == ["../m.tzx: filter: theta-zarr",
                                           "m.tzx: filter: unspecified"]
    before = (repo.path / ".gitattributes").read_bytes()
    for pattern, words in (("ckpt/", "track 'ckpt/**'"), ("../../*.pt", "above the top")):
        proc = run(["git", "theta-zarr", "track", "*.bin", pattern])
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.startswith("theta-zarr: ") and words in err, err
    assert (repo.path / ".gitattributes").read_bytes() == before  # not even *.bin


def test_ls_files_quotes_a_path_with_a_newline_as_git_does(repo):
    """One line per file: a name with a newline was printed raw, over two lines."""
    name = "run\n1.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(8, np.float32)}, str(repo.path / name))
    repo.git("add", "-A")
    lines = repo.tz("ls-files").stdout.decode().splitlines()
    assert any(ln.startswith('"run\\n1.safetensors"  safetensors') for ln in lines), lines
    assert repo.git("ls-files").stdout.decode().count('"run\\n1.safetensors"') == 1


def test_quote_path_follows_git():
    from theta_zarr.wording import quote_path

    assert quote_path("plain é.pt") == "plain é.pt"
    assert quote_path('a"b\\c\t\x01.pt') == '"a\\"b\\\\c\\t\\001.pt"'


def test_a_suggested_command_quotes_its_path_for_the_shell():
    """"finish with: git theta-zarr resolve my model.safetensors" ran resolve on two
    paths when pasted; a name that is not UTF-8 could not be pasted at all."""
    from theta_zarr.diff import unmerged_line
    from theta_zarr.wording import shell_word

    assert unmerged_line("my model.pt").endswith("resolve 'my model.pt' --strategy STRATEGY")
    for path in ("plain.pt", "my model.pt", "it's.pt", "\udce9t\udce9 a\tb.pt"):
        echoed = subprocess.run(["bash", "-c", f"printf %s {shell_word(path)}"],
                                capture_output=True, check=True).stdout
        assert echoed == os.fsencode(path), path
