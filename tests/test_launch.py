"""The executables' entry point (theta_zarr.launch): a command's exit status, output and
the exit functions libraries registered survive the quick exit; a thread still working
is waited for."""

from __future__ import annotations

from helpers import run_python


def test_a_command_ends_with_its_status_its_output_and_the_exit_functions_run(tmp_path):
    marker = tmp_path / "atexit-ran"
    proc = run_python(f"""
        import atexit, sys
        atexit.register(lambda: open({str(marker)!r}, "w").close())
        from theta_zarr.launch import main
        sys.argv = ["theta-zarr", "--version"]
        main()
    """)
    assert proc.returncode == 0 and b"version" in proc.stdout
    assert marker.exists()


def test_a_failing_command_keeps_its_status_and_its_one_line(tmp_path):
    proc = run_python("""
        import sys
        from theta_zarr.launch import main
        sys.argv = ["git-theta-zarr", "ls-files"]
        main()
    """, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().startswith("theta-zarr: ") and proc.stderr.count(b"\n") == 1


def test_sys_exit_with_a_message_prints_it_and_ends_with_status_1():
    proc = run_python("""
        import sys
        import theta_zarr.cli
        from theta_zarr.launch import main
        theta_zarr.cli.main = lambda: sys.exit("theta-zarr: a plugin gave up")
        sys.argv = ["theta-zarr", "x"]
        main()
    """)
    assert (proc.returncode, proc.stderr) == (1, b"theta-zarr: a plugin gave up\n")


def test_a_thread_still_working_at_the_end_is_waited_for(tmp_path):
    """A plugin's non-daemon thread still writing when the command returns: the quick
    exit would cut it off, so the interpreter's own exit (which joins it) is taken."""
    done = tmp_path / "thread-done"
    proc = run_python(f"""
        import sys, threading, time
        import theta_zarr.cli
        from theta_zarr.launch import main
        def late():
            time.sleep(0.5)
            open({str(done)!r}, "w").close()
        theta_zarr.cli.main = lambda: threading.Thread(target=late).start()
        sys.argv = ["theta-zarr", "x"]
        main()
    """)
    assert proc.returncode == 0
    assert done.exists()
