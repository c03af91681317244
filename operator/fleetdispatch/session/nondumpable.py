"""`prctl(PR_SET_DUMPABLE, 0)`: the one call that keeps the session out of the supervisor.

The session runs as the supervisor's UID in the same PID namespace, so until the supervisor is marked
non-dumpable the session may read its memory, its environment and its mounts (the heartbeat's token among
them) through `/proc/<pid>/`. `fleetdispatch supervise` calls this first, before it imports anything else
(the window left is the interpreter's own start); the supervisor calls it again and says if it failed.
Standard library only, and tiny, so that calling it first costs nothing.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_DUMPABLE = 4


def set_non_dumpable() -> bool:
    """`prctl(PR_SET_DUMPABLE, 0)`; False where there is no prctl (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
