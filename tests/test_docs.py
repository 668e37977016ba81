"""The documentation builds, and the commands it shows are real and tested.

1. ``mkdocs build --strict`` succeeds (broken links and anchors fail it).
2. Every ``git theta-zarr ...`` / ``theta-zarr ...`` line in a docs code block names a
   command (subcommands of groups resolved, e.g. ``remote add``) and options that exist.
3. Every such command is run by some test (a ``.tz(...)`` call, or a call or list with
   ``"theta-zarr"`` / ``"git-theta-zarr"`` followed by the command's words).
4. Lines a reader copies whose result depends on more than the command (the repository's
   settings, its branches) work as shown, in the setting their page describes.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from helpers import commit_checkpoint, file_sha

from theta_zarr.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"
#: sources that do not count as exercising a command: this file, and the benchmarks,
#: which are not part of the test run
NOT_TESTS = (TESTS / "test_docs.py", TESTS / "benchmarks")
PREFIXES = ("git theta-zarr ", "theta-zarr ", "git-theta-zarr ")
OPERATORS = {"&&", "||", "|", ";", "&", ";;", "(", ")", "|&"}


# -- 1. the site builds -------------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_every_page_is_in_the_nav():
    text = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", text, flags=re.M))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"
    for required in ("diff-merge.md", "cluster-sync.md", "benchmarks.md"):
        assert required in listed


# -- 2. commands shown in the docs exist -------------------------------------------------------

@dataclass(frozen=True)
class Shown:
    page: str
    line: int
    text: str
    words: tuple[str, ...]  # after the program name


def code_block_commands() -> list[Shown]:
    """Command lines inside fenced code blocks of every docs page."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        fence = None
        pending = ""
        start = 0
        for number, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            stripped = raw.strip()
            marker = re.match(r"(`{3,}|~{3,})", stripped)
            if marker and (fence is None or stripped.startswith(fence)):
                fence = marker.group(1) if fence is None else None
                pending = ""
                continue
            if fence is None:
                continue
            if pending:
                line = pending + " " + stripped
            else:
                line, start = stripped, number
            if line.endswith("\\"):
                pending = line[:-1]
                continue
            pending = ""
            if line.startswith("$ "):
                line = line[2:].lstrip()
            for prefix in PREFIXES:
                if line.startswith(prefix):
                    words = _shell_words(line)[len(prefix.split()):]
                    found.append(Shown(page.name, start, line, tuple(words)))
                    break
    return found


def _shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for token in lexer:
        if token in OPERATORS or token[:1] in "<>":
            break
        words.append(token)
    return words


def resolve(words: tuple[str, ...] | list[str]) -> tuple[tuple[str, ...], click.Command, list[str]]:
    """(command path, the click command, the words after it); raises LookupError."""
    command: click.Command = cli_main
    path: list[str] = []
    rest = list(words)
    while isinstance(command, click.Group):
        if not rest or rest[0].startswith("-"):
            raise LookupError(f"no subcommand of {' '.join(['theta-zarr', *path])!r}")
        name = rest.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            raise LookupError(f"unknown command {' '.join([*path, name])!r}")
        command, path = sub, [*path, name]
    return tuple(path), command, rest


def _accepts_anything(command: click.Command) -> bool:
    """Commands that hand unknown options on (diff passes them to git diff)."""
    if command.context_settings.get("ignore_unknown_options"):
        return True
    return any(isinstance(p, click.Argument) and p.type is click.UNPROCESSED
               for p in command.params)


def unknown_options(command: click.Command, words: list[str]) -> list[str]:
    if _accepts_anything(command):
        return []
    known = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            known.update(param.opts)
            known.update(param.secondary_opts)
    bad = []
    for word in words:
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1 and not re.fullmatch(r"-\d[\d.]*", word):
            name = word.split("=", 1)[0]
            if name not in known:
                bad.append(name)
    return bad


SHOWN = code_block_commands()


def test_docs_show_commands():
    assert len(SHOWN) >= 20, "the command extraction found suspiciously few commands"
    pages = {s.page for s in SHOWN}
    assert {"quickstart.md", "remotes.md", "lazy-and-api.md"} <= pages


@pytest.mark.parametrize("shown", SHOWN, ids=[f"{s.page}:{s.line}" for s in SHOWN])
def test_shown_command_exists(shown: Shown):
    try:
        path, command, rest = resolve(shown.words)
    except LookupError as e:
        pytest.fail(f"{shown.page}:{shown.line}: {shown.text!r}: {e}")
    bad = unknown_options(command, rest)
    assert not bad, (f"{shown.page}:{shown.line}: {shown.text!r}: "
                     f"'{' '.join(path)}' has no option {', '.join(bad)}")


