"""The ``theta-zarr`` / ``git theta-zarr`` command: one click group, thin over the core.

Every command reports a failure as one line on stderr and exits non-zero.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .commands.options import check_output, remote_options
from .commands.reporting import (
    OneLineGroup,
    fail,
    leading_commands,
    reports_errors,
    say,
)
from .logs import setup_logging
from .redact import redact
from .wording import counted, human, natural_key, quote_path, show_name


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="theta-zarr")
def main() -> None:
    """Version control for ML checkpoints: every parameter a chunked Zarr array,
    chunks content-addressed in object storage, git holding only a manifest."""
    setup_logging()


# -- setup ----------------------------------------------------------------------------
def _scope_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--system / --global / --local, passed on as ``scope`` (None: the default); two of
    them are a usage error, as git config refuses two locations (a second one used to
    win silently)."""
    @functools.wraps(fn)
    def command(scope_system: bool, scope_global: bool, scope_local: bool, **kw: Any) -> Any:
        chosen = [name for name, on in (("system", scope_system), ("global", scope_global),
                                        ("local", scope_local)) if on]
        if len(chosen) > 1:
            raise click.UsageError(f"--{' and --'.join(chosen)} cannot be combined: "
                                   "give one scope")
        return fn(chosen[0] if chosen else None, **kw)

    for flag, help in (("system", "for every user"), ("global", "for this user"),
                       ("local", "for this repository (default inside one)")):
        command = click.option(f"--{flag}", f"scope_{flag}", is_flag=True, help=help)(command)
    return command


@main.command()
@_scope_options
@reports_errors
def install(scope: str | None) -> None:
    """Configure git to route tracked checkpoints through theta-zarr."""
    from .commands.manpages import ensure_installed
    from .git import install as inst
    from .git.hooks import install_hooks
    from .git.repo import Repo

    scope = scope or inst.default_scope()
    ensure_installed()  # `git theta-zarr --help` is `man git-theta-zarr`
    exe = inst.executable()
    values = inst.install(scope, exe=exe)
    click.echo(f"theta-zarr filter installed ({scope} git config)" +
               (f", starting {exe}" if exe != inst.EXE_NAME else ""))
    over = inst.overridden(values)
    if over:
        where, key, value = over[0]
        click.echo(f"theta-zarr: warning: the {where} git config sets {key} = {value!r}, and "
                   f"git uses that here, not the {scope} one just written: run 'git theta-zarr "
                   f"install --{where}' to update it, or 'git theta-zarr uninstall --{where}'",
                   err=True)
    if inst.default_scope() == "local":
        repo = Repo.discover()
        hooks = install_hooks(repo, exe)
        click.echo(f"hooks installed ({', '.join(os.path.basename(h) for h in hooks)} in "
                   f"{os.path.dirname(hooks[0])})")
        lazy = _lazy_files(repo)
        if lazy:
            click.echo(f"{len(lazy)} tracked checkpoint(s) in the working tree are manifests "
                       "(checked out before install): run 'git theta-zarr materialize'")
    else:
        click.echo("each repository gets its hooks the first time the filter runs in it "
                   "(a clone's checkout, a first 'git add')")


def _lazy_files(repo: Any) -> list[str]:
    from .git.files import tracked_files, worktree_state

    return [f.path for f in tracked_files(repo)
            if f.manifest is not None and worktree_state(repo, f.path) == "lazy"]


@main.command()
@_scope_options
@reports_errors
def uninstall(scope: str | None) -> None:
    """Remove theta-zarr's filter configuration from a git config scope."""
    from .git import install as inst
    from .git.hooks import uninstall_hooks
    from .git.repo import Repo

    scope = scope or inst.default_scope()
    if inst.uninstall(scope):
        click.echo(f"theta-zarr filter removed ({scope} git config)")
    else:
        click.echo(f"theta-zarr filter was not installed in the {scope} git config: "
                   "nothing to remove there")
    if inst.default_scope() == "local":
        repo = Repo.discover()
        uninstall_hooks(repo)
        _say_patterns_left(repo)


