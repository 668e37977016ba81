"""Click commands for cluster sync (publish, combine, pull, ls, watch, import) and fsck/gc.

``publish CKPT REMOTE --ref NAME`` publishes a checkpoint without git, ``combine``
records staged shards; ``push`` is git's chunk push only (``push [REMOTE] [REFS...]``),
and still forwards the old ``push ... --ref`` spellings here for one release.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from .. import interrupts
from ..redact import redact
from ..wording import counted, human
from .options import REMOTE_OPTION_HELP, check_output, remote_options
from .reporting import echo_moved_packs, fail, reports_errors, say

if TYPE_CHECKING:
    from ..foreign import Side
    from ..git.reachability import NotPushed, Pushed
    from ..sync import FileEntry, SyncRemote, Target


def _cache_options(fn: Callable[..., Any], cleans: bool = True) -> Callable[..., Any]:
    """--cache, and --chunk-size for a command that cleans (``cleans``): pull writes files
    and chunks nothing, so there the option is accepted but not listed."""
    fn = click.option("--chunk-size", default="4MiB", show_default=True, hidden=not cleans,
                      help="target raw chunk size")(fn)
    fn = click.option("--cache", "cache_dir", default=None, metavar="DIR",
                      help="object cache (default $THETA_ZARR_CACHE or ~/.cache/theta-zarr)")(fn)
    return fn


def _is_url(text: str) -> bool:
    """A URL or a folder, rather than a theta remote's name: a scheme (``file:relative``
    too, which the URL check then explains), a path, or something that exists."""
    from ..storage import has_scheme

    return "/" in text or text.startswith(".") or os.path.exists(text) or has_scheme(text)


def open_sync_remote(target: str, options: tuple[str, ...], concurrency: int = 16,
                     need: str = "read"):
    """A URL (with --remote-option pairs) or, inside a git repository, a theta remote's name;
    ``need`` ("read" or "write") checks that its bucket or folder exists.  An http(s) remote
    is refused in one line: every command here reads refs, which it cannot hold (and a
    write is refused as such, ``remote.check_writable``)."""
    from ..git.remotes import option_pairs, require
    from ..git.repo import GitInputError, Repo
    from ..remote import RemoteError, RemoteSpec
    from ..storage import NO_REFS, is_read_only, read_only_hint
    from ..sync import SyncRemote

    if _is_url(target):
        spec = RemoteSpec("command line", target, option_pairs(options))
    else:
        if options:
            raise ValueError("--remote-option goes with a URL, not a named remote")
        try:
            repo = Repo.discover()
        except GitInputError:  # a word that is no folder here: a remote name needs a repo
            raise GitInputError(
                f"REMOTE {target!r} is not a URL or an existing folder, and outside a git "
                f"repository ({os.getcwd()}) it names no theta remote: give a URL "
                f"(s3://BUCKET/PREFIX, gs://...) or a folder's path (./{target})") from None
        spec = require(repo, target)
    if need != "write" and is_read_only(spec.url):  # one line, not an error row per ref
        raise RemoteError(f"remote {spec.name!r} ({spec.url}) {NO_REFS}: "
                          f"{read_only_hint(spec.url)}")
    return SyncRemote.open(spec, concurrency, need)


def _not_pushed_lines(found: NotPushed, pushed: Pushed, remote: str) -> list[str]:
    """fsck --remote's lines for the chunks ``remote`` lacks that no pushed commit needs:
    by the branches and tags to push (with the command), a detached HEAD's commits, and
    what no push sends (the index, stashes, reflogs, another git remote's branches)."""
    # where no git remote pushes there, every branch, tag and HEAD counts as pushed: only
    # the last group can have chunks
    to = pushed.git_remotes[0] if pushed.git_remotes else remote
    lines = []
    if found.chunks:
        names = ", ".join(found.refs[:5]) + (f" and {len(found.refs) - 5} more"
                                              if len(found.refs) > 5 else "")
        command = (f"git push {to} {' '.join(found.refs)}" if len(found.refs) <= 5 else
                   f"git push {to} --all, and git push {to} --tags")
        lines.append(f"{counted(len(found.chunks), 'chunk')} of "
                     f"{counted(len(found.commits), 'commit')} not pushed yet ({names}): "
                     f"{command}")
    if found.detached_chunks:
        lines.append(f"{counted(len(found.detached_chunks), 'chunk')} of "
                     f"{counted(len(found.detached), 'commit')} not pushed yet (detached HEAD): "
                     f"'git switch -c BRANCH', then 'git push {to} BRANCH'")
    if found.elsewhere:
        lines.append(f"{counted(len(found.elsewhere), 'chunk')} that no branch or tag needs "
                     f"(the index, stashes, reflogs, another git remote's branches) "
                     f"{'is' if len(found.elsewhere) == 1 else 'are'} not on {remote}: "
                     "no push sends them")
    return lines


def _settings(cache_dir: str | None, chunk_size: str):
    from ..settings import Settings, parse_size
    from ..sync import default_cache_dir

    return Settings(cache_dir=default_cache_dir(cache_dir), chunk_bytes=parse_size(chunk_size))


def _ref_names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
               ) -> tuple[str, ...]:
    """Click callback: ``_ref_name`` of each of several names."""
    return tuple(_ref_name(ctx, param, v) or "" for v in value)


