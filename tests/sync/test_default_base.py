"""Deltas by default for cluster jobs: a push without --base-ref continues the newest ref
of its folder, says so, and reports the bytes sent; ls shows what each ref stores."""

from __future__ import annotations

import pytest
from helpers import CHUNK, SHAPE, Case, env_for, file_sha, model, tz

from theta_zarr import codecs, delta, sync
from theta_zarr.demo import write_model
from theta_zarr.refs import RefError, default_base_ref
from theta_zarr.storage import BlobInfo


def test_default_base_ref_is_the_newest_ref_of_the_same_folder():
    refs = [("run7/step-1000", 100.0), ("run7/step-2000", 200.0), ("run8/step-9000", 900.0),
            ("run7/eval/step-5000", 950.0), ("latest", 999.0)]
    assert default_base_ref(refs, "run7/step-3000") == "run7/step-2000"
    assert default_base_ref(refs, "run7/step-2000") == "run7/step-1000"  # another ref
    assert default_base_ref(refs, "run9/step-1") is None
    assert default_base_ref(refs, "best") == "latest"  # the top level is a folder too
    assert default_base_ref(refs, "run7/eval/step-6000") == "run7/eval/step-5000"
    assert default_base_ref([], "run7/step-1") is None
    # equal or unknown times: natural name order (step-1000 after step-999)
    assert default_base_ref([("r/step-1000", None), ("r/step-999", None)],
                            "r/step-2000") == "r/step-1000"
    assert default_base_ref([("r/step-1000", 5.0), ("r/step-999", 5.0)], "r/x") == "r/step-1000"
    assert default_base_ref([("r/old", 1.0), ("r/zzz", None)], "r/x") == "r/old"
    # Refs.list's (name, BlobInfo) pairs
    infos = [("r/a", BlobInfo("refs/r/a", 80, 300.0)), ("r/b", BlobInfo("refs/r/b", 80, 100.0))]
    assert default_base_ref(infos, "r/c") == "r/a"
    with pytest.raises(RefError):
        default_base_ref(refs, "run7/bad..name")


def test_dense_step_goes_as_deltas_over_the_previous_step_without_base_ref(tmp_path):
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    env = env_for(case, tmp_path)
    opts = ["--chunk-size", CHUNK]
    first = model(tmp_path / "step-1000.safetensors")
    err = tz(["publish", str(first), case.url, "--ref", "run7/step-1000", *opts], env
             ).stderr.decode()
    assert "no delta base" in err and "MB raw -> " in err
    # a dense fine-tune step: every tensor moves by about 1e-3 relative
    second = tmp_path / "step-2000.safetensors"
    write_model(str(second), SHAPE, tuned=[n for n, _ in SHAPE.tensors()], step=1e-3)
    err = tz(["publish", str(second), case.url, "--ref", "run7/step-2000", *opts], env
             ).stderr.decode()
    assert "delta base run7/step-1000" in err, err
    assert " deltas " in err and " full " not in err, err  # every changed chunk a delta
    remote = case.remote()
    m1 = remote.load(remote.refs.read("run7/step-1000").digest)
    m2 = remote.load(remote.refs.read("run7/step-2000").digest)
    changed = m2.digests() - m1.digests()
    assert changed
    forms = {remote.objects.delta_header(d).form for d in changed}
    assert forms == {delta.INT}
    # full objects of the first push: chosen by dtype (bf16 -> expsplit)
    heads = {codecs.split(remote.objects.get_encoded(d))[0] for d in m1.digests()}
    assert heads == {"expsplit"}
    out = tmp_path / "fresh" / "model.safetensors"
    tz(["pull", case.url, "run7/step-2000", "-o", str(out), "--cache",
        str(tmp_path / "fresh-cache")], env)
    assert file_sha(out) == file_sha(second)
    # another folder: no base
    err = tz(["publish", str(second), case.url, "--ref", "run8/step-1", *opts], env
             ).stderr.decode()
    assert "no delta base" in err
    # ls: raw and stored size per ref; the delta step stores a fraction of the first
    rows = {r.name: r for r in sync.ls(remote, "run7/")}
    assert rows["run7/step-2000"].nbytes == rows["run7/step-1000"].nbytes
    assert 0 < rows["run7/step-2000"].stored < 0.5 * rows["run7/step-1000"].stored
    assert rows["run7/step-1000"].stored < rows["run7/step-1000"].nbytes
    lines = tz(["ls", case.url, "run7/"], env).stdout.decode().splitlines()
    assert len(lines) == 2 and all("stored" in line.split("\t")[3] for line in lines)


