"""What every command shares for talking to the user: one-line failures and human sizes.

cli.py and every module of commands/ import from here, so no command module imports cli.py.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from ..errors import USER_ERRORS, one_line
from ..git.repo import GitError


def fail(message: str) -> NoReturn:
    """Print ``theta-zarr: MESSAGE`` on stderr and exit with status 1."""
    click.echo(f"theta-zarr: {message}", err=True)
    sys.exit(1)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the core's errors into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (GitError, *USER_ERRORS) as e:
            fail(one_line(e))
        except KeyboardInterrupt:
            fail("interrupted")

    return wrapper


def human(n: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
