"""Man pages from the click commands: ``git theta-zarr --help`` runs ``man git-theta-zarr``.

git turns ``git X --help`` into ``man git-X``, so theta-zarr ships ``git-theta-zarr.1``
(and ``theta-zarr.1``, which includes it) under ``share/man/man1`` of the environment
it is installed in; man finds pages next to each ``bin`` folder on ``PATH``.  The pages
are generated from the same click objects as ``--help`` (``python -m
theta_zarr.commands.manpages man/man1``), and a test keeps the committed ones current.
The generator is a few lines of roff (man(7)), so no build-time dependency is needed.
"""

from __future__ import annotations

import os
import sys

import click

PAGE = "git-theta-zarr.1"


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading dot or quote on a line."""
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    out = []
    ctx = click.Context(group, info_name=prefix)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        out.append((f"{prefix} {name}", cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix} {name}")
    return out


def render(main: click.Group, version: str) -> str:
    """The whole man page (roff source) for ``git theta-zarr`` and every visible command.

    NAME is the group's first paragraph, whole (its first line stops mid-sentence), and
    each command's options are listed as ``--help`` lists them: with the group's
    ``help_option_names`` (``-h, --help``), which a bare context would not have."""
    summary = " ".join((main.help or "").split("\n\n")[0].split())
    parts = [f'.TH GIT-THETA-ZARR 1 "" "theta-zarr {version}" "theta-zarr manual"',
             ".SH NAME", "git-theta-zarr \\- " + _roff(summary),
             ".SH SYNOPSIS", ".B git theta-zarr", "\\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".br", ".B theta-zarr", "\\fICOMMAND\\fR [\\fIARGS\\fR]...",
             ".SH DESCRIPTION", _roff(" ".join((main.help or "").split())),
             "Every command also takes \\fB--help\\fR; \\fBgit theta-zarr help\\fR "
             "\\fICOMMAND\\fR prints the same.", ".SH COMMANDS"]
    for path, cmd in _commands(main, "theta-zarr"):
        ctx = click.Context(cmd, info_name=path, **main.context_settings)
        usage = f"{path} {' '.join(cmd.collect_usage_pieces(ctx))}".strip()
        parts += [".SS " + _roff(usage),
                  _roff(" ".join((cmd.help or "").replace("\b", "").split()))]
        for param in cmd.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            parts += [".TP", "\\fB" + _roff(record[0]) + "\\fR", _roff(record[1] or "")]
    parts += [".SH SEE ALSO", "git(1), gitattributes(5), githooks(5)", ""]
    return "\n".join(parts)


def write(folder: str) -> list[str]:
    """Write ``git-theta-zarr.1`` and ``theta-zarr.1`` into ``folder``; returns the paths."""
    from importlib.metadata import version

    from ..cli import main

    os.makedirs(folder, exist_ok=True)
    page = os.path.join(folder, PAGE)
    with open(page, "w", encoding="utf-8") as f:
        f.write(render(main, version("theta-zarr")))
    alias = os.path.join(folder, "theta-zarr.1")
    with open(alias, "w", encoding="utf-8") as f:
        f.write(f".so man1/{PAGE}\n")
    return [page, alias]


def ensure_installed() -> str | None:
    """In a virtual environment whose ``share/man/man1`` lacks the page (an editable
    install, which skips data files), write it there; returns the path when written."""
    if sys.prefix == sys.base_prefix:
        return None
    folder = os.path.join(sys.prefix, "share", "man", "man1")
    if os.path.exists(os.path.join(folder, PAGE)):
        return None
    try:
        return write(folder)[0]
    except OSError:
        return None  # a read-only environment: 'git theta-zarr help' still works


if __name__ == "__main__":
    for p in write(sys.argv[1] if len(sys.argv) > 1 else "man/man1"):
        print(p)