def test_a_default_base_whose_version_is_unreadable_is_not_claimed(tmp_path):
    """The newest ref of the folder names a manifest the bucket lost: the push still
    succeeds, as full objects, and its line does not claim deltas over that ref."""
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    env = env_for(case, tmp_path)
    opts = ["--chunk-size", CHUNK]
    tz(["publish", str(model(tmp_path / "a.safetensors")), case.url, "--ref", "run7/step-1",
        *opts], env)
    remote = case.remote()
    gone = remote.refs.read("run7/step-1").digest
    for info in list(remote.blobs.list("manifests/")):
        if gone[7:] in info.key:
            remote.blobs.delete(info.key)
    second = tmp_path / "b.safetensors"
    write_model(str(second), SHAPE, tuned=[n for n, _ in SHAPE.tensors()], step=1e-3)
    err = tz(["publish", str(second), case.url, "--ref", "run7/step-2", *opts], env
             ).stderr.decode()
    assert "delta base run7/step-1 (unreadable: no deltas)" in err, err
    assert " deltas " not in err, err


def test_ls_lists_a_runs_steps_in_natural_order_and_selects_as_git_for_each_ref(tmp_path):
    """Names were sorted as strings: run7/step-10 came before run7/step-2, and the last row
    (`ls REMOTE run7/ | tail -1`, the step to resume from) was step-9, not step-10.  And
    ``ls REMOTE run7`` listed run70/... too (a string prefix); a pattern now matches a
    whole name or up to a slash, and a glob matches whole names, its '*' stopping at a
    slash as git's does."""
    case = Case("local", str(tmp_path / "bucket"), {}, [])
    env = env_for(case, tmp_path)
    tz(["publish", str(model(tmp_path / "a.safetensors")), case.url, "--ref", "run7/step-1",
        "--chunk-size", CHUNK], env)
    remote = case.remote()
    digest = remote.refs.read("run7/step-1").digest
    for name in ("run7/step-10", "run7/step-2", "run7/step-9", "run7/step-100",
                 "run7/latest", "run70/step-1", "run7-old"):
        remote.refs.set(name, digest)

    def names(*pattern: str) -> list[str]:
        out = tz(["ls", case.url, *pattern], env).stdout.decode()
        return [r.split("\t")[0] for r in out.splitlines()]

    steps = ["run7/latest", "run7/step-1", "run7/step-2", "run7/step-9", "run7/step-10",
             "run7/step-100"]
    assert names("run7/") == names("run7") == steps
    assert names("run7/step-1") == ["run7/step-1"]
    assert names("run7/step-1*") == ["run7/step-1", "run7/step-10", "run7/step-100"]
    assert names("run7-*") == ["run7-old"]
    assert names("run70") == ["run70/step-1"]
    assert names("run") == [] and len(names()) == 8
    # '*' and '?' stop at '/' as in git's wildmatch ('run7*' listed run7/... and run70/...)
    assert names("run7*") == ["run7-old"]
    every = [*steps, "run70/step-1", "run7-old"]
    for pattern, selected in (("run?/step-1", ["run7/step-1"]),
                              ("*/step-1", ["run7/step-1", "run70/step-1"]),
                              ("**/step-1", ["run7/step-1", "run70/step-1"]),
                              ("run7/**", steps),
                              ("run7/step-[!1]", ["run7/step-2", "run7/step-9"]),
                              ("run7\\-old", ["run7-old"])):
        assert [n for n in every if sync.ref_matches(n, pattern)] == selected, pattern
