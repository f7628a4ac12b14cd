"""The master's files (pidfile, status file): written atomically, and never fatal.

A pidfile directory that turns unwritable (EACCES, EROFS, EPERM from `chattr +i`)
or disappears must not crash a master in the middle of a drain or a hand-over:
every write and removal that fails is one WARNING line, and the master carries on.
The WARNING is logged once per path, action and error, not on every tick.
"""

import errno
import os

from gunicorn_graceful.events import emit

_warned = set()


def write(log, path, text):
    """Replace `path` in one rename, so a reader never finds it missing or half written.

    True when written; False (after one WARNING) when the file system said no.
    """
    tmp = "%s.%s.tmp" % (path, os.getpid())
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        _warn(log, "write", path, exc)
        _discard(tmp)
        return False
    _warned.discard(("write", path))
    return True


def remove(log, path):
    """Remove `path` if it is there; a failure is one WARNING, never an exception."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _warn(log, "remove", path, exc)


def _discard(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _warn(log, action, path, exc):
    key = (action, path, exc.errno)
    if key in _warned:
        return
    _warned.add(key)
    emit(log, "warning", "master.file_failed", pid=os.getpid(), action=action, path=path,
         error=errno.errorcode.get(exc.errno, exc.errno), reason=exc.strerror or str(exc))
