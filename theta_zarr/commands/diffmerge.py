"""Click commands for diff and merge: ``diff``, ``resolve`` and git's hidden driver entries.

git runs ``diff-driver`` (diff.theta-zarr.command), ``textconv``
(diff.theta-zarr.textconv) and ``merge-driver`` (merge.theta-zarr.driver); they are
hidden because people use them through git.  See docs/diff-merge.md.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import click

from ..wording import quote_path
from .reporting import fail, reports_errors


class _RawArgsCommand(click.Command):
    """A command that keeps its raw arguments (``ctx.meta["raw_args"]``): click drops the
    ``--`` separator, and git's rule for revisions and paths needs to know where it was."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["raw_args"] = list(args)
        return super().parse_args(ctx, args)


class _Parameter(click.ParamType):
    """The number of a merge parameter: finite, and in [0, 1] for a fraction
    (``merges.base.value_problem``): ``--alpha 2`` extrapolated past theirs, and
    ``--alpha nan`` made every merged element NaN."""

    name = "float"

    def __init__(self, parameter: str) -> None:
        self.parameter = parameter

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        from ..merges.base import value_problem

        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        problem = value_problem(self.parameter, x)
        if problem is not None:
            self.fail(f"{value!r} {problem}", param, ctx)
        return x


def _ambiguous(arg: str, why: str) -> NoReturn:
    fail(f"fatal: ambiguous argument '{arg}': {why}", code=128)


def split_revs(repo, args: list[str], after_dashes: list[str] | None) -> tuple[list[str],
                                                                                list[str]]:
    """git diff's rule (git-rev-parse(1), "ambiguous argument"): revisions first, then paths.

    With ``--`` (``after_dashes`` not None) everything before it is a revision and must
    resolve.  Without it, each argument is a revision until one is not, and from there each
    must be an existing path; an argument that is both, or neither, is ambiguous (exit
    128, as git).  ``A..B`` is two revisions, ``A...B`` their merge base and B.
    """
    revs: list[str] = []
    rest = list(args)
    while rest:
        arg = rest[0]
        names = _range(repo, arg)
        if names is None:
            break
        if after_dashes is None and os.path.exists(arg):
            _ambiguous(arg, "both revision and filename; use '--' to separate paths from "
                            "revisions, like this: 'git theta-zarr diff [REV...] -- [PATH...]'")
        revs += names
        rest.pop(0)
    if after_dashes is not None:
        if rest:
            _ambiguous(rest[0], "unknown revision or path not in the working tree")
        return revs, after_dashes
    for arg in rest:
        if not os.path.exists(arg):
            _ambiguous(arg, "unknown revision or path not in the working tree. Use '--' to "
                            "separate paths from revisions, like this: 'git theta-zarr diff "
                            "[REV...] -- [PATH...]'")
    return revs, rest


def _range(repo, arg: str) -> list[str] | None:
    """The revisions an argument names (one, or two for a range), None when it names none."""
    def commit(rev: str) -> str | None:
        out = repo.git("rev-parse", "--verify", "--quiet", "--end-of-options",
                       f"{rev or 'HEAD'}^{{commit}}", check=False).strip()
        return out.decode() if out else None

    if arg.startswith("-"):
        return None
    for sep in ("...", ".."):
        if sep in arg:
            a, b = arg.split(sep, 1)
            ca, cb = commit(a), commit(b)
            if ca is None or cb is None:
                return None
            if sep == "...":
                ca = repo.git("merge-base", ca, cb, check=False).decode().strip()
                if not ca:  # histories that never met (an orphan branch), as git says it
                    fail(f"fatal: {arg}: no merge base", code=128)
            return [ca, b or "HEAD"]
    return [arg] if commit(arg) is not None else None


