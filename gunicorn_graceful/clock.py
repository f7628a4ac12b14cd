"""The master's clock: the one place its decisions read the time from.

The simulation (`tests/simulation.py`) runs the master's real decision code on
a fake clock by swapping the two sources with `use`; nothing else does.
"""

import time

_monotonic, _wall = time.monotonic, time.time


def monotonic():
    """Seconds for durations and deadlines."""
    return _monotonic()


def wall():
    """Seconds since the epoch, for what an operator reads (status file, log fields)."""
    return _wall()


def use(monotonic_source, wall_source):
    """Read the time from these two callables from now on (the simulation's fake clock)."""
    global _monotonic, _wall
    _monotonic, _wall = monotonic_source, wall_source
