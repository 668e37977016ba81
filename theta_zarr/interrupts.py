"""Ctrl-C (or SIGTERM, SIGHUP) in a process whose every step is kill-safe: end at once,
with one line.

A terminal's Ctrl-C sends SIGINT to git and to the filter process git started alike.
Python's default turns it into a KeyboardInterrupt wherever the main thread happens to
be: a traceback on the user's terminal, and, raised inside
``ThreadPoolExecutor.submit`` while it holds the pool's lock, a filter whose threads
wait on that lock forever (so git waits too).  The filter's steps are designed to
survive a kill (docs/design.md, "Direct checkout"), so once :func:`install` is called,
SIGINT ends the process as a kill would (``os._exit(130)``, 128 + SIGINT as git and the
shell report it) after one ``theta-zarr: interrupted`` line; only inside
:func:`deferred` (git's index lock held) it waits until the section is over, so no
``index.lock`` is left behind.  SIGTERM (a CI job's timeout, ``timeout``, a service
manager) and SIGHUP (the terminal closed) are handled the same way, with exit status
128 + the signal's number: by default they end the process on the spot, lock or not, and
a left ``index.lock`` stops every later git command; the CLI installs those two only.
What a :func:`removed_on_signal` block has open (a temporary file next to a pulled file,
the demo's repository) is removed before the process ends, as the block's own cleanup
would on Ctrl-C. Without :func:`install` (library use) :func:`deferred` does nothing and
Ctrl-C is a KeyboardInterrupt as usual.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator

_lock = threading.RLock()  # the handler runs in the main thread, perhaps inside deferred
_depth = 0  # deferred sections open, in any thread
_litter: dict[int, str] = {}  # what removed_on_signal blocks have open: removed on a signal
_pending = 0  # the signal that arrived inside one (0: none)
_note: Callable[[], str] | None = None  # what the line adds (files left lazy...)
_installed = False
_held_handler: list = []  # SIGINT's handler while hold_sigint holds it (at most one)
_sigint_came = False  # a SIGINT came while it was held
#: the signals that end the process through :func:`_leave`, and the line's word for each
SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)",
           signal.SIGHUP: "hung up (SIGHUP)"}


def install(note: Callable[[], str] | None = None,
            signals: Iterable[int] = tuple(SIGNALS)) -> None:
    """End this process on ``signals`` (SIGINT, SIGTERM and SIGHUP; main thread only, as
    Python requires); ``note()`` gives text appended to the ``theta-zarr: interrupted``
    line, read when the signal comes.  The CLI passes SIGTERM and SIGHUP only: Ctrl-C
    stays a KeyboardInterrupt there, which unwinds (and unlocks) as it goes."""
    global _note, _installed
    _note = note
    for signum in signals:
        # one ignored when the process started stays ignored (``nohup``, a background job
        # of a script), as Python leaves an ignored SIGINT
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
    _installed = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section a signal must not cut short (git's index lock held): the process ends as
    soon as the outermost section is left, if one came meanwhile."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            leave = _installed and _pending and _depth == 0
        if leave:
            _leave(_pending)


def _on_signal(signum: int, frame: object) -> None:
    global _pending
    with _lock:
        if _depth:
            _pending = _pending or signum
            return
    _leave(signum)


def hold_sigint() -> None:
    """A command's commit point (a ref about to move): from here until
    :func:`release_sigint`, a Ctrl-C (SIGINT) is noted, not raised, so that the command
    finishes and says what it did instead of reporting "interrupted" for a ref it moved.
    Only in the main thread of a process that called :func:`install` (the CLI); in
    library use (a training job's own handler) nothing changes."""
    global _sigint_came
    if not _installed or _held_handler or \
            threading.current_thread() is not threading.main_thread():
        return
    _sigint_came = False
    _held_handler.append(signal.getsignal(signal.SIGINT))
    signal.signal(signal.SIGINT, _note_sigint)


def release_sigint() -> bool:
    """End a :func:`hold_sigint` (once the command reported what it committed): Ctrl-C
    interrupts again.  True when one came while it was held (a loop such as ``watch``
    then stops)."""
    if not _held_handler:
        return False
    signal.signal(signal.SIGINT, _held_handler.pop())
    return _sigint_came


def _note_sigint(signum: int, frame: object) -> None:
    global _sigint_came
    _sigint_came = True


@contextlib.contextmanager
def removed_on_signal(path: str) -> Iterator[None]:
    """While the block runs, a signal that ends the process removes ``path`` first (a
    file, or a folder and what it holds): the temporary file or folder the block's own
    cleanup would remove on an error or a Ctrl-C, which a SIGTERM (a job's timeout) would
    otherwise leave behind, next to the user's files."""
    token = object()
    _litter[id(token)] = path
    try:
        yield
    finally:
        _litter.pop(id(token), None)


def _remove_litter() -> None:
    for path in list(_litter.values()):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _leave(signum: int) -> None:
    _remove_litter()
    extra = ""
    if _note is not None:
        with contextlib.suppress(Exception):
            extra = _note()
    word = SIGNALS.get(signum, "interrupted")
    with contextlib.suppress(OSError):
        os.write(2, f"theta-zarr: {word}{extra}\n".encode("utf-8", "replace"))
    os._exit(128 + signum)
