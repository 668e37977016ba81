"""``git theta-zarr fsck --remote``: what a remote should hold is what was pushed to it.

The chunks of commits that the git remote's remote-tracking refs reach must be on the
remote (one missing fails, naming the commit, file and blob); those only commits not
pushed yet need are counted apart, with the branches to push, and do not fail the check
(as ``git lfs push`` and the pre-push hook decide what a remote should have).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REMOTE_SHAPE, Case, commit_checkpoint, init_bare, make_case, manifest_at

from theta_zarr.demo import write_model
from theta_zarr.objects import object_key


@pytest.fixture(params=["local", "s3"])
def remote_case(request, tmp_path, monkeypatch) -> Case:
    """A folder remote, then ``models`` in a bucket on the loopback S3 server."""
    return make_case(request.param, request, tmp_path, monkeypatch, prefix="models")


def _origin(repo, case: Case, tmp_path: Path, name: str = "origin") -> None:
    """A bare git remote ``origin`` and the theta remote ``name`` at ``case``, where pushes
    to origin send their chunks (another name: as theta-zarr.default-remote); plain objects
    only, so a deleted object is missing rather than the base of a delta."""
    repo.env.update(case.env)
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    repo.git("config", "theta-zarr.delta", "false")
    init_bare(tmp_path / "origin.git", repo.env)
    repo.git("remote", "add", "origin", str(tmp_path / "origin.git"))
    repo.tz("remote", "add", name, case.url,
            *[a for o in case.options for a in ("--remote-option", o)])
    if name != "origin":
        repo.git("config", "theta-zarr.default-remote", name)


def _fsck(repo, remote: str = "origin"):
    return repo.tz("fsck", "--remote", remote, check=False)


def _layers(*numbers: int) -> list[str]:
    """The tensors of these layers of the demo model (to fine-tune them)."""
    return [n for n, _ in REMOTE_SHAPE.tensors() if n.split(".")[:2] in
            [["layers", str(i)] for i in numbers]]


def _head(repo) -> str:
    return repo.out("rev-parse", "HEAD").strip()


def test_unpushed_commits_are_counted_apart_and_pushed_ones_fail(repo, remote_case, tmp_path):
    _origin(repo, remote_case, tmp_path)
    commit_checkpoint(repo, "base", shape=REMOTE_SHAPE)
    base = _head(repo)
    repo.git("push", "-q", "origin", "main")
    proc = _fsck(repo)
    assert proc.returncode == 0 and b"not pushed" not in proc.stdout, proc.stdout
    assert proc.stdout.decode().startswith("ok: ")

    commit_checkpoint(repo, "tuned", shape=REMOTE_SHAPE, tuned=_layers(1))
    new = manifest_at(repo, "HEAD").digests() - manifest_at(repo, "HEAD~1").digests()
    assert new
    proc = _fsck(repo)
    out = proc.stdout.decode()
    assert proc.returncode == 0, (out, proc.stderr)
    assert f"{len(new)} chunks of 1 commit not pushed yet (main): git push origin main\n" \
        in out, out
    assert "missing" not in out and out.splitlines()[-1].startswith("ok: ")

    # a chunk only the pushed commit needs (the old version of the tuned layer) goes
    only_base = sorted(manifest_at(repo, "HEAD~1").digests() -
                       manifest_at(repo, "HEAD").digests())[0]
    remote_case.objects().blobs.delete(object_key(only_base))
    proc = _fsck(repo)
    out = proc.stdout.decode()
    assert proc.returncode == 1, out
    missing = [line for line in out.splitlines() if line.startswith("missing object")]
    blob = repo.out("rev-parse", "HEAD~1:model.safetensors").strip()
    assert len(missing) == 1 and missing[0].startswith(f"missing object {only_base}"), out
    assert missing[0].endswith(f"needed by model.safetensors in commit {base[:10]} (git blob "
                               f"{blob[:10]})"), missing[0]
    assert f"{len(new)} chunks of 1 commit not pushed yet (main)" in out
    assert b"1 problem(s) found" in proc.stderr

    # pushed now: nothing is waiting, and the pushed commit's chunk is still missing
    repo.git("push", "-q", "origin", "main")
    proc = _fsck(repo)
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "not pushed" not in out, out
    assert f"missing object {only_base}" in out and f"in commit {base[:10]}" in out


def test_a_branch_without_upstream_a_detached_head_and_the_index(repo, tmp_path):
    """The theta remote is named ``store``, not after the git remote: pushes to origin send
    their chunks there (theta-zarr.default-remote), so origin's remote-tracking refs decide."""
    _origin(repo, Case("local", str(tmp_path / "bucket"), {}, []), tmp_path, name="store")
    commit_checkpoint(repo, "base", shape=REMOTE_SHAPE)
    repo.git("push", "-q", "origin", "main")
    assert _fsck(repo, "store").returncode == 0

    repo.git("switch", "-q", "-c", "exp")  # never pushed: no upstream, no remote branch
    commit_checkpoint(repo, "exp", shape=REMOTE_SHAPE, tuned=_layers(0))
    exp = manifest_at(repo, "HEAD").digests() - manifest_at(repo, "main").digests()
    repo.git("switch", "-q", "--detach")
    commit_checkpoint(repo, "detached", shape=REMOTE_SHAPE, tuned=_layers(0, 2))
    detached = manifest_at(repo, "HEAD").digests() - manifest_at(repo, "exp").digests()
    write_model(str(repo.path / "model.safetensors"), REMOTE_SHAPE, seed=9)  # the index:
    repo.git("add", "model.safetensors")  # a version added, never committed
    staged = manifest_at(repo, "").digests() - manifest_at(repo, "HEAD").digests() - exp
    proc = _fsck(repo, "store")
    out = proc.stdout.decode()
    assert proc.returncode == 0, (out, proc.stderr)
    assert f"{len(exp)} chunks of 1 commit not pushed yet (exp): git push origin exp\n" \
        in out, out
    assert f"{len(detached)} chunks of 1 commit not pushed yet (detached HEAD): 'git switch " \
        "-c BRANCH', then 'git push origin BRANCH'\n" in out, out
    assert f"{len(staged)} chunks that no branch or tag needs (the index, stashes, reflogs, " \
        "another git remote's branches) are not on store: no push sends them\n" in out, out

    repo.git("push", "-q", "origin", "exp")
    out = _fsck(repo, "store").stdout.decode()
    assert "(exp)" not in out and "(detached HEAD)" in out, out


def test_a_remote_no_git_remote_pushes_to_expects_every_branch(repo, tmp_path):
    """``backup`` gets chunks only through 'git theta-zarr push': this clone cannot tell
    what was sent, so every branch's chunks are expected there, and the failure says why."""
    _origin(repo, Case("local", str(tmp_path / "bucket"), {}, []), tmp_path)
    (tmp_path / "backup").mkdir()  # an empty remote, nothing sent there yet
    repo.tz("remote", "add", "backup", str(tmp_path / "backup"))
    commit_checkpoint(repo, "base", shape=REMOTE_SHAPE)
    base = _head(repo)
    repo.git("push", "-q", "origin", "main")
    assert _fsck(repo).returncode == 0
    proc = _fsck(repo, "backup")
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "not pushed" not in out, out
    assert f"in commit {base[:10]}" in out
    assert "no git remote sends its chunks to 'backup'" in proc.stderr.decode()
    assert "'git theta-zarr push backup --all' uploads them" in proc.stderr.decode()
    repo.tz("push", "backup", "--all")
    assert _fsck(repo, "backup").stdout.decode().startswith("ok: ")
