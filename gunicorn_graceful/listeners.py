"""The listening socket at shutdown: count what waits in it, and close its door.

When the last process holding a listener closes it, every connection still in
its accept queue is reset, although those clients have sent their requests.
A full stop therefore first closes the door (new SYNs are dropped, so a new
client is refused cleanly once the socket is gone, before it sent anything),
then lets the workers accept what is queued. The door is a classic BPF filter
that drops every packet reaching the listener; connections already queued are
sockets of their own and keep working. Linux only: elsewhere the door stays
open and the count is 0, which is Gunicorn's own behaviour.
"""

import ctypes
import socket
import struct

_SO_ATTACH_FILTER = 26
_TCP_INFO_LEN = 104
_TCPI_UNACKED = 8 + 4  # after 8 one-byte fields: rto, ato, snd_mss, rcv_mss, unacked
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, return 0 bytes

# The filter program outlives the call that attaches it only in the kernel,
# which copies it; the buffer is kept here anyway so its address stays valid.
_program = ctypes.create_string_buffer(_DROP_ALL)


def _is_tcp(sock):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM


def queued(sock):
    """How many connections wait in `sock`'s accept queue (Linux TCP), else 0."""
    if not _is_tcp(sock) or not hasattr(socket, "TCP_INFO"):
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return 0
    fields = struct.unpack("8B24I", info[:_TCP_INFO_LEN])
    return fields[_TCPI_UNACKED]


def close_door(sock):
    """Drop every new connection attempt to `sock`; True when the door is closed.

    The filter belongs to the socket, not to this process: every process
    sharing the listener sees the door closed. Call it only when nobody will
    accept on this socket again.
    """
    if not _is_tcp(sock):
        return False
    program = struct.pack("HP", 1, ctypes.addressof(_program))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
    except OSError:
        return False
    return True
