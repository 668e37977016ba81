"""The .gitattributes lines of ``track``/``untrack``, read and written as git reads them:
C-quoted patterns (gitattributes(5): a pattern that starts with a double quote is
unquoted C-style), checked against ``git check-attr``."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

from theta_zarr.git.attributes import parse_line

LINE = "filter=theta-zarr diff=theta-zarr merge=theta-zarr -text"


def filter_of(repo, path: str) -> str:
    """The ``filter`` attribute git gives ``path`` now."""
    return repo.out("check-attr", "filter", "--", path).rsplit(": ", 1)[1].strip()


@pytest.mark.parametrize(("line", "pattern", "path"), [
    ('"my model.pt" filter=theta-zarr', "my model.pt", "my model.pt"),
    ('  "a\\"q b.pt"filter=theta-zarr', 'a"q b.pt', 'a"q b.pt'),  # attrs right after it
    ('"w\\303\\251ights x.pt"\tfilter=theta-zarr\r', "wéights x.pt", "wéights x.pt"),
    ('"tab\\there.pt" filter=theta-zarr', "tab\there.pt", "tab\there.pt"),
    # not well-formed quoting: git takes the word up to the first blank, quote and all
    ('"open.pt filter=theta-zarr', '"open.pt', '"open.pt'),
    ('"bad\\qx.pt" filter=theta-zarr', '"bad\\qx.pt"', '"badqx.pt"'),
    ("my[[:space:]]run.pt filter=theta-zarr", "my[[:space:]]run.pt", "my run.pt"),
])
def test_a_line_is_parsed_as_git_reads_it(repo, line, pattern, path):
    """The pattern was the line up to its first space: ``"my`` of a quoted line."""
    parsed = parse_line(line)
    assert parsed.pattern == pattern and parsed.words == ["filter=theta-zarr"]
    (repo.path / ".gitattributes").write_text(line + "\n", encoding="utf-8")
    assert filter_of(repo, path) == "theta-zarr"  # git agrees on what the line names


def test_comments_and_blank_lines_give_no_pattern():
    assert parse_line("# a comment") is None and parse_line(" \t\r") is None
    assert parse_line('"#x y.pt" filter=theta-zarr').pattern == "#x y.pt"


def test_track_quotes_a_pattern_with_a_space_and_git_filters_it(repo):
    """A space was spelled ``[[:space:]]``: a quoted pattern says exactly the name."""
    name = "weights/my model.ckpt"  # no pattern of the fixture's matches it
    out = repo.tz("track", name).stdout.decode()
    assert out.splitlines()[0] == f'Tracking "{name}"'
    attrs = (repo.path / ".gitattributes").read_text()
    assert attrs.splitlines()[-1] == f'"{name}" {LINE}'
    assert filter_of(repo, name) == "theta-zarr"
    assert filter_of(repo, "weights/my\tmodel.ckpt") == "unspecified"  # the name, exactly
    assert f'"{name}"' in repo.tz("track").stdout.decode().splitlines()
    assert repo.tz("track", name).stdout.decode().startswith(f'Already tracking "{name}"')
    assert (repo.path / ".gitattributes").read_text() == attrs
    (repo.path / "weights").mkdir()
    safetensors.numpy.save_file({"w": np.arange(64, dtype=np.float32)}, str(repo.path / name))
    repo.git("add", "--", name)
    repo.git("commit", "-q", "-m", "spaced")
    blob = repo.git("cat-file", "blob", f"HEAD:{name}").stdout
    assert blob.startswith(b'{"theta_zarr"'), blob[:40]  # a manifest, not the file
    out = repo.tz("untrack", name).stdout.decode()
    assert out.splitlines() == [f'Untracking "{name}"']
    assert name not in (repo.path / ".gitattributes").read_text()
    assert filter_of(repo, name) == "unspecified"


def test_track_quotes_a_pattern_that_starts_with_a_double_quote(repo):
    """Written as it is, ``"a" b.bin`` would be read as the pattern ``a``."""
    pattern = '"a"x.bin'
    repo.tz("track", pattern)
    line = (repo.path / ".gitattributes").read_text().splitlines()[-1]
    assert line == f'"\\"a\\"x.bin" {LINE}'
    assert filter_of(repo, pattern) == "theta-zarr" and filter_of(repo, "a") == "unspecified"
    assert repo.tz("track", pattern).stdout.decode().startswith("Already tracking")


def test_untrack_and_track_read_a_hand_written_quoted_line(repo):
    """``untrack`` of a quoted line said "Not tracked:" and left it; ``track`` added a
    second line for it.  The file keeps its CRLF endings."""
    attrs = repo.path / ".gitattributes"
    attrs.write_bytes(b'*.txt text\r\n'
                      b'"*.my model.safetensors" filter=theta-zarr diff=theta-zarr '
                      b'merge=theta-zarr -text\r\n'
                      b'"run \\303\\251.bin"filter=theta-zarr diff=lfs\r\n')
    assert filter_of(repo, "x.my model.safetensors") == "theta-zarr"
    assert repo.tz("track").stdout.decode().splitlines() == [
        '"*.my model.safetensors"', '"run \\303\\251.bin"']
    out = repo.tz("track", "*.my model.safetensors", "run é.bin").stdout.decode()
    assert out.splitlines()[:2] == ['Already tracking "*.my model.safetensors"',
                                    'Tracking "run é.bin"']  # its line gained the drivers
    assert attrs.read_bytes().splitlines(keepends=True)[2] == (
        f'"run \\303\\251.bin" {LINE}\r\n'.encode())
    assert repo.out("check-attr", "diff", "--", "run é.bin").endswith(": diff: theta-zarr\n")
    out = repo.tz("untrack", "*.my model.safetensors").stdout.decode()
    assert out.splitlines() == ['Untracking "*.my model.safetensors"']
    assert attrs.read_bytes() == f'*.txt text\r\n"run \\303\\251.bin" {LINE}\r\n'.encode()
    assert filter_of(repo, "x.my model.safetensors") == "unspecified"


def test_a_line_that_spells_a_space_as_a_class_is_the_same_pattern(repo):
    """Lines written before patterns were quoted (and git-lfs's) say ``[[:space:]]``."""
    attrs = repo.path / ".gitattributes"
    attrs.write_text(f"my[[:space:]]run/*.pt {LINE}\n")
    assert repo.tz("track", "my run/*.pt").stdout.decode().startswith("Already tracking")
    assert attrs.read_text() == f"my[[:space:]]run/*.pt {LINE}\n"
    out = repo.tz("untrack", "my run/*.pt").stdout.decode()
    assert out.splitlines() == ['Untracking "my run/*.pt"'] and attrs.read_text() == ""


def test_only_a_line_feed_ends_a_line(repo):
    """A name may hold U+2028 or U+0085, which Python's splitlines takes for line ends:
    the line was cut in two, and track wrote a second line for the pattern."""
    attrs = repo.path / ".gitattributes"
    attrs.write_text(f"run\u2028x.pt {LINE}\n", encoding="utf-8")
    assert repo.tz("track", "run\u2028x.pt").stdout.decode().startswith("Already tracking")
    repo.tz("untrack", "run\u2028x.pt")
    assert attrs.read_text(encoding="utf-8") == ""
