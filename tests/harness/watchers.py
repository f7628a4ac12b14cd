"""Watching files and systemd's notify socket from a thread while a test acts."""

import os
import socket
import struct
import threading
import time

from tests.harness.waits import wait_for


class Watcher:
    """A bounded background loop, run as a context manager: `step()` every `period` seconds
    for at most `limit` seconds, until the block ends or `step()` returns False."""

    period, limit = 0.05, 300

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.step() is False:
                return
            self._stop.wait(self.period)

    def step(self):
        raise NotImplementedError

    def close(self):
        """After the loop stopped."""

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.close()


class NotifySocket(Watcher):
    """A fake systemd notify socket that collects every message a master sends."""

    period = 0  # recv waits by itself

    def __init__(self, directory):
        super().__init__()
        self.path = os.path.join(directory, "notify.sock")
        self.messages = []
        self.senders = []  # the pid that sent each message (SCM_CREDENTIALS, as systemd reads)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)

    def step(self):
        try:
            data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return True
        except OSError:
            return False
        pid = next((struct.unpack("iII", payload[:12])[0] for level, kind, payload in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
        self.senders.append(pid)
        self.messages.append(data.decode())
        return True

    def close(self):
        self._sock.close()

    def wait(self, text, timeout=30):
        """The first message containing `text`."""
        def found():
            return next((m for m in list(self.messages) if text in m), None)
        return wait_for(found, timeout, lambda: "%r among systemd messages %s"
                        % (text, self.messages))
