"""Signals seen at once by a thread, for a worker whose main thread may sit in a system call.

The sync worker keeps Gunicorn's SA_RESTART for SIGTERM (`siginterrupt(False)`):
a stop must not interrupt what the app is doing, since a C library's read that
does not retry on EINTR would fail the request. Python then runs the handler
only once that call returns, which may be the deadline for a worker reading a
client that sends nothing. The C-level handler still writes each signal's
number to the wakeup fd at once: here that is a pipe a thread reads, which
forwards every byte to Gunicorn's own pipe (its select wakes on it, as
before) and calls what the worker registered for that signal.
"""

import os
import signal
import threading


class Watch:
    """The wakeup pipe and its thread; `callbacks` maps a signal number to a function."""

    def __init__(self, forward_fd, callbacks):
        self.forward_fd, self.callbacks = forward_fd, callbacks
        self.read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self.thread = threading.Thread(target=self._run, name="graceful-signals", daemon=True)
        self.thread.start()

    def _run(self):
        """Until the process ends (the read ends when the pipe's write end is closed)."""
        for data in iter(lambda: os.read(self.read_fd, 64), b""):
            try:
                os.write(self.forward_fd, data)
            except (BlockingIOError, OSError):
                pass  # Gunicorn's pipe is full: its select wakes anyway
            for signum in data:
                callback = self.callbacks.get(signum)
                if callback is not None:
                    callback()