def _diff_cmd(args: tuple[str, ...], raw: list[str], cached: bool, as_json: bool,
              png: str | None, full_norm: bool, summary_only: bool, mode: str | None,
              exit_code: bool) -> None:
    from ..diff import FileDiff, format_text, json_document, plot
    from ..git import drivers, models, sides
    from ..git.push import read_through
    from ..git.repo import Repo

    repo = Repo.discover()
    settings = repo.settings()  # a bad theta-zarr.* value is reported before anything is compared
    after = raw[raw.index("--") + 1:] if "--" in raw else None
    before = list(args[: len(args) - len(after)]) if after is not None else list(args)
    unknown = [a for a in before if a.startswith("-") and a != "-"]
    if unknown:
        fail(f"unknown option '{unknown[0]}' (see 'git theta-zarr diff --help')", code=129)
    revs, paths = split_revs(repo, before, after)
    if len(revs) > 2 or (cached and len(revs) > 1):
        fail("diff takes at most two revisions (one with --cached)", code=129)
    rel = [repo.relative(p, inside=True) for p in paths]
    if len(revs) == 2:
        old, new, labels = revs[0], revs[1], revs
    elif cached:
        old = revs[0] if revs else "HEAD"
        new, labels = sides.INDEX, [old, "index"]
    elif revs:
        old, new, labels = revs[0], sides.WORKTREE, [revs[0], "worktree"]
    else:
        old, new, labels = sides.INDEX, sides.WORKTREE, ["index", "worktree"]
    # a model is reported under its index's path: that path selects its shards too
    rel = models.with_shards(repo, rel, [old, new])
    targets, renamed = drivers.changed_paths(repo, revs, cached, rel, [old, new])
    # a conflicted path has no index side to compare: said as git says it, never read
    # as a file added (or deleted) whole
    unmerged = drivers.unmerged_paths(repo, rel) if sides.INDEX in (old, new) else []
    targets = [t for t in targets if t not in unmerged]
    numbers = not summary_only and mode is None
    groups, singles, pairs = models.group_by_model(repo, targets, old, new, renamed)
    diffs = []
    if groups or singles:
        kw = {"numbers": numbers, "full_norm": full_norm, "workers": settings.workers,
              "objects": read_through(repo, settings=settings)}
        diffs = models.diff_groups(repo, groups, old, new, pairs=pairs, **kw)
        diffs += drivers.diff_sides(repo, singles, old, new, renamed=renamed, **kw)
    diffs += [FileDiff(p, None, None, unmerged=True) for p in unmerged]
    changed = [d for d in diffs if d.has_changes()]
    if png:
        try:
            n = plot(diffs, png)
        except ImportError as e:
            fail(str(e))
        click.echo(f"theta-zarr: wrote {png} ({n} changed parameters)", err=as_json)
    if mode == "quiet":  # git diff --quiet: no output, --exit-code
        exit_code = True
    elif as_json:
        click.echo(json.dumps(json_document(diffs, labels[0], labels[1]), indent=2))
    elif mode == "name-only":  # one line a path (a rename's new one), quoted as git does
        for d in changed:
            click.echo(quote_path(d.names[1] if d.names else d.path))
    elif mode == "stat":
        for line in stat_lines(changed):
            click.echo(line)
    else:
        for d in diffs:
            for line in format_text(d):
                click.echo(line)
    if exit_code and changed:
        sys.exit(1)


def stat_lines(diffs: list) -> list[str]:
    """``--stat``: one line per changed file (parameters added, removed, reshaped, changed,
    like git's +/- columns; then parameters moved to another shard, non-tensor changes, a
    side that is no manifest or a format change), then a total line."""
    if not diffs:
        return []
    shown = {id(d): " => ".join(map(quote_path, d.names)) if d.names else quote_path(d.path)
             for d in diffs}  # a rename as git shows it: each side quoted on its own
    width = max(len(text) for text in shown.values())
    keys = ("added", "removed", "reshaped", "changed", "moved", "other_changed")
    lines, total = [], dict.fromkeys(keys, 0)
    for d in diffs:
        c = d.counts()
        parts = [_stat_part(k, c[k]) for k in keys if c.get(k)]
        if d.old and d.new and d.old.format_name != d.new.format_name and parts:
            parts.insert(0, "format changed")  # said alone below when nothing else is
        if d.shards is None and not d.unmerged and (d.old is None) != (d.new is None):
            absent = d.old_foreign is None if d.old is None else d.new_foreign is None
            if absent:  # a file added or deleted (not one side on git-lfs)
                parts.insert(0, "new file" if d.old is None else "deleted file")
        for k in keys:
            total[k] += c.get(k, 0)
        if not parts:  # an lfs / plain side, another format or name: has_changes says why
            parts = ["Unmerged" if d.unmerged
                     else "not both theta-zarr manifests" if d.old_foreign or d.new_foreign
                     else "format changed" if d.old and d.new and
                     d.old.format_name != d.new.format_name else "renamed"]
        lines.append(f" {shown[id(d)].ljust(width)} | {', '.join(parts)}")
    summary = ", ".join(_stat_part(k, v) for k, v in total.items() if v)
    lines.append(f" {len(diffs)} checkpoint(s) changed" + (f": {summary}" if summary else ""))
    return lines


def _stat_part(key: str, n: int) -> str:
    if key == "other_changed":
        return f"{n} other (non-tensor)"
    if key == "moved":
        return f"{n} moved to another shard"
    return f"{n} {key}"


