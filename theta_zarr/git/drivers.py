"""git's side of diff and merge: the external diff command, textconv, the merge driver,
``resolve``, and where each side of a comparison comes from.

What git hands the drivers (checked by tests/git/test_diff_merge_e2e.py):

* diff command and textconv: git runs the smudge filter on a blob before writing
  it to a temp file, so a "file" may be a rebuilt checkpoint, a manifest (lazy
  checkout) or the working-tree file itself.  The diff command also gets each
  blob's id, so it reads the manifest from git instead of re-hashing git's temp
  file; a working-tree checkpoint is cleaned (streamed) into the cache.
* merge driver: the three files hold the blobs themselves (manifests), and
  whatever is left in %A is stored as the merged blob, so it must be a manifest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from glob import escape

from .. import checkpoint, lfs
from ..diff import FileDiff, diff, format_text, textconv_lines, unmerged_line
from ..foreign import Foreign, Side
from ..manifest import Manifest, ManifestError, looks_like_manifest
from ..merge import (
    MergePlan,
    ParamConflict,
    Rule,
    StrategyTable,
    execute,
    merge_manifests,
    plan,
    refusal,
    unresolved,
)
from ..mergeconfig import check_param, parse_value
from ..merges import (
    MergeOptions,
    StrategyError,
    available,
    get_strategy,
    parameter_names,
)
from ..remote import ReadThrough
from ..streams import write_atomic
from ..wording import quote_path, shell_word, show_name
from .parent import parent_git, strategy_option
from .push import read_through
from .remotes import THETAZARR_FILE, thetazarr_path
from .repo import GitError, Repo, config_records, git
from .sides import (
    blob_of,
    foreign_blob,
    manifest_from_file,
    manifest_of,
    tracked_by_us,
)

MERGE_SECTION = "theta-zarr-merge"
NULL_OID = "0" * 40


def _unmerged(repo: Repo, paths: list[str]) -> Iterator[tuple[str, int, str]]:
    """(path, stage, blob id) of every conflicted index entry under ``paths``
    (``git ls-files -u``); paths as ``os.fsdecode`` gives git's bytes."""
    for rec in os.fsdecode(repo.git("ls-files", "-u", "-z", "--", *paths)).split("\0"):
        if rec:
            meta, _, name = rec.partition("\t")
            _, oid, stage = meta.split()
            yield name, int(stage), oid


def unmerged_paths(repo: Repo, paths: list[str]) -> list[str]:
    """Tracked checkpoints (under ``paths``) the index holds as a conflicted merge."""
    return tracked_by_us(repo, sorted({name for name, _, _ in _unmerged(repo, paths)}))


def changed_paths(repo: Repo, revs: list[str], cached: bool, paths: list[str],
                  sides: Sequence[object] = ()) -> tuple[list[str], dict[str, str]]:
    """Tracked checkpoints that differ between the two sides, in path order, and old name
    -> new name of those git sees renamed: one name-status diff by git, with git's own
    rename detection (``diff.renames``, as ``git diff`` shows it: a file converted from
    ``pytorch_model.bin`` to ``model.safetensors`` keeps its chunks, so its manifest).
    A rename's two names both differ (one side each); a copy's source does not.

    The index of a sharded model (``*.index.json``, a plain file unless tracked too) that
    differs is one of them when it is the index of a model theta-zarr stores on one of
    ``sides`` (``models.model_indexes``): a commit that changes only the index (its
    metadata, its weight map) changes the model."""
    args = ["diff", "--name-status", "-z", "--no-ext-diff", "--no-textconv"]
    if cached:
        args.append("--cached")
    fields = os.fsdecode(repo.git(*args, *revs, "--", *paths)).split("\0")
    changed, pairs, i = set(), {}, 0
    while i < len(fields) and fields[i]:
        status = fields[i]
        if status[:1] in ("R", "C"):
            if status[:1] == "R":
                pairs[fields[i + 1]] = fields[i + 2]
                changed.add(fields[i + 1])
            changed.add(fields[i + 2])
            i += 3
        else:
            changed.add(fields[i + 1])
            i += 2
    ours = tracked_by_us(repo, sorted(changed))
    tracked = set(ours)
    if sides:
        from .models import model_indexes  # models builds on this module

        ours = sorted(ours + model_indexes(repo, sorted(changed - tracked), sides))
    return ours, {a: b for a, b in pairs.items() if a in tracked and b in tracked}


