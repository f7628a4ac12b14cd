"""What /proc says of a process: when it started, which tells it apart from a later process
that reuses its pid (a stale pidfile's), and its children. The master writes its own start
into its status file; the CLI signals a pid only when the process running under it started
then, and checks the workers the file lists against the master's live children."""

import ctypes
import os

PID_MAX = 1 << 22  # the kernel's ceiling for pid_max on 64-bit Linux
_PR_SET_PDEATHSIG = 1


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (which may hold spaces and
    parentheses): [0] the state, [1] the parent, [19] the start; None when it is gone or
    unreadable."""
    try:
        with open("/proc/%s/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid):
    """The process's start, in clock ticks since boot (field 22 of /proc/PID/stat), or None
    when it is gone or unreadable. Kept across exec: an in-place upgrade keeps it."""
    fields = stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def valid_pid(pid):
    """Whether `pid` can name one process: 0 would signal the caller's own process group,
    -1 every process it may signal, and a huge number overflows os.kill."""
    return 1 <= pid <= PID_MAX


def children(pid):
    """The pids of the live processes whose parent is `pid` (from each /proc/N/stat: the
    kernel's own children list needs CONFIG_PROC_CHILDREN)."""
    found = []
    for name in os.listdir("/proc"):
        fields = stat_fields(name) if name.isdigit() else None
        if fields and len(fields) > 1 and fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(name))
    return sorted(found)


def signal_at_parent_exit(signum):
    """Ask the kernel for `signum` when this process's parent exits (prctl PR_SET_PDEATHSIG,
    Linux); False where it cannot. The setting survives exec, not fork."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
