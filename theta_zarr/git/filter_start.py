"""The filter process's first moments: answer git's handshake before anything heavy loads.

git waits for the handshake before it goes on, in every command that may run a
filter (status, add, checkout, diff...), so this module imports only the pkt-line
framing; the core (numpy, the format plug-ins, the stores) loads after git has
its answer, while git is still preparing the first file.
"""

from __future__ import annotations

import os
import sys

from .. import interrupts
from .pktline import PktReader, PktWriter, ProtocolError

CAPABILITIES = ("clean", "smudge", "delay")


def handshake(reader: PktReader, writer: PktWriter) -> None:
    """git's filter protocol version 2 welcome and capability exchange.

    Raises ProtocolError on anything but ``git-filter-client`` / ``version=2``.
    """
    hello = reader.read_text_list()
    if "git-filter-client" not in hello or "version=2" not in hello:
        raise ProtocolError(f"unexpected filter handshake {hello!r}")
    writer.text("git-filter-server", "version=2")
    writer.flush()
    offered = {c.split("=", 1)[1] for c in reader.read_text_list()
               if c.startswith("capability=")}
    writer.text(*(f"capability={c}" for c in CAPABILITIES if c in offered))
    writer.flush()


#: pipe buffer asked for on stdin and stdout (Linux's default limit for a user,
#: /proc/sys/fs/pipe-max-size); git's default 64 KiB holds one pkt-line
PIPE_BYTES = 1 << 20


def widen_pipes(fds: tuple[int, ...] = (0, 1)) -> None:
    """Give the pipes to and from git a 1 MiB buffer (``fcntl(F_SETPIPE_SZ)``, Linux).

    git sends a file as pkt-lines of at most 64 KiB; with the default 64 KiB pipe git
    and the filter wake each other for every packet.  With 16 packets of room, a
    950 MiB file crosses in 0.33 s instead of 0.44 s here.  Anything that is not a
    pipe, a kernel without the call or a user over the pipe-memory limit keeps the
    default: this only changes speed.
    """
    import fcntl

    op = getattr(fcntl, "F_SETPIPE_SZ", None)
    if op is None:
        return
    for fd in fds:
        try:
            fcntl.fcntl(fd, op, PIPE_BYTES)
        except OSError:
            pass


def main() -> int:
    """``git-theta-zarr filter-process``: handshake, then serve (filter_process.main)."""
    interrupts.install()  # Ctrl-C: one line and exit 130, as a kill would (never a hang)
    widen_pipes((sys.stdin.fileno(), sys.stdout.fileno()))
    # unbuffered: packet payloads are read straight into chunk buffers, one copy
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    stdout = os.fdopen(sys.stdout.fileno(), "wb", buffering=1 << 20, closefd=False)
    try:
        handshake(PktReader(stdin), PktWriter(stdout))
        stdout.flush()
    except (ProtocolError, EOFError, BrokenPipeError) as e:
        print(f"theta-zarr: filter protocol error: {e}", file=sys.stderr)
        return 1
    from .filter_process import main as serve

    return serve(stdin, stdout)