def _ref_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a ref name checked by refs.check_ref_name before the command
    does anything (nothing is cleaned or uploaded for a name a backend would refuse).  A
    name that --ref or --ref-prefix gives a new ref may not begin with '-' (as
    ``Refs.set`` refuses it), said once here, not for every checkpoint a watch finds."""
    from ..refs import LEADING_DASH, RefError, check_ref_name

    if value is None:
        return None
    label = param.opts[0] if param.opts[0].startswith("-") else \
        (param.metavar or param.name.upper()).rstrip(".")
    if param.name in ("ref", "ref_prefix") and param.opts[0].startswith("-") and \
            value.startswith("-"):
        fail(f"{label}: {LEADING_DASH}")
    probe = value + "x" if param.name == "ref_prefix" else value  # a prefix of names
    try:
        check_ref_name(probe)
    except RefError as e:
        fail(f"{label}: {e}")
    return value


class _Seconds(click.ParamType):
    """A duration in seconds: a finite number from 0 to a year (a negative or NaN
    interval made ``watch`` scan without pause; an infinite one failed in the wait)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not 0 <= seconds <= 365 * 86400:  # NaN fails too
            self.fail(f"{value!r} is not between 0 and a year of seconds", param, ctx)
        return seconds


SECONDS = _Seconds()


