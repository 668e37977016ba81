"""The one way every benchmark script writes its results into a markdown page.

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
