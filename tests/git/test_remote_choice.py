"""Where chunks go never surprises: the push line names the remote, gc sees current refs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import REMOTE_SHAPE, GitRepo, clone, init_bare, manifest_at

from theta_zarr.demo import write_model
from theta_zarr.manifest import Manifest
from theta_zarr.objects import object_key
from theta_zarr.remote import RemoteSpec, open_remote


def _origin(repo: GitRepo, tmp_path) -> Path:
    """A bare repository at tmp_path/origin.git, added to ``repo`` as git remote origin."""
    bare = tmp_path / "origin.git"
    init_bare(bare, repo.env)
    repo.git("remote", "add", "origin", str(bare))
    return bare


def _commit(r: GitRepo, seed: int) -> Manifest:
    write_model(str(r.path / "m.safetensors"), REMOTE_SHAPE, seed=seed)
    r.git("add", "-A")
    r.git("commit", "-q", "-m", f"seed {seed}")
    return manifest_at(r, "HEAD", "m.safetensors")


def test_unrelated_folder_remote_does_not_take_origins_pushes(repo, tmp_path):
    bare = _origin(repo, tmp_path)
    repo.tz("remote", "add", "backup", str(tmp_path / "backup"))
    m = _commit(repo, 0)
    err = repo.git("push", "-q", "origin", "main").stderr.decode()
    assert f"to origin ({bare / 'theta-zarr'}; git remote 'origin' -> next to git remote" in err
    assert open_remote(RemoteSpec("o", str(bare / "theta-zarr"))).missing(m.digests()) == set()
    assert not (tmp_path / "backup").exists()


def test_a_push_to_an_unnamed_path_or_file_url_sends_chunks_next_to_it(repo, tmp_path):
    """``git push ../bare.git main`` names no git remote: git gives the hook the URL as the
    remote's name.  The chunks go next to that path, as for a named remote that is a path;
    a URL no theta remote serves is one line saying what to do, not a --remote error."""
    bare = tmp_path / "origin.git"
    init_bare(bare, repo.env)
    m = _commit(repo, 0)
    for target in (str(bare), f"file://{bare}"):
        repo.git("push", "-q", target, "main")
        got = open_remote(RemoteSpec("o", str(bare / "theta-zarr"))).missing(m.digests())
        assert got == set()
        _commit(repo, len(target))
    url = "https://git.example.invalid/r.git"  # what git hands the hook for such a push
    proc = repo.run("git-theta-zarr", "pre-push", url, url, check=False,
                    input=(f"refs/heads/main {repo.out('rev-parse', 'HEAD').strip()} "
                           f"refs/heads/main {'0' * 40}\n").encode())
    lines = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("theta-zarr:")]
    assert proc.returncode != 0 and len(lines) == 1
    assert "no theta-zarr remote takes its chunks" in lines[0] and "--remote" not in lines[0]


def test_push_line_says_when_the_only_theta_remote_is_used(repo, tmp_path):
    repo.git("remote", "add", "origin", "https://git.example.invalid/team/models.git")
    repo.tz("remote", "add", "models", str(tmp_path / "models"))
    _commit(repo, 0)
    err = repo.tz("push").stderr.decode()
    assert "to models (" in err
    hook_err = repo.run("git-theta-zarr", "pre-push", "origin", "https://x.invalid/r.git",
                        input=(f"refs/heads/main {repo.out('rev-parse', 'HEAD').strip()} "
                               f"refs/heads/main {'0' * 40}\n").encode()).stderr.decode()
    assert "git remote 'origin' -> theta remote 'models': the only one configured" in hook_err


def test_gc_remote_refuses_a_stale_view_of_the_git_remote(repo, make_repo, tmp_path):
    """Clone B pushed commits A has not fetched: A's gc --remote must not collect B's chunks."""
    bare = _origin(repo, tmp_path)
    _commit(repo, 0)
    repo.git("push", "-q", "origin", "main")
    b = make_repo("b")
    b.path.rmdir()
    GitRepo(tmp_path, repo.env).run("git", "theta-zarr", "install", "--global")
    GitRepo(tmp_path, repo.env).git("clone", "-q", str(bare), "b")
    theirs = _commit(b, 1)
    b.git("push", "-q", "origin", "main")
    store = open_remote(RemoteSpec("o", str(bare / "theta-zarr")))
    proc = repo.tz("gc", "--remote", "origin", "--grace", "0", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "has moved since the last fetch" in err
    assert "git fetch origin" in err and "Traceback" not in err
    assert store.missing(theirs.digests()) == set()
    repo.git("fetch", "-q", "origin")
    repo.tz("gc", "--remote", "origin", "--grace", "0")
    assert store.missing(theirs.digests()) == set()


def test_push_uploads_the_commits_git_replace_hides(repo, tmp_path):
    """git push sends the real commits (replace refs stay local); the pre-push hook walked
    through the replacement and uploaded its chunks, not those of the commit it hid."""
    bare = _origin(repo, tmp_path)
    _commit(repo, 0)
    hidden = _commit(repo, 1)
    _commit(repo, 2)
    tree = repo.out("rev-parse", "HEAD^{tree}").strip()
    repo.git("replace", "HEAD~1", repo.out("commit-tree", tree, "-p", "HEAD~2", "-m",
                                           "replacement").strip())
    repo.git("push", "-q", "origin", "main")
    store = open_remote(RemoteSpec("o", str(bare / "theta-zarr")))
    assert store.missing(hidden.digests()) == set()


def test_gc_remote_in_narrow_clones_names_the_fetch_that_helps(repo, make_repo, tmp_path):
    """A ``--no-tags`` clone was refused for good over a tag on a commit it has, and a
    single-branch clone was told to run 'git fetch origin', which never fetches the
    other branch: the only way on was --ignore-stale-refs, which deletes its chunks."""
    bare = _origin(repo, tmp_path)
    _commit(repo, 0)
    repo.git("tag", "v0")
    repo.git("push", "-q", "origin", "main", "v0")
    repo.git("checkout", "-q", "-b", "feature")
    feature = _commit(repo, 1)
    repo.git("push", "-q", "origin", "feature")
    GitRepo(tmp_path, repo.env).run("git", "theta-zarr", "install", "--global")
    store = open_remote(RemoteSpec("o", str(bare / "theta-zarr")))
    no_tags = make_repo("no-tags")
    no_tags.path.rmdir()
    GitRepo(tmp_path, repo.env).git("clone", "-q", "--no-tags", str(bare), "no-tags")
    assert no_tags.out("tag") == ""
    no_tags.tz("gc", "--remote", "origin", "--grace", "0")  # v0's commit is on main
    assert store.missing(feature.digests()) == set()
    narrow = make_repo("narrow")
    narrow.path.rmdir()
    GitRepo(tmp_path, repo.env).git("clone", "-q", "--single-branch", "-b", "main",
                                    str(bare), "narrow")
    proc = narrow.tz("gc", "--remote", "origin", "--grace", "0", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "refs/heads/feature is not fetched into this clone" in err
    narrow.git("fetch", "-q", "origin", "--tags", "+refs/heads/*:refs/remotes/origin/*")
    narrow.tz("gc", "--remote", "origin", "--grace", "0")
    assert store.missing(feature.digests()) == set()


def test_gc_remote_refuses_in_a_shallow_clone(repo, make_repo, tmp_path):
    """A CI job's ``git clone --depth 1`` sees one commit: its gc --remote deleted the
    chunks of every older commit from the shared remote."""
    bare = _origin(repo, tmp_path)
    first = _commit(repo, 0)
    _commit(repo, 1)
    repo.git("push", "-q", "origin", "main")
    shallow = make_repo("shallow")
    shallow.path.rmdir()
    GitRepo(tmp_path, repo.env).run("git", "theta-zarr", "install", "--global")
    GitRepo(tmp_path, repo.env).git("clone", "-q", "--depth", "1", f"file://{bare}", "shallow")
    store = open_remote(RemoteSpec("o", str(bare / "theta-zarr")))
    proc = shallow.tz("gc", "--remote", "origin", "--grace", "0", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.splitlines()) == 1
    assert "shallow" in err and "git fetch --unshallow" in err
    assert store.missing(first.digests()) == set()
    shallow.git("fetch", "-q", "--unshallow")
    shallow.tz("gc", "--remote", "origin", "--grace", "0")
    assert store.missing(first.digests()) == set()


def _garbage_pushed_by(repo: GitRepo, make_repo, tmp_path) -> tuple[GitRepo, Manifest, Path]:
    """(another clone, a manifest, its remote store): ``repo`` pushed the manifest's
    chunks on branch exp, then deleted the branch; they are 30 days old garbage there."""
    bare = _origin(repo, tmp_path)
    _commit(repo, 0)
    repo.git("push", "-q", "origin", "main")
    other = clone(make_repo, bare, "other")
    repo.git("checkout", "-q", "-b", "exp")
    m = _commit(repo, 1)
    repo.git("push", "-q", "origin", "exp")
    repo.git("push", "-q", "origin", ":exp")  # the branch is deleted: its chunks are garbage
    old = time.time() - 30 * 86400
    for p in (bare / "theta-zarr").rglob("*"):
        os.utime(p, (old, old))
    return other, m, bare / "theta-zarr"


def _gc_remote(clone_: GitRepo, hook=None):
    """gc --remote origin (grace 7d) in ``clone_``, wired as the command wires it."""
    from theta_zarr import checkpoint, gc
    from theta_zarr.git.reachability import git_roots, heads_moved, remote_heads
    from theta_zarr.git.remotes import require
    from theta_zarr.git.repo import Repo
    from theta_zarr.sync import SyncRemote

    gc_repo = Repo.discover(str(clone_.path))
    spec = require(gc_repo, "origin")
    heads = remote_heads(gc_repo, spec)

    def roots() -> gc.Roots:
        r = gc.Roots()
        git_roots(gc_repo, r)
        return r

    return gc.collect(checkpoint.open_cache(gc_repo.settings()), roots, 7 * 86400,
                      SyncRemote.open(spec, 4, need="read"), hook=hook,
                      moved=lambda: heads_moved(heads, remote_heads(gc_repo, spec)))


def test_gc_remote_deletes_nothing_when_a_git_push_lands_meanwhile(repo, make_repo, tmp_path):
    """Clone B pushes a commit whose chunks are on the remote but unreachable (a deleted
    branch's, older than the grace period) while gc --remote runs in clone A: B's pre-push
    found them there and uploaded nothing, and gc, which listed only the remote's theta
    refs again, deleted them; the pushed branch named chunks the remote no longer had.
    gc now lists the git remote's refs again before it deletes, and puts everything back
    when a push landed."""
    other, m, store_path = _garbage_pushed_by(repo, make_repo, tmp_path)

    def push_meanwhile(step: str) -> None:
        if step == "planned":  # the pre-push finds every chunk there: nothing uploaded
            repo.git("push", "-q", "origin", "exp:refs/heads/exp2")

    result = _gc_remote(other, push_meanwhile)
    assert result.aborted is not None and "'origin' changed" in result.aborted
    assert open_remote(RemoteSpec("o", str(store_path))).missing(m.digests()) == set()
    assert not list(store_path.glob("trash/*"))


def test_a_pre_push_puts_back_what_a_gc_took_while_it_uploaded(repo, make_repo, tmp_path,
                                                               monkeypatch):
    """The pre-push found old garbage on the remote and reused it; a whole gc --remote ran
    while it uploaded the rest (git moves the branch only after the hook, so gc could not
    see the commit) and deleted what it reused.  The hook now checks once more at its end
    and uploads again, from the cache, what is gone."""
    from theta_zarr.git import push
    from theta_zarr.git.remotes import require
    from theta_zarr.git.repo import Repo

    other, m, store_path = _garbage_pushed_by(repo, make_repo, tmp_path)
    real = push.push_objects
    swept = []

    def gc_while_uploading(*args, **kw):
        stats = real(*args, **kw)
        if not swept:
            swept.append(_gc_remote(other))  # takes what the push found there
        return stats

    monkeypatch.setattr(push, "push_objects", gc_while_uploading)
    pusher = Repo.discover(str(repo.path))
    push.push_manifests(pusher, require(pusher, "origin"), [m])
    assert swept and sum(len(s.keys) for s in swept[0].sweeps[2:4]) > 0
    assert open_remote(RemoteSpec("o", str(store_path))).missing(m.digests()) == set()


def test_a_new_theta_remote_for_a_git_remote_with_commits_says_to_copy_them(repo, tmp_path):
    """git push sends the chunks of the commits it pushes, as git-lfs does: commits the
    git remote already had never reached the new store, silently, and clones failed."""
    _origin(repo, tmp_path)
    m = _commit(repo, 0)
    repo.git("push", "-q", "origin", "main")
    store = tmp_path / "store"
    err = repo.tz("remote", "add", "origin", str(store)).stderr.decode()
    assert "run 'git theta-zarr push origin --all'" in err, err
    repo.tz("push", "origin", "--all")
    assert open_remote(RemoteSpec("s", str(store))).missing(m.digests()) == set()
    assert "--all" not in repo.tz("remote", "add", "backup", str(tmp_path / "b")).stderr.decode()


def test_a_checkout_older_than_thetazarr_finds_the_remote_it_named(repo, make_repo, tmp_path):
    """The quickstart order (model first, then a shared remote in .thetazarr): a clone's
    checkout of the older commit removed .thetazarr before the filter looked for the
    remote, which then fell back to the git remote's folder and found nothing."""
    store = tmp_path / "store"
    store.mkdir()
    write_model(str(repo.path / "m.safetensors"), REMOTE_SHAPE, seed=5,
                tuned=REMOTE_SHAPE.layer_names(0))
    repo.git("add", "m.safetensors")
    repo.git("commit", "-q", "-m", "first")  # no chunk of it is in the later version
    first = manifest_at(repo, "HEAD", "m.safetensors")
    later = _commit(repo, 1)
    assert not first.digests() & later.digests() - {None}
    repo.tz("remote", "add", "team", str(store), "--shared")
    repo.git("add", ".thetazarr")
    repo.git("commit", "-q", "-m", "theta remote")
    repo.tz("push", "team")
    bare = tmp_path / "origin.git"
    init_bare(bare, repo.env)
    repo.git("push", "-q", "--no-verify", str(bare), "main")  # no chunks next to it
    b = make_repo("b")
    b.path.rmdir()
    GitRepo(tmp_path, repo.env).run("git", "theta-zarr", "install", "--global")
    GitRepo(tmp_path, repo.env).git("clone", "-q", str(bare), "b")
    b.git("checkout", "-q", "HEAD~2")
    assert not (b.path / "m.safetensors").read_bytes().startswith(b'{"theta_zarr"')
    assert b.out("hash-object", "m.safetensors") == b.out("rev-parse", "HEAD:m.safetensors")
    assert manifest_at(b, "HEAD", "m.safetensors") == first
    assert b.out("status", "--porcelain") == ""
    assert not (b.path / ".thetazarr").exists()


def test_a_thetazarr_that_is_a_symbolic_link_is_neither_read_nor_written(repo, tmp_path):
    """A committed `.thetazarr -> ../../.gitconfig` (any file outside the repository) had
    that file's remote keys read as the repository's, and `remote add --shared` wrote
    into it; git does not follow a symlinked .gitattributes either."""
    outside = tmp_path / "outside.gitconfig"
    text = '[user]\n\tname = me\n[theta-zarr "remote.far"]\n\turl = /srv/far\n'
    outside.write_text(text)
    (repo.path / ".thetazarr").symlink_to(outside)
    repo.git("add", ".thetazarr")
    repo.git("commit", "-q", "-m", "link")
    proc = repo.tz("remote", "add", "origin", str(tmp_path / "store"), "--shared", check=False)
    assert proc.returncode == 1 and outside.read_text() == text
    assert proc.stderr.decode().splitlines() == [
        f"theta-zarr: .thetazarr is a symbolic link (to {outside}); theta-zarr does not "
        "write through it: replace it with a file"]
    listed = repo.tz("remote", "list")
    assert "far" not in listed.stdout.decode()
    assert "theta-zarr: .thetazarr is a symbolic link; not following it" in \
        listed.stderr.decode()


def test_a_clone_of_a_local_work_tree_reads_and_pushes_its_object_cache(repo, make_repo,
                                                                         tmp_path):
    """``git clone ~/proj ~/proj2``: the chunks are in proj's own cache (.git/theta-zarr);
    they were looked for in proj/theta-zarr (the clone's checkout failed), and a push from
    the clone dropped them there, an untracked folder in proj's work tree.  A checkpoint
    of many small tensors is in a pack of that cache, which a folder remote did not read
    (every chunk of it was missing)."""
    import numpy as np
    import safetensors.numpy

    from theta_zarr import packs
    rng = np.random.default_rng(0)
    safetensors.numpy.save_file({f"experts.{i}.w": rng.standard_normal(256, dtype=np.float32)
                                 for i in range(packs.PACK_MIN + 20)},
                                str(repo.path / "experts.safetensors"))
    m = _commit(repo, 0)
    assert packs.list_packs(str(repo.path / ".git" / "theta-zarr" / packs.FOLDER))
    repo.run("git", "theta-zarr", "install", "--global")  # the clone gets the filter
    clone = make_repo("proj2")
    clone.path.rmdir()
    GitRepo(tmp_path, repo.env).git("clone", "-q", str(repo.path), "proj2")
    for name in ("m.safetensors", "experts.safetensors"):
        assert (clone.path / name).read_bytes() == (repo.path / name).read_bytes()
    m2 = _commit(clone, 1)
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    err = clone.git("push", "-q", "origin", "main").stderr.decode()
    assert f"({repo.path / '.git' / 'theta-zarr'};" in err, err
    assert not (repo.path / "theta-zarr").exists()
    assert repo.git("status", "--porcelain").stdout == b""
    cache = open_remote(RemoteSpec("c", str(repo.path / ".git" / "theta-zarr")))
    assert cache.missing(m.digests() | m2.digests()) == set()
    assert manifest_at(repo, "HEAD", "m.safetensors") == m2


def test_a_clone_of_a_work_tree_with_its_own_cache_setting_reads_that_cache(repo, make_repo,
                                                                            tmp_path):
    """``git clone ~/proj`` where proj's config sets ``theta-zarr.cache``: the chunks were
    looked for in proj/.git/theta-zarr, which holds none (the checkout failed), and a push
    from the clone put them there, where proj never looks."""
    repo.git("config", "theta-zarr.cache", "../shared")  # relative: to proj's work tree
    m = _commit(repo, 0)
    shared = tmp_path / "shared"
    assert not (repo.path / ".git" / "theta-zarr" / "objects").exists()
    repo.run("git", "theta-zarr", "install", "--global")
    clone = make_repo("proj2")
    clone.path.rmdir()
    GitRepo(tmp_path, repo.env).git("clone", "-q", str(repo.path), "proj2")
    assert (clone.path / "m.safetensors").read_bytes() == \
        (repo.path / "m.safetensors").read_bytes()
    m2 = _commit(clone, 1)
    err = clone.git("push", "-q", "origin", "HEAD:refs/heads/from-clone").stderr.decode()
    assert f"({shared};" in err, err
    assert open_remote(RemoteSpec("s", str(shared))).missing(m.digests() | m2.digests()) == set()


def test_a_tag_of_a_tree_or_a_blob_is_pushed(repo, tmp_path):
    """``git push origin HEAD^{tree}:refs/tags/t``: the hook refused ("not a commit")."""
    bare = _origin(repo, tmp_path)
    m = _commit(repo, 0)
    repo.git("push", "-q", "origin", "HEAD^{tree}:refs/tags/tree")
    repo.git("push", "-q", "origin", "HEAD:m.safetensors:refs/tags/blob")
    tags = repo.git("ls-remote", "--tags", str(bare)).stdout.decode()
    assert "refs/tags/tree" in tags and "refs/tags/blob" in tags
    assert open_remote(RemoteSpec("o", str(bare / "theta-zarr"))).missing(m.digests()) == set()
    bad = repo.git("push", "-q", "origin", "nosuchrev:refs/tags/x", check=False)
    assert bad.returncode != 0


def test_a_relative_folder_remote_is_one_folder_wherever_it_is_used(repo, tmp_path):
    """A folder remote added by a relative path, typed in a subfolder, is recorded relative
    to the top of the work tree and used from there by every command: it was kept as typed
    and opened relative to the current folder, so a push from the subfolder, the pre-push
    hook (run at the top) and ``ls`` each used another folder."""
    (repo.path / "sub").mkdir()
    sub = GitRepo(repo.path / "sub", repo.env)
    sub.tz("remote", "add", "origin", "../../store")
    assert repo.out("config", "theta-zarr.remote.origin.url").strip() == "../store"
    m = _commit(repo, 0)
    sub.tz("push", "origin")
    store = tmp_path / "store"
    assert open_remote(RemoteSpec("o", str(store))).missing(m.digests()) == set()
    repo.tz("ls", "origin")
    _origin(repo, tmp_path)
    m = _commit(repo, 1)
    repo.git("push", "-q", "origin", "main")
    assert open_remote(RemoteSpec("o", str(store))).missing(m.digests()) == set()
    assert not (tmp_path.parent / "store").exists() and not (repo.path / "store").exists()


def test_a_committed_endpoint_for_a_gcs_remote_needs_the_users_own_config(repo, tmp_path,
                                                                        gcs_server):
    """A .thetazarr naming a GCS remote's endpoint-url would send every pusher's Google
    access token (a bearer token) to whatever host the repository chose."""
    repo.env.update(gcs_server.env)
    del repo.env["STORAGE_EMULATOR_HOST"]  # the user's own environment names no endpoint
    bucket = gcs_server.new_bucket()
    _origin(repo, tmp_path)
    (repo.path / ".thetazarr").write_text(
        f'[theta-zarr "remote.origin"]\n\turl = {bucket}/m\n'
        f"\tendpoint-url = {gcs_server.endpoint}\n")
    m = _commit(repo, 0)
    proc = repo.git("push", "-q", "origin", "main", check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "endpoint-url " + gcs_server.endpoint in err
    assert "comes from the committed .thetazarr" in err and "Traceback" not in err
    assert repo.git("ls-remote", str(tmp_path / "origin.git")).stdout == b""  # not pushed
    # the user's own config vouches for it: the push goes through
    repo.git("config", "theta-zarr.remote.origin.endpoint-url", gcs_server.endpoint)
    repo.git("push", "-q", "origin", "main")
    spec = RemoteSpec("o", f"{bucket}/m", {"endpoint-url": gcs_server.endpoint})
    assert open_remote(spec).missing(m.digests()) == set()
    # whoever adds such a remote to .thetazarr vouches for it in their own config too
    repo.tz("remote", "add", "mirror", "gs://b/m", "--remote-option",
            "endpoint-url=http://gcs.example:4443", "--shared")
    assert repo.out("config", "--local", "theta-zarr.remote.mirror.endpoint-url").strip() == \
        "http://gcs.example:4443"


def test_a_url_in_git_config_replaces_the_committed_remote_of_that_name_whole(
        repo, tmp_path, s3_server):
    """.thetazarr gives origin the team's S3-compatible endpoint; a user who points origin
    at another bucket in their own config (`remote add origin s3://mine/m`, reached through
    their own AWS_ENDPOINT_URL_S3) had the committed endpoint-url applied to that URL, so
    the push went to the team's server."""
    repo.env.update(s3_server.env)
    bucket = s3_server.new_bucket()
    _origin(repo, tmp_path)
    (repo.path / ".thetazarr").write_text(
        '[theta-zarr "remote.origin"]\n\turl = s3://team/m\n'
        "\tendpoint-url = http://127.0.0.1:9\n\tretry-timeout = 1\n")
    repo.tz("remote", "add", "origin", f"{bucket}/m")
    listed = repo.tz("remote", "list").stdout.decode()
    assert f"origin\t{bucket}/m" in listed and "127.0.0.1:9" not in listed
    m = _commit(repo, 0)
    repo.git("push", "-q", "origin", "main")
    stored = {k.split("/", 1)[1] for k in s3_server.objects(f"{bucket}/m")}
    assert {f"m/{object_key(d)}" for d in m.digests() - {None}} <= stored
    # the same URL in git config keeps the file's options for it
    repo.git("config", "theta-zarr.remote.origin.url", "s3://team/m")
    assert "endpoint-url=http://127.0.0.1:9" in repo.tz("remote", "list").stdout.decode()


def test_gc_remote_refuses_while_another_repository_pushes_to_the_same_remote(
        repo, make_repo, tmp_path):
    """Two model repositories pushed to one bucket prefix: gc --remote in one deleted the
    chunks only the other's commits named.  Each push now leaves a marker of its history's
    root commits there, and gc refuses while one names history this clone lacks."""
    shared = tmp_path / "team-models"
    x_bare, y_bare = tmp_path / "x.git", tmp_path / "y.git"
    other = make_repo("other")
    other.git("init", "-q", "-b", "main")
    other.tz("install")
    other.tz("track", "*.safetensors")
    for r, bare in ((repo, x_bare), (other, y_bare)):
        init_bare(bare, r.env)
        r.git("remote", "add", "origin", str(bare))
        r.tz("remote", "add", "origin", str(shared))
    _commit(repo, 0)
    repo.git("push", "-q", "origin", "main")
    theirs = _commit(other, 1)
    other.git("push", "-q", "origin", "main")
    roots = {r.out("rev-list", "--max-parents=0", "HEAD").strip() for r in (repo, other)}
    assert {p.name for p in (shared / "repositories").iterdir()} == roots
    store = open_remote(RemoteSpec("o", str(shared)))
    proc = repo.tz("gc", "--remote", "origin", "--grace", "0", check=False)
    their_root = other.out("rev-list", "--max-parents=0", "HEAD").strip()
    assert proc.returncode == 1 and proc.stderr.decode() == (
        f"theta-zarr: gc --remote origin: {shared} also holds the chunks of 1 other git "
        f"repository (root commit {their_root[:12]}), whose commits this clone does not "
        "have: gc would delete them. Give each repository its own remote prefix, or pass "
        "--ignore-other-repositories if that history is gone for good\n")
    assert store.missing(theirs.digests()) == set()
    # a clone of the other repository has its history: only this one's is foreign there
    c = clone(make_repo, y_bare, "y-clone", env={"GIT_THETA_ZARR_SKIP_SMUDGE": "1"})
    c.tz("remote", "add", "origin", str(shared))
    our_root = repo.out("rev-list", "--max-parents=0", "HEAD").strip()
    err = c.tz("gc", "--remote", "origin", "--grace", "0", check=False).stderr.decode()
    assert f"root commit {our_root[:12]}" in err and their_root[:12] not in err
    # told that the other history is gone, gc collects as before
    repo.tz("gc", "--remote", "origin", "--grace", "0", "--ignore-other-repositories")
    assert store.missing(theirs.digests()) == theirs.digests()
