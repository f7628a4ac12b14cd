"""The stop's hand-off: what waited in the accept queue, for whichever worker is free first.

At a full stop the listener must be shut at once, so that new clients are
refused, yet what waits in its accept queue must be served, in parallel, by
every worker that frees up, each taking one connection at a time. The kernel
cannot shut a listener and keep its queue, but a Unix socket pair made before
the first fork can hold the connections instead: the master accepts what
waits (at most HOLD), sends each one's descriptor as one message, and shuts
the listener; each worker, once it has nothing else to do, receives one
message (the kernel gives every message to exactly one receiver), serves it,
and comes back for the next. What the pair cannot hold stays in the kernel's
queue, where the workers take it with accept(); the last of them shuts it.

A message in the pair holds its connection open; when every process holding
the pair is gone, the kernel closes what is left, as it resets a queue. An
in-place upgrade hands the pair across its exec (`fds`, `adopt`): the workers
it adopts hold the same one.
"""

import mmap
import os
import socket
import struct

from gunicorn_graceful import listeners

# Messages the pair takes before its send buffer is full: 278 with Linux's default of
# 212,992 bytes, measured; the rest stays in the accept queue.
HOLD = 256
_INDEX = struct.Struct("H")  # which of the worker's listeners the connection came from
_COUNT = struct.Struct("q")  # how many the master handed at this stop
_FD_SPACE = socket.CMSG_SPACE(struct.calcsize("i"))

shared = None  # the master's pair, inherited by every worker it forks (`open_shared`)


class Handoff:
    """The pair, and a shared count of what the master handed (for the drain's `queued=`)."""

    def __init__(self, fds=None):
        """A new pair, or (`fds`: what `fds()` said before an in-place exec) copies of the
        one handed over, which stay valid when the originals are closed."""
        if fds is None:
            self.sender, self.receiver = socket.socketpair(socket.AF_UNIX,
                                                           socket.SOCK_SEQPACKET)
            self.count_fd = os.memfd_create("gunicorn-graceful-handoff", os.MFD_CLOEXEC)
            os.ftruncate(self.count_fd, _COUNT.size)
        else:
            sender, receiver, count_fd = (os.dup(fd) for fd in fds)
            self.sender, self.receiver = socket.socket(fileno=sender), socket.socket(
                fileno=receiver)
            self.count_fd = count_fd
        self.sender.setblocking(False)
        self.count = mmap.mmap(self.count_fd, _COUNT.size)  # shared: seen after the fork

    def fds(self):
        """What an in-place exec keeps for the next code (`Handoff(fds)`)."""
        return [self.sender.fileno(), self.receiver.fileno(), self.count_fd]

    def handed(self):
        """How many connections the master handed at this stop (0 before it)."""
        return _COUNT.unpack_from(self.count)[0]

    def hand(self, listeners_by_index):
        """In the master, after the door closed: move what waits to the pair (at most HOLD).

        Returns how many moved. Each is accepted, then sent; one the pair refuses is reset
        and ends the hand-off (HOLD, below the 278 the default buffer holds, keeps that from
        happening), so none is ever held by the master alone."""
        moved = 0
        for index, listener in listeners_by_index:
            while moved < HOLD:
                client = _accept(listener)
                if client is None:
                    break
                if not self.put(index, client):
                    break
                moved += 1
        _COUNT.pack_into(self.count, 0, moved)
        return moved

    def put(self, index, client):
        """Send `client` as one message; the master's copy is closed either way, so a
        failure (a full pair, which HOLD keeps from happening) resets that client."""
        try:
            self.sender.sendmsg([_INDEX.pack(index)],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                 struct.pack("i", client.fileno()))])
            return True
        except OSError:
            return False
        finally:
            client.close()

    def take(self):
        """In a worker: (listener index, client socket) of the next message, or None."""
        try:
            data, ancillary, _, _ = self.receiver.recvmsg(_INDEX.size, _FD_SPACE,
                                                          socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fd = struct.unpack("i", payload[:4])[0]
                return _INDEX.unpack(data)[0], socket.socket(fileno=fd)
        return None

    def close(self):
        self.sender.close()
        self.receiver.close()
        self.count.close()
        os.close(self.count_fd)


def open_shared(fds=None):
    """In the master, before its first fork: the pair its workers inherit (`fds`: the one
    an in-place upgrade handed over)."""
    global shared
    if shared is None:
        shared = Handoff(fds)
    return shared


def _accept(listener):
    """One connection from `listener` (non-blocking), or None once it is empty or shut."""
    try:
        listener.setblocking(False)
    except OSError:
        return None
    try:
        taken = listeners.accept_one(listener)
    except (BlockingIOError, InterruptedError):
        return None
    return taken[0] if taken else None
