"""A user's mistake gets one `theta-zarr:` line about the user's input: never a traceback,
never "internal error" (which docs/troubleshooting.md reserves for bugs)."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest
from helpers import (
    REMOTE_SHAPE,
    GitRepo,
    commit_checkpoint,
    file_sha,
    init_bare,
    isolated_git_env,
    manifest_at,
)

from theta_zarr.demo import write_model


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Non-zero exit, a `theta-zarr:` line naming ``words``, no traceback, not a bug."""
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "Traceback" not in err and "internal error" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("theta-zarr: ")]
    assert ours and all(w in ours[0] for w in words), err
    return ours[0]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> GitRepo:
    """A repository with one committed checkpoint pushed to a folder remote."""
    tmp = tmp_path_factory.mktemp("pushed")
    env = isolated_git_env()
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir()
    r = GitRepo(tmp / "repo", env)
    r.path.mkdir()
    r.git("init", "-q", "-b", "main")
    r.tz("install")
    r.tz("track", "*.safetensors")
    init_bare(tmp / "o.git", env)
    r.git("remote", "add", "origin", str(tmp / "o.git"))
    r.tz("remote", "add", "origin", str(tmp / "bucket"), "--shared")
    write_model(str(r.path / "m.safetensors"), REMOTE_SHAPE)
    r.git("add", "-A")
    r.git("commit", "-q", "-m", "m")
    r.git("push", "-q", "origin", "main")
    return r


#: Every command that reads theta-zarr's settings, and the two filter directions.
COMMANDS = [("tz", "ls-files"), ("tz", "fetch"), ("tz", "push", "origin"),
            ("tz", "materialize"), ("tz", "diff"), ("tz", "gc"), ("tz", "fsck"),
            ("git", "add", "new.safetensors"), ("git", "checkout", "--", "m.safetensors")]


@pytest.mark.parametrize("key, value", [("chunk-size", "100"), ("concurrency", "abc"),
                                        ("cache-compression", "lz4"), ("delta-depth", "x"),
                                        ("direct-checkout", "banana"),
                                        ("cache-compression", "expsplit"),
                                        ("delta-depth", "0"), ("delta-ratio", "5")])
def test_bad_config_value_is_one_line_from_every_command(pushed, key, value):
    r = pushed
    write_model(str(r.path / "new.safetensors"), REMOTE_SHAPE, seed=1)
    (r.path / "m.safetensors").write_bytes(b"")  # diff has a change; checkout rewrites it
    r.git("config", f"theta-zarr.{key}", value)
    try:
        for kind, *args in COMMANDS:
            proc = (r.tz if kind == "tz" else r.git)(*args, check=False)
            line = assert_user_error(proc, f"theta-zarr.{key}", repr(value))
            assert "\n" not in line
    finally:
        r.git("config", "--unset", f"theta-zarr.{key}")
        (r.path / "new.safetensors").unlink()
        r.git("checkout", "--", "m.safetensors")


def test_cache_compression_takes_every_writer_name_the_docs_list(repo):
    """``auto`` (docs/configuration.md) is a writer policy, not a codec: it is accepted."""
    for value in ("raw", "zstd", "blosc", "auto"):
        repo.git("config", "theta-zarr.cache-compression", value)
        assert repo.tz("ls-files").returncode == 0


@pytest.mark.parametrize("args", [("ls-files", "--rev", "HAED"), ("fetch", "origin", "HAED"),
                                  ("push", "origin", "HAED")])
def test_misspelt_revision_is_named(pushed, args):
    assert_user_error(pushed.tz(*args, check=False), "unknown revision 'HAED'")



