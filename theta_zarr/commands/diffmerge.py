"""Click commands for diffmerge; registered on the main group by cli.py."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this module's commands to the `theta-zarr` group."""
