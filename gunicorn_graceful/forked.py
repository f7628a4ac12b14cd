"""What the master hands the worker it forks next, through the fork itself.

A worker inherits the master's memory at the fork, so what the arbiter sets here
just before `spawn_worker` is what the worker reads first thing: no hook is
involved (a user's config can replace any hook). Set in the master, read in
the worker; between forks the values mean nothing.
"""

import os

release = ""     # the release directory the worker loads its app from ("" without a link)
stale_fds = ()   # listeners the master still holds but the worker must not: a HUP dropped them
slot = None      # the shared memory the worker counts into (`counters`), with metrics on


def prepare(worker_release, stale, worker_slot=None):
    """In the master, just before a fork."""
    global release, stale_fds, slot
    release, stale_fds, slot = worker_release, tuple(stale), worker_slot


def close_stale():
    """In a new worker, first thing: a copy of a listener the new config dropped would keep
    it listening after the master closed it, and its clients would wait for nobody."""
    for fd in stale_fds:
        try:
            os.close(fd)
        except OSError:
            pass
