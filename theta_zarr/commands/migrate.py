"""Click command ``migrate``: move files from git-lfs to theta-zarr (docs/migrate-from-lfs.md)."""

from __future__ import annotations

import click

from .reporting import reports_errors


def register(main: click.Group) -> None:
    """Add ``migrate`` to the `theta-zarr` group."""

    @main.command("migrate")
    @click.option("--include", "include", multiple=True, metavar="PATTERN",
                  help="gitattributes pattern to move (repeatable; default: every pattern "
                       ".gitattributes routes to git-lfs)")
    @click.option("--ref", "refs", multiple=True, metavar="REF",
                  help="rewrite the history of this branch or tag instead (repeatable)")
    @click.option("--message", "-m", default=None, help="message of the migration commit")
    @click.option("--no-commit", is_flag=True,
                  help="stage the converted files and .gitattributes, do not commit")
    @reports_errors
    def migrate_cmd(include: tuple[str, ...], refs: tuple[str, ...], message: str | None,
                    no_commit: bool) -> None:
        """Move git-lfs files to theta-zarr: the current tree (one new commit) or, with
        --ref, every commit of the named refs (like git lfs migrate import).

        The content behind each pointer is the working-tree file when it matches the
        pointer, else what git lfs smudge gives (git-lfs fetches what it lacks).
        """
        from ..git.migrate import migrate_history, migrate_tree
        from ..git.repo import Repo

        repo = Repo.discover()

        def echo(line: str) -> None:
            click.echo(line, err=True)

        if refs:
            if message or no_commit:
                raise click.UsageError("--message and --no-commit apply to the current tree, "
                                       "not to --ref")
            n = migrate_history(repo, list(include) or None, list(refs), echo)
            click.echo(f"theta-zarr: rewrote {', '.join(refs)}: {n} git-lfs version(s) "
                       "converted (the old commits stay in the reflog)")
            return
        n = migrate_tree(repo, list(include) or None, message, not no_commit, echo)
        click.echo(f"theta-zarr: {n} file(s) moved from git-lfs to theta-zarr"
                   + ("" if no_commit else " and committed"))
