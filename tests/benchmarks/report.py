"""What the benchmark scripts share: how they write results into a markdown page, and
how they print sizes and rates.

Each script owns a block between ``<!-- NAME:results:begin -->`` and
``<!-- NAME:results:end -->`` in docs/benchmarks.md; a run replaces its own block and
leaves every other part of the page as it was.  Imported by the scripts in this folder,
which Python runs with this folder first on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of benchmark ``name`` (``bench_core``, ``bench_dcp``, ...)."""
    return f"<!-- {name}:results:begin -->", f"<!-- {name}:results:end -->"


def write_section(path: str | Path, name: str, body: str, heading: str | None = None) -> None:
    """Put ``body`` between ``name``'s markers in the markdown file ``path``.

    An existing block is replaced; otherwise the block is appended at the end, under
    ``## heading`` when one is given.  A missing file is started as ``# Benchmarks``.
    """
    path = Path(path)
    begin, end = markers(name)
    block = f"{begin}\n{body.strip(chr(10))}\n{end}"
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        title = f"## {heading}\n\n" if heading else ""
        doc = doc.rstrip("\n") + "\n\n" + title + block + "\n"
    path.write_text(doc, encoding="utf-8")


def human(n: float) -> str:
    """``n`` bytes in the largest binary unit under 1024 of it: ``512 B``, ``1.50 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def rate(nbytes: int, seconds: float) -> str:
    """A throughput in MiB/s."""
    return f"{nbytes / seconds / 2**20:,.0f} MiB/s"