def _say_patterns_left(repo: Any) -> None:
    """After the last filter setting is gone, say that ``.gitattributes`` still routes
    patterns to it: git skips a filter it has no command for, and commits those files as
    they are (whole checkpoints into git), without a word."""
    from .git.attributes import tracked_patterns
    from .git.install import configured_executable

    patterns = tracked_patterns(repo.top)
    if patterns and configured_executable(repo.top) is None:
        click.echo(f"note: .gitattributes still tracks {', '.join(patterns)}; without the "
                   "filter git now commits those files whole: 'git theta-zarr untrack "
                   "PATTERN' stops tracking them, 'git theta-zarr install' restores the filter")


@main.command()
@click.argument("patterns", nargs=-1)
@reports_errors
def track(patterns: tuple[str, ...]) -> None:
    """Track files matching PATTERNS (.gitattributes); with none, list tracked patterns."""
    from .git import lfs as git_lfs
    from .git.attributes import pattern_key, tracked_patterns
    from .git.attributes import track as do_track
    from .git.install import configured_executable
    from .git.repo import Repo

    repo = Repo.discover()
    if not patterns:
        for p in tracked_patterns(repo.top):
            click.echo(p)
        return
    patterns = tuple(from_top(repo, p) for p in patterns)
    lfs_routed = {pattern_key(p) for p in git_lfs.routed_patterns(repo.top)}  # before ours
    was_lfs = git_lfs.lfs_files(repo)
    added = set(do_track(repo.top, list(patterns)))
    for p in patterns:
        verb = "Tracking" if p in added else "Already tracking"
        click.echo(f'{verb} "{p}"')
    if configured_executable(repo.top) is None:
        # git skips a filter it has no command for: the file would go into git as it is
        click.echo("theta-zarr: warning: the theta-zarr filter is not installed for this "
                   "repository, so 'git add' would store these files in git as they are: "
                   "run 'git theta-zarr install' first", err=True)
    still = set(git_lfs.lfs_files(repo, was_lfs))
    taken = [p for p in was_lfs if p not in still]
    if taken:
        click.echo(f"theta-zarr: {git_lfs.takeover_warning(list(patterns), taken)}", err=True)
        return
    routed = [p for p in patterns if pattern_key(p) in lfs_routed]
    now_ours = [p for p in routed if p in added]
    still_lfs = [p for p in routed if p not in added]
    if now_ours:
        click.echo(f"theta-zarr: warning: {', '.join(now_ours)} "
                   f"{'was' if len(now_ours) == 1 else 'were'} routed to git-lfs in "
                   ".gitattributes; theta-zarr's line now comes later and wins for new commits "
                   "(files git-lfs stored stay pointers until migrated); see "
                   "docs/migrate-from-lfs.md", err=True)
    if still_lfs:
        click.echo(f"theta-zarr: warning: {', '.join(still_lfs)} "
                   f"{'is' if len(still_lfs) == 1 else 'are'} routed to git-lfs by a "
                   "later .gitattributes line, which wins over theta-zarr's: remove that line "
                   "to store these files with theta-zarr; see docs/migrate-from-lfs.md",
                   err=True)

def from_top(repo, pattern: str) -> str:
    """A pattern given in a subfolder, as the top-level .gitattributes must say it: one with
    a ``/`` is relative to the current folder (as git-lfs's ``track`` takes it), so the
    folder is put in front (``..`` taken back: ``../*.pt`` in ``sub`` is ``/*.pt``, the
    top's files); one without matches at every depth and stays as it is."""
    import posixpath

    here = os.path.relpath(os.path.realpath(os.getcwd()), os.path.realpath(repo.top))
    if "/" not in pattern.rstrip("/") or here in (".", "") or here.startswith(".."):
        return pattern
    joined = f"{here.replace(os.sep, '/')}/{pattern.lstrip('/')}"
    if ".." not in pattern.split("/"):
        return joined
    up = posixpath.normpath(joined) + ("/" if pattern.endswith("/") else "")
    return up if "/" in up.rstrip("/") or up.startswith("..") else f"/{up}"


@main.command()
@click.argument("patterns", nargs=-1, required=True)
@reports_errors
def untrack(patterns: tuple[str, ...]) -> None:
    """Stop tracking PATTERNS (files already committed keep their manifests)."""
    from .git.attributes import untrack as do_untrack
    from .git.repo import Repo

    repo = Repo.discover()
    patterns = tuple(from_top(repo, p) for p in patterns)
    removed = do_untrack(repo.top, list(patterns))
    for p in patterns:
        click.echo(f'{"Untracking" if p in removed else "Not tracked:"} "{p}"')


