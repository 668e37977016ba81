"""Ctrl-C in a kill-safe process: one line, exit 130, never a hang (theta_zarr.interrupts).

Each case runs in its own Python process that sends itself SIGINT at a chosen point."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from helpers import model, run_python


def test_sigint_in_a_thread_pool_ends_the_process_with_one_line():
    """Python's KeyboardInterrupt, raised inside ThreadPoolExecutor.submit while it holds
    the pool's lock, left the filter's threads waiting forever.  Installed, SIGINT ends
    the process at once, whatever the main thread was doing."""
    proc = run_python("""
        import os, signal, time
        from theta_zarr import interrupts
        from theta_zarr.objects import bounded_map
        interrupts.install(lambda: "; left: a.safetensors")
        def work(i):
            if i == 5:
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            return i
        for _ in bounded_map(work, range(10_000), 4):
            pass
        print("finished")
    """)
    assert proc.returncode == 130
    assert proc.stdout == b""
    assert proc.stderr.decode() == "theta-zarr: interrupted; left: a.safetensors\n"


def test_sigint_inside_a_deferred_section_ends_the_process_after_it():
    proc = run_python("""
        import os, signal, sys
        from theta_zarr import interrupts
        interrupts.install()
        with interrupts.deferred():
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                print("inner done", flush=True)
            print("outer done", flush=True)
        print("after", flush=True)
    """)
    assert proc.returncode == 130
    assert proc.stdout.decode().splitlines() == ["inner done", "outer done"]
    assert proc.stderr.decode() == "theta-zarr: interrupted\n"


def test_without_install_sigint_stays_a_keyboard_interrupt():
    """The CLI and library users keep Python's behaviour (the CLI reports it in one line)."""
    proc = run_python("""
        import os, signal
        from theta_zarr import interrupts
        try:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**6):
                    pass
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    """)
    assert proc.returncode == 0 and proc.stdout == b"KeyboardInterrupt\n"


def test_sigint_while_the_index_lock_is_held_removes_the_lock_first(repo):
    """A Ctrl-C during a direct write's index update: the update finishes and git's lock
    is gone before the process ends (a left ``index.lock`` stops every later git command)."""
    (repo.path / "a.txt").write_text("a\n")
    repo.git("add", "a.txt")
    proc = run_python("""
        import dataclasses, os, signal
        from theta_zarr import interrupts
        from theta_zarr.git.index import GitIndex
        interrupts.install()
        def mark(entry):
            os.kill(os.getpid(), signal.SIGINT)
            return dataclasses.replace(entry.stat, size=0)
        GitIndex(".git/index").update(["a.txt"], mark)
        print("unreachable")
    """, cwd=repo.path)
    assert proc.returncode == 130 and proc.stdout == b""
    assert proc.stderr.decode() == "theta-zarr: interrupted\n"
    assert not (repo.path / ".git" / "index.lock").exists()
    assert "size: 0" in repo.out("ls-files", "--debug", "a.txt")  # the update was written
    repo.git("status")


@pytest.mark.parametrize("name, word", [("SIGTERM", "terminated (SIGTERM)"),
                                        ("SIGHUP", "hung up (SIGHUP)")])
def test_sigterm_and_sighup_while_the_index_lock_is_held_remove_the_lock_first(repo, name,
                                                                             word):
    """A CI job's timeout (SIGTERM) or a closed terminal (SIGHUP) during a direct write's
    index update ended the filter on the spot, and the ``index.lock`` it left stopped every
    later git command; they are now handled as Ctrl-C is, with their own exit status."""
    (repo.path / "a.txt").write_text("a\n")
    repo.git("add", "a.txt")
    proc = run_python(f"""
        import dataclasses, os, signal
        from theta_zarr import interrupts
        from theta_zarr.git.index import GitIndex
        interrupts.install(lambda: "; left: a.safetensors")
        def mark(entry):
            os.kill(os.getpid(), signal.{name})
            return dataclasses.replace(entry.stat, size=0)
        GitIndex(".git/index").update(["a.txt"], mark)
        print("unreachable")
    """, cwd=repo.path)
    assert proc.returncode == 128 + getattr(signal, name) and proc.stdout == b""
    assert proc.stderr.decode() == f"theta-zarr: {word}; left: a.safetensors\n"
    assert not (repo.path / ".git" / "index.lock").exists()
    assert "size: 0" in repo.out("ls-files", "--debug", "a.txt")
    repo.git("add", "a.txt")


