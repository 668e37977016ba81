"""The pre-push hook: installed wherever the filter runs, chaining other hooks under their name."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from helpers import REMOTE_SHAPE, GitRepo, file_sha, init_bare, manifest_at

from theta_zarr.demo import write_model
from theta_zarr.remote import RemoteSpec, open_remote


def _bare(tmp_path: Path, env: dict[str, str], name: str = "origin.git") -> Path:
    bare = tmp_path / name
    init_bare(bare, env)
    return bare


def test_repository_made_after_a_global_install_pushes_its_chunks(make_repo, tmp_path):
    """git init (or clone) after `install --global`: the first `git add` installs the hook,
    so the very first `git push` uploads the chunks and a clone is bit-exact."""
    w = make_repo("w")
    w.run("git", "theta-zarr", "install", "--global")
    w.git("init", "-q", "-b", "main")
    w.tz("track", "*.safetensors")
    bare = _bare(tmp_path, w.env)
    w.git("remote", "add", "origin", str(bare))
    write_model(str(w.path / "m.safetensors"), REMOTE_SHAPE)
    added = w.git("add", "-A")
    hook = w.path / ".git" / "hooks" / "pre-push"
    assert hook.exists() and "installed the hooks pre-push, post-checkout" in added.stderr.decode()
    w.git("commit", "-q", "-m", "first")
    pushed = w.git("push", "-q", "origin", "main").stderr.decode()
    assert "uploaded" in pushed and "next to git remote 'origin'" in pushed
    m = manifest_at(w, "HEAD", "m.safetensors")
    store = open_remote(RemoteSpec("o", str(bare / "theta-zarr")))
    assert store.missing(m.digests()) == set()
    c = make_repo("c")
    c.path.rmdir()
    GitRepo(tmp_path, w.env).git("clone", "-q", str(bare), "c")
    assert file_sha(c.path / "m.safetensors") == file_sha(w.path / "m.safetensors")
    assert (c.path / ".git" / "hooks" / "pre-push").exists()  # the clone's checkout did it


def test_a_committed_hooks_folder_is_not_edited_by_the_filter(make_repo, tmp_path):
    """core.hooksPath=.githooks, committed for a team: git add must not rewrite the team's
    hook (git status showed changes nobody made); it warns, and an explicit install
    writes there."""
    w = make_repo("w")
    w.run("git", "theta-zarr", "install", "--global")
    w.git("init", "-q", "-b", "main")
    (w.path / ".githooks").mkdir()
    team = w.path / ".githooks" / "pre-push"
    team.write_text("#!/bin/sh\necho team-hook >&2\n")
    team.chmod(0o755)
    w.git("config", "core.hooksPath", ".githooks")
    w.tz("track", "*.safetensors")
    w.git("add", "-A")
    w.git("commit", "-q", "-m", "team hooks")
    write_model(str(w.path / "m.safetensors"), REMOTE_SHAPE)
    added = w.git("add", "-A").stderr.decode()
    assert "part of the work tree, so theta-zarr does not edit it" in added, added
    assert "git theta-zarr install" in added
    w.git("commit", "-q", "-m", "m")
    assert w.git("status", "--porcelain").stdout == b""
    assert team.read_text() == "#!/bin/sh\necho team-hook >&2\n"
    w.tz("install")
    assert "theta-zarr pre-push hook" in team.read_text()
    bare = _bare(tmp_path, w.env)
    w.git("remote", "add", "origin", str(bare))
    pushed = w.git("push", "-q", "origin", "main").stderr.decode()
    assert "uploaded" in pushed and "team-hook" in pushed


def test_an_ignored_hooks_folder_in_the_work_tree_gets_the_hook(make_repo, tmp_path):
    """husky's .husky/_ (gitignored, written by husky itself): the filter installs there as
    anywhere else; husky writing its dispatcher again is chained again, nothing piles up."""
    w = make_repo("w")
    w.run("git", "theta-zarr", "install", "--global")
    w.git("init", "-q", "-b", "main")
    husky = w.path / ".husky" / "_"
    husky.mkdir(parents=True)
    (husky / ".gitignore").write_text("*\n")
    dispatcher = "#!/bin/sh\necho husky-ran >&2\n"
    (husky / "pre-push").write_text(dispatcher)
    (husky / "pre-push").chmod(0o755)
    w.git("config", "core.hooksPath", ".husky/_")
    w.tz("track", "*.safetensors")
    write_model(str(w.path / "m.safetensors"), REMOTE_SHAPE)
    added = w.git("add", "-A").stderr.decode()
    assert "installed the hooks pre-push" in added and "does not edit" not in added
    w.git("commit", "-q", "-m", "m")
    model = w.path / "m.safetensors"
    for k in range(2):  # husky's install writes its dispatcher again; the next filter run
        (husky / "pre-push").write_text(dispatcher)
        os.utime(model, (model.stat().st_atime, model.stat().st_mtime + 10 + k))
        w.git("add", "-A")  # (a touched file: git starts the filter)
    assert "theta-zarr pre-push hook" in (husky / "pre-push").read_text()
    assert not list(husky.glob("*.old*"))
    bare = _bare(tmp_path, w.env)
    w.git("remote", "add", "origin", str(bare))
    pushed = w.git("push", "-q", "origin", "main").stderr.decode()
    assert "uploaded" in pushed and "husky-ran" in pushed


HUSKY_HELPER = """#!/bin/sh
name=$(basename "$0")
script="$(dirname "$(dirname "$0")")/$name"
[ -f "$script" ] || exit 0
sh -e "$script" "$@"
"""


def test_name_dispatching_hook_manager_keeps_running(repo, tmp_path):
    """A husky-style dispatcher (core.hooksPath, runs the script named after $0) still runs
    the team's pre-push with git's arguments and input, and can still block the push."""
    hooks = repo.path / ".hooks"
    (hooks / "_").mkdir(parents=True)
    (hooks / "_" / "h").write_text(HUSKY_HELPER)
    dispatcher = hooks / "_" / "pre-push"
    dispatcher.write_text('#!/usr/bin/env sh\n. "$(dirname "$0")/h"\n')
    dispatcher.chmod(0o755)
    log = tmp_path / "team.log"
    (hooks / "pre-push").write_text(f'echo "$1 $2" > {log}\ncat >> {log}\n'
                                    f'[ -e {tmp_path / "allow"} ]\n')
    repo.git("config", "core.hooksPath", ".hooks/_")
    bare = _bare(tmp_path, repo.env)
    repo.git("remote", "add", "origin", str(bare))
    repo.tz("install")
    assert "theta-zarr pre-push hook" in dispatcher.read_text()
    write_model(str(repo.path / "m.safetensors"), REMOTE_SHAPE)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "m")
    blocked = repo.git("push", "-q", "origin", "main", check=False)
    assert blocked.returncode != 0
    assert repo.git("ls-remote", str(bare), "main").stdout == b""
    first = log.read_text().splitlines()
    assert first[0] == f"origin {bare}" and first[1].startswith("refs/heads/main ")
    (tmp_path / "allow").touch()
    repo.git("push", "-q", "origin", "main")
    assert repo.git("ls-remote", str(bare), "main").stdout


def test_chained_program_hook_gets_arguments_and_input(repo, tmp_path):
    """A hook that is not a shell script runs as itself, with git's arguments and input."""
    hook = repo.path / ".git" / "hooks" / "pre-push"
    log = tmp_path / "py.log"
    hook.write_text(f"#!{shutil.which('python3') or 'python3'}\nimport sys\n"
                    f"open({str(log)!r}, 'w').write(' '.join(sys.argv[1:]) + '|' + "
                    "sys.stdin.read())\n")
    hook.chmod(0o755)
    repo.tz("install")
    bare = _bare(tmp_path, repo.env)
    repo.git("remote", "add", "origin", str(bare))
    repo.git("push", "-q", "origin", "main")
    args, _, stdin = log.read_text().partition("|")
    assert args == f"origin {bare}" and stdin.startswith("refs/heads/main ")


