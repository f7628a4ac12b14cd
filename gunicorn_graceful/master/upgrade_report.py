"""The two pipes between an old master and the new master its USR2 started.

The old master opens them just before it forks the new master; the new
master's ends survive the exec (their numbers travel in
GRACEFUL_UPGRADE_REPORT_FD as "report,ack").

- report (new -> old): a new master that halts writes one line there (a
  worker's boot error, a readiness timeout, a pidfile it cannot write), which
  the old master reads when it reaps it, so its `upgrade.rollback` line gives
  the real reason, even when the log or pidfile directory cannot be written. A
  new master whose workers are all ready writes HANDOVER there: its request
  to take over.
- ack (old -> new): the old master's answer. It acknowledges only if it has
  not rolled the upgrade back, and from then on it stops itself and never
  signals its new master; the new master announces itself (pidfile, systemd
  MAINPID and READY) only once acknowledged, or once its old master is gone.
  So the two can never both stop, nor both speak for the service. With
  metrics on, the old master's last line there, once its workers drained, is
  its totals (METRICS + JSON), which the new master adds to its own once
  promoted: the counters go on from where they were. A new master stopped on
  trial (rolled back) writes its own totals on the report pipe instead, which
  its old master adds to its own: what the new workers served stays counted.
"""

import os

from gunicorn_graceful import settings

ENV = settings.UPGRADE_REPORT_ENV
HANDOVER = "handover"
METRICS = "metrics "
_ACK = b"ack\n"
_LIMIT = 4096


class Channel:
    """The old master's ends: open before the fork, read while the new master lives."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        self.ack_read_fd, self.ack_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_inheritable(self.write_fd, True)
        os.set_inheritable(self.ack_read_fd, True)
        self.lines = []
        self.partial = b""  # a line not yet written whole

    def environ_value(self):
        """ "report,ack": the new master's ends."""
        return "%s,%s" % (self.write_fd, self.ack_read_fd)

    def after_fork(self):
        """In the old master: only the new master keeps its ends."""
        for fd in (self.write_fd, self.ack_read_fd):
            os.close(fd)
        self.write_fd = self.ack_read_fd = None

    def read(self):
        """Every whole line written so far (the read end stays open)."""
        *whole, self.partial = (self.partial + read_available(self.read_fd)).split(b"\n")
        self.lines += [line.decode("utf-8", "replace").strip() for line in whole
                       if line.strip()]
        return self.lines

    def asks_to_take_over(self):
        """Whether the new master's workers are all ready and it asks for the service."""
        return HANDOVER in self.read()

    def acknowledge(self):
        """Give the service to the new master: after this the old master only stops."""
        _write(self.ack_fd, _ACK)

    def send_totals(self, text):
        """After the hand-over, once this master's workers are gone: its metrics' totals."""
        send_totals(self.ack_fd, text)

    def returned_totals(self):
        """The totals a new master stopped on trial returned (JSON text), or None."""
        return _totals_in(self.read())

    def reason(self):
        """The last line the new master wrote about a failure, or ""; closes the channel."""
        try:
            lines = [line for line in self.read()
                     if line != HANDOVER and not line.startswith(METRICS)]
        finally:
            os.close(self.read_fd)
            os.close(self.ack_fd)
        return lines[-1] if lines else ""


def take(environ, env_orig):
    """In a new master: (report fd, ack fd) taken out of both environments; None for a
    missing fd (an old master that is not the pack's passes none)."""
    value = environ.pop(ENV, None)
    env_orig.pop(ENV, None)
    report_fd, ack_fd = fds(value)
    for fd in (report_fd, ack_fd):
        try:
            os.set_inheritable(fd, False)
        except (TypeError, OSError):
            pass
    if ack_fd is not None:
        os.set_blocking(ack_fd, False)
    return report_fd, ack_fd


def fds(value):
    """(report fd, ack fd) from the variable's value "report,ack"; None for a missing one."""
    parts = (value or "").split(",")
    numbers = [int(part) if part.strip().isdigit() else None for part in parts[:2]]
    return tuple((numbers + [None, None])[:2])


def read_available(fd):
    """What the other master wrote on the pipe `fd` since the last read (non-blocking; at
    most 1 MiB a call: the rest waits for the next)."""
    chunks = []
    for _ in range(16 if fd is not None else 0):
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def acknowledged(data):
    """Whether what the ack pipe held (`read_available`) gives this new master the service."""
    return data.startswith(_ACK)


def totals(data):
    """The old master's metrics totals (JSON text) in what the ack pipe held, or None."""
    return _totals_in(data.decode("utf-8", "replace").splitlines())


def _totals_in(lines):
    return next((line[len(METRICS):] for line in lines if line.startswith(METRICS)), None)


def send_totals(fd, text):
    """A master's metrics totals (`metrics.Metrics.export`) as one line for the other."""
    _write(fd, (METRICS + text + "\n").encode())


def tell(fd, reason):
    """Write `reason` as one line for the old master; never fails the caller."""
    _write(fd, " ".join(reason.split()).encode("utf-8", "replace")[:_LIMIT] + b"\n")


def _write(fd, data):
    """A write to the other master that never fails the caller: a pipe whose reader is gone
    (or an fd there is none of) is nothing to act on."""
    if fd is None:
        return
    try:
        os.write(fd, data)
    except OSError:
        pass


def close(fd):
    """After the hand-over nothing more is reported."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
