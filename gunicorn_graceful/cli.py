"""`gunicorn-graceful status --pidfile PATH`: what the master and each worker are doing.

The master writes `<pidfile>.status` (atomically) whenever a worker's state
changes; this command reads it and checks the master is alive. Stock gunicornc
cannot say this: its master never learns whether a worker booted.
"""

import argparse
import json
import os
import sys


def read_pid(pidfile):
    with open(pidfile) as handle:
        return int(handle.read().strip())


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(args):
    try:
        pid = read_pid(args.pidfile)
    except (OSError, ValueError) as exc:
        print("not running: cannot read pidfile %s (%s)" % (args.pidfile, exc), file=sys.stderr)
        return 1
    if not alive(pid):
        print("not running: master %s from %s is gone" % (pid, args.pidfile), file=sys.stderr)
        return 1
    try:
        with open(args.pidfile + ".status") as handle:
            snapshot = json.load(handle)
    except (OSError, ValueError) as exc:
        print("master %s is running without a status file (%s): is it started with the "
              "gunicorn-graceful config pack?" % (pid, exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snapshot, indent=2))
        return 0
    reload_ = snapshot["reload"]
    print("master pid=%s generation=%s workers_wanted=%s serving=%s reload=%s" % (
        snapshot["pid"], snapshot["generation"], snapshot["workers_wanted"],
        snapshot["serving"],
        "generation %s in progress" % reload_["generation"] if reload_ else "none"))
    for worker in snapshot["workers"]:
        print("worker pid=%s generation=%s state=%s" % (
            worker["pid"], worker["generation"], worker["state"]))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gunicorn-graceful")
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser("status", help="show the master's and workers' states")
    status_parser.add_argument("--pidfile", required=True, help="the master's pidfile")
    status_parser.add_argument("--json", action="store_true", help="print the raw status")
    status_parser.set_defaults(run=status)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