def test_checkout_works_without_theta_zarr_on_path(repo, make_repo, tmp_path):
    """install records this environment's executable, so a shell whose PATH lacks it
    (another virtual environment active) still checks out real files."""
    scripts = sysconfig.get_path("scripts")
    process = repo.out("config", "filter.theta-zarr.process")
    assert process.startswith(os.path.join(scripts, "git-theta-zarr"))
    write_model(str(repo.path / "m.safetensors"), REMOTE_SHAPE)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "m")
    bare = _bare(tmp_path, repo.env)
    repo.git("remote", "add", "origin", str(bare))
    repo.git("push", "-q", "origin", "main")
    git_dir = os.path.dirname(shutil.which("git"))
    env = {**repo.env, "PATH": os.pathsep.join([git_dir, "/usr/bin", "/bin"])}
    parent = GitRepo(tmp_path, env)
    parent.run(os.path.join(scripts, "git-theta-zarr"), "install", "--global")
    parent.git("clone", "-q", str(bare), "elsewhere")
    assert file_sha(tmp_path / "elsewhere" / "m.safetensors") == \
        file_sha(repo.path / "m.safetensors")


def _push_refused(repo, tmp_path, hook_body: bytes | None = None, program: str | None = None):
    """Install over a pre-push hook (a script, or a copy of a program), push; returns
    whether git refused the push."""
    hook = repo.path / ".git" / "hooks" / "pre-push"
    if program is not None:
        shutil.copy(shutil.which(program), hook)
    else:
        hook.write_bytes(hook_body)
    hook.chmod(0o755)
    repo.tz("install")
    bare = _bare(tmp_path, repo.env, f"{program or 'script'}.git")
    return repo.git("push", "-q", str(bare), "main", check=False).returncode != 0


