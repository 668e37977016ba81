"""Named refs in a remote: ``<remote>/refs/<name>`` pointing at ``<remote>/manifests/``.

Cluster jobs publish checkpoints without git, so the remote itself must keep
names safe under concurrency: a ref is created only if absent and moved only if
it still holds the value the mover read (conditional writes: S3 If-None-Match /
If-Match, GCS ifGenerationMatch, local link(2) / flock+rename).  A backend without
conditional writes gets no refs at all rather than a racy imitation.

Ref blob format (ASCII, one item a line)::

    blake3:<64 hex>          the digest of the manifest (or set) the ref names
    write-id <32 hex>        random id of the write that put this value there

The write id settles a conditional PUT whose response was lost: the client
retries, the retry answers 412 (the first attempt had succeeded), and reading
the ref back shows our own write id, so the write is reported as ours
(Icechunk #2099).  Readers accept the first line alone.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .manifest import DIGEST_RE
from .storage import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    ConditionFailed,
    StorageError,
)
from .wording import natural_key

REFS_PREFIX = "refs/"
#: why a new ref may not begin with '-' (``Refs.set``, and the commands' --ref first)
LEADING_DASH = ("a ref name beginning with '-' reads as an option on the command line "
                "(git refuses such branch names); choose another")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
#: Bytes (UTF-8) a whole ref name and one of its components may have.  A component
#: becomes a file name in a folder remote (NAME_MAX is 255 bytes on every common file
#: system); the whole name appears in keys such as ``staging/<ref>/.parts/<file>``
#: under a bucket prefix, and S3 and GCS keys end at 1024 bytes.
MAX_REF_BYTES = 512
MAX_COMPONENT_BYTES = 255
#: the most bytes a ref file may hold (it holds two short lines): a larger one is refused
#: before it is read whole
MAX_REF_FILE = 4096
#: Unicode categories refused: controls, format characters (bidirectional overrides,
#: zero-width joiners), separators, private use, surrogates, unassigned code points.
#: Each makes a name display as something it is not.
_INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"}


class RefError(StorageError):
    """A bad ref name or ref blob; the message says which."""


class RefConflict(RefError):
    """The ref exists (or moved) and the caller's write lost."""


def check_ref_name(name: str) -> str:
    """The one rule set for ref names, applied before anything is uploaded.

    git's ``check-ref-format`` rules (one-level names allowed), plus: UTF-8 in NFC
    form; no invisible or look-alike characters (Unicode categories in
    ``_INVISIBLE``); at most ``MAX_REF_BYTES`` bytes, each '/'-separated component
    at most ``MAX_COMPONENT_BYTES`` (limits every backend accepts).  Returns the
    name; raises RefError naming the rule broken.
    """
    why = None
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        encoded = b""
        why = "not valid Unicode"
    bad = next((ch for ch in name if unicodedata.category(ch) in _INVISIBLE
                and ch != " " and not _BAD_CHARS.match(ch)), None)
    if why:
        pass
    elif not name:
        why = "empty"
    elif len(encoded) > MAX_REF_BYTES:
        why = f"{len(encoded)} bytes long; at most {MAX_REF_BYTES} (UTF-8)"
    elif _BAD_CHARS.search(name):
        why = "control characters, spaces and ~^:?*[\\ are not allowed"
    elif bad is not None:
        why = (f"invisible or look-alike character U+{ord(bad):04X} "
               f"({unicodedata.name(bad, 'unnamed')}) is not allowed")
    elif unicodedata.normalize("NFC", name) != name:
        why = "not in Unicode NFC form (the same name could be spelt two ways)"
    elif name.startswith("/") or name.endswith("/") or "//" in name:
        why = "no leading, trailing or doubled '/'"
    elif ".." in name or "@{" in name or name == "@":
        why = "'..' and '@{' are not allowed"
    elif name.endswith("."):
        why = "may not end with '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        why = "components may not start with '.' or end with '.lock'"
    else:
        long = next((p for p in name.split("/") if len(p.encode()) > MAX_COMPONENT_BYTES),
                    None)
        if long is not None:
            why = (f"a component is {len(long.encode())} bytes long; at most "
                   f"{MAX_COMPONENT_BYTES}")
    if why:
        shown = name[:80].encode("unicode_escape").decode("ascii")
        raise RefError(f"invalid ref name '{shown}': {why}")
    return name


def ref_folder(name: str) -> str:
    """The folder of a ref name: ``run7/step-2000`` -> ``run7/``, ``latest`` -> ``""``."""
    return name.rsplit("/", 1)[0] + "/" if "/" in name else ""