def register(main: click.Group) -> None:
    """Add the sync commands; ``push`` wraps git's push command already registered."""
    git_push = main.commands["push"]

    @main.command("publish")
    @click.argument("path", metavar="CKPT")
    @click.argument("remote_arg", metavar="REMOTE")
    @click.option("--ref", required=True, callback=_ref_name,
                  help="the ref to create or move")
    @click.option("--force", is_flag=True, help="move the ref even if it points elsewhere")
    @click.option("--base-ref", default=None, callback=_ref_name,
                  help="the ref this checkpoint continues (delta base; default: --ref if it "
                       "exists, else the newest ref in --ref's folder)")
    @click.option("--shard", is_flag=True,
                  help="stage this file as one shard of --ref (finish with 'combine')")
    @click.option("--name", "shard_name", default=None, help="the shard's name in the set")
    @remote_options
    @_cache_options
    @reports_errors
    def publish(path: str, remote_arg: str, ref: str, force: bool, base_ref: str | None,
                shard: bool, shard_name: str | None, options: tuple[str, ...],
                cache_dir: str | None, chunk_size: str) -> None:
        """Publish CKPT (file or folder) to REMOTE under --ref, uploading only new chunks.

        With --shard, each rank publishes its own file concurrently; 'theta-zarr combine'
        then records the staged shards as one set.  No git needed.
        """
        from .. import sync

        settings = _settings(cache_dir, chunk_size)
        remote = open_sync_remote(remote_arg, options, settings.concurrency, need="write")
        name = (shard_name or os.path.basename(os.path.normpath(path))) if shard else None
        result = sync.push(path, remote, ref, settings, force=force, shard=name,
                           base_ref=base_ref)
        say(result.summary())
        interrupts.release_sigint()  # a Ctrl-C after the ref moved: the publish is done

    @main.command("combine")
    @click.argument("remote_arg", metavar="REMOTE")
    @click.option("--ref", required=True, help="the ref whose staged shards form the set")
    @click.option("--force", is_flag=True, help="move the ref even if it points elsewhere")
    @click.option("--expect", type=int, default=None, help="shards required")
    @click.option("--abort", is_flag=True,
                  help="drop every shard staged for --ref (an attempt that died before "
                       "combine) and record nothing")
    @remote_options
    @reports_errors
    def combine(remote_arg: str, ref: str, force: bool, expect: int | None, abort: bool,
                options: tuple[str, ...]) -> None:
        """Record the shards staged for --ref (by 'publish --shard') as one set.

        With --abort, drop them instead: a job restarted after a rank died before
        combine starts its ref afresh (the ref itself is left as it is)."""
        from .. import sync

        if abort and (force or expect is not None):
            raise click.UsageError("--abort records no set: it takes neither --force nor "
                                   "--expect")
        remote = open_sync_remote(remote_arg, options, need="write")
        if abort:
            names = sync.abort_combine(remote, ref)
            say(f"dropped {len(names)} shard(s) staged for {ref}: {', '.join(names)}"
                if names else f"no shards staged for {ref} in {remote.url}: nothing to drop")
            return
        result = sync.combine(remote, ref, force, expect)
        say(result.summary())
        interrupts.release_sigint()  # a Ctrl-C after the ref moved: the set is recorded

    @main.command("push", help=git_push.help, short_help=git_push.short_help)
    @click.argument("args", nargs=-1, metavar="[REMOTE] [REFS]...")
    @click.option("--all", "all_refs", is_flag=True, help="every local branch and tag")
    @click.option("-n", "--dry-run", is_flag=True,
                  help="say how many chunks REMOTE lacks and their size; upload nothing")
    @click.option("--ref", default=None, hidden=True)
    @click.option("--force", is_flag=True, hidden=True)
    @click.option("--base-ref", default=None, hidden=True)
    @click.option("--shard", is_flag=True, hidden=True)
    @click.option("--name", "shard_name", default=None, hidden=True)
    @click.option("--combine", "combine_", is_flag=True, hidden=True)
    @click.option("--expect", type=int, default=None, hidden=True)
    @click.option("--remote-option", "--option", "-o", "options", multiple=True, hidden=True)
    @click.option("--chunk-size", default="4MiB", hidden=True)
    @click.option("--cache", "cache_dir", default=None, hidden=True)
    @click.pass_context
    @reports_errors
    def push(ctx: click.Context, args: tuple[str, ...], all_refs: bool, dry_run: bool,
             ref: str | None, force: bool, base_ref: str | None, shard: bool,
             shard_name: str | None,
             combine_: bool, expect: int | None, options: tuple[str, ...],
             cache_dir: str | None, chunk_size: str) -> None:
        # The cluster push moved to `publish` and `combine`; `push --ref` still works for
        # one release, with a warning.
        if ref is None:
            if combine_ or shard or force or options:
                raise ValueError("--combine, --shard, --force and remote options belong to "
                                 "'theta-zarr publish' / 'theta-zarr combine'")
            ctx.invoke(git_push, remote_name=args[0] if args else None,
                       refs=tuple(args[1:]), all_refs=all_refs, dry_run=dry_run)
            return
        if dry_run:
            raise ValueError("--dry-run is for the chunks of git commits; 'push --ref' "
                             "moved to 'theta-zarr publish'")
        extra = [f"--remote-option {o}" for o in options]
        if combine_:
            if len(args) != 1:
                raise ValueError("usage: theta-zarr combine REMOTE --ref NAME")
            say(f"warning: 'push --combine' is deprecated; use 'theta-zarr combine "
                f"{' '.join([*args, '--ref', ref, *extra])}'")
            ctx.invoke(combine, remote_arg=args[0], ref=ref, force=force, expect=expect,
                       options=options)
            return
        if len(args) != 2:
            raise ValueError("usage: theta-zarr publish CKPT REMOTE --ref NAME")
        say(f"warning: 'push CKPT REMOTE --ref' is deprecated; use 'theta-zarr publish "
            f"{' '.join([*args, '--ref', ref, *extra])}'")
        ctx.invoke(publish, path=args[0], remote_arg=args[1], ref=ref, force=force,
                   base_ref=base_ref, shard=shard, shard_name=shard_name, options=options,
                   cache_dir=cache_dir, chunk_size=chunk_size)

    @main.command("pull")
    @click.argument("remote_arg", metavar="REMOTE")
    @click.argument("ref", callback=_ref_name)
    @click.option("--output", "-o", "output", required=True, help="file (or folder) to write")
    @click.option("--include", multiple=True, metavar="GLOB",
                  help="only parameters matching GLOB (repeatable)")
    @click.option("--force", is_flag=True,
                  help="write over an existing file, or into a folder that is not empty")
    @click.option("--remote-option", "--option", "options", multiple=True, metavar="KEY=VALUE",
                  help=REMOTE_OPTION_HELP)
    @functools.partial(_cache_options, cleans=False)
    @reports_errors
    def pull(remote_arg: str, ref: str, output: str, include: tuple[str, ...], force: bool,
             options: tuple[str, ...], cache_dir: str | None, chunk_size: str) -> None:
        """Rebuild the checkpoint REF names at --output, every chunk verified.

        safetensors, NumPy and opaque files come back byte-identical; PyTorch files
        tensor-identical (everything torch.load returns is equal; the bytes are the
        original's when torch.save of the same PyTorch version wrote it to a file
        object, and otherwise differ in the zip's folder name, e.g. extra/ for extra.pt).
        --include writes a file of the matching tensors alone (with any tensor that
        shares their storage, such as a tied alias). An existing --output file, or a
        folder that is not empty, is refused unless --force.
        """
        from .. import sync

        check_output(output)
        start = time.perf_counter()
        settings = _settings(cache_dir, chunk_size)
        remote = open_sync_remote(remote_arg, options, settings.concurrency)
        written = sync.pull(remote, ref, output, settings, list(include) or None, force)
        say(f"pulled {ref} -> {output} ({len(written)} file(s)), "
             f"{time.perf_counter() - start:.1f} s")

    @main.command("ls")
    @click.argument("remote_arg", metavar="REMOTE")
    @click.argument("pattern", required=False, default="")
    @remote_options
    @reports_errors
    def ls(remote_arg: str, pattern: str, options: tuple[str, ...]) -> None:
        """Refs of REMOTE (those PATTERN selects): time, raw size, stored size, parameters,
        digest.

        PATTERN selects as git for-each-ref's patterns do: run7 lists run7 and run7/...
        (not run70/...), a glob such as 'run7/step-1*' matches whole names, its '*' not
        crossing '/' ('run7/**' does).  Rows are in natural name order: run7/step-999
        before run7/step-1000."""
        from .. import sync

        remote = open_sync_remote(remote_arg, options)
        rows = sync.ls(remote, pattern)
        if not rows:  # on stderr: a script reading the rows still reads none
            say(f"no refs{f' match {pattern}' if pattern else ''} in {remote.url}")
        for row in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.mtime)) \
                if row.mtime else "-"
            if row.error:
                click.echo(f"{row.name}\t{when}\terror: {redact(row.error)}")
                continue
            files = f"  {row.files} files" if row.files > 1 else ""
            click.echo(f"{row.name}\t{when}\t{human(row.nbytes)}\t"
                       f"{human(row.stored)} stored\t{row.params} params"
                       f"{files}\t{row.digest[:19]}")
        bad = sum(1 for row in rows if row.error)
        if bad:  # every ref is listed, but a script must not take a broken one for the newest
            sys.stdout.flush()
            fail(f"{counted(bad, 'ref')} of {len(rows)} could not be read: the rows "
                 "marked 'error:'")

    @main.command("delete-ref")
    @click.argument("remote_arg", metavar="REMOTE")
    @click.argument("refs", metavar="REF...", nargs=-1, required=True, callback=_ref_names)
    @click.option("--dry-run", is_flag=True, help="say which refs would go; delete nothing")
    @remote_options
    @reports_errors
    def delete_ref(remote_arg: str, refs: tuple[str, ...], dry_run: bool,
                   options: tuple[str, ...]) -> None:
        """Delete each REF from REMOTE (the ref only, as git push --delete does): a run's
        old steps, a bad checkpoint.

        The chunks and manifest it named stay until gc finds that nothing else names them
        and that they are older than its grace period ('git theta-zarr gc --remote NAME'
        in a clone whose theta remote is REMOTE).  A REF that is not there is said, and
        the exit status is 1; the others are deleted."""
        remote = open_sync_remote(remote_arg, options, need="write" if not dry_run else "read")
        verb = "would delete" if dry_run else "deleted"
        absent = []
        for ref in dict.fromkeys(refs):
            held = remote.refs.held(ref) if dry_run else remote.refs.delete(ref)
            if held is None:
                absent.append(ref)
                continue
            click.echo(f"{verb} {ref} (was {held[:19]})")
        if absent:
            sys.stdout.flush()
            fail(f"no ref {', '.join(absent)} in {remote.url}")

    @main.command("diff-refs")
    @click.argument("remote_arg", metavar="REMOTE")
    @click.argument("old_ref", metavar="OLD")
    @click.argument("new_ref", metavar="NEW")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    @click.option("--summary-only", is_flag=True,
                  help="digests only: what changed, no numbers, no chunk read")
    @remote_options
    @reports_errors
    def diff_refs(remote_arg: str, old_ref: str, new_ref: str, as_json: bool,
                  summary_only: bool, options: tuple[str, ...]) -> None:
        """Per-parameter diff of two refs (two steps of a run), reading changed chunks only.

        Two refs that each name a set of files (a published folder, a combined set of
        shards) are compared file by file, like ``git diff`` of two commits: each file
        that differs, by its name in the set."""
        import json

        from .. import diff

        remote = open_sync_remote(remote_arg, options)
        old, new = (remote.resolve(ref)[1] for ref in (old_ref, new_ref))
        fds = [diff.diff(a, b, remote.objects, path, numbers=not summary_only)
               for path, a, b in _ref_sides(remote, old_ref, old, new_ref, new)]
        if as_json:
            click.echo(json.dumps(diff.json_document(fds, old_ref, new_ref), indent=2))
            return
        for fd in fds:
            for line in diff.format_text(fd):
                click.echo(line)

    @main.command("watch")
    @click.argument("folder", type=click.Path(exists=True, file_okay=False))
    @click.argument("remote_arg", metavar="REMOTE")
    @click.option("--ref-prefix", required=True, callback=_ref_name,
                  help="ref = prefix + checkpoint name")
    @click.option("--interval", default=30.0, show_default=True, type=SECONDS,
                  help="seconds between scans; a checkpoint is complete once unchanged "
                       "over one interval")
    @click.option("--marker", default=None, metavar="GLOB",
                  help="a folder is complete when it holds a file matching GLOB "
                       "(pushed with it, unless empty: a DONE sentinel)")
    @click.option("--pattern", "patterns", multiple=True, metavar="GLOB",
                  help="top-level checkpoint files (default *.safetensors *.pt *.pth *.bin "
                       "*.npz *.npy)")
    @click.option("--state", default=None, help="state file (default FOLDER/.theta-zarr-"
                                                "watch.json)")
    @click.option("--once", is_flag=True, help="scan twice, one interval apart, then exit")
    @click.option("--exit-after", type=SECONDS, default=None, help="exit after SECONDS")
    @click.option("--force", is_flag=True, help="move refs that point elsewhere")
    @remote_options
    @_cache_options
    @reports_errors
    def watch(folder: str, remote_arg: str, ref_prefix: str, interval: float,
              marker: str | None, patterns: tuple[str, ...], state: str | None, once: bool,
              exit_after: float | None, force: bool, options: tuple[str, ...],
              cache_dir: str | None, chunk_size: str) -> None:
        """Push each checkpoint that appears in FOLDER once it is complete; SIGTERM stops."""

        settings = _settings(cache_dir, chunk_size)
        remote = open_sync_remote(remote_arg, options, settings.concurrency, need="write")
        from .. import watch

        opts = watch.WatchOptions(prefix=ref_prefix, interval=interval, marker=marker,
                                 globs=patterns or watch.CHECKPOINT_GLOBS, once=once,
                                 exit_after=exit_after, state=state, force=force)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        watcher = watch.Watcher(folder, remote, settings, opts, say)  # its state file checked
        say(f"watching {folder} every {interval:g} s (SIGTERM or Ctrl-C stops)")
        code = watcher.run(stop)
        say("watch stopped" + (" (signal)" if stop.is_set() else ""))
        sys.exit(code)

    @main.command("import")
    @click.argument("remote_arg", metavar="REMOTE")
    @click.argument("ref", callback=_ref_name)
    @click.argument("path")
    @click.option("--force", is_flag=True,
                  help="overwrite local content at PATH that git does not have (untracked "
                       "or modified files)")
    @remote_options
    @reports_errors
    def import_cmd(remote_arg: str, ref: str, path: str, force: bool,
                   options: tuple[str, ...]) -> None:
        """Stage REF's checkpoint as PATH in this repository (no re-hashing); then commit."""
        from ..git.repo import Repo

        repo = Repo.discover()
        settings = repo.settings()
        remote = open_sync_remote(remote_arg, options, settings.concurrency)
        from ..git.import_ref import import_ref

        for p in import_ref(repo, remote, ref, path, settings, force=force):
            click.echo(f"imported {ref} -> {p}")

    @main.command("fsck")
    @click.option("--remote", "remote_name", default=None, metavar="NAME",
                  help="check that this remote holds, intact, every object of the commits "
                       "pushed to it (those its git remote's remote-tracking refs reach)")
    @reports_errors
    def fsck(remote_name: str | None) -> None:
        """Find missing or corrupt objects reachable from git refs, reflogs, stashes, index.

        With --remote NAME, chunks NAME lacks that only commits not pushed yet need (or
        the index, stashes, reflogs) are counted apart, with the branches to push, and
        do not fail the check."""
        from .. import checkpoint, gc
        from ..errors import one_line
        from ..git.reachability import git_roots, not_pushed, pushed_revs, split_roots
        from ..git.remotes import require, resolve
        from ..git.repo import Repo
        from ..remote import open_remote
        from ..storage import StorageError
        from ..sync import SyncRemote

        repo = Repo.discover()
        settings = repo.settings()
        cache = checkpoint.open_cache(settings)
        roots = gc.Roots()
        unpushed: list[str] = []
        if remote_name:
            spec = require(repo, remote_name)
            remote = SyncRemote.open(spec, settings.concurrency, need="read")
            pushed = pushed_revs(repo, spec)
            local = gc.Roots()
            split_roots(repo, pushed, roots, local)
            problems = list(local.problems)
            problems += gc.remote_roots(remote, roots, young_after=0.0, strict=True)
            problems += gc.check_objects(remote.objects, roots)
            rest = {d: where for d, where in local.chunks.items() if d not in roots.chunks}
            lacking = remote.objects.missing(rest)
            # what the remote holds of them is read and verified too: a push skips an
            # object that is there, so a corrupt one would never be replaced
            problems += gc.check_objects(remote.objects, gc.Roots(
                {d: where for d, where in rest.items() if d not in lacking}))
            unpushed = _not_pushed_lines(not_pushed(repo, pushed, lacking), pushed, spec.name)
            checked = len(roots.chunks) + len(rest) - len(lacking)
            problems += gc.check_stored(cache, set())
            if not pushed.git_remotes and any(p.startswith("missing ") for p in problems):
                say(f"no git remote sends its chunks to {spec.name!r} (a git remote of that "
                    "name, or one theta-zarr.default-remote points there), so every "
                    "branch's and tag's are expected there: 'git theta-zarr push "
                    f"{spec.name} --all' uploads them")
        else:
            git_roots(repo, roots, parse=True)
            problems = list(roots.problems)
            spec = resolve(repo)
            fallback = open_remote(spec, settings.concurrency) if spec else None
            if fallback is not None:
                try:
                    fallback.check_root()
                except StorageError as e:  # what the cache lacks cannot be looked up there
                    say(f"cannot reach remote {spec.name!r} ({one_line(e)}): objects the "
                        "cache lacks are reported as missing")
                    fallback = None
            problems += gc.check_objects(cache, roots, fallback)
            problems += gc.check_stored(cache, set(roots.chunks))
            checked = len(roots.chunks)
        for line in problems + unpushed:
            click.echo(line)
        if problems:
            say(f"{len(problems)} problem(s) found")
            sys.exit(1)
        click.echo(f"ok: {checked} reachable objects checked")

    @main.command("gc")
    @click.option("--remote", "remote_name", default=None,
                  help="also collect the remote's unreachable manifests and objects")
    @click.option("--grace", default="7d", show_default=True,
                  help="keep anything written more recently than this (e.g. 7d, 12h, 0)")
    @click.option("--dry-run", is_flag=True, help="print what would go, delete nothing")
    @click.option("--repack", is_flag=True,
                  help="with --remote: rewrite delta chains deeper than --repack-depth as "
                       "full objects")
    @click.option("--repack-depth", type=click.IntRange(0, 64), default=None,
                  help="deepest chain kept by --repack (default: theta-zarr.delta-depth; "
                       "0 rewrites every delta)")
    @click.option("--ignore-stale-refs", is_flag=True,
                  help="with --remote: collect even though git remotes that push there have "
                       "refs this clone has not fetched")
    @click.option("--ignore-other-repositories", is_flag=True,
                  help="with --remote: collect it even though other git repositories "
                       "push there (their chunks are deleted: only for histories gone "
                       "for good)")
    @click.option("--shared-cache", is_flag=True,
                  help="collect a cache set by theta-zarr.cache too, "
                       "keeping what the other repositories it names need (each names "
                       "itself when it reads its settings)")
    @reports_errors
    def gc_cmd(remote_name: str | None, grace: str, dry_run: bool, repack: bool,
               repack_depth: int | None, ignore_stale_refs: bool,
               ignore_other_repositories: bool, shared_cache: bool) -> None:
        """Delete unreachable objects older than --grace from the cache (and the remote)."""
        from .. import checkpoint, gc
        from ..cache import default_cache_dir as own_cache_dir
        from ..cache import owning_repository, recorded_repositories
        from ..errors import UserError
        from ..git.reachability import (
            foreign_repositories,
            git_roots,
            heads_moved,
            is_shallow,
            remote_heads,
            stale_views,
        )
        from ..git.remotes import require
        from ..git.repo import Repo
        from ..git.statcache import StatCache
        from ..remote import check_writable
        from ..sync import SyncRemote

        try:
            grace_s = gc.parse_duration(grace)
        except ValueError as e:
            raise UserError(f"--grace: {e}") from None
        if repack_depth is not None and not repack:
            raise UserError("--repack-depth is the depth --repack keeps: give --repack too")
        repo = Repo.discover()
        settings = repo.settings()
        cache = checkpoint.open_cache(settings)
        spec = require(repo, remote_name) if remote_name else None
        if spec is not None and not dry_run:  # an HTTP remote: before anything is planned
            check_writable(spec)
        if spec is not None and is_shallow(repo):
            raise UserError(f"gc --remote {remote_name}: this clone is shallow (git clone "
                            "--depth): the objects of every commit before its boundary "
                            "would look unreachable and be deleted from the remote. Run "
                            "'git fetch --unshallow' first, or gc from a full clone")
        # the git remotes' refs as gc plans: a push that lands while gc deletes is seen
        heads = remote_heads(repo, spec) if spec is not None else {}
        if spec is not None:
            stale = stale_views(repo, spec, heads)
            if stale and not ignore_stale_refs:
                raise UserError(f"gc --remote {remote_name}: this clone's view is older than "
                                f"the remote's ({stale[0]}); objects other clones pushed "
                                "would look unreachable. Fetch first, or pass "
                                "--ignore-stale-refs")
            for line in stale:
                say(f"warning: {line}")
        remote = SyncRemote.open(spec, settings.concurrency, need="read") if spec else None
        foreign = foreign_repositories(repo, remote.blobs) if remote is not None else []
        if foreign and not ignore_other_repositories:
            others = counted(len(foreign), "other git repository", "other git repositories")
            raise UserError(f"gc --remote {remote_name}: {remote.url} also holds the chunks of "
                            f"{others} (root commit {foreign[0][:12]}), whose commits this clone "
                            "does not have: gc would delete them. Give each repository its "
                            "own remote prefix, or pass --ignore-other-repositories if that "
                            "history is gone for good")

        if repack and remote is None:
            raise ValueError("--repack needs --remote (the cache holds no deltas)")
        # a cache of its own is <git-common-dir>/theta-zarr; one set elsewhere may be shared
        # by other repositories, whose chunks (unpushed commits) look unreachable from here
        own = os.path.realpath(own_cache_dir(repo.common_dir))
        keep_cache = os.path.realpath(cache.root) != own and not shared_cache
        if keep_cache and remote is None:
            raise UserError(f"gc: the cache {cache.root} is set by theta-zarr.cache, "
                            "and other repositories using it may need "
                            "chunks this one does not (unpushed commits); --shared-cache "
                            "collects it, keeping what those it names need")
        if keep_cache:
            say(f"the cache {cache.root} may be shared (theta-zarr.cache): left as it is; "
                "--shared-cache collects it too")
        # other repositories whose theta-zarr.cache points at this cache (each named in it
        # when it read its settings), and the one whose own cache it is (which names
        # itself nowhere): their refs, reflogs and indexes keep chunks too
        mine = os.path.realpath(repo.common_dir)
        owner = owning_repository(cache.root)
        others = [] if keep_cache else [
            d for d in dict.fromkeys([*recorded_repositories(cache.root), *filter(None, [owner])])
            if os.path.realpath(d) != mine]
        if others:
            users = counted(len(others), "other repository", "other repositories")
            say(f"the cache {cache.root} is shared: what {users} it names need is kept "
                f"too ({', '.join(others)})")

        def roots() -> gc.Roots:
            r = gc.Roots()
            git_roots(repo, r)
            for git_dir in others:
                git_roots(Repo.at_git_dir(git_dir), r)
            return r

        def moved() -> str | None:
            return heads_moved(heads, remote_heads(repo, spec)) if spec is not None else None

        result = gc.collect(cache, roots, grace_s, remote, dry_run,
                            keep_cache=keep_cache, moved=moved)
        stat_records = StatCache(repo.git_dir)
        stale = stat_records.prune(repo.top, dry_run)
        for problem in result.problems:
            say(f"warning: {problem}; every manifest on the remote is kept")
        if result.restored:
            say(f"{result.restored} blob(s) a concurrent push or an interrupted gc needed "
                 "were moved back from gc's trash")
        if result.aborted is not None and remote is not None:
            say(f"warning: {result.aborted}: its commits may need what gc found unreachable, "
                f"so nothing was deleted from {remote.url}; run 'git fetch' and gc again")
        verb = "would delete" if dry_run else "deleted"
        for sweep in result.sweeps:
            if dry_run:
                for key, n in sweep.keys:
                    click.echo(f"{key}\t{n}\t{sweep.where}")
            click.echo(f"{verb} {counted(len(sweep.keys), 'blob')} ({human(sweep.nbytes)}, "
                       f"{sweep.nbytes} bytes) from {sweep.where}")
        if not keep_cache:
            echo_moved_packs(cache, dry_run)
        if stale:
            click.echo(f"{verb} {stale} stale stat record(s) (of files gone or changed) from "
                       f"{stat_records.root}")
        if repack:
            depth = settings.delta_policy.max_depth if repack_depth is None else repack_depth
            done = gc.repack(remote.objects, depth, dry_run)
            click.echo(f"{'would rewrite' if dry_run else 'rewrote'} {done.objects} delta "
                       f"object(s) deeper than {depth} as full objects in {remote.url} "
                       f"({human(done.bytes_before)} -> "
                       f"{human(done.bytes_after) if not dry_run else '?'})")


