"""The master's calls into the operating system beyond Gunicorn's own, in one object.

Signals to the other master of a USR2, the parent that tells a new master its
old one is gone, a listener a HUP binds, the door, the subreaper, the in-place
check's process, the exec and the sockets it hands over, the metrics endpoint (a
bind, a thread, a fork handler) and the master's files (the pidfile it rewrites,
the status file): the arbiter builds one
`System` (`GracefulArbiter.install`) and hands it to the helpers that need it;
the simulation (`tests/simulation.py`) passes its own, so the master's real code
runs over simulated processes without patching a module. Gunicorn's own process
calls (fork, kill a worker, waitpid) stay Gunicorn's (`Arbiter` methods), and the
molds' have their own (`mold.Processes`).
"""

import ctypes
import os
import socket
import subprocess

from gunicorn import sock

from gunicorn_graceful import listeners, proc
from gunicorn_graceful.master import binds, endpoint, files, handover, mold_process

PR_SET_CHILD_SUBREAPER = 36


class System:
    """The real calls."""

    def signal(self, pid, sig):
        """os.kill, where a process that is already gone is no error: it is what was wanted
        (and one that is not ours any more, EPERM, is left alone rather than crash the
        master)."""
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def parent(self):
        return os.getppid()

    def signal_at_parent_exit(self, signum):
        return proc.signal_at_parent_exit(signum)

    def open_listener(self, address, cfg, log):
        return binds.open_one(address, cfg, log)

    def close_door(self, listener):
        return listeners.close_door(listener)

    def become_subreaper(self):
        """Make this process the reaper of its orphaned descendants: a mold's workers."""
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            number = ctypes.get_errno()
            raise OSError(number, "prctl(PR_SET_CHILD_SUBREAPER): %s" % os.strerror(number))

    def run_check(self, executable, args, cwd, environ, errors, mold=False):
        """The in-place check's child: a Popen, stderr to the file `errors`. With `mold`,
        one that becomes the new generation's mold once it passed (`mold_process.run_check`):
        its `mold` is the master's end of their socket (else None)."""
        ours = theirs = None
        if mold:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            environ = dict(environ, **{mold_process.CHECK_ENV: str(theirs.fileno())})
        try:
            check = subprocess.Popen(args, executable=executable, cwd=cwd, env=environ,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=errors, close_fds=True,
                                     pass_fds=[theirs.fileno()] if theirs else ())
        except OSError:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        check.mold = ours
        return check

    def execute(self, code, state):
        return handover.execute(code, state)

    def create_sockets(self, cfg, log, fds):
        return sock.create_sockets(cfg, log, fds)

    def serve_metrics(self, metrics, bind, fd):
        return endpoint.Endpoint(metrics, bind, fd)

    def close_in_children(self, fd):
        endpoint.close_in_children(fd)

    def write_file(self, log, path, text):
        """`files.write`: True once written; a failure is one WARNING, never an exception."""
        return files.write(log, path, text)

    def remove_file(self, log, path):
        files.remove(log, path)
