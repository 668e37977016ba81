"""Remotes as git knows them: configuration, the default remote, and what a push must carry.

``theta-zarr.remote.<name>.url`` (plus non-secret options) lives in git config;
a committed ``.thetazarr`` file (git-config syntax, like git-lfs's ``.lfsconfig``)
gives the same keys to fresh clones.  Local config wins over ``.thetazarr``.  A
theta remote is used for the git remote of the same name; a git remote that is
a local repository gets its object cache (``<git-common-dir>/theta-zarr``: ``<path>/theta-zarr``
for a bare one) by default, so local clones need no setup.
"""

from __future__ import annotations

import difflib
import logging
import os

from ..manifest import Manifest, looks_like_manifest
from ..refs import RefError, check_ref_name
from ..remote import (
    BOOLEAN_OPTIONS,
    STORAGE_OPTIONS,
    RemoteError,
    RemoteSpec,
    unused_options,
)
from ..storage import is_folder, open_store, s3_compatible_hint
from ..storage.local import LocalStore
from .files import object_info, objects_with_paths, read_blobs, revision_range, small_blobs
from .install import DRIVER
from .repo import GitError, Repo, cache_folder, config_records, git

THETAZARR_FILE = ".thetazarr"
PREFIX = "theta-zarr.remote."

log = logging.getLogger(__name__)
_warned_link: set[str] = set()


def thetazarr_path(repo: Repo) -> str | None:
    """The working tree's ``.thetazarr``, or None where there is none to read.

    A symbolic link there is not followed (warned once): a committed link to
    ``~/.gitconfig`` or any file outside the repository would have its keys read as the
    repository's, and ``remote add --shared`` write into it, as git does not follow a
    symlinked ``.gitattributes`` either.
    """
    path = os.path.join(repo.top, THETAZARR_FILE)
    if os.path.islink(path):
        if path not in _warned_link:
            _warned_link.add(path)
            log.warning("%s is a symbolic link; not following it (make it a file to use it)",
                        THETAZARR_FILE)
        return None
    return path if os.path.exists(path) else None


def _writable_thetazarr(repo: Repo) -> str:
    """The ``.thetazarr`` a command writes: RemoteError where it is a symbolic link."""
    path = os.path.join(repo.top, THETAZARR_FILE)
    if os.path.islink(path):
        raise RemoteError(f"{THETAZARR_FILE} is a symbolic link (to {os.readlink(path)}); "
                          "theta-zarr does not write through it: replace it with a file")
    return path


def _parse(records: bytes) -> dict[str, dict[str, str]]:
    remotes: dict[str, dict[str, str]] = {}
    for key, value in config_records(records):
        if not key.lower().startswith(PREFIX):
            continue
        name, _, option = key[len(PREFIX):].rpartition(".")
        option = option.lower()
        if name:
            remotes.setdefault(name, {})[option] = \
                value if value is not None or option not in BOOLEAN_OPTIONS else "true"
    return remotes


def configured(repo: Repo) -> dict[str, RemoteSpec]:
    """Every theta remote with a URL (:func:`merged_options`)."""
    specs = {}
    committed: dict[str, set[str]] = {}
    for name, opts in merged_options(repo, committed).items():
        url = opts.pop("url", None)
        if url:
            specs[name] = RemoteSpec(name, _from_top(repo, url), opts,
                                     frozenset(committed.get(name, ())))
    return specs


def without_url(repo: Repo) -> dict[str, list[str]]:
    """The remotes named in .thetazarr or git config that have no URL, or an empty one
    (a misspelt ``uri =``, a ``url`` left blank), each with the keys given for it."""
    return {name: sorted(opts) for name, opts in merged_options(repo).items()
            if not (opts.get("url") or "").strip()}


