"""Options several commands share, spelt one way everywhere.

``-o/--output`` is a file to write (``pull``, ``materialize``), as in most tools; a
remote's storage options are ``--remote-option KEY=VALUE``.  ``-o KEY=VALUE`` used to
mean a remote option on ``push``, ``ls``, ``watch``, ``import`` and ``remote add``; it
still does for one release, with a deprecation warning.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import click

from ..remote import OPTION_NAMES
from .reporting import say

REMOTE_OPTION_HELP = ("a remote's storage option, repeatable: " + ", ".join(OPTION_NAMES))
_OPTION_PAIR = re.compile(rf"^\s*({'|'.join(map(re.escape, OPTION_NAMES))})\s*=", re.I)


def remote_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--remote-option KEY=VALUE`` (alias ``--option``) as ``options``, and the
    deprecated ``-o KEY=VALUE``, which is folded into ``options`` with a warning."""

    @functools.wraps(fn)
    def wrapper(*args: Any, legacy_o: tuple[str, ...] = (), **kwargs: Any) -> Any:
        if legacy_o:
            say("warning: '-o KEY=VALUE' for a remote option is deprecated ('-o' means "
                "--output elsewhere); use '--remote-option KEY=VALUE'")
            kwargs["options"] = tuple(kwargs.get("options") or ()) + tuple(legacy_o)
        return fn(*args, **kwargs)

    wrapper = click.option("-o", "legacy_o", multiple=True, hidden=True,
                           metavar="KEY=VALUE")(wrapper)
    return click.option("--remote-option", "--option", "options", multiple=True,
                        metavar="KEY=VALUE", help=REMOTE_OPTION_HELP)(wrapper)


def check_output(value: str | None) -> str | None:
    """An ``-o/--output`` value; refuses one that is a remote option (``endpoint-url=...``)
    given where it used to be one, so it is never taken as a file name."""
    if value is not None and _OPTION_PAIR.match(value):
        raise ValueError(f"-o/--output is the file to write, but {value!r} looks like a "
                         "remote option: use --remote-option KEY=VALUE")
    return value