@dataclass(frozen=True)
class RefValue:
    """A ref as read or written: the digest it names (a manifest's or a set's), the id of
    the write that put it there (None for a ref of the first line alone), and ``token``,
    the storage version it was read at, which a conditional move must still find."""

    digest: str
    write_id: str | None
    token: str  # the storage version read with it (ETag, generation, content hash)


def encode(digest: str, write_id: str) -> bytes:
    """A ref blob: ``digest`` and ``write-id <write_id>``, one a line, in ASCII (module
    doc); neither is checked here."""
    return f"{digest}\nwrite-id {write_id}\n".encode("ascii")


def decode(name: str, data: bytes, token: str) -> RefValue:
    """The RefValue of the blob ``data`` of ref ``name``, read at storage version ``token``.

    The first line must be a digest; a second ``write-id`` line is optional, anything
    after it ignored.  Raises RefError naming the ref otherwise (not ASCII, no digest).
    """
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        lines = []
    digest = lines[0].strip() if lines else ""
    if not DIGEST_RE.fullmatch(digest):
        raise RefError(f"ref {name}: not a theta-zarr ref (first line must be a digest)")
    write_id = None
    if len(lines) > 1 and lines[1].startswith("write-id "):
        write_id = lines[1][len("write-id "):].strip()
    return RefValue(digest, write_id, token)


class Refs:
    """The refs of one remote."""

    def __init__(self, blobs: BlobStore):
        self.blobs = blobs

    def _key(self, name: str) -> str:
        return REFS_PREFIX + check_ref_name(name)

    def read(self, name: str) -> RefValue | None:
        try:
            data, token = self.blobs.get_versioned(self._key(name), MAX_REF_FILE)
        except BlobNotFound:
            return None
        return decode(name, data, token)

    def list(self, prefix: str = "") -> Iterator[tuple[str, BlobInfo]]:
        """(name, blob info) of every ref whose name starts with ``prefix``."""
        folder = ref_folder(prefix)
        for info in self.blobs.list(REFS_PREFIX + folder):
            name = info.key[len(REFS_PREFIX):]
            if name.startswith(prefix) and not name.rsplit("/", 1)[-1].startswith("."):
                yield name, info

    def held(self, name: str) -> str | None:
        """What the ref ``name`` holds: the digest it names, ``"unreadable"`` for one that
        cannot be read (garbage bytes, another tool's file, which ``ls`` marks 'error:'),
        None where there is none."""
        key = self._key(name)  # a bad name is refused, not taken for an unreadable ref
        try:
            data, token = self.blobs.get_versioned(key, MAX_REF_FILE)
            return decode(name, data, token).digest
        except BlobNotFound:
            return None
        except (RefError, BlobTooLarge):
            return "unreadable"

    def delete(self, name: str) -> str | None:
        """Delete the ref ``name``, an unreadable one too: what it held (``held``), None
        where there was none (nothing deleted).  Only the ref: what it named stays until gc
        finds nothing else names it.  Not conditional, as ``git update-ref -d`` without an
        old value: a push moving the ref at the same moment can be undone (its objects
        stay, for the grace period)."""
        held = self.held(name)
        if held is not None:
            self.blobs.delete(self._key(name))
        return held

    def _write(self, name: str, digest: str, expect: RefValue | None) -> RefValue:
        """One conditional write; a 412 whose read-back shows our write id is our success."""
        write_id = uuid.uuid4().hex
        key = self._key(name)
        try:
            token = self.blobs.put_if(key, encode(digest, write_id),
                                      None if expect is None else expect.token)
        except ConditionFailed:
            now = self.read(name)
            if now is not None and (now.write_id == write_id or now.digest == digest):
                return now  # our own retried write, or a twin writer's identical value
            raise RefConflict(_conflict_message(name, digest, now, expect)) from None
        return RefValue(digest, write_id, token)

    def set(self, name: str, digest: str, force: bool = False) -> tuple[RefValue | None, str]:
        """Point ``name`` at ``digest``; returns (previous value, what happened).

        Without ``force`` an existing ref pointing elsewhere is an error; with it the
        move is a compare-and-swap against the value read here, so a concurrent
        mover makes one of the two fail instead of silently losing an update.
        """
        if not DIGEST_RE.fullmatch(digest):
            raise RefError(f"invalid digest {digest[:80]!r}")
        current = self.read(name)
        if current is not None and current.digest == digest:
            return current, "unchanged"
        if current is not None and not force:
            raise self._taken(name, current, digest)
        if current is None:
            self._check_no_clash(name)
        self._write(name, digest, current)
        return current, "created" if current is None else "moved"

    def check_free(self, name: str, digest: str) -> RefValue | None:
        """What ``set`` without force would refuse, checked before anything is uploaded:
        RefConflict when ``name`` exists and names another digest.  Returns its value
        (None: it does not exist).  ``set`` checks again, so a writer racing this one
        still loses there."""
        current = self.read(name)
        if current is not None and current.digest != digest:
            raise self._taken(name, current, digest)
        if current is None:
            self._check_no_clash(name)
        return current

    def check_new(self, name: str) -> None:
        """What ``set`` refuses of a name that does not exist (one beginning with '-', a
        folder of an existing ref), checked before anything is uploaded by a writer that
        may move a ref (``--force``) or stages shards for it: RefError."""
        if self.read(name) is None:
            self._check_no_clash(name)

    def _check_no_clash(self, name: str) -> None:
        """RefError when a new ref ``name`` would be a folder of an existing ref, or an
        existing ref a folder of it (``run7`` and ``run7/step-1``): git's rule for refs,
        kept on every backend so a remote copied between them holds the same refs (a
        folder remote cannot hold both).  A new name may not begin with '-', which git
        refuses for a branch: every command would read it as an option (one that exists
        stays readable)."""
        if name.startswith("-"):
            raise RefError(f"ref {name} cannot be created: {LEADING_DASH}")
        parts = name.split("/")
        clash = next((a for a in ("/".join(parts[:i]) for i in range(1, len(parts)))
                      if self.read(a) is not None), None)
        if clash is None:
            clash = next((n for n, _ in self.list(name + "/")), None)
        if clash is not None:
            raise RefError(f"ref {name} cannot be created in {self.blobs.describe()}: ref "
                           f"{clash} exists (a name is either a ref or a folder of refs, "
                           "as in git)")

    def _taken(self, name: str, current: RefValue, digest: str) -> RefConflict:
        return RefConflict(f"ref {name} already exists in {self.blobs.describe()} and points "
                           f"at {current.digest}, not {digest}; use --force to move it")

    def base_of(self, ref: str, base_ref: str | None, force: bool) -> str | None:
        """The delta base of a push to ``ref``: ``base_ref`` when given (RefError when it
        does not exist), else ``ref`` itself when it exists and ``force`` moves it (the
        new version continues what it named), else :func:`default_base_ref`."""
        if base_ref:
            check_ref_name(base_ref)
            if self.read(base_ref) is None:
                raise RefError(f"base ref {base_ref} does not exist in {self.blobs.describe()}")
            return base_ref
        if force and self.read(ref) is not None:
            return ref
        return default_base_ref(self, ref)