def register(main: click.Group) -> None:
    """Add this module's commands to the `theta-zarr` group."""

    @main.command("diff", cls=_RawArgsCommand,
                  context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.option("--cached", "--staged", "cached", is_flag=True,
                  help="compare a revision (default HEAD) with the index")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    @click.option("--plot", "png", default=None, metavar="PNG",
                  help="write a bar chart of the relative change per parameter")
    @click.option("--full-norm", is_flag=True,
                  help="relative change against the whole old tensor (reads its unchanged "
                       "chunks too)")
    @click.option("--summary-only", is_flag=True,
                  help="digests only: what changed, no numbers, no chunk read")
    @click.option("--stat", "mode", flag_value="stat",
                  help="one line per changed checkpoint: how many parameters changed")
    @click.option("--name-only", "mode", flag_value="name-only",
                  help="only the paths of changed checkpoints")
    @click.option("--exit-code", is_flag=True,
                  help="exit 1 when there are differences, 0 when there are none")
    @click.option("--quiet", "mode", flag_value="quiet",
                  help="no output, no chunk read; implies --exit-code")
    @click.pass_context
    @reports_errors
    def diff_cmd(ctx: click.Context, args: tuple[str, ...], cached: bool, as_json: bool,
                 png: str | None, full_norm: bool, summary_only: bool, mode: str | None,
                 exit_code: bool) -> None:
        """Per-parameter diff: [REV [REV]] [--] [PATH...], as git diff takes them.

        Added, removed, reshaped and changed parameters; for changed ones the chunks
        that differ, ||B-A||, ||B-A||/||A||, max|B-A| and the fraction of elements
        changed, computed from the differing chunks only.
        """
        _diff_cmd(args, ctx.meta.get("raw_args", []), cached, as_json, png, full_norm,
                  summary_only, mode, exit_code)

    @main.command("diff-driver", hidden=True, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @reports_errors(broken_pipe=0)
    def diff_driver_cmd(args: tuple[str, ...]) -> None:
        """git's external diff command (diff.theta-zarr.command)."""
        from ..git.drivers import diff_driver

        for line in diff_driver(list(args)):
            click.echo(line)

    @main.command("textconv", hidden=True)
    @click.argument("file")
    @reports_errors
    def textconv_cmd(file: str) -> None:
        """git's textconv (diff.theta-zarr.textconv): one line per parameter."""
        from ..git.drivers import textconv

        for line in textconv(file):
            click.echo(line)

    @main.command("merge-driver", hidden=True)
    @click.argument("base")
    @click.argument("ours")
    @click.argument("theirs")
    @click.argument("path", required=False, default="checkpoint")
    @reports_errors
    def merge_driver_cmd(base: str, ours: str, theirs: str, path: str) -> None:
        """git's merge driver (merge.theta-zarr.driver = ... %O %A %B %P)."""
        from ..git.drivers import merge_driver

        sys.exit(merge_driver(base, ours, theirs, path, lambda s: click.echo(s, err=True)))

    @main.command("resolve")
    @click.argument("path")
    @click.option("--strategy", "-s", required=True, metavar="STRATEGY",
                  help="ours, theirs, base, average, task-arithmetic, linear, "
                       "task_arithmetic, ties, dare, dare_linear, dare_ties, breadcrumbs, "
                       "breadcrumbs_ties, slerp, model_stock (or a plug-in)")
    @click.option("--param", "globs", multiple=True, metavar="GLOB",
                  help="apply STRATEGY only to conflicting parameters matching GLOB "
                       "(repeatable; the rest follow git config)")
    @click.option("--alpha", type=_Parameter("alpha"), default=None,
                  help="average: (1-alpha)*ours + alpha*theirs, alpha in [0, 1] "
                       "(default 0.5)")
    @click.option("--scale", type=_Parameter("scale"), default=None,
                  help="task-arithmetic: base + scale*((ours-base)+(theirs-base)), any "
                       "finite number (default 1)")
    @click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
                  help="a strategy parameter (weight, density, lambda, t, gamma, normalize, "
                       "rescale...); VALUE a finite number (t, density and gamma in [0, 1]), "
                       "true/false, or OURS,THEIRS (repeatable)")
    @reports_errors
    def resolve_cmd(path: str, strategy: str, globs: tuple[str, ...], alpha: float | None,
                    scale: float | None, assignments: tuple[str, ...]) -> None:
        """Finish a conflicted merge of PATH: merge the conflicting chunks, write, stage."""
        from ..git.drivers import resolve
        from ..mergeconfig import parse_assignments

        settings = parse_assignments(list(assignments))
        for line in resolve(path, strategy, globs, alpha, scale, settings):
            click.echo(line)

    @main.command("merge-models")
    @click.argument("config", required=False, type=click.Path(dir_okay=False))
    @click.option("--from-commit", "from_commit", metavar="REV", default=None,
                  help="repeat the merge recorded in REV's commit message")
    @click.option("-m", "--message", "title", default=None,
                  help="the commit's title (the config is appended)")
    @reports_errors
    def merge_models_cmd(config: str | None, from_commit: str | None,
                         title: str | None) -> None:
        """Merge N model revisions onto a base in one commit, by a YAML merge CONFIG.

        CONFIG names merge_method, base_model (default: the models' merge base), models
        (revisions, each with optional parameters) and parameters, per glob with
        {filter, value} lists.  See docs/diff-merge.md.
        """
        from ..git.mergemodels import config_from_commit, merge_models_commit
        from ..git.repo import Repo

        if (config is None) == (from_commit is None):
            fail("merge-models takes a CONFIG file or --from-commit REV (one of them)")
        if from_commit is not None:
            text, source, recorded = config_from_commit(Repo.discover(), from_commit)
            title = title or recorded
        else:
            assert config is not None
            with open(config, "rb") as f:
                data, source = f.read(), config
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                fail(f"{config}: not a YAML merge config (not UTF-8 text: {e.reason} at byte "
                     f"{e.start})")
        merge_models_commit(text, source, title, lambda s: click.echo(s))