def test_command_check_catches_mistakes():
    with pytest.raises(LookupError):
        resolve(("remote", "rename", "a", "b"))
    with pytest.raises(LookupError):
        resolve(("remote",))
    with pytest.raises(LookupError):
        resolve(("materialise",))
    path, command, rest = resolve(("remote", "add", "origin", "s3://b", "--remote-option",
                                   "region=x"))
    assert path == ("remote", "add") and unknown_options(command, rest) == []
    _, command, rest = resolve(("fetch", "origin", "--includes", "x"))
    assert unknown_options(command, rest) == ["--includes"]
    _, command, rest = resolve(("materialize", "--output=x", "--", "-weird-file"))
    assert unknown_options(command, rest) == []


# -- 3. and tested -------------------------------------------------------------------------------

def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _after_program(items: list[str | None]) -> list[list[str]]:
    """The words after each 'theta-zarr' / 'git-theta-zarr' program name in a sequence."""
    out = []
    for i, item in enumerate(items):
        if item in ("git-theta-zarr", "theta-zarr"):
            words = []
            for nxt in items[i + 1:]:
                if nxt is None:
                    break
                words.append(nxt)
            out.append(words)
        elif item is not None:
            for prefix in PREFIXES:
                if item.startswith(prefix):
                    out.append(item[len(prefix):].split())
    return out


def _is_tz(func: ast.AST) -> bool:
    """A test helper that runs the program: ``repo.tz(...)`` or ``tz(...)``."""
    return (isinstance(func, ast.Attribute) and func.attr == "tz") or (
        isinstance(func, ast.Name) and func.id == "tz")


def _leading_strings(nodes: list[ast.AST]) -> list[str]:
    words = []
    for node in nodes:
        text = _string(node)
        if text is None:
            break
        words.append(text)
    return words


def commands_run_by_tests() -> set[tuple[str, ...]]:
    """Command paths the test sources run, found by reading them (not by running them)."""
    paths: set[tuple[str, ...]] = set()
    for source in sorted(TESTS.rglob("*.py")):
        if any(source == skip or skip in source.parents for skip in NOT_TESTS):
            continue
        tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
        lists: dict[str, list[list[str]]] = {}  # name = [...] assignments, for tz(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        lists.setdefault(target.id, []).append(
                            _leading_strings(node.value.elts))
        for node in ast.walk(tree):
            candidates: list[list[str]] = []
            if isinstance(node, ast.Call):
                args = [_string(a) for a in node.args]
                if _is_tz(node.func) and node.args:
                    first = node.args[0]
                    if isinstance(first, (ast.List, ast.Tuple)):  # tz(["pull", ...], env)
                        candidates.append(_leading_strings(first.elts))
                    elif isinstance(first, ast.Name):  # args = [...]; tz(args, env)
                        candidates += lists.get(first.id, [])
                    else:  # repo.tz("remote", "add", ...)
                        candidates.append(_leading_strings(node.args))
                candidates += _after_program(args)
            elif isinstance(node, (ast.List, ast.Tuple)):
                candidates += _after_program([_string(e) for e in node.elts])
            for words in candidates:
                try:
                    path, _, _ = resolve(words)
                except LookupError:
                    continue
                paths.add(path)
    return paths


def test_every_documented_command_is_exercised_by_a_test():
    tested = commands_run_by_tests()
    assert ("remote", "add") in tested and ("install",) in tested  # the scan works
    missing: dict[str, list[str]] = {}
    for shown in SHOWN:
        try:
            path, _, _ = resolve(shown.words)
        except LookupError:
            continue  # reported by test_shown_command_exists
        if path not in tested:
            missing.setdefault(" ".join(path), []).append(f"{shown.page}:{shown.line}")
    assert not missing, "documented commands no test runs: " + "; ".join(
        f"{name} (shown at {', '.join(where)})" for name, where in sorted(missing.items()))


# -- 4. lines that work as shown -----------------------------------------------------------------

def shown_line(page: str, start: str) -> str:
    """The one line of ``page`` that starts with ``start`` (a line of a code block)."""
    lines = [raw.strip() for raw in (DOCS / page).read_text(encoding="utf-8").splitlines()
             if raw.strip().startswith(start)]
    assert len(lines) == 1, f"{page}: {len(lines)} lines start with {start!r}"
    return lines[0]


