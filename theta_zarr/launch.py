"""The ``git-theta-zarr`` executable: the filter process starts without the CLI.

git starts ``git-theta-zarr filter-process`` in every command that may clean or
smudge; it goes straight to the handshake (``git.filter_start``) without loading
click or the commands.  Everything else is the click group in ``cli``.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["filter-process"]:
        from .git.filter_start import main as filter_main

        sys.exit(filter_main())
    from .cli import main as cli_main

    cli_main()
