"""Moving a repository off git-lfs: track warns, old versions still check out, diffs never
die across the migration, and ``migrate`` converts the tree or rewrites history."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

import theta_zarr
from theta_zarr import checkpoint, lfs
from theta_zarr.formats import FormatError
from theta_zarr.manifest import ManifestError
from theta_zarr.settings import Settings

needs_lfs = pytest.mark.skipif(shutil.which("git-lfs") is None,
                               reason="git-lfs is not installed (apt-get install git-lfs)")

POINTER = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32
           + b"\nsize 1234\n")


@pytest.mark.parametrize("pointer", [POINTER, POINTER.replace(
    b"git-lfs.github.com", b"hawser.github.com")], ids=["git-lfs", "hawser"])
def test_adding_a_pointer_instead_of_its_file_is_refused(tmp_path, pointer):
    """A checkout made without git-lfs holds pointers: storing one would keep the pointer,
    not the weights, so clean says to fetch the file first (both spec URLs)."""
    settings = Settings(cache_dir=str(tmp_path / "cache"))
    cache = checkpoint.open_cache(settings)
    source = checkpoint.open_source(io.BytesIO(pointer), cache, name="model.safetensors")
    with pytest.raises(FormatError, match="model.safetensors: is a git-lfs pointer.*git lfs pull"):
        checkpoint.clean(source, settings, cache)


def test_pointer_parsing_follows_the_spec():
    p = lfs.parse(POINTER)
    assert p == lfs.LfsPointer("ab" * 32, 1234) and p.to_bytes() == POINTER
    ext = POINTER.replace(b"\noid", b"\next-0-foo sha256:" + b"cd" * 32 + b"\noid")
    assert lfs.parse(ext) == p
    for bad in (POINTER[:-1], POINTER.replace(b"size 1234", b"size -1"),
                POINTER.replace(b"sha256:ab", b"sha1:ab"), POINTER + b"x" * 1024,
                POINTER.replace(b"spec/v1", b"spec/v9"), b'{"theta_zarr": 1}'):
        assert lfs.parse(bad) is None


@pytest.fixture
def lfs_repo(make_repo):
    """A repository whose *.safetensors were committed through git-lfs (two versions)."""
    r = make_repo("lfs")
    r.git("init", "-q", "-b", "main")
    r.git("lfs", "install", "--local")
    r.git("lfs", "track", "*.safetensors")
    versions = []
    for i in range(2):
        save_file({"w": torch.full((16, 16), float(i)), "b": torch.arange(8.0) + i},
                  r.path / "model.safetensors", metadata={"format": "pt"})
        versions.append((r.path / "model.safetensors").read_bytes())
        r.git("add", "-A")
        r.git("commit", "-q", "-m", f"v{i} via lfs")
    assert lfs.parse(r.git("cat-file", "blob", "HEAD:model.safetensors").stdout)
    r.tz("install")
    return r, versions


@needs_lfs
def test_track_warns_and_lfs_versions_still_check_out(lfs_repo):
    r, versions = lfs_repo
    proc = r.tz("track", "*.safetensors")
    err = proc.stderr.decode()
    assert "stored by git-lfs" in err and "model.safetensors" in err
    assert "git theta-zarr migrate --include '*.safetensors'" in err
    # an LFS-era version checks out as the real file (handed to git-lfs), not pointer text
    r.git("commit", "-q", "-m", "track with theta-zarr", "--", ".gitattributes")
    (r.path / "model.safetensors").unlink()
    r.git("checkout", "-q", "HEAD~2", "--", "model.safetensors")
    assert (r.path / "model.safetensors").read_bytes() == versions[0]
    r.git("checkout", "-q", "HEAD~2")  # a whole LFS-era commit: clean, switchable
    assert (r.path / "model.safetensors").read_bytes() == versions[0]
    assert r.out("status", "--porcelain") == ""
    r.git("checkout", "-q", "main")
    assert (r.path / "model.safetensors").read_bytes() == versions[1]
    assert r.out("status", "--porcelain") == ""
    # new content under the pattern is stored by theta-zarr from now on
    save_file({"w": torch.full((16, 16), 7.0)}, r.path / "model.safetensors")
    r.git("commit", "-q", "-am", "tuned")
    assert r.git("cat-file", "blob", "HEAD:model.safetensors").stdout.startswith(
        b'{"theta_zarr"')


@needs_lfs
def test_migrate_current_tree_then_diff_and_log_across_it(lfs_repo):
    r, versions = lfs_repo
    proc = r.tz("migrate")
    assert b"1 file(s) moved from git-lfs to theta-zarr and committed" in proc.stdout
    blob = r.git("cat-file", "blob", "HEAD:model.safetensors").stdout
    assert blob.startswith(b'{"theta_zarr"')
    attrs = r.git("cat-file", "blob", "HEAD:.gitattributes").stdout.decode()
    assert "filter=lfs" not in attrs and "filter=theta-zarr" in attrs
    assert r.out("status", "--porcelain") == ""
    assert (r.path / "model.safetensors").read_bytes() == versions[1]
    # the migration commit: old side an LFS pointer, shown as such in every view
    d = r.out("diff", "HEAD~1", "HEAD", "--", "model.safetensors")
    assert "old: stored by git-lfs, oid sha256:" in d and "2 added" in d
    tz = r.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert f"size {len(versions[1])} bytes" in tz
    log = r.out("log", "-p", "--", "model.safetensors")
    assert "-# stored by git-lfs, oid sha256:" in log and "+w float32[16, 16]" in log
    # ls-files and the API name an LFS-era version for what it is (they said "committed
    # before it was tracked" and "not tracked by theta-zarr")
    oid = hashlib.sha256(versions[1]).hexdigest()
    listed = r.tz("ls-files", "--rev", "HEAD~1").stdout.decode()
    assert listed.startswith(f"model.safetensors  (stored by git-lfs, oid sha256:{oid}, size ")
    (row,) = json.loads(r.tz("ls-files", "--json", "--rev", "HEAD~1").stdout)
    assert row["lfs"] == {"oid": f"sha256:{oid}", "size": len(versions[1])}
    with pytest.raises(ManifestError, match=rf"HEAD~1:model.safetensors: stored by git-lfs, "
                                            rf"oid sha256:{oid}, .*git theta-zarr migrate"):
        theta_zarr.load_state_dict(str(r.path / "model.safetensors"), rev="HEAD~1")
    # the older LFS commits still check out as real files
    r.git("checkout", "-q", "HEAD~2")
    assert (r.path / "model.safetensors").read_bytes() == versions[0]


@needs_lfs
def test_remote_add_after_migrate_asks_no_copy_of_the_lfs_history(lfs_repo, tmp_path):
    """The git remote held only the history on git-lfs, which names no chunk: remote add
    still said its commits' chunks would never be sent and to run 'push --all'.  Once the
    migration commit is pushed there, a new theta remote for that git remote needs them."""
    r, _ = lfs_repo
    r.git("init", "-q", "--bare", "-b", "main", str(tmp_path / "hub.git"))
    r.git("remote", "add", "origin", str(tmp_path / "hub.git"))
    r.git("push", "-q", "origin", "main")
    r.tz("migrate")
    (tmp_path / "chunks").mkdir()
    added = r.tz("remote", "add", "origin", str(tmp_path / "chunks"))
    assert b"already has commits" not in added.stderr, added.stderr
    r.git("push", "-q", "origin", "main")
    assert any((tmp_path / "chunks" / "objects").iterdir())  # the migration's chunks
    (tmp_path / "mirror").mkdir()
    again = r.tz("remote", "add", "origin", str(tmp_path / "mirror")).stderr.decode()
    assert "git remote 'origin' already has commits" in again, again
    assert "git theta-zarr push origin --all" in again


@needs_lfs
def test_migrate_names_a_path_that_is_not_utf8_as_git_quotes_it(lfs_repo):
    """Its lines printed such a name as ``\\udce9``; git writes the byte in octal."""
    r, _ = lfs_repo
    odd = os.path.join(os.fsencode(r.path), b"\xe9.safetensors")
    save_file({"w": torch.ones(4)}, os.fsdecode(odd))
    r.git("add", "-A")
    r.git("commit", "-q", "-m", "another")
    proc = r.tz("migrate")
    out = proc.stdout + proc.stderr
    assert b'theta-zarr: "\\351.safetensors": git-lfs -> theta-zarr\n' in out, out
    assert r.git("cat-file", "blob", b"HEAD:\xe9.safetensors").stdout.startswith(b'{"theta_zarr"')


@needs_lfs
def test_migrate_rewrites_history_of_named_refs(lfs_repo):
    r, versions = lfs_repo
    r.git("branch", "keep")  # not named: left as it was
    proc = r.tz("migrate", "--ref", "main")
    assert b"2 git-lfs version(s) converted" in proc.stdout
    for rev, want in (("main~1", versions[0]), ("main", versions[1])):
        blob = r.git("cat-file", "blob", f"{rev}:model.safetensors").stdout
        assert blob.startswith(b'{"theta_zarr"'), rev
        assert "filter=theta-zarr" in r.out("show", f"{rev}:.gitattributes")
        r.git("checkout", "-q", rev)
        got = load_file(r.path / "model.safetensors")
        assert (r.path / "model.safetensors").read_bytes() == want
        assert got["w"][0, 0].item() == float(rev == "main")
    assert r.out("log", "--format=%s", "main") == "v1 via lfs\nv0 via lfs\n"
    assert lfs.parse(r.git("cat-file", "blob", "keep:model.safetensors").stdout)


def test_track_warns_about_a_pattern_git_lfs_already_routes(repo):
    """No file yet under the pattern: the warning comes from .gitattributes itself, and says
    which line wins (ours when just added after the lfs line; lfs when its line is later)."""
    attrs = repo.path / ".gitattributes"
    attrs.write_text(attrs.read_text() + "my[[:space:]]model.bin filter=lfs diff=lfs merge=lfs"
                     ' -text\n"my run.bin" filter=lfs -text\n'
                     "*.pt filter=lfs diff=lfs merge=lfs -text\n")
    proc = repo.tz("track", "my model.bin", "my run.bin", "*.pt", "*.gguf")
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert 'Tracking "my model.bin"' in out and 'Already tracking "*.pt"' in out
    assert 'Tracking "*.gguf"' in out
    lines = err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("theta-zarr: warning: ") for ln in lines)
    assert "my model.bin, my run.bin were routed to git-lfs" in lines[0], lines[0]
    assert "now comes later" in lines[0]
    assert "*.pt is routed to git-lfs by a later .gitattributes line" in lines[1]
    assert "*.gguf" not in err
    assert attrs.read_text().splitlines()[-3].startswith('"my model.bin" filter=theta-zarr')
    assert repo.out("check-attr", "filter", "--", "my model.bin", "my run.bin").splitlines() == [
        "my model.bin: filter: theta-zarr", "my run.bin: filter: theta-zarr"]
    again = repo.tz("track", "*.gguf")
    assert again.stderr == b""


def test_migrate_without_lfs_patterns_says_so(repo):
    proc = repo.tz("migrate", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("theta-zarr: no pattern of .gitattributes is routed")
    assert b"Traceback" not in proc.stderr


def test_migrate_reads_and_writes_quoted_lfs_patterns(repo):
    """A quoted ``filter=lfs`` line (gitattributes(5)) was read as the pattern ``"my``:
    migrate named no file under it, and its line stayed beside ours."""
    from theta_zarr.git.lfs import routed_patterns
    from theta_zarr.git.migrate import rewrite_attributes

    ours = "filter=theta-zarr diff=theta-zarr merge=theta-zarr -text"
    text = ('*.txt text\r\n"my model.bin" filter=lfs diff=lfs merge=lfs -text\r\n'
            "run[[:space:]]1.bin filter=lfs -text\n")
    attrs = repo.path / ".gitattributes"
    attrs.write_text(text)
    patterns = routed_patterns(str(repo.path))
    assert patterns == ["my model.bin", "run[[:space:]]1.bin"]
    new = rewrite_attributes(text, patterns)
    assert new == f'*.txt text\n"my model.bin" {ours}\nrun[[:space:]]1.bin {ours}\n'
    assert rewrite_attributes(text, ["run 1.bin"]).count("filter=lfs") == 1  # same pattern
    attrs.write_text(new)
    assert repo.out("check-attr", "filter", "--", "my model.bin", "run 1.bin").splitlines() == [
        "my model.bin: filter: theta-zarr", "run 1.bin: filter: theta-zarr"]


def test_diffs_across_a_file_committed_before_tracking_never_die(make_repo):
    r = make_repo("pre")
    r.git("init", "-q", "-b", "main")
    (r.path / "model.bin").write_bytes(b"\x00\x01 not a checkpoint" * 10)
    r.git("add", "-A")
    r.git("commit", "-q", "-m", "raw bytes")
    r.tz("install")
    r.tz("track", "*.bin")
    torch.save({"w": torch.ones(3)}, r.path / "model.bin")
    r.git("add", "-A")
    r.git("commit", "-q", "-m", "a real checkpoint")
    d = r.out("diff", "HEAD~1", "HEAD", "--", "model.bin")
    assert "old: not stored by theta-zarr (190 bytes" in d and "+ w" in d
    log = r.out("log", "-p", "--", "model.bin")
    assert "-# not stored by theta-zarr (190 bytes, committed before it was tracked)" in log
    assert "+w float32[3] inline" in log
    js = r.tz("diff", "--json", "HEAD~1", "HEAD").stdout.decode()
    assert '"kind": "plain"' in js


@needs_lfs
def test_a_clone_using_git_lfs_and_theta_zarr_uploads_both_on_push(make_repo, tmp_path):
    """Both installed user-wide: in a clone theta-zarr's filter wrote pre-push first, so
    git-lfs found a foreign hook and installed none; pushes uploaded no LFS objects."""
    a = make_repo("a")
    a.git("lfs", "install")
    a.run("git", "theta-zarr", "install", "--global")
    a.git("init", "-q", "-b", "main")
    a.git("lfs", "track", "*.bin")
    a.tz("track", "*.safetensors")
    (a.path / "one.bin").write_bytes(b"1" * 1000)
    save_file({"w": torch.zeros(64)}, a.path / "m.safetensors")
    a.git("add", "-A")
    a.git("commit", "-q", "-m", "one")
    bare = tmp_path / "remote.git"
    a.git("init", "-q", "--bare", "-b", "main", str(bare))
    a.git("remote", "add", "origin", str(bare))
    a.git("push", "-q", "origin", "main")
    a.git("clone", "-q", str(bare), str(tmp_path / "b"))
    b = type(a)(tmp_path / "b", a.env)
    hooks = tmp_path / "b" / ".git" / "hooks"
    assert "git lfs pre-push" in (hooks / "pre-push.theta-zarr-chained").read_text()
    (b.path / "two.bin").write_bytes(b"2" * 1000)
    b.git("add", "two.bin")
    b.git("commit", "-q", "-m", "two")
    b.git("push", "-q", "origin", "main")
    assert len([p for p in (bare / "lfs" / "objects").rglob("*") if p.is_file()]) == 2


@needs_lfs
def test_a_repository_without_lfs_files_does_not_chain_git_lfs_hooks(make_repo):
    """git-lfs configured for the user (or the machine) but no file routed to it: its
    post-checkout and post-merge hooks cost every checkout about 30 ms for nothing."""
    r = make_repo("plain")
    r.git("lfs", "install")
    r.git("init", "-q", "-b", "main")
    r.tz("install")
    hooks = r.path / ".git" / "hooks"
    assert (hooks / "post-checkout").exists()
    assert not list(hooks.glob("*.theta-zarr-chained"))


@pytest.mark.parametrize("name", ["plain.bin", "my model.bin", "run é.bin", 'say "hi".bin',
                                  "tab\there.bin", "back\\slash.bin"])
def test_migrate_reads_the_paths_git_quotes_in_its_fast_export_stream(tmp_path, name):
    """fast-export C-quotes a path with a quote, a control character or a non-ASCII byte;
    ``migrate`` reads them back with the one C-unquoting the .gitattributes reader uses."""
    from theta_zarr.git.migrate import _unquote

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / name).write_bytes(b"x")
    subprocess.run(["git", "add", "--", name], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "m"], cwd=tmp_path, check=True)
    stream = subprocess.run(["git", "fast-export", "HEAD"], cwd=tmp_path, check=True,
                            capture_output=True).stdout
    (line,) = [ln for ln in stream.split(b"\n") if ln.startswith(b"M ")]
    assert _unquote(line.split(b" ", 3)[3]) == name