def _ref_sides(remote: SyncRemote, old_ref: str, old: Target, new_ref: str,
               new: Target) -> list[tuple[str, Side, Side]]:
    """(path, old side, new side) of what two refs' targets hold: one pair for two
    checkpoints, one per differing file for two sets of files (``diff.Side``: a
    manifest, a plain file as ``diff.Foreign``, or None where a set lacks the file).
    Raises ManifestError when one ref names a checkpoint and the other a set."""
    from ..foreign import Foreign
    from ..manifest import Manifest, ManifestError

    if isinstance(old, Manifest) and isinstance(new, Manifest):
        return [(f"{old_ref}..{new_ref}", old, new)]
    if isinstance(old, Manifest) or isinstance(new, Manifest):
        one, many = (old_ref, new_ref) if isinstance(old, Manifest) else (new_ref, old_ref)
        raise ManifestError(f"ref {one} names one checkpoint and ref {many} a set of files; "
                            "diff-refs compares two checkpoints or two sets")

    changed = [name for name in sorted(old.files.keys() | new.files.keys())
               if old.files.get(name) != new.files.get(name)]
    # the changed files' manifests, read concurrently (a re-sharded model changes them all)
    loaded = remote.load_many(e.manifest for t in (old, new) for n in changed
                              if (e := t.files.get(n)) is not None and e.manifest)

    def side(entry: FileEntry | None) -> Side:
        if entry is None:
            return None
        if entry.manifest:
            return loaded[entry.manifest]
        return Foreign("plain", f"a file stored as it is ({entry.size} bytes)",
                       {"size": entry.size, "chunks": list(entry.chunks)})

    return [(name, side(old.files.get(name)), side(new.files.get(name))) for name in changed]
