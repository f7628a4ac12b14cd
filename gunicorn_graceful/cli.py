"""The operator's commands.

`gunicorn-graceful status --pidfile PATH`: what the master and each worker are
doing. The master writes `<pidfile>.status` (atomically) whenever a worker's
state changes; stock gunicornc cannot say this, its master never learns whether
a worker booted. Exit 0: running (serving, reloading, starting or stopping);
1: not running or no status file; 3: degraded (no worker ready, or workers that
cannot be replaced), so that a monitoring check can alert on it.

`gunicorn-graceful upgrade --pidfile PATH [--timeout S]`: USR2, then follow the
upgrade to its end: exit 0 when the new master is promoted (or, in place, when
the new generation serves), non-zero with the reason when the upgrade is
refused (2), rolled back (3) or out of time (5).

`gunicorn-graceful init [DIR] [--asgi] [--systemd] [--kubernetes] [--haproxy] [--force]`:
write the config template (and deployment examples) shipped with the package,
so that a `pip install` user gets the same files as `conf/` in the repository.
"""

import argparse
import importlib.resources
import json
import os
import signal
import sys
import time

POLL = 0.1
STATUS_DEGRADED = 3


def read_pid(pidfile):
    with open(pidfile) as handle:
        return int(handle.read().strip())


def alive(pid):
    """Whether the process runs: an exited one its parent has not reaped yet does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%s/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def master_pid(pidfile):
    """The pid in `pidfile`, or None after saying on stderr why it cannot be read."""
    try:
        return read_pid(pidfile)
    except (OSError, ValueError) as exc:
        print("not running: cannot read pidfile %s (%s)" % (pidfile, exc), file=sys.stderr)
        return None


def status(args):
    pid = master_pid(args.pidfile)
    if pid is None:
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
    problem = stale(snapshot, pid)
    if problem:
        print("stale status file %s.status: %s" % (args.pidfile, problem), file=sys.stderr)
        if snapshot.get("pid") != pid:
            return 1
    if args.json:
        print(json.dumps(snapshot, indent=2))
        return STATUS_DEGRADED if snapshot.get("state") == "degraded" else 0
    reload_ = snapshot["reload"]
    print("master pid=%s generation=%s state=%s workers_ready=%s workers_wanted=%s serving=%s "
          "reload=%s" % (
              snapshot["pid"], snapshot["generation"], snapshot["state"],
              snapshot["workers_ready"], snapshot["workers_wanted"], snapshot["serving"],
              "generation %s in progress" % reload_["generation"] if reload_ else "none"))
    degraded = snapshot["degraded"]
    if degraded:
        print("degraded since=%s failures=%s reason=%s" % (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(degraded["since"])),
            degraded["failures"], json.dumps(degraded["reason"])))
    for mold in snapshot.get("molds", ()):
        print("mold pid=%s generation=%s state=%s" % (
            mold["pid"], mold["generation"], mold["state"]))
    for worker in snapshot["workers"]:
        print("worker pid=%s generation=%s state=%s" % (
            worker["pid"], worker["generation"], worker["state"]))
    return STATUS_DEGRADED if snapshot["state"] == "degraded" else 0


def stale(snapshot, pid):
    """What in the status file is no longer true, or None; corrects the snapshot in place.

    The master rewrites it on every change, but a write can fail (an unwritable
    directory) and a SIGKILLed master leaves its last one behind: a worker that
    is gone is listed as `gone` and counts as not ready; a file written by
    another master than the pidfile's (a reused pid) is not this master's.
    """
    if snapshot.get("pid") != pid:
        return "written by master %s, the pidfile names %s" % (snapshot.get("pid"), pid)
    gone = [w for w in snapshot["workers"] if not alive(w["pid"])]
    if not gone:
        return None
    for worker in gone:
        worker["state"] = "gone"
    snapshot["workers_ready"] = sum(1 for w in snapshot["workers"]
                                    if w["state"] in ("ready", "recycling"))
    snapshot["serving"] = snapshot["workers_ready"] > 0
    if snapshot["workers_ready"] < snapshot["workers_wanted"]:
        snapshot["state"] = "degraded"
    return "worker(s) %s listed but gone (the master could not rewrite it)" \
        % ",".join(str(w["pid"]) for w in gone)


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def read_pid_or_none(path):
    try:
        return read_pid(path)
    except (OSError, ValueError):
        return None


class Progress:
    """What is known of an upgrade so far; prints each step once, as it is first seen."""

    def __init__(self):
        self.said = set()
        self.new_master = None

    def say(self, text):
        if text not in self.said:
            self.said.add(text)
            print(text, flush=True)


def upgrade_step(pidfile, old, seq, progress):
    """One look at upgrade number `seq`: an exit code when it ended, None while it goes on."""
    snapshot = read_json(pidfile + ".status") or {}
    refusal = snapshot.get("upgrade_refused") or {}
    if refusal.get("seq") == seq:
        print("upgrade refused: %s" % refusal["reason"], file=sys.stderr)
        return 2
    record = snapshot.get("upgrade") or {}
    if record.get("seq") == seq and record["state"] == "refused":
        print("upgrade refused: %s" % record["reason"], file=sys.stderr)
        return 2
    if record.get("seq") == seq and record["state"] == "rolled_back":
        print("upgrade rolled back: %s" % record["reason"], file=sys.stderr)
        return 3
    if record.get("seq") == seq and record.get("in_place"):
        return in_place_step(snapshot, record, progress)
    if record.get("seq") == seq:
        progress.new_master = record.get("new_master")  # the old master's file goes when it exits
    new = progress.new_master
    if not new:
        if not alive(old):
            print("upgrade failed: old master %s exited before starting one" % old,
                  file=sys.stderr)
            return 4
        return None
    progress.say("new master %s booting" % new)
    snapshot = read_json(pidfile + ".2.status") or read_json(pidfile + ".status") or {}
    if snapshot.get("pid") == new:
        ready = sum(1 for w in snapshot["workers"] if w["state"] == "ready")
        progress.say("workers ready %s/%s" % (min(ready, snapshot["workers_wanted"]),
                                              snapshot["workers_wanted"]))
    if read_pid_or_none(pidfile) == new:
        progress.say("hand-over: old master %s draining" % old)
        if not alive(old) and not os.path.exists(pidfile + ".2"):
            progress.say("promoted: master %s" % new)
            return 0
    return None


def in_place_step(snapshot, record, progress):
    """One look at an in-place upgrade (graceful_upgrade = "in-place"): the master keeps its
    PID, so its own status file says how far it is."""
    progress.say("upgrading in place: master %s" % record["new_master"])
    if record["state"] == "done":
        progress.say("done: master %s, generation %s serving" % (record["new_master"],
                                                                 snapshot.get("generation")))
        return 0
    workers = [w for w in snapshot.get("workers", ())
               if w["generation"] == snapshot.get("generation")]
    if workers:
        ready = sum(1 for w in workers if w["state"] == "ready")
        progress.say("generation %s: workers ready %s/%s" % (
            snapshot["generation"], min(ready, snapshot["workers_wanted"]),
            snapshot["workers_wanted"]))
    return None


def upgrade(args):
    old = master_pid(args.pidfile)
    if old is None:
        return 1
    if not alive(old):
        print("not running: master %s from %s is gone" % (old, args.pidfile), file=sys.stderr)
        return 1
    before = read_json(args.pidfile + ".status")
    if before is None:
        print("upgrade refused: master %s has no status file %s.status: is it started with the "
              "gunicorn-graceful config pack? Nothing was sent." % (old, args.pidfile),
              file=sys.stderr)
        return 2
    seq = max((before.get(key) or {}).get("seq", 0) for key in ("upgrade", "upgrade_refused")) + 1
    try:
        os.kill(old, signal.SIGUSR2)
    except ProcessLookupError:
        print("not running: master %s from %s is gone" % (old, args.pidfile), file=sys.stderr)
        return 1
    progress = Progress()
    progress.say("sent USR2 to master %s" % old)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        code = upgrade_step(args.pidfile, old, seq, progress)
        if code is not None:
            return code
        time.sleep(POLL)
    print("upgrade timed out after %ss; the old master's graceful_upgrade_timeout decides "
          "what happens next" % args.timeout, file=sys.stderr)
    return 5


TEMPLATES = {  # what `init` writes: a config always (ASGI's with --asgi), the rest on request
    "config": "graceful.py", "asgi": "graceful_asgi.py", "systemd": "myapp.service",
    "kubernetes": "deployment.yaml", "haproxy": "haproxy.cfg"}
IN_PLACE_UNIT = "myapp-inplace.service"  # --systemd writes both units: see the README


def template(name):
    return importlib.resources.files("gunicorn_graceful").joinpath("templates", name).read_text()


def init(args):
    """Write the templates into DIR; refuse to overwrite anything without --force."""
    names = [TEMPLATES["asgi" if args.asgi else "config"]] + [
        TEMPLATES[k] for k in ("systemd", "kubernetes", "haproxy") if getattr(args, k)]
    if args.systemd:
        names.append(IN_PLACE_UNIT)
    targets = [os.path.join(args.dir, name) for name in names]
    existing = [path for path in targets if os.path.exists(path)]
    if existing and not args.force:
        print("not written: %s already exists (--force overwrites)" % ", ".join(existing),
              file=sys.stderr)
        return 2
    os.makedirs(args.dir, exist_ok=True)
    for name, path in zip(names, targets):
        with open(path, "w") as handle:
            handle.write(template(name))
        print("wrote %s" % path)
    print("next: gunicorn -c %s yourapp:app" % targets[0])
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gunicorn-graceful")
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser("status", help="show the master's and workers' states")
    status_parser.add_argument("--pidfile", required=True, help="the master's pidfile")
    status_parser.add_argument("--json", action="store_true", help="print the raw status")
    status_parser.set_defaults(run=status)
    upgrade_parser = commands.add_parser(
        "upgrade", help="USR2 and follow it: exit 0 on promotion, non-zero on rollback")
    upgrade_parser.add_argument("--pidfile", required=True, help="the master's pidfile")
    upgrade_parser.add_argument("--timeout", type=float, default=120.0,
                                help="seconds to follow the upgrade (default 120)")
    upgrade_parser.set_defaults(run=upgrade)
    init_parser = commands.add_parser(
        "init", help="write the config template (and deployment examples) into DIR")
    init_parser.add_argument("dir", nargs="?", default=".", help="where to write (default .)")
    for name in ("systemd", "kubernetes", "haproxy"):
        init_parser.add_argument("--" + name, action="store_true",
                                 help="also write %s" % TEMPLATES[name])
    init_parser.add_argument("--asgi", action="store_true",
                             help="write the ASGI config (%s) instead" % TEMPLATES["asgi"])
    init_parser.add_argument("--force", action="store_true", help="overwrite existing files")
    init_parser.set_defaults(run=init)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