def merged_options(repo: Repo, committed: dict[str, set[str]] | None = None
                   ) -> dict[str, dict[str, str]]:
    """Every theta remote's keys: .thetazarr first, then git config on top (a URL there
    other than the file's replaces the file's remote whole).  ``committed``,
    when given, is filled with each remote's keys whose value is the file's (git config
    did not set them).

    A bare repository (a server running ``git archive``) has no working file: its
    ``.thetazarr`` is read from HEAD's tree.  So is a working tree's while it lacks the
    file: a checkout of a commit older than ``.thetazarr`` removes it before the filter
    asks for the remote, and git's index and HEAD still hold it then.
    """
    merged: dict[str, dict[str, str]] = {}
    file = None if repo.bare else thetazarr_path(repo)
    if file is not None:
        source: list[str] | None = ["-f", file]
    elif not repo.bare and os.path.islink(os.path.join(repo.top, THETAZARR_FILE)):
        source = None  # the index and HEAD hold the link, not a file to read
    else:
        source = next((["--blob", spec] for spec in
                       ([] if repo.bare else [f":{THETAZARR_FILE}"]) + [f"HEAD:{THETAZARR_FILE}"]
                       if _has_object(repo, spec)), None)
    if source:
        try:  # every key (_parse keeps the remotes'): a file git cannot parse is an error
            out = git("config", "-z", *source, "--list", cwd=repo.top)
        except GitError as e:
            raise RemoteError(f"{THETAZARR_FILE} cannot be read ("
                              f"{str(e).removeprefix('fatal: ')}): fix it or remove it") from None
        for name, opts in _parse(out).items():
            merged.setdefault(name, {}).update(opts)
            if committed is not None:
                committed.setdefault(name, set()).update(opts)
    out = repo.git("config", "-z", "--get-regexp", r"^theta-zarr\.remote\.", check=False)
    for name, opts in _parse(out).items():
        if opts.get("url") and opts["url"] != merged.get(name, {}).get("url", opts["url"]):
            # another store under the file's name replaces the file's remote whole: its
            # options (an endpoint-url above all) are not the new URL's
            merged[name] = {}
            if committed is not None:
                committed.pop(name, None)
        merged.setdefault(name, {}).update(opts)
        if committed is not None:
            committed.get(name, set()).difference_update(opts)
    return merged


def _is_relative_folder(url: str) -> bool:
    """A folder URL written relative to some folder (``../store``), not absolute, ``~`` or
    a URL with a scheme (check_url has refused ``file:relative`` and ``s3:/x``)."""
    return "://" not in url and not os.path.isabs(url) and not url.startswith("~")


def _from_top(repo: Repo, url: str) -> str:
    """A configured URL as a store opens it: a relative folder is relative to the top of the
    work tree (a bare repository's folder), as git takes a relative remote URL, wherever
    the command runs (the filter and the hooks run at the top, a user anywhere)."""
    url = url.strip()
    return os.path.normpath(os.path.join(repo.top, url)) if _is_relative_folder(url) else url


def _has_object(repo: Repo, spec: str) -> bool:
    """git has the object ``spec`` names (``cat-file -e``: a blob, tree, commit or tag)."""
    try:
        repo.git("cat-file", "-e", spec)
    except GitError:
        return False
    return True


def _git_remote_path(repo: Repo, name: str, url: str | None = None) -> str | None:
    """The folder a git remote is, when it is a local path (``../bare.git``, ``file://``);
    ``url`` is used when ``name`` is no configured remote (``git push ../bare.git``)."""
    url = repo.git("config", "--get", f"remote.{name}.url", check=False).decode().strip() \
        or url
    if not url:
        return None
    if url.startswith("file://"):
        url = url[len("file://"):]
    if "://" in url or (":" in url.split("/")[0] and not os.path.isabs(url)):
        return None  # ssh/https: the theta remote must be configured explicitly
    path = url if os.path.isabs(url) else os.path.normpath(os.path.join(repo.top, url))
    return path if os.path.isdir(path) else None


