"""Polling against a deadline, and a free loopback port."""

import socket
import time


POLL = 0.05


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout, what):
    """Poll `condition` until it returns a true value; fail the test with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL)
    raise AssertionError("timed out after %ss waiting for %s" % (
        timeout, what() if callable(what) else what))