# -- diff -------------------------------------------------------------------------------
def diff_sides(repo: Repo, paths: list[str], old: object, new: object, numbers: bool = True,
               full_norm: bool = False, *, objects: ReadThrough, workers: int,
               renamed: dict[str, str] | None = None) -> list[FileDiff]:
    """One diff per path; a path ``renamed`` maps to its new name (both among ``paths``)
    is compared with the file under that name, as ``OLD => NEW``."""
    if not paths:
        return []
    renamed = {a: b for a, b in (renamed or {}).items() if a in paths and b in paths}
    out = []
    for path in paths:
        if path in renamed.values():
            continue  # compared under its old name
        new_path = renamed.get(path, path)
        a = manifest_of(repo, path, old, objects)
        b = manifest_of(repo, new_path, new, objects)
        if a is None and b is None:
            continue
        label = path if new_path == path else f"{path} => {new_path}"
        fd = diff(a, b, objects, label, workers, full_norm, numbers)
        fd.renamed = new_path != path
        fd.names = (path, new_path) if fd.renamed else None
        out.append(fd)
    return out


def diff_driver(args: list[str]) -> list[str]:
    """git's external diff: ``path old-file old-hex old-mode new-file new-hex new-mode``."""
    if len(args) == 1:
        return [unmerged_line(args[0])]
    if len(args) < 7:
        raise ValueError(f"diff-driver expects 7 arguments from git, got {len(args)}")
    path, old_file, old_hex, old_mode, new_file, new_hex, new_mode = args[:7]
    # git passes "/dev/null . ." for a side that does not exist
    old_hex = NULL_OID if old_file == "/dev/null" else old_hex
    new_hex = NULL_OID if new_file == "/dev/null" else new_hex
    repo = Repo.discover()
    objects = read_through(repo)

    def side(file: str, hexid: str) -> Side:
        if hexid.strip("0") and file != "/dev/null":
            data = blob_of(repo, hexid)
            if data is not None and looks_like_manifest(data[:64]):
                return Manifest.from_bytes(data, f"{path} ({hexid[:10]})")
            if data is not None:
                return foreign_blob(data)  # a git-lfs pointer, or a file stored as it is
        return manifest_from_file(repo, file, path, objects)

    from .models import driver_diff  # models builds on this module

    workers = repo.settings().workers
    new_path = args[7] if len(args) >= 9 else None  # a rename: new name, similarity
    try:
        fd = driver_diff(repo, path, old_hex, new_hex, new_file == "/dev/null", objects,
                         workers, new_path)
    except (ManifestError, GitError):
        fd = None  # a broken index on either side: the file on its own, as git sees it
    if fd is None:
        label = path if new_path in (None, path) else f"{path} => {new_path}"
        fd = diff(side(old_file, old_hex), side(new_file, new_hex), objects, label, workers)
    lines = format_text(fd)
    if "." not in (old_mode, new_mode) and old_mode != new_mode:
        # a mode change (chmod +x) is git's to show: said as git's own diff says it
        lines[1:1] = [f"  old mode {old_mode}", f"  new mode {new_mode}"]
    return lines


def textconv(file: str) -> list[str]:
    """git's textconv: the per-parameter summary (no chunk read)."""
    repo = Repo.discover()
    rel = repo.relative(file)
    # git's temp files live outside the work tree; the work-tree file keeps its path,
    # whose index manifest then gives the recorded chunk shapes
    name = os.path.basename(file) if rel.startswith("..") else rel
    if rel.startswith(".."):
        # git's copy of a stored blob: one that is no manifest was stored as it is
        # (a git-lfs pointer, a file committed before it was tracked); it is
        # described, never cleaned, as the diff driver does
        with open(file, "rb") as f:
            head = f.read(lfs.MAX_POINTER)
        if head and not looks_like_manifest(head[:64]):
            return [f"# {foreign_blob(head, os.path.getsize(file)).text}"]
    m = manifest_from_file(repo, file, name)
    if isinstance(m, Foreign):
        return [f"# {m.text}"]
    return [] if m is None else list(textconv_lines(m))


# -- strategies from config -----------------------------------------------------------------
def _rules_from(out: bytes, where: str) -> dict[str, dict[str, str]]:
    """``glob -> {setting: text}`` from ``git config -z --get-regexp`` output."""
    found: dict[str, dict[str, str]] = {}
    known = parameter_names()
    for key, value in config_records(out):
        glob, _, option = key[len(MERGE_SECTION) + 1:].rpartition(".")
        option = option.lower()
        if not glob or (option != "strategy" and option not in known):
            raise ValueError(f"{where}: unknown merge setting {key!r} (use {MERGE_SECTION}."
                             f"<glob>.strategy or one of: {', '.join(sorted(known))})")
        found.setdefault(glob, {})[option] = (value or "").strip()
    return found


