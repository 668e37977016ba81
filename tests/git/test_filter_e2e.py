"""The issue's core flow with real git: install, track, add, commit, fine-tune, checkout."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import subprocess
import sysconfig

import numpy as np
import pytest
import safetensors.numpy
import torch
from helpers import file_sha, manifest_at, run_python

from theta_zarr.demo import ModelShape, write_model
from theta_zarr.git.filter_start import PIPE_BYTES
from theta_zarr.git.pktline import PktReader, PktWriter
from theta_zarr.manifest import Manifest

SHAPE = ModelShape(hidden=64, layers=4, vocab=256)


def changed_digests(before: Manifest, after: Manifest) -> set[str]:
    old = before.digests()
    return {d for d in after.digests() if d not in old}


def test_install_sets_filter_and_track_writes_attributes(repo):
    cfg = repo.out("config", "--local", "--get-regexp", "^filter\\.theta-zarr\\.")
    # run from a virtual environment, install names its executable by path (troubleshooting)
    exe = os.path.join(sysconfig.get_path("scripts"), "git-theta-zarr")
    assert f"filter.theta-zarr.process {exe} filter-process" in cfg
    assert "filter.theta-zarr.required true" in cfg
    attrs = (repo.path / ".gitattributes").read_text()
    assert "*.safetensors filter=theta-zarr diff=theta-zarr merge=theta-zarr -text" in attrs
    listed = repo.tz("track").stdout.decode().split()
    assert listed == ["*.safetensors", "*.pt", "*.npz"]
    # tracking twice adds no second line
    repo.tz("track", "*.pt")
    assert (repo.path / ".gitattributes").read_text().count("*.pt ") == 1


def test_commit_stores_manifest_and_chunks(repo):
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    model = repo.path / "model.safetensors"
    write_model(str(model), SHAPE)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "base")
    blob = repo.git("cat-file", "blob", "HEAD:model.safetensors").stdout
    assert blob.startswith(b'{"theta_zarr": 1,')
    m = Manifest.from_bytes(blob)
    assert set(m.params) == {n for n, _ in SHAPE.tensors()}
    # every stored chunk is in the cache, under objects/ab/cdef...
    files = repo.object_files()
    assert {f"{d[7:9]}/{d[9:]}" for d in m.digests()} == files
    # the manifest is far smaller than the model
    assert len(blob) < model.stat().st_size / 20
    assert repo.out("status", "--porcelain") == ""


def test_two_layer_finetune_writes_only_changed_chunks(repo):
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    model = repo.path / "model.safetensors"
    write_model(str(model), SHAPE)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "base")
    base_objects = repo.object_files()
    tuned = SHAPE.layer_names(1) + SHAPE.layer_names(2)
    write_model(str(model), SHAPE, tuned=tuned)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "tuned")
    new_objects = repo.object_files() - base_objects
    before, after = manifest_at(repo, "HEAD~1"), manifest_at(repo, "HEAD")
    expected = changed_digests(before, after)
    assert {f"{d[7:9]}/{d[9:]}" for d in expected} == new_objects
    # the new chunks all belong to the tuned layers, and every tuned tensor changed
    changed_params = {n for n in after.params if after.params[n] != before.params[n]}
    assert changed_params == {n for n in tuned if not after.params[n].is_inline} | {
        n for n in tuned if after.params[n].is_inline and after.params[n] != before.params[n]}
    assert changed_params <= set(tuned)
    assert len(changed_params) >= len(tuned) - 2  # norms at 1+noise may round to equal bf16


def test_checkout_old_version_is_bit_exact_and_status_clean(repo):
    model = repo.path / "model.safetensors"
    write_model(str(model), SHAPE)
    base_hash = file_sha(model)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "base")
    write_model(str(model), SHAPE, tuned=SHAPE.layer_names(0))
    tuned_hash = file_sha(model)
    repo.git("commit", "-q", "-am", "tuned")
    repo.git("checkout", "HEAD~1", "--", "model.safetensors")
    assert file_sha(model) == base_hash
    assert repo.out("diff", "--name-only") == ""  # worktree == index: clean(smudge(m)) == m
    repo.git("checkout", "HEAD", "--", "model.safetensors")
    assert file_sha(model) == tuned_hash
    assert repo.out("status", "--porcelain") == ""
    # a fresh checkout of the whole tree after deleting the file
    model.unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert file_sha(model) == tuned_hash


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float16",
                                   "float32", "int8", "int64", "bool"])
def test_dtype_round_trip_through_git(repo, dtype):
    g = torch.Generator().manual_seed(1)
    if dtype == "bool":
        t = torch.rand(300, 17, generator=g) > 0.5
    elif dtype.startswith("int"):
        t = torch.randint(-100, 100, (300, 17), generator=g).to(getattr(torch, dtype))
    else:
        t = (torch.randn(300, 17, generator=g) * 3).to(getattr(torch, dtype))
    import safetensors.torch

    path = repo.path / "w.safetensors"
    safetensors.torch.save_file({"w": t, "s": t[0, 0].clone()}, str(path))
    original = path.read_bytes()
    repo.git("add", "w.safetensors")
    repo.git("commit", "-q", "-m", dtype)
    path.unlink()
    repo.git("checkout", "--", "w.safetensors")
    assert path.read_bytes() == original
    m = manifest_at(repo, "HEAD", "w.safetensors")
    assert m.params["w"].dtype == dtype


def test_torch_and_npz_checkpoints_round_trip(repo):
    sd = {"model": {"w": torch.randn(64, 64), "b": torch.zeros(64)}, "step": 7}
    torch.save(sd, repo.path / "ckpt.pt")
    arrays = {"x": np.arange(4096, dtype=np.float32), "y": np.ones((3, 3), dtype=np.int16)}
    np.savez(repo.path / "arrays.npz", **arrays)
    npz_bytes = (repo.path / "arrays.npz").read_bytes()
    repo.git("add", "ckpt.pt", "arrays.npz")
    repo.git("commit", "-q", "-m", "pt and npz")
    for f in ("ckpt.pt", "arrays.npz"):
        (repo.path / f).unlink()
    repo.git("checkout", "--", "ckpt.pt", "arrays.npz")
    loaded = torch.load(repo.path / "ckpt.pt", weights_only=True)
    assert loaded["step"] == 7
    assert torch.equal(loaded["model"]["w"], sd["model"]["w"])
    assert (repo.path / "arrays.npz").read_bytes() == npz_bytes
    assert repo.out("status", "--porcelain") == ""


def test_ls_files_reports_params_sizes_chunks(repo):
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    write_model(str(repo.path / "model.safetensors"), ModelShape(hidden=32, layers=11, vocab=64))
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "base")
    text = repo.tz("ls-files").stdout.decode()
    m = manifest_at(repo, "HEAD")
    nchunks = sum(len(e.chunks) for e in m.params.values())
    assert text.startswith("model.safetensors  safetensors  ")
    assert f"{len(m.params)} params" in text and f"{nchunks} chunks" in text
    assert "materialized" in text
    rows = json.loads(repo.tz("ls-files", "--json", "--params").stdout)
    assert rows[0]["bytes"] == m.nbytes
    assert rows[0]["cached"] == rows[0]["objects"] == len(m.digests())
    names = [p["name"] for p in rows[0]["parameters"]]
    assert set(names) == set(m.params)
    # in natural order: layers.2 before layers.10, as the model's modules come
    layers = [int(n.split(".")[1]) for n in names if n.startswith("layers.")]
    assert layers == sorted(layers) and layers[-1] == 10


def test_one_filter_process_serves_many_files(repo, tmp_path):
    """git starts the long-running filter once per command, not once per file."""
    log = tmp_path / "starts.log"
    wrapper = tmp_path / "filter-wrapper"
    wrapper.write_text(f"#!/bin/sh\necho start >> {log}\nexec git-theta-zarr filter-process\n")
    wrapper.chmod(0o755)
    repo.git("config", "filter.theta-zarr.process", str(wrapper))
    for i in range(5):
        safetensors.numpy.save_file({"w": np.full((64, 64), i, np.float32)},
                                    str(repo.path / f"m{i}.safetensors"))
    repo.git("add", ".")
    assert log.read_text().count("start") == 1


def test_clean_reads_the_index_through_one_git_process(repo, tmp_path):
    """Each file clean read the manifest git's index holds for it (to keep its chunk
    shapes) with a ``git cat-file blob :PATH`` process of its own: most of the time of a
    ``git add`` of many small checkpoints.  One ``cat-file --batch`` now answers them all,
    and what it answers is still the index's: the chunk shapes of the committed files
    stay when the chunk-size setting changes, a new file gets the setting's."""
    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    names = ["m0.safetensors", "m 1.safetensors", "m2.safetensors"]
    for i, name in enumerate(names):
        safetensors.numpy.save_file({"w": np.full((128, 64), i, np.float32)},
                                    str(repo.path / name))
    repo.git("add", ".")
    repo.git("commit", "-q", "-m", "base")
    repo.git("config", "theta-zarr.chunk-size", "64KiB")
    for i, name in enumerate([*names, "new file.safetensors"]):
        safetensors.numpy.save_file({"w": np.full((128, 64), i + 10, np.float32)},
                                    str(repo.path / name))
    trace = tmp_path / "trace.json"
    repo.git("add", ".", env={"GIT_TRACE2_EVENT": str(trace)})
    argvs = [json.loads(line).get("argv") for line in trace.read_text().splitlines()]
    assert [a for a in argvs if a and a[1:3] == ["cat-file", "blob"]] == []
    assert len([a for a in argvs if a and a[1:3] == ["cat-file", "--batch"]]) == 1
    shapes = {name: Manifest.from_bytes(repo.git("cat-file", "blob", f":{name}").stdout,
                                        name).params["w"].chunk_shape
              for name in [*names, "new file.safetensors"]}
    assert shapes == {**{n: (64, 64) for n in names}, "new file.safetensors": (128, 64)}
    assert repo.out("status", "--porcelain") == "".join(
        f'M  "{n}"\n' if " " in n else f"M  {n}\n" for n in sorted(names)) + \
        'A  "new file.safetensors"\n'


