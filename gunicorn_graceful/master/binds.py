"""The master's listeners across a HUP: an address that stays keeps its socket.

Gunicorn's reload creates every configured listener anew while the old workers
still hold the old ones: the bind fails with EADDRINUSE, Gunicorn retries five
times with a one-second sleep in the master loop, then exits, and the service is
down. Its UnixSocket also unlinks the live path before binding it again.

Invariants:
- An address the new config keeps keeps its listener (the same socket, never
  re-bound, a unix path never unlinked); only new addresses are bound, once
  each, without retry or sleep.
- A bind that fails (EADDRINUSE, EACCES, EADDRNOTAVAIL), or a certificate or key
  file that is missing, is a `BindFailure` naming the address and the error,
  after every listener opened for the new config was closed again: nothing of
  it is left.
- A listener is closed only when no list the master may still serve from holds
  it (`close_unused`); a unix listener that goes takes its path with it.
"""

import errno
import os
import socket
import stat

from gunicorn_graceful import compat


class BindFailure(Exception):
    """The new config's listeners cannot be opened; the message says which and why."""


def changed(old_cfg, new_cfg):
    """Whether a HUP from `old_cfg` to `new_cfg` needs listeners opened again."""
    return old_cfg.address != new_cfg.address or \
        (old_cfg.certfile, old_cfg.keyfile) != (new_cfg.certfile, new_cfg.keyfile)


def reopen(cfg, held, log, open_listener):
    """The listeners for `cfg.address`: those of `held` whose address stays, new ones bound
    (`open_listener`: `system.System.open_listener`, `open_one` in the end)."""
    for name in ("certfile", "keyfile"):
        path = getattr(cfg, name)
        if path and not os.path.exists(path):
            raise BindFailure("%s %s does not exist" % (name, path))
    reusable = list(held)
    opened, wanted = [], []
    for address in cfg.address:
        same = next((lnr for lnr in reusable if address_of(lnr) == address), None)
        if same is not None:  # each listener serves one entry (port 0 twice is two ports)
            reusable.remove(same)
            wanted.append(same)
            continue
        try:
            listener = open_listener(address, cfg, log)
        except (OSError, ValueError, TypeError) as exc:
            close_unused(opened, keep=())
            raise BindFailure("cannot bind %s: %s" % (describe(address), reason(exc)))
        opened.append(listener)
        wanted.append(listener)
    return wanted


def open_one(address, cfg, log):
    """One listener for a new address, one attempt (Gunicorn's retries sleep in the loop)."""
    if isinstance(address, int):
        raise ValueError("a file descriptor bind (fd://%s) cannot be added by a HUP" % address)
    if isinstance(address, str) and not address.startswith("\0") and listened(address):
        raise OSError(errno.EADDRINUSE, "another process listens on this path")
    return compat.listener_class(address)(address, cfg, log)


def listened(path):
    """Whether a process accepts on the unix socket `path` (Gunicorn would unlink it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def address_of(listener):
    """The configured address a listener was opened for (as in `cfg.address`)."""
    return listener.cfg_addr


def describe(address):
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)
    return "unix:%s" % address if isinstance(address, str) else "fd://%s" % address


def reason(exc):
    if isinstance(exc, OSError) and exc.errno:
        return "%s (%s)" % (errno.errorcode.get(exc.errno, exc.errno), exc.strerror)
    return str(exc)


def close_unused(listeners, keep):
    """Close each of `listeners` that `keep` does not hold; a unix one's path goes too."""
    kept = {id(lnr) for lnr in keep}
    for lnr in listeners:
        if id(lnr) in kept:
            continue
        path = address_of(lnr)
        is_unix = lnr.sock is not None and lnr.sock.family == socket.AF_UNIX
        lnr.close()
        if is_unix and isinstance(path, str) and not path.startswith("\0"):
            unlink_socket(path)


def unlink_socket(path):
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