# -- inspection -------------------------------------------------------------------------
def _model_files(repo, rel: str, rev: str | None) -> list[str]:
    """What a path given to ls-files selects: the shards a sharded model's index names
    (in the index, or at ``rev``) for an ``*.index.json``, else the path itself."""
    from .git.models import load_index
    from .git.sides import INDEX, tracked_by_us
    from .manifest import ManifestError
    from .shards import is_index_name

    if not is_index_name(rel):
        return [rel]
    try:
        index = load_index(repo, rel, rev or INDEX)
    except ManifestError:
        if tracked_by_us(repo, [rel]):
            return [rel]  # a tracked index that cannot be rebuilt: listed as the file it is
        raise  # a damaged index names what is wrong with it, not "no file matches"
    return [rel] if index is None else index.shards


@main.command("ls-files")
@click.argument("paths", nargs=-1)
@click.option("--rev", default=None, help="a revision instead of the index")
@click.option("--params", "show_params", is_flag=True, help="list every parameter")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@reports_errors
def ls_files(paths: tuple[str, ...], rev: str | None, show_params: bool, as_json: bool) -> None:
    """Tracked checkpoints: format, parameters, size, chunks, and how many are cached."""
    from .checkpoint import missing_chunks, open_cache
    from .git.files import (
        link_description,
        matches,
        outside_sparse_checkout,
        tracked_files,
        worktree_state,
    )
    from .git.repo import Repo

    repo = Repo.discover()
    cache = open_cache(repo.settings())
    # as git ls-files: paths may be folders, and in a subfolder only its files are listed;
    # a sharded model's *.index.json stands for its shards, as in diff and the API
    rel = [_model_files(repo, repo.relative(p).replace(os.sep, "/"), rev)
           for p in paths or ["."]]
    files = tracked_files(repo, rev, [s for selectors in rel for s in selectors])
    for p, selectors in zip(paths, rel, strict=False):
        if selectors != ["."] and not any(matches(f.path, s) for f in files
                                          for s in selectors):
            fail(f"{p}: no file theta-zarr tracks matches it")
    sparse = outside_sparse_checkout(repo) if files else set()
    rows = []
    for f in files:
        if f.manifest is None:
            rows.append({"path": f.path, "format": None, "bytes": f.size,
                         **({"lfs": f.lfs.to_json()} if f.lfs else {}),
                         **({"link": f.link} if f.link is not None else {})})
            continue
        m = f.manifest
        digests = m.digests()
        cached = len(digests) - len(missing_chunks(m, cache))
        state = worktree_state(repo, f.path, sparse)
        row: dict[str, Any] = {
            "path": f.path, "format": m.format_name, "params": len(m.params),
            "bytes": m.nbytes, "chunks": sum(len(e.chunks) for e in m.params.values()),
            "objects": len(digests), "cached": cached, "worktree": state,
        }
        if show_params:
            from .formats import transposed

            flipped = transposed(m)  # shapes as a reader gets them (Fortran-ordered .npy)
            row["parameters"] = [
                {"name": n, "shape": list(e.shape)[::-1] if n in flipped else list(e.shape),
                 "dtype": e.dtype, "bytes": e.nbytes, "chunks": len(e.chunks),
                 "inline": e.is_inline}
                for n, e in sorted(m.params.items(), key=lambda ne: natural_key(ne[0]))]
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        if r["format"] is None:
            lfs_ = r.get("lfs")
            why = link_description(r["link"]) if "link" in r else \
                "empty file, kept as it is" if r["bytes"] == 0 else \
                f"stored by git-lfs, oid {lfs_['oid']}, size {human(lfs_['size'])}" if lfs_ \
                else f"not a manifest: {human(r['bytes'])} committed before it was tracked"
            click.echo(f"{quote_path(r['path'])}  ({why})")
            continue
        click.echo(f"{quote_path(r['path'])}  {r['format']}  {counted(r['params'], 'param')}  "
                   f"{human(r['bytes'])}  {counted(r['chunks'], 'chunk')}  "
                   f"{r['cached']}/{counted(r['objects'], 'object')} cached  "
                   f"{r['worktree']}")
        for p in r.get("parameters", []):
            where = "inline" if p["inline"] else counted(p["chunks"], "chunk")
            click.echo(f"    {show_name(p['name'])}  {p['dtype']}{p['shape']}  "
                       f"{human(p['bytes'])}  {where}")


