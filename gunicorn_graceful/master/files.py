"""The master's files (pidfile, status file): written atomically, and never fatal.

A pidfile directory that turns unwritable (EACCES, EROFS, EPERM from `chattr +i`)
or disappears must not crash a master in the middle of a drain or a hand-over:
every write and removal that fails is one WARNING line, and the master carries on.
The WARNING is logged once per path, action and error until that path works again,
not on every tick. Where the directory refuses new entries but the file itself
may still be written (an immutable or full directory), a write goes into the
file in place and a removal truncates it: a file that names what no longer is
would be read as true (`gunicorn-graceful status` would call a serving master
not serving).
"""

import errno
import os
import tempfile

from gunicorn.pidfile import Pidfile

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
        if tmp is not None:
            _discard(tmp)
        written = _in_place(path, text)
        _warn(log, "write", path, exc, "written in place" if written else "none")
        return written
    _forget(path)
    return True


def remove(log, path):
    """Remove `path` if it is there, else empty it; a failure is one WARNING, never an
    exception."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _warn(log, "remove", path, exc, "truncated" if _in_place(path, "") else "none")
        return
    _forget(path)


def _in_place(path, text):
    """Overwrite the existing file `path` with `text` (no link followed, none created).

    Written first and truncated after, so a reader sees the whole new text, or the
    old one, or (for a moment) a mix it cannot parse and reads again."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        data = text.encode()
        os.write(fd, data)
        os.ftruncate(fd, len(data))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _discard(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _forget(path):
    """The file system said yes again: a later failure for `path` is news worth a line."""
    for key in [key for key in _warned if key[1] == path]:
        _warned.discard(key)


def _warn(log, action, path, exc, fallback):
    key = (action, path, exc.errno, fallback)
    if key in _warned:
        return
    _warned.add(key)
    emit(log, "warning", "master.file_failed", pid=os.getpid(), action=action, path=path,
         error=errno.errorcode.get(exc.errno, exc.errno), reason=exc.strerror or str(exc),
         fallback=fallback)


class Owed:
    """The pidfiles a master must keep true: a write the file system refused is tried
    again each tick (`retry`) until it lands, or until that path is removed or written
    anew. Written once and forgotten, a pidfile whose write failed while a new master
    took over from a dead one would name the dead master for good: `kill -HUP $(cat
    pidfile)` would miss, or hit whatever process reused the number."""

    def __init__(self, system, log):
        self.system, self.log = system, log
        self.pending = {}  # path -> the text it must hold

    def write(self, path, text):
        if self.system.write_file(self.log, path, text):
            self.pending.pop(path, None)
            return True
        self.pending[path] = text
        return False

    def remove(self, path):
        self.pending.pop(path, None)
        self.system.remove_file(self.log, path)

    def remove_pidfile(self, path):
        """A pidfile this master no longer keeps (a HUP moved it, a trial's `.2` once
        promoted), and the status file beside it: left, it would go on describing this
        master's workers as they were."""
        self.remove(path)
        self.system.remove_file(self.log, status_path(path))

    def retry(self):
        for path, text in list(self.pending.items()):
            self.write(path, text)


def status_path(pidfile_path):
    """The status file beside a pidfile (`status.StatusFile`)."""
    return pidfile_path + ".status"


class MasterPidfile(Pidfile):
    """Gunicorn's pidfile, whose removal at exit (while it names this master) is `remove`:
    Gunicorn's own ignores a failure, and the file named a dead master after it."""

    log = None

    def unlink(self):
        try:
            with open(self.fname) as handle:
                named = int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return
        if named == self.pid:
            remove(self.log, self.fname)


def adopt_pidfile(pidfile, log):
    """Gunicorn's pidfile (made before the pack took over), removed as `MasterPidfile`."""
    if pidfile is not None:
        pidfile.__class__ = MasterPidfile
        pidfile.log = log
    return pidfile