@pytest.mark.parametrize("args", [("push", "orgin"), ("fetch", "orign")])
def test_a_misspelt_remote_name_is_answered_with_the_one_meant(pushed, args):
    """It said to run 'git theta-zarr remote add orgin URL': a second remote under the
    typo, whose pushes would go nowhere the team reads; given by theta-zarr.default-remote,
    it said no remote was configured at all."""
    line = assert_user_error(pushed.tz(*args, check=False), f"remote named {args[1]!r}",
                             "did you mean 'origin'?")
    assert "remote add" not in line
    # the name came from theta-zarr.default-remote: it said "no theta-zarr remote configured"
    line = assert_user_error(pushed.git("-c", f"theta-zarr.default-remote={args[1]}",
                                        "theta-zarr", args[0], check=False),
                             f"git config theta-zarr.default-remote = {args[1]!r} names no "
                             "theta-zarr remote; did you mean 'origin'?")

def test_paths_that_are_not_tracked_files(pushed):
    assert_user_error(pushed.tz("materialize", "nope.safetensors", check=False),
                      "nope.safetensors", "no such file")


@pytest.mark.parametrize("args", [("materialize", ""), ("diff", "HEAD", "--", "")])
def test_an_empty_path_names_no_file(pushed, args):
    """materialize '' (an unset shell variable) materialized every tracked checkpoint."""
    assert_user_error(pushed.tz(*args, check=False), "an empty path names no file")


@pytest.mark.parametrize("args", [("materialize", "/etc/passwd"), ("materialize", ".."),
                                  ("diff", "HEAD", "--", "../other.safetensors"),
                                  ("resolve", "-s", "ours", "/etc/passwd")])
def test_a_path_outside_the_repository_is_named(pushed, args):
    """git refuses such a path ("outside repository"); it reached the user as an internal
    error carrying git's own fatal line."""
    assert_user_error(pushed.tz(*args, check=False), args[-1], "outside the repository",
                      str(pushed.path))


@pytest.mark.parametrize("args, words", [
    (("trak", "*.pt"), ["No such command 'trak'", "'track'", "(see 'git theta-zarr --help')"]),
    (("ls-files", "--parms"), ["No such option '--parms'", "'--params'",
                               "(see 'git theta-zarr ls-files --help')"]),
    (("remote", "add"), ["Missing argument", "(see 'git theta-zarr remote add --help')"]),
    (("gc", "--repack-depth", "99"), ["--repack-depth", "(see 'git theta-zarr gc --help')"]),
])
def test_usage_mistakes_are_one_line_with_gits_status(pushed, args, words):
    """A mistyped command, option or value: one line naming the help, status 129 (git's)."""
    proc = pushed.tz(*args, check=False)
    line = assert_user_error(proc, *words)
    assert proc.returncode == 129
    assert proc.stderr.decode().strip() == line  # nothing but that line: no usage block


def test_resolve_names_a_misspelt_strategy_before_anything_else(pushed):
    """``resolve -s avrage`` on a file in no conflict said only 'not in a conflicted
    merge': the misspelling surfaced after the user had set up the merge again."""
    assert_user_error(pushed.tz("resolve", "model.safetensors", "-s", "avrage", check=False),
                      "unknown merge strategy 'avrage'", "average")


@pytest.mark.parametrize("args", [["fsck", "--remote"], ["gc", "--remote"], ["push"]])
def test_a_url_given_to_remote_says_it_takes_a_name(pushed, args):
    """push's REMOTE is its first argument: the line said '--remote takes ...'."""
    proc = pushed.tz(*args, "s3://team/models", check=False)
    assert_user_error(proc, "takes the name of a theta remote", "not a URL",
                      "remote add NAME s3://team/models")
    said = args[1] if len(args) > 1 else "REMOTE"
    assert f"theta-zarr: {said} takes the name" in proc.stderr.decode()


def test_outside_a_repository(tmp_path, git_env):
    proc = subprocess.run(["git-theta-zarr", "ls-files"], cwd=tmp_path, env=git_env,
                          capture_output=True)
    assert_user_error(proc, "not inside a git repository")


