"""How counts and sizes read in what theta-zarr says to people."""

from __future__ import annotations

import re
import shlex
import unicodedata


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 chunk``, ``2 chunks``, ``0 chunks``: ``n`` and the noun, plural unless ``n`` is 1
    (``plural`` for a noun that does not take an ``s``)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def human(n: float) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v",
              "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def quote_path(path: str) -> str:
    """A path as git lists it (``quote_c_style``): in double quotes with C escapes when it
    holds a control character, a double quote or a backslash, so one line is one path;
    other paths, non-ASCII ones included, as they are.  A byte that is not UTF-8 (a
    surrogate escape of ``os.fsdecode``) is written in octal, as git writes it
    (``"\\351t\\351.npy"``), so the line can be printed in any locale."""
    if not any(c in _C_ESCAPES or _octal(c) is not None for c in path):
        return path
    body = "".join(_C_ESCAPES.get(c) or (c if _octal(c) is None else f"\\{_octal(c):03o}")
                   for c in path)
    return f'"{body}"'


_C_UNESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, '"': 34, "\\": 92}


def unquote_c(text: str) -> tuple[str, str] | None:
    """Read a C-quoted string at the start of ``text`` as git does (``unquote_c_style``):
    the string between the opening and the closing double quote, with ``\\a \\b \\f \\n
    \\r \\t \\v \\\\ \\"`` and three-digit octal escapes (bytes, read as UTF-8; one that is
    not, as a surrogate escape), and the text after the closing quote.  None where git
    gives up: no opening or closing quote, or another escape."""
    if not text.startswith('"'):
        return None
    out, i = bytearray(), 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return out.decode("utf-8", "surrogateescape"), text[i + 1:]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt in _C_UNESCAPES:
            out.append(_C_UNESCAPES[nxt])
            i += 2
        elif re.fullmatch("[0-3][0-7][0-7]", text[i + 1:i + 4]):
            out.append(int(text[i + 1:i + 4], 8))
            i += 4
        else:
            return None
    return None


def _octal(c: str) -> int | None:
    """The byte a character of a path is written as in octal: a control character, DEL,
    or an undecodable byte (surrogate escapes U+DC80..U+DCFF); None for the rest."""
    n = ord(c)
    if n < 0x20 or n == 0x7F:
        return n
    if 0xDC80 <= n <= 0xDCFF:
        return n - 0xDC00
    return None


#: categories of characters a name is never printed with raw: controls (C0, DEL and C1,
#: whose CSI U+009B starts terminal escapes), format characters (bidirectional overrides
#: and isolates, zero-width ones) and line or paragraph separators
_UNPRINTED = {"Cc", "Cf", "Zl", "Zp"}


def show_name(name: str) -> str:
    """A parameter name or key as a line shows it: each control, format or separator
    character as ``\\uXXXX`` (a backslash as ``\\\\``), the rest as it is.  Names come
    from checkpoints and manifests others commit: a raw U+009B (CSI) or U+202E
    (right-to-left override) would drive the terminal or make a diff line read as
    another name."""
    if not any(c == "\\" or unicodedata.category(c) in _UNPRINTED for c in name):
        return name
    return "".join("\\\\" if c == "\\" else f"\\u{ord(c):04x}"
                   if unicodedata.category(c) in _UNPRINTED else c for c in name)


def shell_word(path: str) -> str:
    """``path`` as one word a shell reads back as that path, for a command a message
    suggests (``git theta-zarr resolve 'my model.safetensors' ...``): ``shlex.quote``, or
    bash's ``$'...'`` with octal escapes for a control character or a byte that is not
    UTF-8, which no plain quoting can carry; a C1 control or a format character (a bidi
    override) as ``\\uXXXX`` there too, so the suggestion never prints it raw."""
    if not any(_octal(c) is not None or unicodedata.category(c) in _UNPRINTED for c in path):
        return shlex.quote(path)
    body = "".join(f"\\{_octal(c):03o}" if _octal(c) is not None else
                   f"\\u{ord(c):04x}" if unicodedata.category(c) in _UNPRINTED else
                   "\\" + c if c in "\\'" else c for c in path)
    return f"$'{body}'"


def natural_key(name: str) -> tuple:
    """A sort key that orders ``step-999`` before ``step-1000`` and ``layers.2`` before
    ``layers.10`` (digit runs by value): the order in which refs, steps and parameters
    are listed to people."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