def test_a_resolved_merge_conflict_keeps_the_chunk_shape_of_its_sides(repo):
    """The clean asked only the index's stage-0 entry for the chunk shapes to keep, and
    a file in a merge conflict has none: the resolved file, added, was chunked by the
    current setting, every chunk new though both sides had chunked it alike.  Ours
    (stage 2) now gives the shapes while the conflict lasts."""
    def save(value: int) -> None:
        safetensors.numpy.save_file({"w": np.full((128, 64), value, np.float32)},
                                    str(repo.path / "m.safetensors"))

    repo.git("config", "theta-zarr.chunk-size", "16KiB")
    save(0)
    repo.git("add", "m.safetensors")
    repo.git("commit", "-q", "-m", "base")
    repo.git("config", "theta-zarr.chunk-size", "64KiB")
    repo.git("checkout", "-q", "-b", "side")
    save(1)
    repo.git("commit", "-q", "-am", "side")
    repo.git("checkout", "-q", "-")
    save(2)
    repo.git("commit", "-q", "-am", "main")
    assert repo.git("merge", "side", check=False).returncode != 0
    assert repo.out("status", "--porcelain") == "UU m.safetensors\n"
    save(3)
    repo.git("add", "m.safetensors")
    manifest = Manifest.from_bytes(repo.git("cat-file", "blob", ":m.safetensors").stdout,
                                   "m.safetensors")
    assert manifest.params["w"].chunk_shape == (64, 64)
    repo.git("commit", "-q", "--no-edit")
    assert repo.out("status", "--porcelain") == ""