def config_rules(repo: Repo) -> list[Rule]:
    """``[theta-zarr-merge "<glob>"]`` sections: .thetazarr first, then git config on top.

    Each section may set ``strategy`` and any strategy parameter (``alpha``, ``scale``,
    ``weight``, ``density``, ``lambda``, ``t``, ...); a parameter's value is a number, a
    yes/no word, or a comma list with one number per side (ours, theirs).
    """
    merged: dict[str, dict[str, str]] = {}
    regexp = rf"^{MERGE_SECTION}\."
    file = thetazarr_path(repo)
    if file is not None:
        out = git("config", "-z", "-f", file, "--get-regexp", regexp, cwd=repo.top, check=False)
        merged.update(_rules_from(out, THETAZARR_FILE))
    out = repo.git("config", "-z", "--get-regexp", regexp, check=False)
    for glob, settings in _rules_from(out, "git config").items():
        merged[glob] = {**merged.pop(glob, {}), **settings}
    rules = []
    for glob, settings in merged.items():
        where = f"{MERGE_SECTION}.{glob}"
        strategy = settings.pop("strategy", None)
        if strategy is not None:
            try:
                get_strategy(strategy)
            except StrategyError as e:
                raise ValueError(f"{where}.strategy: {e}") from None
        values = {k: parse_value(v, f"{where}.{k}") for k, v in settings.items()}
        for k, v in values.items():
            check_param(k, v, f"{where}.{k}")
        rules.append(Rule(glob, strategy, MergeOptions(values)))
    return rules


# -- merge -----------------------------------------------------------------------------------
def _read_side(file: str, what: str) -> Manifest | None:
    with open(file, "rb") as f:
        data = f.read()
    if not data:
        return None
    return Manifest.from_bytes(data, what)


def conflict_report(path: str, p: MergePlan, table: StrategyTable) -> list[str]:
    """What the merge driver prints for the conflicts of ``p`` that ``table`` leaves
    unresolved (its strategy ``fail``): a ``theta-zarr: PATH: ...`` line counting them,
    one line per conflict, then ``git theta-zarr resolve`` commands that can settle all of
    them (only strategies ``merge.refusal`` accepts for each), and how to configure a
    strategy per parameter.  Lines without newlines; the first one alone is a summary.
    """
    left = unresolved(p, table)
    values = sum(c.info is not None for c in left)
    what = [f"{len(left) - values} conflicting parameter(s)"] if len(left) > values else []
    what += [f"{values} conflicting non-tensor value(s)"] if values else []
    lines = [f"theta-zarr: {path}: {' and '.join(what)}, not merged:"]
    lines += [f"  {show_name(c.name)}: {c.describe()}" for c in left]
    # suggest only what can settle these conflicts (merge.refusal), each a whole command:
    # resolve stops on a conflict its --param globs miss, and its strategy without --param
    # also replaces the configured one of the conflicts the configuration settled
    average, arithmetic = get_strategy("average"), get_strategy("task-arithmetic")
    values = [c for c in left if refusal(c, average) is None]
    sides = [c for c in left if c not in values]
    scope = _params(left) if len(left) == 1 or len(left) < len(p.conflicts) else ""
    resolve = f"git theta-zarr resolve {shell_word(path)} --strategy"
    lines.append("resolve with one of:")
    if not sides:
        lines.append(f"  {resolve} average{scope}")
        if all(refusal(c, arithmetic) is None for c in left):
            lines.append(f"  {resolve} task-arithmetic --scale 1.0{scope}")
        lines.append(f"  {resolve} ours{scope}")
    else:
        why = _one_side_only(sides[0]) if len(left) == 1 else \
            "every conflicting parameter from one side"
        lines.append(f"  {resolve} ours{scope}   (or theirs, or base: {why})")
        if values:
            rules = "".join(f" -c {_word(f'{MERGE_SECTION}.{escape(c.name)}.strategy=ours')}"
                            for c in sides)
            lines.append(f"  git{rules} theta-zarr resolve {shell_word(path)} --strategy average"
                         f"{_params(values)}   (or theirs, or base, for "
                         f"{', '.join(show_name(c.name) for c in sides)}: "
                         f"{_one_side_only(sides[0])})")
    lines.append(f"or set a strategy per parameter: git config {MERGE_SECTION}.'<glob>'.strategy "
                 f"<{'|'.join(sorted(available()))}>")
    return lines


