"""How a worker tells its master "booting / ready / draining" without a new socket.

Gunicorn gives every worker a heartbeat file (`worker.tmp`), open in both the
master and the worker, that the master already `fstat()`s. The worker keeps its
state in two permission bits of that file, and writes why it failed to boot into
its (otherwise unused) content, where the master reads it after the worker died.
Both survive the worker's death until the master closes the file, and cost one
`fchmod` per state change.
"""

import os
import signal
import stat

BOOTING = "booting"
READY = "ready"
DRAINING = "draining"

_READY_BIT = stat.S_IXUSR
_DRAINING_BIT = stat.S_IXGRP
_RECYCLE_BIT = stat.S_IXOTH
_REASON_LIMIT = 1024


def _set_bits(tmp, bits):
    mode = stat.S_IMODE(os.fstat(tmp.fileno()).st_mode)
    os.fchmod(tmp.fileno(), mode | bits)


def _nudge(master_pid):
    """Wake the master so it need not wait for its next tick.

    SIGCHLD is the nudge: every Gunicorn master already wakes up and reaps on it,
    and a reap that finds nobody is harmless.
    """
    try:
        os.kill(master_pid, signal.SIGCHLD)
    except OSError:
        pass


def mark_ready(tmp, master_pid):
    """In the worker: ready to serve."""
    _set_bits(tmp, _READY_BIT)
    _nudge(master_pid)


def mark_draining(tmp):
    """In the worker: no longer accepting, finishing what is in flight."""
    _set_bits(tmp, _DRAINING_BIT)


def mark_recycle(tmp, master_pid, details):
    """In the worker: it reached a recycling limit and asks to be replaced; it keeps serving.

    `details` (reason, served, memory) go where a boot failure's reason would:
    a worker that asks to be recycled has booted.
    """
    write_reason(tmp, details)
    _set_bits(tmp, _RECYCLE_BIT)
    _nudge(master_pid)


def wants_recycle(tmp):
    """In the master: whether the worker asked to be replaced."""
    try:
        return bool(os.fstat(tmp.fileno()).st_mode & _RECYCLE_BIT)
    except (OSError, ValueError):
        return False


def write_reason(tmp, reason):
    """In the worker: the one line the master will log for a failed boot."""
    data = reason.encode("utf-8", "replace")[:_REASON_LIMIT]
    os.pwrite(tmp.fileno(), data, 0)


def read(tmp):
    """In the master: the worker's state, from its heartbeat file."""
    try:
        mode = os.fstat(tmp.fileno()).st_mode
    except (OSError, ValueError):
        return BOOTING
    if mode & _DRAINING_BIT:
        return DRAINING
    return READY if mode & _READY_BIT else BOOTING


def was_ready(tmp):
    """In the master: whether the worker ever got ready (draining implies it was)."""
    return read(tmp) != BOOTING


def read_reason(tmp):
    """In the master: why the worker failed to boot, or "" when it did not say."""
    try:
        return os.pread(tmp.fileno(), _REASON_LIMIT, 0).decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
