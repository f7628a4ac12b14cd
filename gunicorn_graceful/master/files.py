"""The master's files (pidfile, status file): written atomically, and never fatal.

A pidfile directory that turns unwritable (EACCES, EROFS, EPERM from `chattr +i`)
or disappears must not crash a master in the middle of a drain or a hand-over:
every write and removal that fails is one WARNING line, and the master carries on.
The WARNING is logged once per path, action and error until that path works again,
not on every tick.
"""

import errno
import os
import tempfile

from gunicorn_graceful.events import emit

_warned = set()


def write(log, path, text):
    """Replace `path` in one rename, so a reader never finds it missing or half written.

    The temporary file is made by `mkstemp` beside it (a fresh name, O_EXCL, no
    symlink followed: a planted `<path>.<pid>.tmp` link in /tmp could have had a
    root master truncate another file) and given its mode through its fd.
    True when written; False (after one WARNING) when the file system said no.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + name + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        _warn(log, "write", path, exc)
        if tmp is not None:
            _discard(tmp)
        return False
    _forget(path)
    return True


def remove(log, path):
    """Remove `path` if it is there; a failure is one WARNING, never an exception."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _warn(log, "remove", path, exc)
        return
    _forget(path)


def _discard(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _forget(path):
    """The file system said yes again: a later failure for `path` is news worth a line."""
    for key in [key for key in _warned if key[1] == path]:
        _warned.discard(key)


def _warn(log, action, path, exc):
    key = (action, path, exc.errno)
    if key in _warned:
        return
    _warned.add(key)
    emit(log, "warning", "master.file_failed", pid=os.getpid(), action=action, path=path,
         error=errno.errorcode.get(exc.errno, exc.errno), reason=exc.strerror or str(exc))