# -- filters ----------------------------------------------------------------------------
@main.command("filter-process", hidden=True)
def filter_process() -> None:
    """git's long-running clean/smudge filter (configured by install)."""
    from .git.filter_start import main as serve

    sys.exit(serve())


@main.command("clean")
@click.argument("path", required=False, default="checkpoint")
@reports_errors
def clean_cmd(path: str) -> None:
    """Checkpoint on stdin -> manifest on stdout (chunks go to the cache)."""
    from . import checkpoint, lfs
    from .errors import opaque_note
    from .git.repo import Repo

    settings = Repo.discover().settings()
    cache = checkpoint.open_cache(settings)
    stdin = sys.stdin.buffer
    source = checkpoint.open_source(stdin, cache, name=path)
    if not source.head or lfs.parse(source.head) is not None:
        out = source.head  # empty stays empty; a git-lfs pointer stays a pointer
    else:
        result = checkpoint.clean(source, settings, cache)
        if result.opaque_reason:
            click.echo(f"theta-zarr: {path}: {opaque_note(result.opaque_reason)}", err=True)
        out = result.manifest.to_bytes()
    sys.stdout.buffer.write(out)


@main.command("smudge")
@click.argument("path", required=False, default="checkpoint")
@reports_errors
def smudge_cmd(path: str) -> None:
    """Manifest on stdin -> checkpoint on stdout (a git-lfs pointer: through git-lfs).
    Under lazy checkout (theta-zarr.lazy) the manifest passes through as it is;
    GIT_THETA_ZARR_SKIP_SMUDGE=0 turns that off for one command."""
    from . import checkpoint, lfs
    from .git import lfs as git_lfs
    from .git.repo import Repo
    from .manifest import Manifest, looks_like_conflicted_manifest, looks_like_manifest

    repo = Repo.discover()
    settings = repo.settings()
    data = sys.stdin.buffer.read()
    out = sys.stdout.buffer
    if looks_like_conflicted_manifest(data[:4096]):
        Manifest.from_bytes(data, path)  # raises: conflict markers, one line
    if lfs.parse(data) is not None and not settings.lazy and git_lfs.installed():
        git_lfs.smudge(repo.top, path, data, out)
        return
    if not looks_like_manifest(data[:64]) or settings.lazy:
        if looks_like_manifest(data[:64]):
            Manifest.from_bytes(data, path)
        out.write(data)
        return
    from .git.push import read_through

    objects = read_through(repo, settings=settings)  # chunks the cache lacks: the remote's
    checkpoint.smudge(Manifest.from_bytes(data, path), out, settings, name=path,
                      cache=objects.cache,
                      fetch=objects.fetcher)


