"""An in-place upgrade's exec, both ways: the state handed over, what crosses, the go-back.

The code that execs writes its state (`inplace.InPlace.payload`) as JSON into a
memfd named by GRACEFUL_IN_PLACE_FD and keeps every descriptor the state names
across the exec (`fds`); the master's signals are blocked across it (the mask
survives an exec), so a TERM in the window waits for the next code instead of
killing the master. The next code reads the state back (`take`, from the
arbiter's `install`), works on copies of the descriptors, and at its first tick
closes the originals and takes the variable out of its environment (`close`):
until then, a code that fails at start can exec back with everything untouched
(`go_back`, from `relaunch`). An exec that fails returns why, after undoing all.
"""

import json
import os
import signal
import sys

from gunicorn_graceful import compat, settings
from gunicorn_graceful.events import emit

ENV = settings.IN_PLACE_ENV
PIDFILE_ENV = "GRACEFUL_IN_PLACE_PIDFILE"  # the next code's pidfile, until its first tick
RELAUNCH = "gunicorn_graceful.master.relaunch"
# Blocked across an exec; the next code unblocks them at its first tick.
SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD)


def command(args):
    """Gunicorn's START_CTX args as a command that starts it again (a USR2's new master, an
    in-place exec): `python -m gunicorn` for its __main__ module (run as a script, it would
    put the gunicorn package first on sys.path, so that `import http` finds gunicorn.http),
    and no `relaunch`."""
    args = list(args)
    if len(args) > 2 and args[1] == "-m" and args[2] == RELAUNCH:
        args[1:3] = []
    if len(args) > 1 and args[1].endswith(os.path.join("gunicorn", "__main__.py")):
        args[1:2] = ["-m", "gunicorn"]
    return args


def exec_with(arbiter, system, code, make_state, metrics):
    """Replace this process's code with `code` ((executable, argv, cwd, environment)),
    handing it `make_state()`; returns only when the exec failed: why. `metrics`: this
    master's (None when off), paused across the exec so that no scrape is cut."""
    # First: a signal from here on stays pending in the kernel across the exec, and the
    # next code's first tick unblocks it (so no worker is reaped between the state and the
    # exec). Those Gunicorn's handlers already queued in memory are handed over (`signals`),
    # or queued again if the exec fails.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    state = make_state()
    emit(arbiter.log, "info", "upgrade.exec", pid=arbiter.pid, direction=state["direction"],
         workers=len(state["workers"]), cwd=code[2])
    if metrics:
        metrics.pause()
    state["signals"] = compat.take_queued_signals(arbiter)
    problem = system.execute(code, state)
    compat.queue_signals(arbiter, state["signals"])
    if metrics:
        metrics.resume()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    return problem


def first_tick(arbiter, state):
    """The next code runs its loop: the signals the exec held are delivered, the handed
    descriptors close (copies were adopted)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    compat.queue_signals(arbiter, state["signals"])
    close(state)


def execute(code, state):
    """Exec `code` ((executable, argv, cwd, environment)) with `state` in a memfd and every
    descriptor it names kept; returns only when the exec failed: why, after undoing all."""
    executable, args, cwd, environ = code
    kept_fds = fds(state)
    memfd = os.memfd_create("gunicorn-graceful-handover", 0)
    os.write(memfd, json.dumps(state).encode())
    environ = dict(environ, **{ENV: str(memfd)})
    if state["notify"]:
        environ["NOTIFY_SOCKET"] = state["notify"]
    kept = [(fd, os.get_inheritable(fd)) for fd in kept_fds]
    for fd in kept_fds:
        os.set_inheritable(fd, True)
    here = os.getcwd()
    try:
        os.chdir(cwd)
        os.execve(executable, args, environ)
    except OSError as exc:
        problem = "cannot exec %s in %s: %s" % (executable, cwd, exc.strerror or exc)
    os.chdir(here)
    for fd, inheritable in kept:
        os.set_inheritable(fd, inheritable)
    os.close(memfd)
    return problem


def fds(state):
    """Every descriptor a hand-over names."""
    found = list(state["listeners"])
    for item in state["workers"]:
        found += [item["heartbeat"]] + ([item["slot"]] if item["slot"] is not None else [])
    if state["metrics"] and state["metrics"]["fd"] is not None:
        found.append(state["metrics"]["fd"])
    found += [item["sock"] for item in state["molds"]]
    if state["check"]:
        found += [state["check"]["sock"], state["check"]["errors"]]
    return found + (state["handoff"] or [])


def take():
    """The state an upgrade handed this code (`inplace.InPlace.payload`), or None."""
    fd = os.environ.get(ENV)
    if not fd:
        return None
    return json.loads(os.pread(int(fd), 1 << 24, 0).decode())


def wrote_pidfile(path):
    """In the next code, once Gunicorn's start wrote its pidfile (before the pack's start):
    if this code goes back before its first tick, the code it goes back to removes that
    pidfile when it is not its own (`go_back`; Gunicorn's start does not at an exit)."""
    if path is not None:
        os.environ[PIDFILE_ENV] = path


def close(state):
    """At the first tick: the originals of what was adopted as copies, and the memfd."""
    os.environ.pop(PIDFILE_ENV, None)
    for fd in fds(state) + [int(os.environ.pop(ENV))]:
        try:
            os.close(fd)
        except OSError:
            pass


def go_back(code, system):
    """From `relaunch`, when Gunicorn returned: a code exec'd forward that exits before its
    first tick (which takes the hand-over out of the environment: `close`) execs the code it
    came from, which adopts the workers again. Returns when there is nothing to go back to
    (or the exec failed: the master then ends)."""
    state = take()
    if state is None or state["direction"] != "new":
        return
    reason = code if isinstance(code, str) else \
        "the new code exited (code %s) at start, before its first tick; its error is above " \
        "on stderr" % code
    state = dict(state, direction="back", reason=reason,
                 pidfile=os.environ.pop(PIDFILE_ENV, None) or state["pidfile"])
    os.close(int(os.environ.pop(ENV)))
    sys.stderr.write("gunicorn-graceful: event=upgrade.exec direction=back reason=%r\n"
                     % reason)
    problem = system.execute(tuple(state["back"]), state)
    sys.stderr.write("gunicorn-graceful: event=upgrade.exec_back_failed reason=%r\n" % problem)


def binds_of(cfg):
    """What decides a code's listeners (compared across an exec as `binds.changed` does)."""
    return json.loads(json.dumps({"address": cfg.address, "certfile": cfg.certfile,
                                  "keyfile": cfg.keyfile}))


def environ_of(cfg):
    """The environment Gunicorn started with (what its USR2 execs with), without the pack's
    hand-over or systemd's socket (`execute` adds them back for the exec only)."""
    environ = dict(cfg.env_orig)
    environ.pop(ENV, None)
    environ.pop("NOTIFY_SOCKET", None)
    return environ


def relaunched(args):
    """`command` run through `relaunch` (the python -m entry an in-place exec runs)."""
    return [args[0], "-m", RELAUNCH] + args[1:]
