"""Click commands for diff and merge: ``diff``, ``resolve`` and git's hidden driver entries.

git runs ``diff-driver`` (diff.theta-zarr.command), ``textconv``
(diff.theta-zarr.textconv) and ``merge-driver`` (merge.theta-zarr.driver); they are
hidden because people use them through git.  See docs/diff-merge.md.
"""

from __future__ import annotations

import json
import os
import sys

import click

from .reporting import fail, reports_errors


def _split_revs(repo, args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """git diff's argument rule: revisions first (at most two), then paths; ``--`` splits."""
    if "--" in args:
        i = args.index("--")
        return list(args[:i]), list(args[i + 1:])
    revs: list[str] = []
    rest = list(args)
    while rest and len(revs) < 2 and not os.path.exists(rest[0]):
        ok = repo.git("rev-parse", "--verify", "--quiet", f"{rest[0]}^{{commit}}", check=False)
        if not ok.strip():
            break
        revs.append(rest.pop(0))
    return revs, rest


def _diff_cmd(args: tuple[str, ...], cached: bool, as_json: bool, png: str | None,
              full_norm: bool, summary_only: bool) -> None:
    from ..diff import JSON_VERSION, format_text, plot
    from ..git import drivers, models
    from ..git.repo import Repo

    repo = Repo.discover()
    revs, paths = _split_revs(repo, args)
    if len(revs) > 2 or (cached and len(revs) > 1):
        fail("diff takes at most two revisions (one with --cached)")
    rel = [os.path.relpath(os.path.abspath(p), repo.top) for p in paths]
    if len(revs) == 2:
        old, new, labels = revs[0], revs[1], revs
    elif cached:
        old = revs[0] if revs else "HEAD"
        new, labels = drivers.INDEX, [old, "index"]
    elif revs:
        old, new, labels = revs[0], drivers.WORKTREE, [revs[0], "worktree"]
    else:
        old, new, labels = drivers.INDEX, drivers.WORKTREE, ["index", "worktree"]
    targets = drivers.changed_paths(repo, revs, cached, rel)
    groups, singles = models.group_by_model(repo, targets, old, new)
    diffs = models.diff_groups(repo, groups, old, new, numbers=not summary_only,
                               full_norm=full_norm)
    diffs += drivers.diff_sides(repo, singles, old, new, numbers=not summary_only,
                                full_norm=full_norm)
    if png:
        try:
            n = plot(diffs, png)
        except ImportError as e:
            fail(str(e))
        click.echo(f"theta-zarr: wrote {png} ({n} changed parameters)", err=as_json)
    if as_json:
        click.echo(json.dumps({"theta_zarr_diff": JSON_VERSION, "old": labels[0],
                               "new": labels[1], "files": [d.to_json() for d in diffs]},
                              indent=2))
        return
    for d in diffs:
        for line in format_text(d):
            click.echo(line)


def register(main: click.Group) -> None:
    """Add this module's commands to the `theta-zarr` group."""

    @main.command("diff", context_settings={"ignore_unknown_options": True})
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
    @reports_errors
    def diff_cmd(args: tuple[str, ...], cached: bool, as_json: bool, png: str | None,
                 full_norm: bool, summary_only: bool) -> None:
        """Per-parameter diff: [REV [REV]] [--] [PATH...], as git diff takes them.

        Added, removed, reshaped and changed parameters; for changed ones the chunks
        that differ, ||B-A||, ||B-A||/||A||, max|B-A| and the fraction of elements
        changed, computed from the differing chunks only.
        """
        _diff_cmd(args, cached, as_json, png, full_norm, summary_only)

    @main.command("diff-driver", hidden=True, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @reports_errors
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
                  help="ours, theirs, base, average, task-arithmetic, linear, ties, dare, "
                       "dare_ties, breadcrumbs, slerp, model_stock (or a plug-in)")
    @click.option("--param", "globs", multiple=True, metavar="GLOB",
                  help="apply STRATEGY only to conflicting parameters matching GLOB "
                       "(repeatable; the rest follow git config)")
    @click.option("--alpha", type=float, default=None,
                  help="average: (1-alpha)*ours + alpha*theirs (default 0.5)")
    @click.option("--scale", type=float, default=None,
                  help="task-arithmetic: base + scale*((ours-base)+(theirs-base)) (default 1)")
    @click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
                  help="a strategy parameter (weight, density, lambda, t, gamma, normalize, "
                       "rescale...); VALUE a number, true/false, or OURS,THEIRS (repeatable)")
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
            with open(config, encoding="utf-8") as f:
                text, source = f.read(), config
        merge_models_commit(text, source, title, lambda s: click.echo(s))
