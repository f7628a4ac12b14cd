"""Before a USR2 re-exec: import the new release's app in a subprocess, with a deadline.

A release that cannot even import is refused before a new master exists, so
the old master never sees a half-started upgrade.
"""

import os
import signal
import subprocess
import sys

_IMPORT = "from gunicorn.util import import_app; import_app(sys.argv[1])"


def check(server, cwd, timeout):
    """None when the app imports within `timeout` seconds, else the reason in one line.

    Fails closed: an app it cannot locate as `module:variable` (a paste config,
    an embedded Application) refuses the upgrade rather than passing unchecked.
    """
    app_uri = getattr(server.app, "app_uri", None)
    if not app_uri or getattr(server.cfg, "paste", None):
        return ("cannot locate the app to import (%s); set graceful_preflight = False to "
                "upgrade it without the check" % ("a paste config" if app_uri
                                                   else "no module:variable given to Gunicorn"))
    # This runs in the forked child of the master, which inherited its SIGCHLD handler;
    # Gunicorn 23's reaps every child, ours included, and subprocess then reports exit 0.
    # The child execs right after, which resets the handler anyway.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    env = with_pythonpath(dict(server.cfg.env_orig), server.cfg, cwd, first=[cwd])
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; " + _IMPORT, app_uri],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "importing %s took longer than %ss" % (app_uri, timeout)
    except OSError as exc:
        return "cannot run the import check: %s" % exc
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "exit code %s" % done.returncode


def with_pythonpath(environ, cfg, cwd, first=()):
    """`environ` with `first` and Gunicorn's pythonpath (relative to `cwd`) ahead of its
    PYTHONPATH: for a child that imports the app before Gunicorn would apply pythonpath."""
    paths = list(first) + [os.path.abspath(os.path.join(cwd, path))
                           for path in (cfg.pythonpath or "").split(",") if path]
    if paths:
        environ["PYTHONPATH"] = os.pathsep.join(
            paths + [environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return environ