def _beside(repo: Repo, path: str) -> str:
    """The folder remote of a git remote that is the local repository at ``path``: its
    object cache, ``<git-common-dir>/theta-zarr``, as git-lfs serves a local remote from
    its own store, or the folder its own git config's ``theta-zarr.cache`` names (taken
    from its main work tree where relative, as that repository takes it).  A bare
    repository is its own git dir; a work tree has ``.git`` (a folder, or a ``gitdir:``
    file for a linked work tree or a submodule)."""
    dot_git = os.path.join(path, ".git")
    git_dir = path
    if os.path.isdir(dot_git):
        git_dir = dot_git
    elif os.path.isfile(dot_git):
        try:
            with open(dot_git, encoding="utf-8") as f:
                line = f.readline().strip()
        except OSError:
            line = ""
        if line.startswith("gitdir:"):
            git_dir = os.path.join(path, line[len("gitdir:"):].strip())
            try:
                with open(os.path.join(git_dir, "commondir"), encoding="utf-8") as f:
                    git_dir = os.path.join(git_dir, f.readline().strip())
            except OSError:
                pass  # no commondir: the git dir is its own common dir
    # 'git clone ~/proj' where proj keeps its chunks in a cache its config names: they
    # are there, not in its git dir (a setting of every scope but its own is this
    # repository's too, so this one's cache is that one)
    config = os.path.join(git_dir, "config")
    cache = repo.git("config", "--file", config, "--get", "theta-zarr.cache",
                     check=False).decode().strip() if os.path.isfile(config) else ""
    if cache:
        return os.path.normpath(cache_folder(cache, git_dir, path))
    return os.path.normpath(os.path.join(git_dir, "theta-zarr"))


def resolve(repo: Repo, name: str | None = None) -> RemoteSpec | None:
    """The theta remote called ``name``, or the default one; None when there is none.

    A name is strict: the remote of that name, or one derived from the git remote
    of that name when it is a local path.  Without a name: ``theta-zarr.default-remote``,
    else the only remote configured, else ``origin``.
    """
    specs = configured(repo)
    if name is None:
        default = repo.git("config", "--get", "theta-zarr.default-remote",
                           check=False).decode().strip()
        if default:
            name = default
        elif len(specs) == 1:
            return next(iter(specs.values()))
        else:
            name = "origin"
    if name in specs:
        return specs[name]
    path = _git_remote_path(repo, name)
    if path is not None:
        return RemoteSpec(name, _beside(repo, path))
    return None


def for_git_remote(repo: Repo, git_remote: str, url: str | None = None
                   ) -> tuple[RemoteSpec, str] | None:
    """The theta remote that receives the chunks of a ``git push`` to ``git_remote`` (its
    name, or its URL for a push to an unnamed remote; ``url`` is the URL git pushes to),
    and why it is that one (shown on the push line, so where chunks go never surprises):

    1. the theta remote of the same name;
    2. ``theta-zarr.default-remote``;
    3. the object cache of the git remote when it is a local repository (an unrelated folder
       remote added later never takes its pushes);
    4. the only theta remote configured.
    """
    specs = configured(repo)
    if git_remote in specs:
        return specs[git_remote], f"theta remote {git_remote!r}"
    default = repo.git("config", "--get", "theta-zarr.default-remote",
                       check=False).decode().strip()
    if default in specs:
        return specs[default], f"theta remote {default!r}: theta-zarr.default-remote"
    path = _git_remote_path(repo, git_remote, url)
    if path is not None:
        return (RemoteSpec(git_remote, _beside(repo, path)), f"next to git remote {git_remote!r}")
    if len(specs) == 1:
        spec = next(iter(specs.values()))
        return spec, f"theta remote {spec.name!r}: the only one configured"
    return None


def feeding_git_remotes(repo: Repo, spec: RemoteSpec) -> list[str]:
    """The git remotes whose pushes send chunks to ``spec`` (same URL)."""
    names = repo.git("remote").decode().split()
    return [n for n in names
            if (found := for_git_remote(repo, n)) is not None and found[0].url == spec.url]