def test_an_old_version_as_a_file_in_a_lazy_checkout(repo):
    """lazy-and-api.md's ``git show REV:PATH | git theta-zarr smudge PATH`` line, run in the
    lazy checkout that page sets up: it wrote the manifest there, not the checkpoint."""
    from theta_zarr.demo import ModelShape

    line = shown_line("lazy-and-api.md", "git show HEAD~3:model.safetensors |")
    shape = ModelShape(hidden=32, layers=1, vocab=32)
    first = commit_checkpoint(repo, "v0", shape=shape, seed=0)
    for seed in (1, 2, 3):
        commit_checkpoint(repo, f"v{seed}", shape=shape, seed=seed)
    repo.git("config", "theta-zarr.lazy", "true")
    repo.run("bash", "-c", line)
    assert file_sha(repo.path / "old.safetensors") == first


def shell_blocks(page: str, section: str) -> list[str]:
    """The ```bash blocks of one ``## section`` of ``page``, in order."""
    text = (DOCS / page).read_text(encoding="utf-8").split(f"\n## {section}\n", 1)[1]
    return re.findall(r"^```bash\n(.*?)^```", text.split("\n## ", 1)[0], flags=re.M | re.S)


def test_quickstart_first_repository_runs_as_shown(tmp_path, git_env):
    """The quickstart's first repository, fine-tune and way back, line by line, with git's
    defaults (no init.defaultBranch): it checked out 'main' from a repository git had made
    with 'master'.  Only the training scripts are stand-ins."""
    from theta_zarr.demo import ModelShape

    shape = ModelShape(hidden=32, layers=2, vocab=32)
    write = ("python -c 'import sys; from theta_zarr.demo import ModelShape, write_model; "
             f"write_model(sys.argv[1], ModelShape{(shape.hidden, shape.layers, shape.vocab)}, "
             "tuned=sys.argv[2:])' model.safetensors")
    stand_ins = {"python train.py --out model.safetensors": write,
                 "python finetune.py model.safetensors": f"{write} {shape.layer_names(0)[0]}"}
    lines = []
    for section in ("A first repository", "Fine-tune, commit, go back"):
        for block in shell_blocks("quickstart.md", section):
            for line in block.splitlines():
                command = line.split("  #", 1)[0].strip()
                lines.append(stand_ins.get(command, command))
    assert any(line.startswith("git checkout main -- ") for line in lines)
    proc = subprocess.run(["bash", "-e", "-c", "\n".join(lines)], cwd=tmp_path, env=git_env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path / "models",
                            env=git_env, capture_output=True, text=True, check=True)
    assert status.stdout == ""


TRANSFER_LINE = re.compile(r"theta-zarr: (?:uploaded|fetched) [^|`\n]*")


def transfer_line_again(line: str) -> str:
    """``line``, a push or fetch summary shown in the docs, printed again by
    ``TransferStats.summary`` from the numbers it shows ('' if it does not parse)."""
    from theta_zarr.remote import TransferStats

    m = re.fullmatch(r"theta-zarr: (uploaded|fetched) (\d+) objects? (.+?\)): (.+); "
                     r"(\d+) already there; ([\d.]+) s", line)
    if m is None:
        return ""
    verb, objects, where, moved, skipped, seconds = m.groups()
    stats = TransferStats(int(objects), skipped=int(skipped), seconds=float(seconds))
    mb = lambda text: round(float(text) * 1e6)  # noqa: E731
    if verb == "fetched":
        numbers = re.fullmatch(r"([\d.]+) MB read -> ([\d.]+) MB raw", moved)
        if numbers is None:
            return ""
        stats.read_bytes, stats.raw_bytes = map(mb, numbers.groups())
    else:
        numbers = re.fullmatch(r"([\d.]+) MB raw -> ([\d.]+) MB(?: \((.*)\))?", moved)
        if numbers is None:
            return ""
        stats.raw_bytes, stats.stored_bytes = mb(numbers[1]), mb(numbers[2])
        for part in re.findall(r"\d+ deltas? [\d.]+ -> [\d.]+ MB", numbers[3] or ""):
            count, raw, stored = re.findall(r"[\d.]+", part)
            stats.deltas, stats.delta_raw, stats.delta_stored = int(count), mb(raw), mb(stored)
    return f"theta-zarr: {stats.summary(verb, where)}"


def test_transfer_lines_shown_are_what_push_and_fetch_print():
    """Every push or fetch summary a page shows, printed again from its own numbers: one
    showed an older layout ('uploaded 3 objects (1.2 MB) to models (…); …')."""
    shown = [(page.name, line) for page in sorted(DOCS.rglob("*.md"))
             for line in TRANSFER_LINE.findall(page.read_text(encoding="utf-8"))
             if "…" not in line]
    assert len(shown) >= 3
    for page, line in shown:
        assert transfer_line_again(line.strip()) == line.strip(), page
