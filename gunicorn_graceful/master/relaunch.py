"""`python -m gunicorn_graceful.master.relaunch COMMAND...`: Gunicorn, as an in-place upgrade
execs it.

COMMAND is Gunicorn's own (its START_CTX args but the interpreter): a script path,
or `-m gunicorn`, then Gunicorn's options. It runs the way Python would have run
it, so Gunicorn's START_CTX, its options and a later upgrade see the same command.

The one thing added: a code exec'd by an in-place upgrade that exits before its
first tick (a config that raises, a hook, a setting the pack refuses) has not
touched the workers it was handed, so it execs the code it came from, which
adopts them again (`handover.go_back`), instead of ending the master.

With `daemon = True`, nothing here daemonizes again (`stay`).

The in-place check runs here too: Gunicorn's --check-config at nice 10; with
graceful_mold, Gunicorn's own start with `Arbiter.run` replaced
(`GracefulArbiter.run_as_check`), so that the check becomes the new generation's
mold instead of a master.
"""

import os
import runpy
import sys
import traceback

def run(command):
    """Gunicorn's exit: its code, or the message of a SystemExit that carries one."""
    try:
        if command[:1] == ["-m"]:
            sys.argv = [command[1]] + command[2:]
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(command)
            runpy.run_path(command[0], run_name="__main__")
    except SystemExit as exc:
        return exc.code
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def stay(enable_stdio_inheritance=False):
    """Replaces Gunicorn's `util.daemonize` in what `relaunch` runs: with `daemon = True`,
    the exec'd code would fork away from the master's PID (the PID that keeps its workers
    exits, the service with it), and the mold's check from the master it must stay a
    child of. The exec'd code is the daemon already (the same process)."""


def main():
    from gunicorn import util
    from gunicorn_graceful.master import handover, inplace, mold_process, system
    util.daemonize = stay
    if inplace.CHECK in sys.argv:  # the check must not take CPU from the serving workers
        os.nice(10)
    if mold_process.CHECK_ENV in os.environ:  # the check becomes the mold: not niced, as
        from gunicorn.arbiter import Arbiter  # its workers could not be un-niced
        from gunicorn_graceful.master.arbiter import GracefulArbiter
        Arbiter.run = GracefulArbiter.run_as_check
    code = run(sys.argv[1:])
    handover.go_back(code, system.System())  # returns when there is nothing to go back to
    sys.exit(code)


if __name__ == "__main__":
    main()
