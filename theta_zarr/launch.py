"""The ``git-theta-zarr`` and ``theta-zarr`` executables: the filter process starts
without the CLI.

git starts ``git-theta-zarr filter-process`` in every command that may clean or
smudge; it goes straight to the handshake (``git.filter_start``) without loading
click or the commands.  Everything else is the click group in ``cli``, with SIGTERM and
SIGHUP ending it in one line once git's index lock is free (``interrupts``), and the same
quick exit as the filter's.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import NoReturn


#: set by git for the commands it runs in a submodule (``checkout --recurse-submodules``);
#: a git command we start then dies with "doesn't support --super-prefix", so it is not
#: passed on (git-lfs drops it for the same reason)
SUPER_PREFIX_ENV = "GIT_INTERNAL_SUPER_PREFIX"


def main() -> None:
    """The console entry point of both executables; ends the process, never returns.

    ``filter-process`` alone: git's long-running filter (``git.filter_start.main``), its
    exit status as the process's.  Anything else: the click command group (``cli.main``)
    with SIGTERM and SIGHUP handled by ``interrupts``; the exit status is the group's (129
    for a usage mistake, as git's own commands), 130 after Ctrl-C.
    ``GIT_INTERNAL_SUPER_PREFIX`` is dropped first.
    """
    os.environ.pop(SUPER_PREFIX_ENV, None)
    try:  # a Ctrl-C while the modules load: one line, as everywhere else
        if sys.argv[1:] == ["filter-process"]:
            from .git.filter_start import main as filter_main
        else:
            from .cli import main as cli_main
    except KeyboardInterrupt:
        print("theta-zarr: interrupted", file=sys.stderr)
        _leave(130)
    if sys.argv[1:] == ["filter-process"]:
        _leave(filter_main())
    import signal

    from . import interrupts, malloc

    # a kill (a job's timeout) or a closed terminal waits while git's index lock is held
    interrupts.install(signals=(signal.SIGTERM, signal.SIGHUP))
    malloc.reuse_freed_memory()
    try:
        cli_main()
    except SystemExit as e:
        _finish(e.code)
    _finish(0)


def _finish(code: int | str | None) -> NoReturn:
    """End a command with ``code`` (as ``sys.exit`` takes it) without the interpreter's
    teardown, once every thread of ours is done.

    Freeing the modules a remote command loads (s3fs, aiobotocore, botocore's service
    models) took about 0.25 s of CPU at exit here, a tenth of a small fetch.  The exit
    functions libraries registered still run; a thread still working (a plugin's) gets
    the usual exit, which waits for it.
    """
    if isinstance(code, str):  # sys.exit("message"): printed as the interpreter would
        print(code, file=sys.stderr)
        code = 1
    status = code if isinstance(code, int) else 0
    main_thread = threading.main_thread()
    if any(t.is_alive() and not t.daemon and t is not main_thread
           for t in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()  # weakref finalizers among them
    _leave(status)


def _leave(code: int) -> NoReturn:
    """End the process now, output flushed, without the interpreter's teardown.

    For the filter process: git waits for its filter to end in every command that starts
    it; tearing down the modules and idle thread pools took about 17 ms of a 150 ms
    ``git checkout`` of a small file here.  By the time the filter returns, every file
    it writes is written and closed and every pool's work is done; only buffered output
    is left to flush.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # git closed the pipe: nothing more can reach it
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    os._exit(code)
