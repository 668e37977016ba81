"""``merge-models``: one commit that merges N revisions onto a base, by a merge config.

git's octopus merge (``git merge a b c``) never calls a merge driver (it merges each
file with ``git merge-file``, a text merge), so N-way model merging is a command of
its own.  For every file, the three-way rule decides first, by blob id: a file that
one model changed (or several changed alike) is taken as it is.  A theta-zarr file
that models changed differently is merged parameter by parameter, chunk by chunk
(:func:`theta_zarr.merge.merge_models`); any other file changed differently is an
error.  The commit's parents are HEAD and every model not already in HEAD's history;
its message records the config with every revision resolved to a commit id, so
``merge-models --from-commit`` repeats the merge to the byte.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from collections.abc import Callable
from typing import Any

from ..manifest import Manifest
from ..merge import MergeError, Rule, StrategyTable, merge_models, pick
from ..mergeconfig import ConfigError, load_config
from ..merges import MergeOptions, Strategy
from .drivers import config_rules, conflict_report, summary_line
from .models import moved_names, with_moved_base
from .push import read_through
from .repo import GitError, GitInputError, Repo
from .sides import tracked_by_us

MARKER = "theta-zarr merge-models config:"

TreeEntry = tuple[str, str]  # (mode, blob id)


def _commit(repo: Repo, rev: str, what: str) -> str:
    try:
        return repo.commit(rev)
    except GitInputError:
        raise ConfigError(f"{what}: {rev!r} is not a commit in this repository") from None


def _tree(repo: Repo, commit: str) -> dict[str, TreeEntry]:
    out = repo.git("ls-tree", "-r", "-z", "--full-tree", commit)
    entries = {}
    for rec in out.decode("utf-8", "surrogateescape").split("\0"):
        if rec:
            meta, _, path = rec.partition("\t")
            mode, kind, oid = meta.split()
            if kind == "blob":
                entries[path] = (mode, oid)
    return entries


def config_from_commit(repo: Repo, rev: str) -> tuple[str, str, str]:
    """The merge config recorded in a merge-models commit's message, its label, and the
    commit's title."""
    commit = _commit(repo, rev, "--from-commit")
    message = repo.git("log", "-1", "--format=%B", commit).decode()
    if MARKER not in message:
        raise ConfigError(f"{rev}: its message holds no merge-models config")
    title = message.split("\n", 1)[0]
    return message.split(MARKER, 1)[1], f"{rev} (commit message)", title


def merge_models_commit(text: str, source: str, title: str | None,
                        echo: Callable[[str], None]) -> str:
    """Merge the config's models onto its base, commit, and check the commit out.

    Returns the new commit id.  Raises ConfigError/MergeError/GitError (one line) and
    leaves HEAD, the index and the working tree as they were when anything fails
    before the final fast-forward.
    """
    repo = Repo.discover()
    config = load_config(text, source)
    if len(config.models) < 2:
        raise ConfigError(f"{source}: merge-models needs at least two models")
    head = _commit(repo, "HEAD", "HEAD")
    if repo.first_change() is not None:
        raise ConfigError("the working tree or index has uncommitted changes; commit or "
                          "stash them first")
    commits = {m.model: _commit(repo, m.model, f"{source}: model") for m in config.models}
    if config.base is not None:
        base = _commit(repo, config.base, f"{source}: base_model")
    else:
        out = repo.git("merge-base", "--octopus", *commits.values(), check=False).strip()
        if not out:
            raise ConfigError(f"{source}: the models share no history; set base_model")
        base = out.decode()
    labels = [m.model for m in config.models]
    # HEAD in the base's history (on the pretrained commit, one model continued from
    # another) made no change of its own: it is only behind the base
    behind = _ancestor(repo, head, base)
    base_tree, head_tree = _tree(repo, base), _tree(repo, head)
    trees = [_tree(repo, commits[m]) for m in labels]
    paths = sorted({p for t in [base_tree, head_tree, *trees] for p in t})
    ours = set(tracked_by_us(repo, paths))
    objects = read_through(repo)
    workers = repo.settings().workers
    table = RulesFirst(config_rules(repo), config.table())
    entries: dict[str, TreeEntry] = {}
    for path in paths:
        b, sides = base_tree.get(path), [t.get(path) for t in trees]
        ok, entry = pick(b, sides)
        if not ok:
            entry = _merge_file(repo, path, path in ours, labels, sides, b, base, table,
                                objects, workers, echo)
        mine = b if behind else head_tree.get(path)
        if mine != b and mine not in sides and mine != entry:  # HEAD's own, in no model
            if entry != b:
                raise ConfigError(f"{path}: changed on HEAD and by the models; run "
                                  "merge-models from a commit without its own change to it")
            entry = mine
        if entry is not None:
            entries[path] = entry
    parents = [head]
    for c in commits.values():
        if c not in parents and not _ancestor(repo, c, head) and \
                not any(o != c and _ancestor(repo, c, o) for o in commits.values()):
            parents.append(c)  # a model in another's history is reached through it
    if parents == [head] and entries == head_tree:
        # every model is in HEAD's history and HEAD holds the merge (--from-commit HEAD)
        echo(f"theta-zarr: HEAD ({head[:10]}) already holds this merge; nothing to commit")
        return head
    tree = _write_tree(repo, entries)
    title = title or f"Merge models {', '.join(labels)} with {config.method}"
    message = f"{title}\n\n{MARKER}\n{config.to_text(commits, base)}"
    args = ["commit-tree", tree]
    for p_ in parents:
        args += ["-p", p_]
    new = repo.git(*args, "-F", "-", input=message.encode()).decode().strip()
    try:
        repo.git("merge", "--ff-only", "-q", new)
    except GitError as e:
        raise GitError(f"merged commit {new[:10]} was made but not checked out: {e}") from None
    echo(f"theta-zarr: merged {len(labels)} models onto {base[:10]} with {config.method}: "
         f"commit {new[:10]}")
    return new