def _conflict_message(name: str, digest: str, now: RefValue | None,
                      expect: RefValue | None) -> str:
    where = f"now points at {now.digest}" if now is not None else "was deleted"
    verb = "was created" if expect is None else "moved"
    # a re-run finds a ref another writer created and refuses it without --force; after
    # a lost compare-and-swap (a --force run) it compares against the new value
    again = "re-run with --force to replace it" if expect is None and now is not None else \
        "re-run to try again"
    return (f"ref {name} {verb} concurrently by another writer ({where}); "
            f"nothing was overwritten: {again}")


def default_base_ref(refs: Refs | Iterable[tuple[str, object]], ref: str) -> str | None:
    """The delta base a push to ``ref`` uses when none is named: the newest other ref in
    ``ref``'s folder (``run7/step-2000`` for ``run7/step-3000``, by :func:`newest_ref`);
    None when the folder holds no other ref.  ``ref`` itself is ignored (a caller moving
    an existing ref decides whether it continues itself).  Raises RefError for an invalid
    ``ref``.
    """
    check_ref_name(ref)
    return newest_ref(refs, ref_folder(ref), skip=ref)


def newest_ref(refs: Refs | Iterable[tuple[str, object]], folder: str,
               skip: str | None = None) -> str | None:
    """The newest ref directly in ``folder`` (``run7/``; ``""``: the refs with no folder),
    ``skip`` aside; None when there is none.

    ``refs`` is a remote's Refs (its folder is listed) or (name, when) pairs, ``when``
    being a BlobInfo as ``Refs.list`` yields, a modification time in seconds, or None.
    Refs of other folders, subfolders included, are ignored.  Newest is by the time the
    store last wrote the ref; ties and unknown times are broken by natural name order
    (``step-1000`` after ``step-999``).
    """
    pairs = refs.list(folder) if isinstance(refs, Refs) else refs
    best: tuple | None = None
    for name, when in pairs:
        if name == skip or ref_folder(name) != folder:
            continue
        mtime = getattr(when, "mtime", when)
        key = (mtime if isinstance(mtime, (int, float)) else float("-inf"), natural_key(name))
        if best is None or key > best[0]:
            best = (key, name)
    return None if best is None else best[1]
