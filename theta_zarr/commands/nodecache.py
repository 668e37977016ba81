"""Click commands ``cache prune``: trim the node cache of ``publish``, ``watch`` and ``pull``
(docs/cluster-sync.md, "The node cache").

That cache has no roots to keep (no git history names its chunks, and every chunk a
publish reported done is on its remote), so it is trimmed by age and size, least
recently written first, as pip's and the Hugging Face hub's caches are.  A repository's
own cache is refused: its unpushed commits' chunks exist only there (``git theta-zarr
gc`` collects it by reachability).  So is a folder a repository's ``theta-zarr.cache``
points at (``cache.record_repository`` names each such repository in it).
"""

from __future__ import annotations

import os

import click

from ..wording import counted, human
from .reporting import echo_moved_packs, reports_errors


def _repository_cache(root: str) -> bool:
    """Whether ``root`` is a git repository's own cache, ``<git-dir>/theta-zarr``: its
    parent holds ``HEAD`` and ``refs/`` as every git dir does (a bare one too)."""
    from ..cache import owning_repository

    return owning_repository(root) is not None


def register(main: click.Group) -> None:
    """Add the ``cache`` group to the ``theta-zarr`` group."""

    @main.group("cache")
    def cache_group() -> None:
        """The node cache that publish, watch and pull share (not a repository's)."""

    @cache_group.command("prune")
    @click.option("--cache", "cache_dir", default=None, metavar="DIR",
                  help="the cache (default $THETA_ZARR_CACHE or ~/.cache/theta-zarr)")
    @click.option("--max-size", default=None, metavar="SIZE",
                  help="keep the most recently written objects up to this size (e.g. 50GiB) "
                       "and delete older ones; without it, every object older than "
                       "--older-than goes")
    @click.option("--older-than", default="1h", show_default=True, metavar="AGE",
                  help="never delete an object written more recently than this (e.g. 7d, "
                       "12h, 0): a job may be cleaning or uploading it")
    @click.option("--dry-run", is_flag=True, help="print what would go, delete nothing")
    @reports_errors
    def prune_cmd(cache_dir: str | None, max_size: str | None, older_than: str,
                  dry_run: bool) -> None:
        """Delete the node cache's least recently written objects: all those older than
        --older-than, or with --max-size only as many as keep it within that size.

        Chunks a clean finds again are renewed, so what goes is what no recent publish or
        watch cleaned and no recent pull fetched.  Every chunk a publish reported done is
        on its remote: a pull fetches again what a later job needs.
        """
        import time

        from .. import gc, packs
        from ..cache import Cache, recorded_repositories
        from ..errors import UserError
        from ..objects import object_key
        from ..settings import parse_size
        from ..sync import default_cache_dir

        try:
            age = gc.parse_duration(older_than)
        except ValueError as e:
            raise UserError(f"--older-than: {e}") from None
        try:
            max_bytes = None if max_size is None else parse_size(max_size)
        except ValueError as e:
            raise UserError(f"--max-size: {e}") from None
        root = default_cache_dir(cache_dir)
        if not os.path.exists(root) or (os.path.isdir(root) and not os.listdir(root)):
            click.echo(f"no cache at {root}: nothing to prune")  # as uv's cache prune says
            return
        if not any(os.path.isdir(os.path.join(root, f)) for f in ("objects", packs.FOLDER)):
            raise UserError(f"cache prune: {root} is no theta-zarr cache (it has no "
                            "objects/ or packs/ folder)")
        if _repository_cache(root):
            raise UserError(f"cache prune: {root} is a git repository's own cache, whose "
                            "unpushed commits' chunks exist only there: collect it with "
                            "'git theta-zarr gc' in that repository")
        users = recorded_repositories(root)
        if users:
            repos = counted(len(users), "git repository", "git repositories")
            raise UserError(f"cache prune: {root} is the theta-zarr.cache of {repos} "
                            f"({users[0]}{', ...' if len(users) > 1 else ''}), whose "
                            "unpushed commits' chunks exist only there: collect it with "
                            "'git theta-zarr gc' in each")
        cache = Cache(root)
        sweeps = gc.prune(cache, time.time() - age, max_bytes, dry_run)
        verb = "would delete" if dry_run else "deleted"
        for sweep in sweeps:
            if dry_run:
                for key, n in sweep.keys:
                    click.echo(f"{key}\t{n}\t{sweep.where}")
            click.echo(f"{verb} {counted(len(sweep.keys), 'blob')} ({human(sweep.nbytes)}, "
                       f"{sweep.nbytes} bytes) from {sweep.where}")
        echo_moved_packs(cache, dry_run)
        gone = {key for key, _ in sweeps[0].keys} if dry_run else set()
        left = [n for d, n, _ in cache.iter_digests() if object_key(d) not in gone]
        click.echo(f"{'would keep' if dry_run else 'kept'} {counted(len(left), 'object')} "
                   f"({human(sum(left))}) in {root}")
