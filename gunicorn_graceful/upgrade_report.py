"""How a new master that fails before it takes over tells its old master why.

The old master opens a pipe just before it forks the new master; the write end
survives the exec (its number travels in GRACEFUL_UPGRADE_REPORT_FD). A new
master that halts writes one line there: a worker's boot error, a readiness
timeout, a pidfile it cannot write. The old master reads it when it reaps the
new master, so its `upgrade.rollback` line gives the real reason instead of an
exit code, even when the log or the pidfile directory cannot be written.
"""

import os

ENV = "GRACEFUL_UPGRADE_REPORT_FD"
HANDOVER = "handover"  # the new master's line just before its SIGTERM to the old master
_LIMIT = 4096


class Channel:
    """The old master's end: open before the fork, read after the new master exited."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_inheritable(self.write_fd, True)
        self.lines = []

    def after_fork(self):
        """In the old master: only the new master keeps the write end."""
        os.close(self.write_fd)
        self.write_fd = None

    def read(self):
        """Every line written so far (the read end stays open)."""
        try:
            data = os.read(self.read_fd, _LIMIT)
        except OSError:
            data = b""
        self.lines += [line.strip() for line in data.decode("utf-8", "replace").splitlines()
                       if line.strip()]
        return self.lines

    def handed_over(self):
        """Whether the new master said it takes over: the SIGTERM that follows is its own."""
        return HANDOVER in self.read()

    def reason(self):
        """The last line the new master wrote about a failure, or ""; closes the channel."""
        try:
            lines = [line for line in self.read() if line != HANDOVER]
        finally:
            os.close(self.read_fd)
        return lines[-1] if lines else ""


def take(environ, env_orig):
    """In a new master: the write end's number, taken out of both environments (or None)."""
    value = environ.pop(ENV, None)
    env_orig.pop(ENV, None)
    try:
        fd = int(value)
        os.set_inheritable(fd, False)
    except (TypeError, ValueError, OSError):
        return None
    return fd


def tell(fd, reason):
    """Write `reason` as one line for the old master; never fails the caller."""
    if fd is None:
        return
    try:
        os.write(fd, (" ".join(reason.split()) + "\n").encode("utf-8", "replace")[:_LIMIT])
    except OSError:
        pass


def close(fd):
    """After the hand-over nothing more is reported."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