def _params(conflicts: list[ParamConflict]) -> str:
    """``--param`` options naming exactly these conflicts."""
    return "".join(f" --param {_word(escape(c.name))}" for c in conflicts)


def _word(text: str) -> str:
    """``text`` in single quotes for a suggested command, or as ``shell_word`` gives it
    where it holds a quote, a control or a format character (never printed raw)."""
    return f"'{text}'" if show_name(text) == text and "'" not in text else shell_word(text)


def _one_side_only(c: ParamConflict) -> str:
    """Why only one side can settle ``c`` (whole, or values average cannot combine)."""
    if c.info is not None:
        return "a non-tensor value"
    return "its shape, dtype or presence differ" if c.whole else \
        f"{c.models[0].dtype} values cannot be averaged"


def summary_line(path: str, p: MergePlan, table: StrategyTable, merged: Manifest) -> str:
    """One line: how many parameters the merged file holds, and how they were merged."""
    by: dict[str, int] = {}
    for name, c in p.conflicts.items():
        strategy = table.lookup(name)[0]
        # a value strategy combines tensors only: a non-tensor value keeps ours's (execute)
        s = "ours" if c.info is not None and strategy.takes is None else strategy.name
        by[s] = by.get(s, 0) + 1
    how = "".join(f", {n} by {s}" for s, n in sorted(by.items()))
    values = sum(c.info is not None for c in p.conflicts.values())
    also = f" and {values} conflicting non-tensor value(s)" if values else ""
    return (f"theta-zarr: {path}: merged {len(merged.params)} "
            f"parameter(s){also} ({len(p.chunk_merged)} chunk by chunk{how})")


def merge_driver(base_file: str, ours_file: str, theirs_file: str, path: str,
                 echo) -> int:
    """git's merge driver: the merged manifest into %A and 0, or a report and 1."""
    from .models import (  # models builds on this module
        ever_indexed,
        merge_bases,
        moved_names,
        renamed_base,
        side_of_blob,
        with_moved_base,
    )

    repo = Repo.discover()
    base = _read_side(base_file, f"{path} (base)")
    ours = _read_side(ours_file, f"{path} (ours)")
    theirs = _read_side(theirs_file, f"{path} (theirs)")
    if ours is None or theirs is None:
        raise ManifestError(f"{path}: one side of the merge is empty, not a manifest")
    # `git merge -X ours|theirs` (rebase, cherry-pick, revert, pull too) settles the
    # conflicts no configured strategy settles, as git settles conflicting hunks with it
    favor = strategy_option(parent_git())
    table = StrategyTable(config_rules(repo), Rule("*", favor) if favor else None)
    objects = read_through(repo)
    shard = base or Manifest(dict(ours.format), {})
    moved = moved_names(shard, [ours, theirs])
    if moved and ever_indexed(repo, path):
        # a shard a re-save filled with tensors of another shard: their base is there, in
        # the revision holding this base (a shard file new on both sides: the merge base)
        base_path = path
        if base is None:
            rev = next(iter(merge_bases(repo)), None)
        else:
            blob = repo.git("hash-object", "--no-filters", "--",
                            os.path.abspath(base_file)).decode().strip()
            rev = side_of_blob(repo, path, blob, merge_bases(repo))
            if rev is None:
                # git paired this shard with a file of another name (a re-save into
                # other shard files, a folder moved): its base is that file's
                rev, base_path = renamed_base(repo, blob, merge_bases(repo))
        base = with_moved_base(repo, path, shard, moved, rev, objects, base_path=base_path)
    merged, p = merge_manifests(base, ours, theirs, table, objects, repo.settings().workers,
                                path)
    if merged is None:
        for line in conflict_report(path, p, table):
            echo(line)
        return 1
    data = merged.to_bytes()
    tmp = ours_file + ".theta-zarr"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, ours_file)
    echo(summary_line(path, p, table, merged))
    return 0


def _stages(repo: Repo, path: str) -> dict[int, str]:
    return {stage: oid for name, stage, oid in _unmerged(repo, [path]) if name == path}