def _merge_file(repo: Repo, path: str, tracked: bool, labels: list[str],
                sides: list[TreeEntry | None], b: TreeEntry | None, base: str, table: Any,
                objects: Any, workers: int, echo: Callable[[str], None]) -> TreeEntry:
    """A theta-zarr file the models changed differently, merged: its new tree entry."""
    if not tracked:
        raise ConfigError(f"{path}: the models changed it differently and it is not a "
                          "theta-zarr file; merge-models merges checkpoints only")
    gone = [lb for lb, s in zip(labels, sides, strict=True) if s is None]
    if gone:
        raise ConfigError(f"{path}: deleted in {', '.join(gone)} and changed in another model")
    present = [s for s in sides if s is not None]
    manifests = [_manifest(repo, s[1], f"{lb}:{path}") for lb, s in zip(labels, present,
                                                                        strict=True)]
    base_m = _manifest(repo, b[1], f"{base[:10]}:{path}") if b is not None else None
    shard = base_m or Manifest(dict(manifests[0].format), {})
    moved = moved_names(shard, manifests)
    if moved:  # a shard a re-save filled with another's tensors
        base_m = with_moved_base(repo, path, shard, moved, base, objects, labels[0])
    try:
        merged, p = merge_models(base_m, manifests, labels, table, objects, workers, path)
    except MergeError as e:
        if not e.side_resolves:
            raise
        raise MergeError(f"{e}; merge-models takes a side by the repository's merge rules: "
                         "git config theta-zarr-merge.'GLOB'.strategy base (or ours: the "
                         "first model, theirs: the last)") from None
    if merged is None:  # a merge rule said fail: the conflicts, named
        report = conflict_report(path, p, table)
        items = [ln.strip() for ln in report[1:report.index("resolve with one of:")]]
        more = f"; and {len(items) - 3} more" if len(items) > 3 else ""
        raise ConfigError(f"{report[0].removeprefix('theta-zarr: ')} {'; '.join(items[:3])}"
                          f"{more} (a merge rule theta-zarr-merge.GLOB.strategy says fail)")
    oid = repo.git("hash-object", "-w", "--no-filters", "--stdin",
                   input=merged.to_bytes()).decode().strip()
    echo(summary_line(path, p, table, merged))
    return present[0][0], oid


class RulesFirst(StrategyTable):
    """The merge config's method for every tensor, except where a repository merge rule
    (``theta-zarr-merge.<glob>.strategy``, as the merge driver reads them) names a strategy:
    a BatchNorm counter (``*num_batches_tracked``, int64) takes ``base`` or ``ours`` while
    the weights are merged with TIES."""

    def __init__(self, rules: list[Rule], config_table: StrategyTable):
        super().__init__([r for r in rules if r.strategy is not None])
        self.config_table = config_table

    def lookup(self, name: str) -> tuple[Strategy, MergeOptions]:
        if not any(fnmatch.fnmatchcase(name, r.glob) for r in self.rules):
            return self.config_table.lookup(name)
        return super().lookup(name)  # a rule with a strategy matches: the rules decide


def _ancestor(repo: Repo, commit: str, head: str) -> bool:
    """Whether ``commit`` is in ``head``'s history."""
    return repo.git("rev-list", "-1", f"{head}..{commit}").strip() == b""


def _manifest(repo: Repo, oid: str, what: str) -> Manifest:
    return Manifest.from_bytes(repo.git("cat-file", "blob", oid), what)


def _write_tree(repo: Repo, entries: dict[str, TreeEntry]) -> str:
    fd, index = tempfile.mkstemp(prefix="theta-zarr-index-", dir=repo.git_dir)
    os.close(fd)
    os.unlink(index)
    env = {"GIT_INDEX_FILE": index}
    try:
        info = "".join(f"{mode} {oid}\t{path}\0" for path, (mode, oid) in entries.items())
        repo.git("update-index", "-z", "--index-info", input=info.encode(
            "utf-8", "surrogateescape"), env=env)
        return repo.git("write-tree", env=env).decode().strip()
    finally:
        if os.path.exists(index):
            os.unlink(index)