def require(repo: Repo, name: str | None = None, given_as: str = "--remote") -> RemoteSpec:
    """The theta remote ``resolve`` finds for ``name`` (None: the default one).

    Raises RemoteError when there is none, saying how to add one; a ``name`` that looks
    like a URL or a path (``--remote s3://...``) gets its own message, since the argument
    (``given_as``: ``--remote``, or ``REMOTE`` for push's and fetch's first argument)
    takes names only.  Errors a configured remote's spec raises (RemoteSpec) pass through.
    """
    spec = resolve(repo, name)
    if spec is None and name and ("://" in name or name.startswith(("/", "."))):
        raise RemoteError(f"{given_as} takes the name of a theta remote of this repository, "
                          f"not a URL ({name}): run 'git theta-zarr remote add NAME {name}' "
                          "and pass NAME")
    default = "" if name or spec is not None else repo.git(
        "config", "--get", "theta-zarr.default-remote", check=False).decode().strip()
    if default:  # the setting chose the name: say so, not that none is configured
        close = difflib.get_close_matches(default, configured(repo), n=1)
        raise RemoteError(f"git config theta-zarr.default-remote = {default!r} names no "
                          "theta-zarr remote" + (f"; did you mean {close[0]!r}?" if close else
                                                 f": run 'git theta-zarr remote add {default} "
                                                 "URL', or fix the setting"))
    if spec is None:
        broken = without_url(repo)
        meant = name if name in broken else None if name else next(iter(sorted(broken)), None)
        if meant is not None:  # named, but unusable: say why, not that there is none
            keys = ", ".join(broken[meant]) or "none"
            raise RemoteError(f"remote {meant!r} has no url (theta-zarr.remote.{meant}.url "
                              f"is missing or empty in .thetazarr and git config; keys given: "
                              f"{keys}): run 'git theta-zarr remote add {meant} URL', or fix "
                              "the key")
        what = f"named {name!r}" if name else "configured"
        close = difflib.get_close_matches(name, configured(repo), n=1) if name else []
        if close:  # a misspelt name: adding a remote of that name is not the fix
            raise RemoteError(f"no theta-zarr remote {what}; did you mean {close[0]!r}? "
                              "('git theta-zarr remote list' lists them)")
        raise RemoteError(f"no theta-zarr remote {what}: run "
                          f"'git theta-zarr remote add {name or 'origin'} URL'")
    return spec


def add(repo: Repo, name: str, url: str, options: dict[str, str], shared: bool
        ) -> tuple[RemoteSpec, dict[str, str]]:
    """Record a remote in git config, or in .thetazarr when ``shared`` (to commit); returns
    its spec and the keys of the remote of that name it replaced there (empty: none).

    The URL and options are checked first (RemoteSpec: form, protocol, no credentials).
    A relative folder is recorded relative to the top of the work tree (where every
    command resolves it), whichever folder it was typed in; the spec returned has it
    absolute.
    """
    try:
        check_ref_name(name)  # git's rule for remote names: a ref refs/remotes/NAME/… is valid
    except RefError as e:
        raise RemoteError(f"remote name: {e} (name it like the git remote it serves)") from None
    spec = RemoteSpec(name, url, options)
    unused = unused_options(spec.url, options)
    if unused:  # silently ignored by every later command
        hint = f"; {s3_compatible_hint(spec.url, options['endpoint-url'])}" \
            if unused[0] == "endpoint-url" else ""
        raise RemoteError(f"remote {name!r}: option {unused[0]!r} does nothing for "
                          f"{spec.url} (it is for {_remotes_taking(unused[0])} remotes): drop "
                          f"it, or give the URL it is meant for{hint}")
    # a relative folder typed here is recorded relative to the top
    stored = repo.relative(spec.url) if _is_relative_folder(spec.url) else spec.url
    spec = RemoteSpec(name, _from_top(repo, stored), options)
    # only a folder is looked at: opening a bucket's filesystem may ask the network for
    # credentials (gcsfs waited 16 s for a cloud metadata server that is not there)
    blobs = open_store(spec.url) if is_folder(spec.url) else None
    if isinstance(blobs, LocalStore) and os.path.lexists(blobs.root) and \
            not os.path.isdir(blobs.root):  # a folder not made yet is fine: push makes it
        raise RemoteError(f"remote {name!r}: {blobs.root} is a file, not a folder; a folder "
                          "remote is a folder that holds objects/, manifests/ and refs/")
    target = _config_target(repo, shared)
    # a remote of that name there is replaced whole, never merged key by key: its old
    # options (an endpoint-url above all) would otherwise apply to the new URL
    replaced = recorded(repo, name, shared)
    if replaced:
        repo.git("config", *target, "--remove-section", f"theta-zarr.remote.{name}")
    repo.git("config", *target, f"{PREFIX}{name}.url", stored)
    for key, value in options.items():
        repo.git("config", *target, f"{PREFIX}{name}.{key}", value)
    vouched = f"{PREFIX}{name}.endpoint-url"
    if shared and spec.url.startswith(("gs://", "gcs://")) and options.get("endpoint-url"):
        # who typed it vouches for it; others who clone must (remote.check_trusted)
        repo.git("config", "--local", vouched, options["endpoint-url"])
    elif shared and replaced.get("endpoint-url") and repo.git(
            "config", "--local", "--get", vouched, check=False).decode().strip() == \
            replaced["endpoint-url"]:
        # the word this command gave for the endpoint it removes goes with it
        repo.git("config", "--local", "--unset-all", vouched)
    return spec, replaced