def resolve(path: str, strategy: str, globs: Iterable[str], alpha: float | None,
            scale: float | None, settings: MergeOptions | None = None) -> list[str]:
    """Finish a conflicted merge of ``path``: compute, write the working tree file, stage it."""
    options = (settings or MergeOptions()).over(MergeOptions(alpha=alpha, scale=scale))
    # a misspelt strategy, or a parameter it would ignore, is named first, as git checks
    # its options
    get_strategy(strategy).check_names(options.values)
    repo = Repo.discover()
    rel = repo.relative(path, inside=True)
    stages = _stages(repo, rel)
    if not stages:
        raise ValueError(f"{quote_path(rel)}: not in a conflicted merge (git ls-files -u "
                         "lists no stages for it)")
    if 2 not in stages or 3 not in stages:
        return _resolve_whole_file(repo, rel, stages, strategy, list(globs))
    sides = {}
    for n, label in ((1, "base"), (2, "ours"), (3, "theirs")):
        data = blob_of(repo, stages[n]) if n in stages else None
        sides[label] = None if data is None else Manifest.from_bytes(data, f":{n}:{rel}")
    cli_rules = [Rule(g, strategy, options) for g in (list(globs) or ["*"])]
    table = StrategyTable([*config_rules(repo), *cli_rules])
    p = plan(sides["base"], sides["ours"], sides["theirs"])
    left = unresolved(p, table)
    if left:
        names = ", ".join(show_name(c.name) for c in left[:5]) + (", ..." if len(left) > 5 else "")
        raise ValueError(f"{rel}: {len(left)} conflicting parameter(s) match no --param glob "
                         f"and have no configured strategy: {names}")
    settings = repo.settings()
    objects = read_through(repo)
    merged = execute(p, table, objects, settings.workers, rel)
    _write_worktree(repo, rel, merged, objects)
    repo.git("add", "--", rel)
    return [summary_line(rel, p, table, merged).replace("merged", "resolved", 1) + ", staged"]


def _resolve_whole_file(repo: Repo, rel: str, stages: dict[int, str], strategy: str,
                        globs: list[str]) -> list[str]:
    """Finish a conflict git left because one side deleted the file (modify/delete): no
    parameter can be merged, so the file is taken whole from the side ``strategy`` names,
    ``ours``, ``theirs`` or ``base``, and written and staged, or deleted with ``git rm``
    where that side has no file."""
    gone = "ours" if 2 not in stages else "theirs"
    kept = "theirs" if gone == "ours" else "ours"
    what = f"{rel}: deleted by {gone} and changed by {kept}"
    if strategy not in ("ours", "theirs", "base") or globs:
        raise ValueError(f"{what}: a whole-file conflict that only --strategy ours, theirs or "
                         f"base settles, with no --param (or: git add {rel} to keep the file, "
                         f"git rm {rel} to delete it)")
    stage = {"base": 1, "ours": 2, "theirs": 3}[strategy]
    if stage not in stages:
        repo.git("rm", "-q", "--force", "--ignore-unmatch", "--", rel)
        return [f"theta-zarr: {what}: resolved by deleting it ({strategy}), staged"]
    data = blob_of(repo, stages[stage])
    if data is None or not looks_like_manifest(data[:64]):
        raise ValueError(f"{what}: its {strategy} version (:{stage}:{rel}) is not stored by "
                         f"theta-zarr: keep the file with git add {rel}, or git rm {rel}")
    objects = read_through(repo)
    _write_worktree(repo, rel, Manifest.from_bytes(data, f":{stage}:{rel}"), objects)
    repo.git("add", "--", rel)
    return [f"theta-zarr: {what}: resolved with the {strategy} version, staged"]


def _write_worktree(repo: Repo, rel: str, manifest: Manifest, objects) -> None:
    full = os.path.join(repo.top, rel)
    settings = repo.settings()
    lazy = settings.lazy
    if not lazy and os.path.exists(full):
        with open(full, "rb") as f:
            lazy = looks_like_manifest(f.read(64))
    try:  # the file keeps its mode (git's 0644 or 0755 under the umask), not mkstemp's 0600
        mode: int | None = stat.S_IMODE(os.lstat(full).st_mode)
    except OSError:
        mode = None  # a new file's

    def write(out) -> None:
        if lazy:
            out.write(manifest.to_bytes())
        else:
            checkpoint.smudge(manifest, out, settings, name=rel, cache=objects.cache,
                              fetch=objects.fetcher)

    write_atomic(full, write, mode)
