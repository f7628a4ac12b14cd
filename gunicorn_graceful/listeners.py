"""The listening socket at shutdown: count what waits in it, close its door, shut it.

When the last process holding a listener closes it, every connection still in
its accept queue is reset, although those clients have sent their requests.
A full stop therefore:
1. closes the door: a classic BPF filter on the listener that drops every SYN
   that opens a connection, so no new client gets in. Everything else passes:
   a client whose handshake was under way when the door closed completes it and
   enters the queue (a filter that dropped every packet dropped its ACK and its
   request, and the shut in 3 reset it 200 ms later, on its retransmission);
   connections already queued are sockets of their own and keep working;
2. takes what waits in the queue: the master shuts an empty queue at once; else
   the first worker to get SIGTERM that can serve it accepts all of it
   (`take_queue`): a sync worker still reading a slow client's request takes
   it only once that request ended, as it might serve nothing before the
   deadline;
3. shuts the listener (`shutdown`): it stops listening for every process that
   holds it, so a new client is refused at once, before it sent anything,
   while the workers drain what they took.
A SYN that arrived between 1 and 3 (a few milliseconds at most) was dropped and
is refused on its retransmission. The master shuts a queue it finds empty only
HANDSHAKE_GRACE after the door closed, for the handshakes under way. Linux TCP
only: elsewhere (and on unix sockets) the door stays open and the count is 0,
which is Gunicorn's own behaviour.
"""

import ctypes
import errno
import socket
import struct

_SO_ATTACH_FILTER = _SO_GET_FILTER = 26
TAKE_LIMIT = 65536  # more than any accept queue holds
_TCP_INFO_LEN = 104
_TCPI_UNACKED = 8 + 4  # after 8 one-byte fields: rto, ato, snd_mss, rcv_mss, unacked
HANDSHAKE_GRACE = 0.02  # seconds: a handshake under way on loopback or a LAN completes
# The door (classic BPF over the TCP header): drop a packet whose SYN is set and ACK is not.
_DROP_NEW_CONNECTIONS = b"".join(struct.pack("HBBI", *instruction) for instruction in (
    (0x30, 0, 0, 13),          # BPF_LD | BPF_B | BPF_ABS: the TCP flags byte
    (0x54, 0, 0, 0x12),        # BPF_ALU | BPF_AND | BPF_K: SYN and ACK only
    (0x15, 0, 1, 0x02),        # BPF_JMP | BPF_JEQ | BPF_K: SYN alone? next, else skip one
    (0x06, 0, 0, 0),           # BPF_RET | BPF_K: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET | BPF_K: keep the whole packet
))
_INSTRUCTIONS = len(_DROP_NEW_CONNECTIONS) // 8

# The filter program outlives the call that attaches it only in the kernel,
# which copies it; the buffer is kept here anyway so its address stays valid.
_program = ctypes.create_string_buffer(_DROP_NEW_CONNECTIONS)
_libc = ctypes.CDLL(None, use_errno=True)


def _is_tcp(sock):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM


def reports_queue(sock):
    """Whether `queued` can count `sock`'s accept queue (Linux TCP)."""
    return _is_tcp(sock) and hasattr(socket, "TCP_INFO")


def queued(sock):
    """How many connections wait in `sock`'s accept queue (Linux TCP), else 0."""
    if not reports_queue(sock):
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return 0
    fields = struct.unpack("8B24I", info[:_TCP_INFO_LEN])
    return fields[_TCPI_UNACKED]


def door_closed(sock):
    """Whether the door of `sock` is closed (only a full stop attaches a filter to it).

    SO_GET_FILTER takes the buffer length as a count of filter instructions
    (8 bytes each): Python's getsockopt would offer a 4-byte int, and the
    kernel would copy a whole instruction into it. With a length of 0 the
    kernel copies nothing and answers the number of instructions attached.
    """
    if not _is_tcp(sock):
        return False
    length = ctypes.c_uint(0)
    if _libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, _SO_GET_FILTER, None,
                        ctypes.byref(length)) != 0:
        return False
    return length.value > 0


def take_one(sock):
    """(client, addr) of one connection waiting in `sock` (non-blocking), or None.

    At a full stop, when a worker finds the queue empty it shuts the listener
    (new clients are refused from then on); one taken as the last is shut
    behind at once too. A listener shut already has nothing to take.
    """
    try:
        taken = accept_one(sock)
    except (BlockingIOError, InterruptedError):
        shut(sock)
        return None
    if taken is not None and not queued(sock):
        shut(sock)
    return taken


def accept_one(sock):
    """(client, addr) from the non-blocking `sock`, past connections aborted while queued;
    None when it cannot accept (EINVAL: shut already; EMFILE and the like: left for another
    process). An empty queue raises BlockingIOError: whether that shuts is the caller's."""
    for _ in range(TAKE_LIMIT):
        try:
            return sock.accept()
        except (BlockingIOError, InterruptedError):
            raise
        except OSError as exc:
            if exc.errno != errno.ECONNABORTED:
                return None
    return None


def shut(sock):
    """Stop listening on `sock` for every process holding it: new clients are refused."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        return False
    return True


def close_door(sock):
    """Drop every new connection attempt to `sock`; True when the door is closed.

    The filter belongs to the socket, not to this process: every process
    sharing the listener sees the door closed. Call it only when nobody will
    accept on this socket again.
    """
    if not _is_tcp(sock):
        return False
    program = struct.pack("HP", _INSTRUCTIONS, ctypes.addressof(_program))  # sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
    except OSError:
        return False
    return True