def test_lazy_smudge_writes_manifest_and_clean_passes_it_through(repo):
    write_model(str(repo.path / "model.safetensors"), SHAPE)
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "base")
    (repo.path / "model.safetensors").unlink()
    repo.git("checkout", "--", "model.safetensors", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    text = (repo.path / "model.safetensors").read_bytes()
    assert text == repo.git("cat-file", "blob", "HEAD:model.safetensors").stdout
    assert repo.out("status", "--porcelain") == ""
    out = repo.tz("ls-files").stdout.decode()
    assert out.rstrip().endswith("lazy")
    # config switch too
    repo.git("config", "theta-zarr.lazy", "true")
    (repo.path / "model.safetensors").unlink()
    repo.git("checkout", "--", "model.safetensors")
    assert (repo.path / "model.safetensors").read_bytes() == text


def test_clean_and_smudge_single_file_commands(repo):
    import safetensors.torch

    buf = io.BytesIO()
    path = repo.path / "x.safetensors"
    safetensors.torch.save_file({"a": torch.randn(200, 10)}, str(path))
    manifest = repo.tz("clean", "x.safetensors", input=path.read_bytes()).stdout
    assert manifest.startswith(b'{"theta_zarr": 1,')
    back = repo.tz("smudge", "x.safetensors", input=manifest).stdout
    buf.write(back)
    assert buf.getvalue() == path.read_bytes()


def test_an_empty_tracked_file_stays_empty_and_is_named_so(repo):
    """clean keeps an empty file empty (as git-lfs does); ls-files and diff call it that,
    not a file committed before it was tracked."""
    (repo.path / "empty.safetensors").write_bytes(b"")
    repo.git("add", "empty.safetensors")
    repo.git("commit", "-q", "-m", "empty")
    assert repo.git("cat-file", "-s", "HEAD:empty.safetensors").stdout.strip() == b"0"
    listed = repo.tz("ls-files").stdout.decode()
    assert "empty.safetensors  (empty file, kept as it is)" in listed
    assert json.loads(repo.tz("ls-files", "--json").stdout) == [
        {"path": "empty.safetensors", "format": None, "bytes": 0}]
    text = repo.tz("diff", "HEAD~1", "HEAD").stdout.decode()
    assert "an empty file (kept as it is)" in text and "before it was tracked" not in text



def test_a_symbolic_link_under_a_tracked_pattern_is_named_as_one(repo, tmp_path):
    """``ln -s ~/.cache/huggingface/.../model.safetensors .``: git stores the link (no
    filter runs on it), so no chunk is stored and a clone gets the link; ls-files and the
    API said the file was "committed before it was tracked"."""
    write_model(str(tmp_path / "elsewhere.safetensors"), SHAPE)
    os.symlink(tmp_path / "elsewhere.safetensors", repo.path / "model.safetensors")
    repo.git("add", "model.safetensors")
    repo.git("commit", "-q", "-m", "link")
    listed = repo.out("theta-zarr", "ls-files")
    assert listed == (f"model.safetensors  (a symbolic link to {tmp_path}/elsewhere.safetensors:"
                      " git stores the link, not the checkpoint it points to; copy the file in "
                      "its place to store it)\n")
    assert json.loads(repo.tz("ls-files", "--json", "--rev", "HEAD").stdout)[0]["link"] == \
        f"{tmp_path}/elsewhere.safetensors"
    proc = run_python("import theta_zarr; theta_zarr.load_state_dict('model.safetensors')",
                      cwd=repo.path)
    assert b"HEAD:model.safetensors: a symbolic link to" in proc.stderr

def test_a_large_blob_that_is_no_manifest_is_not_read_to_find_out(repo, monkeypatch):
    """A tracked path holding a checkpoint committed before it was tracked: ls-files
    (tracked_files) learns its size without reading it whole; smaller blobs are read."""
    from theta_zarr.git import files
    from theta_zarr.git.repo import Repo

    repo.tz("untrack", "*.safetensors")
    (repo.path / "old.safetensors").write_bytes(b"\x07" * 50_000)
    write_model(str(repo.path / "model.safetensors"), SHAPE)
    repo.git("add", "old.safetensors", ".gitattributes")
    repo.git("commit", "-q", "-m", "plain")
    repo.tz("track", "*.safetensors")
    repo.git("add", ".gitattributes", "model.safetensors")  # old.safetensors stays plain
    repo.git("commit", "-q", "-m", "tracked")
    monkeypatch.chdir(repo.path)
    for key, value in repo.env.items():  # the test's git settings, in this process
        monkeypatch.setenv(key, value)
    r = Repo.discover(str(repo.path))
    shas = [repo.out("rev-parse", f"HEAD:{n}").strip()
            for n in ("old.safetensors", "model.safetensors")]
    assert files.small_blobs(r, shas, limit=49_999) == [shas[1]]
    assert files.small_blobs(r, shas, limit=50_000) == shas
    assert files.object_info(r, shas)[0] == ("blob", 50_000)
    monkeypatch.setattr(files, "MAX_MANIFEST_BLOB", 20_000)  # above the manifest's size
    got = {f.path: f for f in files.tracked_files(r)}
    assert got["old.safetensors"].manifest is None and got["old.safetensors"].size == 50_000
    assert got["model.safetensors"].manifest is not None


def started_filter(repo) -> subprocess.Popen:
    """``git-theta-zarr filter-process`` in ``repo``, after git's side of the handshake."""
    p = subprocess.Popen(["git-theta-zarr", "filter-process"], cwd=repo.path,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=repo.env)
    git = PktWriter(p.stdin)
    git.text("git-filter-client", "version=2")
    git.flush()
    git.text("capability=clean", "capability=smudge")
    git.flush()
    p.stdin.flush()
    answer = PktReader(p.stdout)
    assert answer.read_text_list() == ["git-filter-server", "version=2"]
    assert answer.read_text_list() == ["capability=clean", "capability=smudge"]
    return p


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="Linux only")
def test_the_filter_widens_the_pipes_to_and_from_git(repo):
    """A 64 KiB pipe holds one pkt-line: git and the filter would wake each other per
    packet.  The filter asks for 1 MiB on both pipes before the handshake."""
    p = started_filter(repo)
    assert fcntl.fcntl(p.stdin.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES
    assert fcntl.fcntl(p.stdout.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES
    p.stdin.close()
    assert p.wait(timeout=60) == 0
    p.stdout.close()
    p.stderr.close()


def test_a_filter_that_ends_on_a_protocol_error_says_so_and_exits_1(repo):
    """The filter leaves without the interpreter's teardown: its last words and exit
    status must still reach git."""
    proc = subprocess.run(["git-theta-zarr", "filter-process"], cwd=repo.path, env=repo.env,
                          input=b"zzzz", capture_output=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("theta-zarr: filter protocol error: bad pkt-line")
    assert b"Traceback" not in proc.stderr


def test_ctrl_c_ends_the_filter_with_one_line_and_status_130(repo):
    """A terminal's Ctrl-C reaches git's filter too: one line, exit 130, no traceback (it
    printed a KeyboardInterrupt traceback, and could leave its threads waiting forever)."""
    p = started_filter(repo)
    p.send_signal(signal.SIGINT)  # the filter now waits for git's first command
    assert p.wait(timeout=60) == 130
    assert p.stderr.read().decode() == "theta-zarr: interrupted\n"
    for f in (p.stdin, p.stdout, p.stderr):
        f.close()


def test_ctrl_c_in_the_middle_of_a_checkout_says_how_to_restore_a_file(repo):
    """git removes the old file before it asks for the new one: a Ctrl-C in between
    leaves it absent (git's own checkout does too); the line says how to get it back."""
    p = started_filter(repo)
    git = PktWriter(p.stdin)
    git.text("command=smudge", "pathname=m.safetensors")
    git.flush()
    git.flush()  # empty content: an opaque answer, the filter now serves the next one
    p.stdin.flush()
    answer = PktReader(p.stdout)
    assert answer.read_text_list() == ["status=success"]
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130
    err = p.stderr.read().decode()
    assert err.startswith("theta-zarr: interrupted; git's checkout stopped part way"), err
    assert "'git restore PATH'" in err
    for f in (p.stdin, p.stdout, p.stderr):
        f.close()


def test_library_warnings_never_reach_git_output(repo):
    """torch warns on complex32 ("ComplexHalf support is experimental"); its two lines
    reached the user through git add and git checkout."""
    t = torch.zeros(4, 4, dtype=torch.complex32)
    torch.save({"z": t}, repo.path / "c.pt")
    proc = repo.git("add", "c.pt")
    assert b"Warning" not in proc.stderr, proc.stderr.decode()
    repo.git("commit", "-q", "-m", "c")
    (repo.path / "c.pt").unlink()
    proc = repo.git("checkout", "--", "c.pt")
    assert b"Warning" not in proc.stderr, proc.stderr.decode()
    assert torch.equal(torch.load(repo.path / "c.pt", weights_only=True)["z"].view(torch.uint8),
                       t.view(torch.uint8))


def test_git_going_away_in_the_middle_of_a_file_is_one_plain_line(repo, tmp_path):
    """git killed while it sends a file to clean: the filter says so and exits 1; it is
    not one of our bugs ("internal error")."""
    src = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"w": np.ones((512, 1024), np.float32)}, str(src))
    data = src.read_bytes()
    p = started_filter(repo)
    git = PktWriter(p.stdin)
    git.text("command=clean")
    git.text("pathname=m.safetensors")
    git.flush()
    content = git.content()
    content.write(data[: 1 << 20])  # half the file, then git dies
    content.close()
    p.stdin.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1
    p.stdout.close()
    p.stderr.close()
    assert err.strip() == ("theta-zarr: git closed the filter pipe in the middle of a request "
                           "(git was stopped); the file it was sending was not recorded"), err


def test_a_file_name_that_is_not_utf8_goes_through_every_command(repo):
    """git paths are bytes: a Latin-1 name (``\\xe9t\\xe9.safetensors``) once stopped the
    filter at its header line, and with it every other file of the ``git add``."""
    name = b"\xe9t\xe9.safetensors"
    path = os.path.join(os.fsencode(repo.path), name)
    safetensors.numpy.save_file({"w": np.arange(12, dtype=np.float32)}, os.fsdecode(path))
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, str(repo.path / "ok.safetensors"))
    before = file_sha(os.fsdecode(path))
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "latin-1 name")
    shown = repo.git("show", b"HEAD:" + name).stdout  # the manifest, not the file
    assert Manifest.from_bytes(shown).params["w"].shape == (12,)
    listed = repo.tz("ls-files").stdout.decode()
    assert '"\\351t\\351.safetensors"  safetensors  1 param' in listed  # as git quotes it
    safetensors.numpy.save_file({"w": np.arange(12, dtype=np.float32) * 2}, os.fsdecode(path))
    diff = repo.tz("diff").stdout
    assert name + b": 1 changed" in diff
    # --name-only quotes it as git does (it printed the raw byte, and a newline in a
    # name split one path over two lines)
    assert repo.tz("diff", "--name-only").stdout == repo.git("diff", "--name-only").stdout
    # an error about it names it as git does, printable in any locale (it said \udce9)
    bad = repo.tz("resolve", os.fsdecode(name), "--strategy", "ours", check=False)
    assert bad.returncode != 0
    assert bad.stderr.startswith(b'theta-zarr: "\\351t\\351.safetensors": not in a conflicted')
    os.unlink(path)
    repo.git("checkout", "--", ".")
    assert file_sha(os.fsdecode(path)) == before
    assert repo.git("status", "--porcelain").stdout == b""