def test_sigterm_reaching_a_cli_command_inside_the_index_lock_removes_the_lock(repo):
    """``git theta-zarr materialize`` (or the post-checkout hook) killed by SIGTERM while
    it updated git's index left ``index.lock``; Ctrl-C there stays a KeyboardInterrupt."""
    (repo.path / "a.txt").write_text("a\n")
    repo.git("add", "a.txt")
    proc = run_python("""
        import dataclasses, os, signal, sys
        import theta_zarr.cli
        from theta_zarr.git.index import GitIndex
        from theta_zarr.launch import main
        def mark(entry):
            os.kill(os.getpid(), signal.SIGTERM)
            return dataclasses.replace(entry.stat, size=0)
        theta_zarr.cli.main = lambda: GitIndex(".git/index").update(["a.txt"], mark)
        sys.argv = ["git-theta-zarr", "materialize"]
        main()
        print("unreachable")
    """, cwd=repo.path)
    assert proc.returncode == 143 and proc.stdout == b""
    assert proc.stderr.decode() == "theta-zarr: terminated (SIGTERM)\n"
    assert not (repo.path / ".git" / "index.lock").exists()
    repo.git("add", "a.txt")


def test_a_signal_ignored_at_start_stays_ignored():
    """``nohup git checkout ...``: SIGHUP is ignored on purpose, and must not end the
    filter once the terminal closes."""
    proc = run_python("""
        import os, signal
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        from theta_zarr import interrupts
        interrupts.install()
        os.kill(os.getpid(), signal.SIGHUP)
        print("still here")
    """)
    assert proc.returncode == 0 and proc.stdout == b"still here\n"


@pytest.mark.parametrize("argv", [["ls-files"], ["filter-process"]])
def test_ctrl_c_while_the_modules_load_is_one_line(argv):
    """SIGINT lands while the CLI (or the filter) is being imported: it printed a
    KeyboardInterrupt traceback from launch.py."""
    code = textwrap.dedent(f"""
        import builtins, sys
        real = builtins.__import__
        def interrupted(name, *args, **kw):
            if name in ("cli", "git.filter_start"):
                raise KeyboardInterrupt
            return real(name, *args, **kw)
        builtins.__import__ = interrupted
        from theta_zarr.launch import main
        sys.argv = ["git-theta-zarr", *{argv!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 130
    assert proc.stderr == b"theta-zarr: interrupted\n"


def test_sigterm_removes_what_an_open_block_would_have_cleaned_up(tmp_path):
    """``theta-zarr pull -o OUT`` killed by a job's timeout left its partial temporary file
    next to OUT for good (Ctrl-C removed it), and ``demo`` its temporary repository."""
    out = tmp_path / "model.safetensors"
    work = tmp_path / "theta-zarr-demo-x"
    proc = run_python(f"""
        import os, signal
        from theta_zarr import interrupts
        from theta_zarr.streams import write_atomic
        interrupts.install(signals=(signal.SIGTERM,))
        os.makedirs({str(work / "repo")!r})
        def partial(f):
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGTERM)
        with interrupts.removed_on_signal({str(work)!r}):
            write_atomic({str(out)!r}, partial)
        print("unreachable")
    """)
    assert proc.returncode == 143 and proc.stdout == b""
    assert proc.stderr.decode() == "theta-zarr: terminated (SIGTERM)\n"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_after_publish_moved_its_ref_reports_the_publish(tmp_path):
    """A Ctrl-C between the ref's move and the line that says so: 'interrupted' and exit
    130 for a publish that was done (the ref there, complete), so a job's script took it
    for failed.  Past that commit point the command finishes and reports; before it, a
    Ctrl-C still stops it."""
    ckpt = model(tmp_path / "m.safetensors")
    store = tmp_path / "store"

    def publish(ref: str, at: str) -> subprocess.CompletedProcess:
        return run_python(f"""
            import os, signal, sys
            from theta_zarr import refs
            real = refs.Refs.{at}
            def then_ctrl_c(self, *args, **kw):
                out = real(self, *args, **kw)
                os.kill(os.getpid(), signal.SIGINT)
                return out
            refs.Refs.{at} = then_ctrl_c
            sys.argv = ["theta-zarr", "publish", {str(ckpt)!r}, {str(store)!r}, "--ref", {ref!r},
                        "--cache", {str(tmp_path / "cache")!r}]
            from theta_zarr.launch import main
            main()
        """)

    done = publish("run/step-1", "set")
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().startswith("theta-zarr: created run/step-1 "), done.stderr
    assert "interrupted" not in done.stderr.decode()
    # before the commit point (the base ref is looked up first): stopped, no ref moved
    stopped = publish("run/step-2", "list")
    assert stopped.returncode == 130 and stopped.stderr == b"theta-zarr: interrupted\n"
    assert not (store / "refs" / "run" / "step-2").exists()
    assert (store / "refs" / "run" / "step-1").exists()