# -- remotes ----------------------------------------------------------------------------
@main.group()
def remote() -> None:
    """Object-store remotes (S3, GCS, a folder, any fsspec URL)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@remote_options
@click.option("--shared", is_flag=True,
              help="write to .thetazarr (commit it so clones find the remote)")
@reports_errors
def remote_add(name: str, url: str, options: tuple[str, ...], shared: bool) -> None:
    """Add remote NAME at URL (credentials come from the storage library, never from here).

    An http(s) URL is read-only (clones and fetches read from it; push refuses it)."""
    from .git import remotes
    from .git.repo import Repo
    from .storage import is_read_only, read_only_hint

    repo = Repo.discover()
    spec, before = remotes.add(repo, name, url, remotes.option_pairs(options), shared)
    replaces = ""
    if before:  # said, so a typo'd re-add of an existing name never goes unnoticed
        old = " ".join([before.get("url", "(no url)")] +
                       [f"{k}={v}" for k, v in sorted(before.items()) if k != "url"])
        replaces = f" (replaces {old})"
    click.echo(redact(f"theta-zarr remote {name} -> {spec.url}{replaces}"))
    if is_read_only(spec.url):  # a mirror serves clones; MinIO's URL is the usual mistake
        say(f"warning: remote {name!r}: {read_only_hint(spec.url)}")
        return  # no push can copy anything there
    # git push uploads the chunks of the commits it sends, as git-lfs does: commits the git
    # remote already has would never reach the new store, and every clone would fail.
    # Commits that name no chunk (a history on git-lfs before `migrate`) need no copy
    pushed = [g for g in remotes.feeding_git_remotes(repo, spec)
              if repo.git("for-each-ref", "--count=1", f"refs/remotes/{g}/").strip()
              and remotes.manifests_in_range(repo, [f"--remotes={g}"], [])]
    if pushed:
        say(f"git remote {pushed[0]!r} already has commits, whose chunks 'git push' will "
            f"not send again: run 'git theta-zarr push {name} --all' to copy them to "
            f"{redact(spec.url)}")


@remote.command("list")
@reports_errors
def remote_list() -> None:
    """Configured remotes with their URL and options."""
    from .git import remotes
    from .git.repo import Repo

    for spec in remotes.configured(Repo.discover()).values():
        opts = " ".join(f"{k}={v}" for k, v in sorted(spec.options.items()))
        click.echo(redact(f"{spec.name}\t{spec.url}{'  ' + opts if opts else ''}"))


@remote.command("remove")
@click.argument("name")
@click.option("--shared", is_flag=True, help="remove from .thetazarr")
@reports_errors
def remote_remove(name: str, shared: bool) -> None:
    """Forget remote NAME (the bucket and its objects are untouched)."""
    from .git import remotes
    from .git.repo import Repo

    repo = Repo.discover()
    if not remotes.remove(repo, name, shared):
        elsewhere = remotes.recorded(repo, name, not shared)
        fail(f"no remote {name!r} in {'.thetazarr' if shared else 'git config'}" + (
            "" if not elsewhere else " (it is in git config: drop --shared)" if shared else
            " (it is in the committed .thetazarr: add --shared to remove it there)"))
    click.echo(f"theta-zarr remote {name} removed")


@main.command("pre-push", hidden=True)
@click.argument("remote_name")
@click.argument("url", required=False)
@reports_errors
def pre_push_cmd(remote_name: str, url: str | None) -> None:
    """Run by the pre-push hook: upload the chunks the pushed commits need (nothing under
    ``git push --dry-run``, which runs the hook too: the process tree tells)."""
    from .git.parent import parent_git, push_is_dry_run
    from .git.push import pre_push
    from .git.repo import Repo

    lines = [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
    git = parent_git()
    dry_run = git is not None and git[0] == "push" and push_is_dry_run(git[1])
    pre_push(Repo.discover(), remote_name, lines, url, dry_run=dry_run)


def _finish_pending(args: tuple[str, ...]) -> None:
    """Run by the post-checkout and post-merge hooks (git's index is written,
    git has not exited): write the checkpoints the filter left for a direct write, so the
    hooks that run next, and the user, see them (git/pending.py)."""
    from .git import pending
    from .git.repo import Repo

    pending.finish(Repo.discover())  # a failure: one line naming the files left lazy


for _hook in ("post-checkout", "post-merge"):
    main.command(_hook, hidden=True, context_settings={"ignore_unknown_options": True})(
        click.argument("args", nargs=-1)(reports_errors(_finish_pending)))


@main.command("push")
@click.argument("remote_name", required=False)
@click.argument("refs", nargs=-1)
@click.option("--all", "all_refs", is_flag=True, help="every local branch and tag")
@click.option("-n", "--dry-run", is_flag=True,
              help="say how many chunks REMOTE lacks and their size; upload nothing")
@reports_errors
def push_cmd(remote_name: str | None, refs: tuple[str, ...], all_refs: bool,
             dry_run: bool) -> None:
    """Upload the chunks of git commits: those reachable from REFS (default HEAD) that
    REMOTE lacks.  (To publish a checkpoint without git: 'theta-zarr publish'.)
    'git push --dry-run' uploads nothing either."""
    from .git.push import push_manifests
    from .git.remotes import manifests_in_range, require
    from .git.repo import Repo

    repo = Repo.discover()
    spec = require(repo, remote_name, "REMOTE")
    include = ["--branches", "--tags"] if all_refs else list(refs or ["HEAD"])
    manifests = manifests_in_range(repo, include, [])
    if not manifests:
        click.echo("theta-zarr: nothing to push (no tracked checkpoints in those commits)")
        return
    push_manifests(repo, spec, manifests, (include, []), dry_run=dry_run)


@main.command("fetch")
@click.argument("remote_name", required=False)
@click.argument("rev", required=False)
@click.option("--include", "include", multiple=True, metavar="GLOB",
              help="only parameters matching GLOB (repeatable)")
@click.option("--all", "all_refs", is_flag=True,
              help="the checkpoints of every commit of every local branch and tag (what "
                   "'push --all', or a first push to another remote, uploads)")
@reports_errors
def fetch_cmd(remote_name: str | None, rev: str | None, include: tuple[str, ...],
              all_refs: bool) -> None:
    """Download into the cache the chunks of REV's checkpoints (default HEAD), or with
    --all those of the whole history, as 'git lfs fetch --all'."""
    from . import checkpoint
    from .git.files import tracked_files
    from .git.push import read_through
    from .git.remotes import manifests_in_range, require
    from .git.repo import Repo
    from .remote import TransferStats, fetch_objects, open_remote

    if all_refs and rev is not None:
        fail("give REV or --all, not both", code=129)
    repo = Repo.discover()
    spec = require(repo, remote_name, "REMOTE")
    objects = read_through(repo)
    if all_refs:
        where = "the history's"
        manifests = manifests_in_range(repo, ["--branches", "--tags"], [])
    else:
        where = f"{rev or 'HEAD'}'s"
        manifests = [f.manifest for f in tracked_files(repo, rev or "HEAD")
                     if f.manifest is not None]
    digests: set[str] = set()
    sizes: dict[str, int] = {}
    matched = False
    for m in manifests:
        names = checkpoint.matching_params(m, list(include) or None)
        matched = matched or bool(names)
        digests |= {d for _, _, d in m.iter_chunks(names)}
        sizes.update(m.chunk_sizes())
    if include and not matched:  # as pull and materialize refuse it
        fail(f"no parameter of {where} checkpoints matches {', '.join(include)}")
    lacking = objects.cache.missing(digests)
    if lacking:
        stats = fetch_objects(open_remote(spec, repo.settings().concurrency, need="read"),
                              objects.cache, lacking, sizes)
    else:  # as git-lfs: the remote is not asked (nor its library imported) for nothing
        stats = TransferStats()
    stats.skipped = len(digests) - len(lacking)
    click.echo(f"theta-zarr: {stats.summary('fetched', f'from {spec.name} ({redact(spec.url)})')}")


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--include", "include", multiple=True, metavar="GLOB",
              help="only parameters matching GLOB; written to a separate file")
@click.option("--output", "-o", default=None,
              help="write the checkpoint the one PATH names (or its --include selection) "
                   "to this new path instead, leaving the tracked file as it is")
@click.option("--force", is_flag=True, help="overwrite an existing --output")
@reports_errors
def materialize(paths: tuple[str, ...], include: tuple[str, ...], output: str | None,
                force: bool) -> None:
    """Rebuild real checkpoints from the manifests a lazy checkout left in the working tree."""
    from .git.materialize import materialize as run

    if output and len(paths) != 1:  # a usage mistake, as the docs say
        raise click.UsageError("--output needs exactly one PATH")
    check_output(output)
    for line in run(list(paths), list(include) or None, output, force):
        click.echo(line)


@main.command()
@click.option("--size", default="64MiB", show_default=True,
              help="approximate size of the demo model")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="build the demo repository in this new or empty folder and keep it")
@reports_errors
def demo(size: str, keep: str | None) -> None:
    """Build a throwaway repo: commit a model, a two-layer fine-tune, check the old one out."""
    from .demo import run_demo
    from .settings import parse_size

    run_demo(parse_size(size), keep, echo=click.echo)


@main.command("help")
@click.argument("command", nargs=-1)
@reports_errors
def help_cmd(command: tuple[str, ...]) -> None:
    """Show help for COMMAND (a subcommand too: 'help remote add'), or list commands."""
    names, group = leading_commands(main, command)
    if len(names) < len(command):
        fail(f"no such command: {' '.join(command[:len(names) + 1])} "
             "(see 'git theta-zarr help')", code=1)
    info = " ".join(["git theta-zarr", *names])
    # main's context settings (-h as well as --help), as 'COMMAND --help' shows them
    click.echo(group.get_help(click.Context(group, info_name=info, **main.context_settings)))


def _register_command_modules() -> None:
    from .commands import diffmerge, migrate, nodecache, sync

    diffmerge.register(main)
    migrate.register(main)
    nodecache.register(main)
    sync.register(main)


_register_command_modules()

if __name__ == "__main__":
    main()