def test_chained_script_keeps_the_flags_of_its_interpreter_line(repo, tmp_path):
    """#!/bin/sh -e: the hook's failing command stops it, as when git runs it; sourced
    without the -e, it went on to exit 0 and the push it meant to block went through."""
    assert _push_refused(repo, tmp_path, b"#!/bin/sh -e\nfalse\nexit 0\n")


def test_chained_program_without_a_shebang_runs_as_it_is(repo, tmp_path):
    """A compiled hook (no #! line) was sourced as shell: every push failed with a syntax
    error and the hook never ran."""
    assert not _push_refused(repo, tmp_path, program="true")
    assert _push_refused(repo, tmp_path, program="false")


def test_a_hook_that_replaces_ours_keeps_the_one_chained_before(repo, tmp_path):
    """A hook manager writes its pre-push over ours: the filter installs ours again and
    chains the new hook; the hook chained before was overwritten and lost."""
    hooks = repo.path / ".git" / "hooks"
    (hooks / "pre-push").write_text("#!/bin/sh\necho first\n")
    repo.tz("install")
    (hooks / "pre-push").write_text("#!/bin/sh\necho second\n")  # a hook manager
    write_model(str(repo.path / "m.safetensors"), REMOTE_SHAPE)
    proc = repo.git("add", "m.safetensors")  # the filter puts ours back
    assert "the hook it replaced is kept as" in proc.stderr.decode()
    assert "theta-zarr pre-push hook" in (hooks / "pre-push").read_text()
    assert (hooks / "pre-push.theta-zarr-chained").read_text().endswith("echo second\n")
    assert (hooks / "pre-push.theta-zarr-chained.old").read_text().endswith("echo first\n")


def test_a_file_where_the_hooks_folder_belongs_is_one_line(repo):
    """``.git/hooks`` a file, or ``pre-push`` a folder: install printed raw
    ``[Errno 17] File exists: '…/hooks'`` / ``[Errno 21] Is a directory``."""
    hooks = repo.path / ".git" / "hooks"
    shutil.rmtree(hooks)
    hooks.write_text("")
    proc = repo.tz("install", check=False)
    assert proc.returncode == 1 and proc.stderr.decode() == (
        f"theta-zarr: {hooks} is a file, not a folder: git runs its hooks from that folder; "
        "move the file away\n")
    hooks.unlink()
    (hooks / "pre-push").mkdir(parents=True)
    proc = repo.tz("install", check=False)
    assert proc.returncode == 1 and proc.stderr.decode() == (
        f"theta-zarr: {hooks / 'pre-push'} is a folder, not a hook: move it away\n")


def test_a_file_system_error_of_any_kind_names_its_path_without_errno():
    from theta_zarr.errors import one_line

    for exc in (IsADirectoryError(21, "Is a directory", "/r/m.safetensors"),
                FileExistsError(17, "File exists", "/r/.git/hooks"),
                NotADirectoryError(20, "Not a directory", "/r/a/b")):
        assert one_line(exc) == f"{exc.filename}: {exc.strerror}"
