"""Resident memory of a process, from /proc: a worker checks its own, the master its workers'."""

import os

_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 1048576.0


def rss_mib(pid="self"):
    """Resident memory of a process in MiB, from /proc (None when it is gone)."""
    try:
        with open("/proc/%s/statm" % pid) as handle:
            return int(handle.read().split()[1]) * _PAGE_MIB
    except (OSError, IndexError, ValueError):
        return None
