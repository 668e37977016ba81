"""What every command shares for talking to the user: one-line failures, paths quoted
as git quotes them.

cli.py and every module of commands/ import from here, so no command module imports cli.py.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from ..errors import USER_ERRORS, one_line
from ..git.repo import GitError
from ..redact import redact
from ..wording import counted

if TYPE_CHECKING:
    from ..cache import Cache


def say(message: str) -> None:
    """``theta-zarr: MESSAGE`` on stderr (progress and warnings, not failures); secrets
    in URLs redacted, as ``fail`` does."""
    click.echo(f"theta-zarr: {redact(message)}", err=True)


def echo_moved_packs(cache: Cache, dry_run: bool) -> None:
    """The line of gc and ``cache prune`` naming the malformed packs they moved to the
    cache's quarantine (or would move, in a dry run); nothing where there were none."""
    from ..cache import QUARANTINE

    names = cache.malformed_packs() if dry_run else cache.packs_moved
    if names:
        verb = "would move" if dry_run else "moved"
        click.echo(f"{verb} {counted(len(names), 'malformed pack')} (its objects unreadable) "
                   f"to {os.path.join(cache.root, QUARANTINE)}: {', '.join(names)}")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``theta-zarr: MESSAGE`` on stderr and exit with status ``code`` (1; git's own
    128 for a bad revision and 129 for a usage error where a command mirrors git)."""
    click.echo(f"theta-zarr: {redact(message)}", err=True)
    sys.exit(code)


class StdoutClosed(Exception):
    """stdout's reader went away while click parsed or ran a command (not an ``OSError``,
    which click's main would turn into a silent exit 1)."""


class OneLineGroup(click.Group):
    """The command group: a usage mistake (unknown command or option, a bad value) is one
    ``theta-zarr:`` line naming the help to read, exit status 129 as git's own commands
    give, instead of click's usage block and status 2."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
            sys.stdout.flush()  # --version, -h: click printed them itself
        except click.exceptions.NoArgsIsHelpError as e:  # `theta-zarr` alone: the help
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(129)
        except click.UsageError as e:
            where = f" (see '{self._command_path(e.ctx, argv)} --help')"
            fail(" ".join(e.format_message().split()) + where, code=129)
        except click.ClickException as e:
            fail(" ".join(e.format_message().split()), code=e.exit_code)
        except click.Abort:
            fail("aborted", code=130)
        except (BrokenPipeError, StdoutClosed):  # `theta-zarr --version | true`, as git
            quiet_stdout()
            sys.exit(141)
        except OSError as e:  # a full disk under --version or -h, as the commands say it
            fail(one_line(e))
        sys.exit(code if isinstance(code, int) else 0)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        # --version and -h print while their option is parsed, inside click's own main,
        # which turns a closed stdout into a silent exit 1
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def invoke(self, ctx: click.Context) -> Any:
        try:  # a subcommand's -h, parsed here
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def _command_path(self, ctx: click.Context | None, argv: list[str]) -> str:
        """The command a usage mistake is about, as the user typed it (``git theta-zarr
        pull``): click gives no context for an option missing its value, so the command
        names are then taken from the front of ``argv``."""
        if ctx is not None:
            path = ctx.command_path
        else:
            names = leading_commands(self, argv)[0]
            path = " ".join([os.path.basename(sys.argv[0]) or "theta-zarr", *names])
        if path.startswith("git-theta-zarr"):  # as git ran it for `git theta-zarr ...`
            path = "git theta-zarr" + path[len("git-theta-zarr"):]
        return path


def leading_commands(group: click.Command, words: Iterable[str]
                     ) -> tuple[list[str], click.Command]:
    """The words at the front of ``words`` that name commands nested in ``group``, and
    the command the last of them names (``group`` itself when none does)."""
    names: list[str] = []
    for word in words:
        sub = group.commands.get(word) if isinstance(group, click.Group) else None
        if sub is None:
            break
        names.append(word)
        group = sub
    return names, group


def quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader went away, and what is still buffered must
    not fail again when the process ends."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def reports_errors(fn: Callable[..., Any] | None = None, *, broken_pipe: int = 141
                   ) -> Any:
    """Turn the core's errors into a one-line message and exit status 1.

    A reader that went away (``... | head``) ends the command quietly with status
    ``broken_pipe``: 141 (128 + SIGPIPE) as git's own commands, 0 for a command git runs
    as its external diff, since git reports any other status as "external diff died".
    """
    if fn is None:
        return functools.partial(reports_errors, broken_pipe=broken_pipe)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return result
        except BrokenPipeError:
            # the reader went away (``... | head``): stop quietly, as git does
            quiet_stdout()
            sys.exit(broken_pipe)
        except click.ClickException:
            raise  # a usage mistake found by the command itself: the group reports it
        except (GitError, *USER_ERRORS) as e:
            fail(one_line(e))
        except KeyboardInterrupt:
            fail("interrupted", code=130)  # 128 + SIGINT, as git and the shell report it
        except Exception as e:  # a bug: still one line ("internal error ..."), no traceback
            fail(one_line(e))

    return wrapper


