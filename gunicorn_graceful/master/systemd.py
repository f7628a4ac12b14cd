"""sd_notify for the master: READY only when workers can serve, RELOADING around a reload.

Stock Gunicorn sends READY=1 as soon as the master has bound its sockets,
before any worker could answer. The pack takes NOTIFY_SOCKET out of the
master's environment at start (so Gunicorn's own call sends nothing) and
speaks for itself. USR2 re-executes with the original environment, so a new
master still finds the socket.
"""

import os
import socket
import time


class Notifier:
    """Sends `KEY=value` lines to systemd's notify socket; does nothing without one."""

    def __init__(self, address):
        self.address = address

    @classmethod
    def take_from_environ(cls, environ=None):
        environ = os.environ if environ is None else environ
        return cls(environ.pop("NOTIFY_SOCKET", None))

    def send(self, log, **fields):
        if not self.address:
            return
        message = "\n".join("%s=%s" % (key, value) for key, value in fields.items())
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            log.warning("event=systemd.notify_failed address=%s error=%s", self.address, exc)

    def ready(self, log, status):
        self.send(log, READY=1, STATUS=status)

    def reloading(self, log, status):
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(log, RELOADING=1, MONOTONIC_USEC=usec, STATUS=status)

    def status(self, log, status):
        self.send(log, STATUS=status)

    def stopping(self, log, status):
        self.send(log, STOPPING=1, STATUS=status)
