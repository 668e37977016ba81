"""A git repository as theta-zarr sees it: its dirs and its ``theta-zarr.*`` config."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from ..cache import default_cache_dir, record_repository
from ..chunking import MIN_CHUNK_BYTES
from ..codecs import WRITER_NAMES
from ..delta import DeltaPolicy
from ..errors import UserError
from ..objects import MAX_CONCURRENCY
from ..settings import Settings, parse_bool, parse_size

CONFIG_PREFIX = "theta-zarr."
#: boolean keys: git takes one written without ``= value`` (``[theta-zarr] lazy``) as true
BOOLEAN_KEYS = frozenset({"theta-zarr.lazy", "theta-zarr.opaque", "theta-zarr.delta"})
_OUR_PREFIX = "theta-zarr: "


class GitError(RuntimeError):
    """A git command failed unexpectedly (a bug, or git itself broke); git's last line."""


class GitInputError(GitError, UserError):
    """git refused the user's input: not a repository, an unknown revision or path, or a
    theta-zarr filter that reported its own one-line error during the git command."""


def config_records(out: bytes) -> Iterator[tuple[str, str | None]]:
    """(key, value) of each record of ``git config -z`` output; value None for a key
    written without ``= value`` (git reads it as true where a boolean is wanted)."""
    for record in out.decode("utf-8", "replace").split("\0"):
        if record:
            key, sep, value = record.partition("\n")
            yield key, value if sep else None


#: git's line when a lock file it needs is there ("Unable to create '…/index.lock': File
#: exists.")
_LOCKED = re.compile(r"Unable to create '(.+\.lock)': File exists")


def git(*args: str, cwd: str | None = None, input: bytes | None = None,
        check: bool = True, env: dict[str, str] | None = None) -> bytes:
    """Run git; with ``check``, a failure raises GitError (GitInputError when theta-zarr's
    filter, run by this git command, already said what went wrong: its lines are kept)."""
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                          env=full_env)
    if check and proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        ours = [m[len(_OUR_PREFIX):] for m in msg if m.startswith(_OUR_PREFIX)]
        if ours:
            raise GitInputError("; ".join(dict.fromkeys(ours)))
        locked = next((m for m in map(_LOCKED.search, msg) if m), None)
        if locked:  # git's last line is only "remove the file manually to continue."
            raise GitInputError(f"{locked.group(1)} exists: another git command is running "
                                "in this repository (if none is, one that was killed left "
                                "the file: remove it)")
        raise GitError(msg[-1] if msg else f"git {' '.join(args)} failed")
    return proc.stdout


def share_as_git_does(value: str) -> None:
    """Honour ``core.sharedRepository`` for what theta-zarr creates (cache folders and
    objects, the stat record, temporary files), as git does for ``.git/objects``: ``group``
    (``true``, ``1``) makes them group-writable, ``all`` (``world``, ``everybody``, ``2``)
    world-readable too, an octal mode (``0660``) gives those permissions (folders get
    ``x`` where they get ``r``).  The process umask is narrowed, so every file and folder
    created afterwards follows; folders inherit the group from setgid parents (git sets
    that bit on ``.git``'s folders in a shared repository).  Source: git-config(1),
    core.sharedRepository."""
    v = value.strip().lower()
    if v in ("", "false", "umask", "0", "no", "off"):
        return
    old = os.umask(0)
    if v in ("group", "true", "1", "yes", "on"):
        new = old & ~0o070
    elif v in ("all", "world", "everybody", "2"):
        new = old & ~0o075  # others: read, and enter folders (files are made without x)
    else:
        try:
            mode = int(v, 8) & 0o777
        except ValueError:
            new = old  # git itself refuses the value; nothing to follow
        else:
            new = 0o777 & ~(mode | (mode & 0o444) >> 2)
    os.umask(new)