@pytest.mark.parametrize("name, option, words", [
    ("", None, ["remote name", "empty"]),
    ("my remote", None, ["remote name", "'my remote'", "spaces"]),
    ("a\nb", None, ["remote name", "control characters"]),
    ("r", "retry-timeout=-1", ["remote 'r': retry-timeout", "not '-1'"]),
    ("r", "retry-timeout=inf", ["remote 'r': retry-timeout", "not 'inf'"]),
])
def test_remote_add_refuses_what_later_commands_could_not_use(pushed, tmp_path, name, option,
                                                             words):
    """A name with a newline was an internal error; an empty one or one with a space was
    recorded (git names no remote so); a retry-timeout every push then refused was taken."""
    before = pushed.git("config", "--list").stdout
    args = ["remote", "add", name, str(tmp_path / "bucket")]
    proc = pushed.tz(*args, *(["--remote-option", option] if option else []), check=False)
    assert_user_error(proc, *words)
    assert pushed.git("config", "--list").stdout == before


def test_remote_add_refuses_a_file_but_takes_a_folder_not_made_yet(pushed, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    proc = pushed.tz("remote", "add", "f", str(tmp_path / "weights.bin"), check=False)
    assert_user_error(proc, "weights.bin is a file, not a folder")
    assert "theta-zarr.remote.f" not in pushed.git("config", "--list").stdout.decode()
    pushed.tz("remote", "add", "later", str(tmp_path / "not-yet"))


def test_inside_the_git_folder_says_so(pushed):
    """git itself says "this operation must be run in a work tree" there."""
    proc = subprocess.run(["git-theta-zarr", "ls-files"], cwd=pushed.path / ".git",
                          env=pushed.env, capture_output=True)
    assert_user_error(proc, "not inside a work tree", "is in the git folder",
                      str(pushed.path / ".git"))


def test_materialize_names_the_missing_object(pushed, make_repo, tmp_path):
    """A lazy clone whose remote lost an object: materialize says which one, as checkout does."""
    m = manifest_at(pushed, "HEAD", "m.safetensors")
    bucket = pushed.path.parent / "bucket"
    gone = sorted(m.digests())[0]
    obj = bucket / "objects" / gone[7:9] / gone[9:]
    data = obj.read_bytes()
    obj.chmod(0o644)
    obj.unlink()
    try:
        lazy = make_repo("lazy")
        lazy.env.update(pushed.env)
        GitRepo(tmp_path, pushed.env).git("clone", "-q", str(pushed.path.parent / "o.git"),
                                          str(lazy.path))  # no filter: manifests checked out
        assert_user_error(lazy.tz("materialize", "m.safetensors", check=False),
                          "theta-zarr is not installed")
        lazy.tz("install")
        assert_user_error(lazy.tz("materialize", "m.safetensors", check=False), gone)
    finally:
        obj.write_bytes(data)


def test_diff_of_a_truncated_working_file_names_the_cause(pushed):
    path = pushed.path / "m.safetensors"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    try:
        assert_user_error(pushed.tz("diff", check=False), "m.safetensors", "truncated")
    finally:
        path.write_bytes(original)


def test_git_archive_in_a_bare_repository(pushed, tmp_path):
    """A server or CI mirror with a global install: the filter serves smudge from the
    remote named in the committed .thetazarr, no traceback, no hung-up pipe."""
    assert pushed.out("ls-files", ".thetazarr").strip() == ".thetazarr"
    env = {**pushed.env, "HOME": str(tmp_path)}
    server = GitRepo(tmp_path, env)
    server.tz("install", "--global")
    server.git("clone", "-q", "--bare", str(pushed.path.parent / "o.git"), "mirror.git")
    out = GitRepo(tmp_path / "mirror.git", env).git("archive", "HEAD")
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        member = tar.extractfile("m.safetensors").read()
    assert member == (pushed.path / "m.safetensors").read_bytes()
    assert file_sha(pushed.path / "m.safetensors")  # the working file is intact


def test_uninstall_local_outside_a_repository_is_refused(tmp_path, git_env):
    """As install --local: it said "filter removed" and changed nothing."""
    proc = subprocess.run(["git-theta-zarr", "uninstall", "--local"], cwd=tmp_path,
                          env=git_env, capture_output=True)
    assert proc.returncode != 0
    assert proc.stderr.decode().strip() == ("theta-zarr: --local needs a git repository; run "
                                            "inside one or use --global")
    assert b"removed" not in proc.stdout


def test_a_cache_folder_that_cannot_be_made_names_the_setting(repo, tmp_path):
    (tmp_path / "afile").write_text("")
    repo.git("config", "theta-zarr.cache", str(tmp_path / "afile" / "cache"))
    write_model(str(repo.path / "new.safetensors"), REMOTE_SHAPE, seed=1)
    proc = repo.git("add", "new.safetensors", check=False)
    line = assert_user_error(proc, "cannot use", "as the cache", "theta-zarr.cache")
    assert "Errno" not in line


def test_a_cache_set_to_a_file_is_named_by_every_command(repo, tmp_path):
    """fsck listed every object as missing "in" the file, ls-files counted none cached."""
    commit_checkpoint(repo, "base", shape=REMOTE_SHAPE)
    (tmp_path / "afile").write_text("")
    repo.git("config", "theta-zarr.cache", str(tmp_path / "afile"))
    for args in (("fsck",), ("ls-files",)):
        assert_user_error(repo.tz(*args, check=False), "as the cache: it is a file",
                          "theta-zarr.cache")
    write_model(str(repo.path / "new.safetensors"), REMOTE_SHAPE, seed=1)
    assert_user_error(repo.git("add", "new.safetensors", check=False), "it is a file")



def test_a_file_where_the_default_cache_belongs_blames_no_setting(repo):
    """``.git/theta-zarr`` a file (no setting chose it): the line said the cache was "set
    by theta-zarr.cache or THETA_ZARR_CACHE", and users looked for a setting not there."""
    (repo.path / ".git" / "theta-zarr").write_text("")
    line = assert_user_error(repo.tz("ls-files", check=False), "/.git/theta-zarr as the cache")
    assert "set by" not in line and "choose another folder with theta-zarr.cache" in line

def test_a_thetazarr_file_git_cannot_parse_is_one_line_not_no_remote(repo):
    """It was read as "no remote": remote list printed nothing, fetch said to add one."""
    (repo.path / ".thetazarr").write_text('[theta-zarr "remote.origin"\n\turl = /srv/x\n')
    for args in (("remote", "list"), ("fetch",), ("push", "origin")):
        line = assert_user_error(repo.tz(*args, check=False), ".thetazarr cannot be read",
                                 "bad config line")
        assert "no theta-zarr remote" not in line



@pytest.mark.parametrize("lines", ["\turi = /srv/store\n", "\turl =\n\tregion = eu-west-1\n"])
def test_a_remote_without_its_url_is_named_not_no_remote(repo, lines):
    """``.thetazarr`` naming remote origin with ``uri =`` (a typo) or an empty ``url``:
    push and fetch said "no theta-zarr remote configured" while the file named one."""
    (repo.path / ".thetazarr").write_text('[theta-zarr "remote.origin"]\n' + lines)
    for args in (("push", "origin"), ("fetch",)):
        line = assert_user_error(repo.tz(*args, check=False), "remote 'origin' has no url")
        assert ("keys given: uri" in line) == ("uri" in lines), line

@pytest.mark.parametrize("value", ["1y", "7 days", "-1d"])
def test_a_bad_gc_grace_names_the_option(repo, value):
    """It said only "not a duration: '1y'", and a repository on a shared cache was first
    told about the cache, whatever the option held."""
    repo.git("config", "theta-zarr.cache", str(repo.path / ".." / "shared-cache"))
    assert_user_error(repo.tz("gc", "--grace", value, check=False), "--grace:", repr(value))


def test_a_folder_where_a_tracked_file_belongs_is_named_not_errno(repo):
    """``rm m.safetensors; mkdir m.safetensors`` (a save_pretrained folder written over
    the file's name): ls-files, diff and materialize printed a raw ``[Errno 21] Is a
    directory``; git status calls the file deleted, and so do they now."""
    commit_checkpoint(repo, "m", shape=REMOTE_SHAPE, name="m.safetensors")
    (repo.path / "m.safetensors").unlink()
    (repo.path / "m.safetensors").mkdir()
    (repo.path / "m.safetensors" / "notes.txt").write_text("mine")
    assert repo.out("theta-zarr", "ls-files").rstrip().endswith("  missing")
    diff = repo.tz("diff", check=False)
    assert diff.returncode == 0 and b"removed" in diff.stdout, diff.stderr
    for args in (("materialize",), ("materialize", "m.safetensors")):
        line = assert_user_error(repo.tz(*args, check=False), "m.safetensors: a folder stands")
        assert "Errno" not in line
    assert (repo.path / "m.safetensors" / "notes.txt").read_text() == "mine"


def test_paths_from_outside_the_work_tree_are_taken_from_its_top(repo, tmp_path):
    """``GIT_DIR=... GIT_WORK_TREE=... git theta-zarr ls-files`` from another folder (a
    script, a dotfiles manager): git works from the top of the work tree, so its paths are
    relative to it; ls-files listed nothing and exited 0, and materialize said a path
    of the repository was outside it."""
    (repo.path / "sub").mkdir()
    commit_checkpoint(repo, "m", shape=REMOTE_SHAPE, name="sub/m.safetensors")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = GitRepo(elsewhere, {**repo.env, "GIT_DIR": str(repo.path / ".git"),
                                  "GIT_WORK_TREE": str(repo.path)})
    for args in ((), ("sub",), ("sub/m.safetensors",)):
        listed = outside.tz("ls-files", *args).stdout.decode()
        assert listed.startswith("sub/m.safetensors  safetensors"), (args, listed)
    (repo.path / "sub" / "m.safetensors").unlink()
    assert outside.tz("materialize", "sub/m.safetensors").stdout.decode() == \
        "sub/m.safetensors: materialized (35 parameters)\n"
    assert repo.out("status", "--porcelain") == ""


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_a_clone_whose_thetazarr_names_no_such_bucket_says_so(repo, make_repo, tmp_path,
                                                              request, kind):
    """A typo in the committed remote's bucket or folder: a clone's checkout and materialize
    said 'object … is missing from URL', as if a push had been incomplete.  The clone's
    line says how to finish it: git's own "git restore --source=HEAD :/" left every file
    staged as deleted."""
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        repo.env.update(server.env)
        url = server.new_bucket()
        typo, words = url + "x/m", (f"bucket {url[5:]}x does not exist",)
    else:
        url, typo = str(tmp_path / "store"), str(tmp_path / "stor" / "m")
        words = (f"folder {typo} does not exist",)
    bare = init_bare(tmp_path / "o.git", repo.env)
    repo.git("remote", "add", "origin", str(bare))
    repo.tz("remote", "add", "origin", url, "--shared")
    write_model(str(repo.path / "m.safetensors"), REMOTE_SHAPE)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "m")
    repo.git("push", "-q", "origin", "main")
    repo.tz("remote", "add", "origin", typo, "--shared")
    repo.git("commit", "-q", "-am", "typo")
    repo.git("push", "-q", "origin", "main")
    parent = GitRepo(tmp_path, repo.env)
    parent.tz("install", "--global")
    proc = parent.git("clone", "-q", str(bare), "b", check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "Traceback" not in err and "is missing from" not in err
    line = next(x for x in err.splitlines() if x.startswith("theta-zarr: m.safetensors: "))
    assert line.startswith(f"theta-zarr: m.safetensors: {words[0]}"), err
    assert line.endswith("; once that is fixed, run 'git reset --hard' in this new work tree "
                         "to check its files out"), err
    clone = GitRepo(tmp_path / "b", repo.env)
    clone.tz("remote", "add", "origin", url)  # this clone's own setting wins
    clone.git("reset", "-q", "--hard")
    assert file_sha(clone.path / "m.safetensors") == file_sha(repo.path / "m.safetensors")
    assert clone.out("status", "--porcelain") == ""
    lazy = make_repo("lazy")
    parent.git("clone", "-q", str(bare), str(lazy.path), env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    assert_user_error(lazy.tz("materialize", check=False), *words)