def _config_target(repo: Repo, shared: bool) -> list[str]:
    """git config's file options for where remotes are recorded: ``.thetazarr`` when
    ``shared``, else the repository's own config."""
    return ["-f", _writable_thetazarr(repo)] if shared else ["--local"]


def recorded(repo: Repo, name: str, shared: bool) -> dict[str, str]:
    """The keys remote ``name`` has in the repository's own git config (in ``.thetazarr``
    when ``shared``), as written there; empty when it has none there."""
    if shared and not os.path.lexists(os.path.join(repo.top, THETAZARR_FILE)):
        return {}
    out = repo.git("config", "-z", *_config_target(repo, shared), "--get-regexp",
                   r"^theta-zarr\.remote\.", check=False)
    return _parse(out).get(name, {})


def remove(repo: Repo, name: str, shared: bool) -> bool:
    """Forget a remote; False when it was not recorded there."""
    try:
        repo.git("config", *_config_target(repo, shared), "--remove-section",
                 f"theta-zarr.remote.{name}")
    except GitError:
        return False
    return True


# -- what a push carries -------------------------------------------------------------------
def manifests_in_range(repo: Repo, include: list[str], exclude: list[str]) -> list[Manifest]:
    """Manifests of tracked files in commits reachable from ``include`` but not ``exclude``."""
    if not include:
        return []
    # any object git has is pushed as git pushes it (a tag of a tree or a blob too: its
    # objects are listed below); a misspelt revision is the user's, named as such.  One
    # cat-file answers for every revision (git push --tags can name thousands)
    revs = [r for r in dict.fromkeys(include) if not r.startswith("-")]
    for rev, (kind, _) in zip(revs, object_info(repo, revs), strict=True):
        if kind == "missing":
            repo.commit(rev)
    args, stdin = revision_range(include, exclude)
    try:
        candidates = objects_with_paths(repo, *args, input=stdin)
    except GitError as e:
        raise GitError(f"cannot list commits to push: {e}") from None
    if not candidates:
        return []
    attrs = repo.attribute(sorted(set(candidates.values())), "filter")
    ours = {p for p, value in attrs.items() if value == DRIVER}
    # trees are listed too: blobs only, and none larger than a manifest can be
    blobs = small_blobs(repo, [sha for sha, path in candidates.items() if path in ours])
    manifests = []
    for sha, data in zip(blobs, read_blobs(repo, blobs), strict=True):
        if looks_like_manifest(data[:64]):
            manifests.append(Manifest.from_bytes(data, f"{candidates[sha]} ({sha[:10]})"))
    return manifests


def _remotes_taking(option: str) -> str:
    """'s3:// and gs://' for an option both take: the kinds of remote ``option`` is for."""
    return " and ".join(f"{kind}://" for kind, names in STORAGE_OPTIONS.items()
                        if option in names)


def option_pairs(values: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` command-line options (RemoteSpec checks the names)."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise RemoteError(f"option {item!r} is not KEY=VALUE")
        out[key.strip().lower()] = value.strip()
    return out