def _config_int(key: str, value: str, low: int | None = None, high: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise UserError(f"git config {key} = {value!r} is not a whole number") from None
    if low is not None and high is not None and not low <= n <= high:
        raise UserError(f"git config {key} = {value.strip()!r} is out of range ({low}..{high})")
    return n


def _config_value(key: str, value: str) -> object:
    """One ``theta-zarr.*`` value checked, or UserError naming the key and the value."""
    if key == "theta-zarr.direct-checkout":
        if value.strip().lower() in ("off", "false", "no", "never", ""):
            return None
        try:
            return parse_size(value)
        except ValueError:
            raise UserError(f"git config {key} = {value!r} is not a size (e.g. 64MiB) "
                            "or off") from None
    if key == "theta-zarr.chunk-size":
        try:
            n = parse_size(value)
        except ValueError:
            raise UserError(f"git config {key} = {value!r} is not a size "
                            "(e.g. 4MiB, 512k)") from None
        if n < MIN_CHUNK_BYTES:
            raise UserError(f"git config {key} = {value!r} is below the minimum "
                            f"{MIN_CHUNK_BYTES} bytes")
        return n
    if key == "theta-zarr.cache-compression":
        codec = value.strip() or "raw"
        if codec not in WRITER_NAMES:  # what a writer may be configured with (codecs.py)
            raise UserError(f"git config {key} = {value!r} is not one of "
                            f"{', '.join(WRITER_NAMES)}")
        return codec
    if key == "theta-zarr.concurrency":
        return _config_int(key, value, 1, MAX_CONCURRENCY)
    if key == "theta-zarr.delta-depth":
        return _delta_bound(key, value, "max_depth", _config_int(key, value))
    if key == "theta-zarr.delta-ratio":
        try:
            ratio = float(value)
        except ValueError:
            raise UserError(f"git config {key} = {value!r} is not a number") from None
        return _delta_bound(key, value, "ratio", ratio)
    raise AssertionError(key)


def _delta_bound(key: str, value: str, field: str, n: float) -> float:
    """``n`` if DeltaPolicy (which holds the bounds) takes it as ``field``, else UserError
    naming the key and the value."""
    try:
        DeltaPolicy(**{field: n})
    except ValueError as e:
        raise UserError(f"git config {key} = {value.strip()!r} is out of range ({e})") from None
    return n


def _env_true(value: str) -> bool:
    """An environment switch (``GIT_THETA_ZARR_SKIP_SMUDGE``), read as git-lfs reads
    ``GIT_LFS_SKIP_SMUDGE``: a git boolean, and anything that is not one is off."""
    try:
        return parse_bool(value)
    except ValueError:
        return False


def _config_bool(key: str, value: str) -> bool:
    """A boolean key's value as git reads it; UserError naming the key and the value for
    anything git would call a bad boolean (a misspelt ``ture`` was silently false)."""
    try:
        return parse_bool(value)
    except ValueError:
        raise UserError(f"git config {key} = {value!r} is not a boolean (true/false, yes/no, "
                        "on/off, 1/0)") from None


def _outside(path: str, top: str) -> bool:
    """``path`` (absolute) is not ``top`` nor under it."""
    rel = os.path.relpath(path, top)
    return rel == os.pardir or rel.startswith(os.pardir + os.sep)


def cache_folder(value: str, common_dir: str, top: str) -> str:
    """The folder a ``theta-zarr.cache`` value names for the repository of ``common_dir``
    (work tree ``top``): ``~`` expanded, a relative one taken from the main work tree
    (linked ones share it; ``top`` for a bare repository), as every command takes it."""
    value = os.path.expanduser(value)
    common = os.path.normpath(common_dir)
    main = os.path.dirname(common) if os.path.basename(common) == ".git" else top
    return os.path.join(main, value)  # an absolute one stays


@dataclass
class Repo:
    """A git repository as theta-zarr's git face sees it, from one ``git rev-parse``
    (``discover``): absolute paths of its work tree's top, its git dir (a linked
    worktree's own: the stat records, the pending writes), its common dir (shared by all
    worktrees: the cache), its hooks folder and index file, and its object format.

    Every git command it runs (``git``) runs at ``top``.
    """

    top: str  # working tree root (a bare repository: its git dir)
    git_dir: str
    common_dir: str
    bare: bool = False
    hooks_dir: str = ""  # where git runs hooks from (core.hooksPath honoured), absolute
    index_path: str = ""  # this work tree's index file, absolute
    object_format: str = "sha1"  # the object ids' hash: sha1 or sha256

    @classmethod
    def discover(cls, cwd: str | None = None, bare_ok: bool = False) -> Repo:
        """The repository around ``cwd``; GitInputError outside one (or in a bare one,
        unless ``bare_ok``: the filter serves ``git archive`` on servers).

        One ``git rev-parse`` answers everything (it runs in every git command through the
        filter); the paths it prints relative are relative to ``cwd``."""
        out = git("rev-parse", "--is-bare-repository", "--absolute-git-dir", "--git-common-dir",
                  "--git-path", "hooks", "--git-path", "index", "--show-object-format",
                  "--show-toplevel", cwd=cwd, check=False).decode().splitlines()
        bare = len(out) >= 6 and out[0] == "true"
        if len(out) < 7 and not (bare and bare_ok):
            here = os.path.abspath(cwd or os.getcwd())
            if len(out) >= 6 and not bare:  # git answered, but has no work tree here
                raise GitInputError(f"not inside a work tree ({here} is in the git folder "
                                    f"{out[1]}): run this from the work tree around it")
            raise GitInputError(f"not inside {'a work tree' if bare else 'a git repository'} "
                                f"({here}): run this from a git work tree")
        here = cwd or os.getcwd()
        git_dir, common, hooks, index = out[1], *(
            os.path.normpath(os.path.join(here, p)) for p in out[2:5])
        return cls(git_dir if bare else out[6], git_dir, common, bare, hooks, index,
                   out[5] or "sha1")

    def relative(self, path: str, inside: bool = False) -> str:
        """``path`` (absolute, or relative to the current folder) relative to the top of the
        work tree, as git takes it: symbolic links among its folders resolved (a home or
        scratch folder reached through a link), the last component kept as it is (a
        tracked link).  May start with ``..`` (outside the work tree), unless ``inside``:
        then such a path, or an empty one, is a GitInputError naming it, as git refuses it."""
        if inside and not path:  # '' is the current folder to abspath, every file to us
            raise GitInputError("an empty path names no file (git: empty string is not a "
                                "valid pathspec)")
        full = os.path.abspath(path)
        if not os.path.isabs(path) and _outside(os.path.realpath(os.getcwd()),
                                                os.path.realpath(self.top)):
            # run outside its work tree (GIT_DIR and GIT_WORK_TREE, core.worktree), git
            # works from the top: its paths are relative to it, '.' is the whole tree
            full = os.path.normpath(os.path.join(self.top, path))
        real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full)) \
            if os.path.islink(full) else os.path.realpath(full)
        rel = os.path.relpath(real, os.path.realpath(self.top))
        if inside and _outside(real, os.path.realpath(self.top)):
            raise GitInputError(f"{path}: outside the repository ({self.top})")
        return rel

    def commit(self, rev: str) -> str:
        """The commit id ``rev`` names; GitInputError (as git words it) when none."""
        out = self.git("rev-parse", "--verify", "--quiet", "--end-of-options",
                       f"{rev}^{{commit}}", check=False).strip()
        if not out:
            raise GitInputError(f"unknown revision {rev!r} (not a commit in {self.top})")
        return out.decode()

    def attribute(self, paths: list[str], name: str,
                  attributes_file: str | None = None) -> dict[str, str]:
        """Each path's value of gitattribute ``name`` by git's own matching (``git check-attr``):
        the value, or ``set``/``unset``/``unspecified``; ``attributes_file`` adds a file of
        attribute lines (as ``core.attributesFile``)."""
        if not paths:
            return {}
        extra = ("-c", f"core.attributesFile={attributes_file}") if attributes_file else ()
        out = self.git(*extra, "check-attr", "-z", "--stdin", name,
                       input=b"".join(os.fsencode(p) + b"\0" for p in paths)).split(b"\0")
        return {os.fsdecode(out[i]): out[i + 2].decode() for i in range(0, len(out) - 2, 3)}

    def first_change(self) -> str | None:
        """The first path whose tracked content differs from HEAD (index or work tree; new
        untracked files do not count), or None when the tree is clean."""
        for line in self.git("status", "--porcelain", "--untracked-files=no").decode(
                "utf-8", "replace").splitlines():
            if line.strip():
                return line[3:]
        return None

    @classmethod
    def at_git_dir(cls, git_dir: str) -> Repo:
        """The repository whose common git dir is ``git_dir`` (one a shared cache names:
        ``cache.recorded_repositories``), for git commands that read its refs, index and
        objects, run in that folder.  GitError where git cannot read it."""
        fmt = git("rev-parse", "--show-object-format", cwd=git_dir).decode().strip()
        return cls(git_dir, git_dir, git_dir, True, os.path.join(git_dir, "hooks"),
                   os.path.join(git_dir, "index"), fmt or "sha1")

    def git(self, *args: str, input: bytes | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> bytes:
        """``git ARGS`` run at the top of the work tree; its stdout (the module's ``git``:
        GitError, or GitInputError, when it fails and ``check`` is set)."""
        return git(*args, cwd=self.top, input=input, check=check, env=env)

    def config(self) -> dict[str, str]:
        """Every ``theta-zarr.*`` key in effect (all scopes), and ``core.sharedrepository``;
        last value wins."""
        out = self.git("config", "-z", "--get-regexp",
                       r"^(theta-zarr\.|core\.sharedrepository$)", check=False)
        values: dict[str, str] = {}
        for key, value in config_records(out):
            key = key.lower()
            values[key] = value if value is not None or key not in BOOLEAN_KEYS else "true"
        return values

    def settings(self) -> Settings:
        """The core's Settings from this repository's git config (``theta-zarr.*``, all
        scopes), each value checked; a relative ``theta-zarr.cache`` is taken from the main
        work tree.  Also applies ``core.sharedRepository`` to the process umask
        (``share_as_git_does``).  Raises UserError naming the key and the value for a
        value out of range or of the wrong kind."""
        cfg = self.config()
        share_as_git_does(cfg.get("core.sharedrepository", ""))
        cache = cfg.get("theta-zarr.cache")
        if cache:
            cache = cache_folder(cache, self.common_dir, self.top)
        if cache and os.path.normpath(cache) != default_cache_dir(self.common_dir):
            # a shared cache holds this repository's unpushed chunks: cache prune refuses it
            record_repository(cache, self.common_dir)
        kwargs: dict = {"cache_dir": cache or default_cache_dir(self.common_dir)}
        for key, field in (("chunk-size", "chunk_bytes"), ("cache-compression", "cache_codec"),
                           ("concurrency", "concurrency"), ("delta-ratio", "delta_ratio"),
                           ("delta-depth", "delta_depth")):
            if CONFIG_PREFIX + key in cfg:
                kwargs[field] = _config_value(CONFIG_PREFIX + key, cfg[CONFIG_PREFIX + key])
        for key in ("delta", "opaque"):
            if CONFIG_PREFIX + key in cfg:
                kwargs[key] = _config_bool(CONFIG_PREFIX + key, cfg[CONFIG_PREFIX + key])
        if "theta-zarr.direct-checkout" in cfg:
            kwargs["direct_checkout"] = _config_value("theta-zarr.direct-checkout",
                                                      cfg["theta-zarr.direct-checkout"])
        lazy_env = os.environ.get("GIT_THETA_ZARR_SKIP_SMUDGE")
        kwargs["lazy"] = _env_true(lazy_env) if lazy_env else \
            _config_bool("theta-zarr.lazy", cfg.get("theta-zarr.lazy", ""))
        try:
            return Settings(**kwargs)
        except ValueError as e:
            raise UserError(f"git config theta-zarr.*: {e}") from None
