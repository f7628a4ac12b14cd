"""The operator's commands.

`gunicorn-graceful status --pidfile PATH`: what the master and each worker are
doing. The master writes `<pidfile>.status` (atomically) whenever a worker's
state changes; stock gunicornc cannot say this, its master never learns whether
a worker booted. Exit 0: running (serving, reloading, starting or stopping);
1: not running or no status file; 3: degraded (no worker ready, or workers that
cannot be replaced), so that a monitoring check can alert on it.

`gunicorn-graceful reload --pidfile PATH [--timeout S] [--json]`: HUP, then follow
it to its end, as an orchestrator needs (a rolling deploy stops at the first host
that says no): exit 0 once the new generation serves, 3 when it was rolled back
or its config failed to load (the old generation serves on), 2 when it was refused
or cannot run (no pack master, dead pid, out of time), 1 for a usage error. A HUP
the master defers (it boots, upgrades) is followed until it ran.

`gunicorn-graceful upgrade --pidfile PATH [--timeout S] [--json]`: USR2, then follow
the upgrade to its end: exit 0 when the new master is promoted (or, in place, when
the new generation serves), non-zero with the reason when the upgrade is
refused (2), rolled back (3) or out of time (5).

With --json, each prints one object on stdout (keys in docs/signals.md) and its
progress on stderr; without, one outcome line (progress before it).

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

from gunicorn_graceful import proc

POLL = 0.1
STATUS_DEGRADED = 3
STATUS_UNKNOWN = 4  # the status file is stale and the live processes cannot say what serves


def read_pid(pidfile):
    """The pid in `pidfile`; ValueError for one that names no single process (0, -1, ...)."""
    with open(pidfile) as handle:
        pid = int(handle.read().strip())
    if not proc.valid_pid(pid):
        raise ValueError("%s is not a process id" % pid)
    return pid


def alive(pid):
    """Whether the process runs: an exited one its parent has not reaped yet does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = proc.stat_fields(pid)
    return not fields or fields[0] != "Z"


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
    snapshot, path = read_status(args.pidfile, pid)
    if snapshot is None:
        print("master %s is running without a status file (%s): is it started with the "
              "gunicorn-graceful config pack?" % (pid, path), file=sys.stderr)
        return 1
    problem = stale(snapshot, pid)
    if problem:
        print("stale status file %s: %s" % (path, problem), file=sys.stderr)
        if snapshot.get("pid") != pid:
            return 1
    if args.json:
        print(json.dumps(snapshot, indent=2))
        return status_code(snapshot)
    reload_ = snapshot["reload"]
    print("master pid=%s generation=%s state=%s workers_ready=%s workers_wanted=%s serving=%s "
          "reload=%s" % (
              snapshot["pid"], snapshot["generation"], snapshot["state"],
              _known(snapshot["workers_ready"]), snapshot["workers_wanted"],
              _known(snapshot["serving"]),
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
    for child in snapshot.get("unlisted_children", ()):
        print("process pid=%s state=unlisted" % child)
    return status_code(snapshot)


def status_code(snapshot):
    return {"degraded": STATUS_DEGRADED, "unknown": STATUS_UNKNOWN}.get(snapshot["state"], 0)


def _known(value):
    return "unknown" if value is None else value


def read_status(pidfile, pid):
    """(the status file master `pid` writes, its path), or (None, why there is none).

    A new master writes `<pidfile>.2.status` until it is promoted, also while its
    old master drains after the hand-over, when the pidfile names it already.
    """
    paths = [pidfile + ".status", pidfile + ".2.status"]
    found = [(read_json(path), path) for path in paths]
    for snapshot, path in found:
        if snapshot is not None and snapshot.get("pid") == pid:
            return snapshot, path
    if found[0][0] is not None:  # another master's: `stale` says so
        return found[0]
    return None, "no %s" % paths[0]


def stale(snapshot, pid):
    """What in the status file is no longer true, or None; corrects the snapshot in place.

    The master rewrites it on every change, but a write can fail (a full or
    read-only file system) and a SIGKILLed master leaves its last one behind: a
    worker that is gone is listed as `gone` and counts as not ready. If the
    master then runs children the file does not list, the file is behind what
    serves: `state` is `unknown`, `serving` and `workers_ready` null, never a
    serving master called not serving. A file written by another master than
    the pidfile's (a reused pid) is not this master's.
    """
    if snapshot.get("pid") != pid:
        return "written by master %s, the pidfile names %s" % (snapshot.get("pid"), pid)
    gone = [w for w in snapshot["workers"] if not alive(w["pid"])]
    if not gone:
        return None
    for worker in gone:
        worker["state"] = "gone"
    listed = {w["pid"] for w in snapshot["workers"]} | {
        m["pid"] for m in snapshot.get("molds", ())}
    unlisted = [child for child in proc.children(pid) if child not in listed]
    if unlisted:
        snapshot.update(state="unknown", serving=None, workers_ready=None,
                        unlisted_children=unlisted)
        return "worker(s) %s listed but gone, process(es) %s running unlisted: the master " \
            "could not rewrite it, and what serves is not known" % (
                ",".join(str(w["pid"]) for w in gone), ",".join(map(str, unlisted)))
    snapshot["workers_ready"] = sum(1 for w in snapshot["workers"]
                                    if w["state"] in ("ready", "recycling"))
    snapshot["serving"] = snapshot["workers_ready"] > 0
    if snapshot["workers_ready"] < snapshot["workers_wanted"]:
        snapshot["state"] = "degraded"
    return "worker(s) %s listed but gone (the master could not rewrite it)" \
        % ",".join(str(w["pid"]) for w in gone)


def read_json(path, attempts=5):
    """The JSON in `path`, or None; read again when it does not parse, since a master that
    cannot replace it writes it in place (`files`) and a read may meet the write."""
    for attempt in range(attempts):
        try:
            with open(path) as handle:
                return json.load(handle)
        except OSError:
            return None
        except ValueError:
            if attempt + 1 < attempts:
                time.sleep(POLL / 5)
    return None


def read_pid_or_none(path):
    try:
        return read_pid(path)
    except (OSError, ValueError):
        return None


class Progress:
    """What is known of a reload or an upgrade so far; prints each step once, as it is first
    seen (on stderr with --json, where stdout carries the one object)."""

    def __init__(self, json_out=False):
        self.said = set()
        self.new_master = self.in_place = None
        self.stream = sys.stderr if json_out else sys.stdout

    def say(self, text):
        if text not in self.said:
            self.said.add(text)
            print(text, file=self.stream, flush=True)


class Outcome(Exception):
    """How a command ended: its exit code, its result word, its one line and its fields."""

    def __init__(self, code, result, line, **fields):
        super().__init__(line)
        self.code, self.result, self.line, self.fields = code, result, line, fields

    def report(self, command, json_out):
        if json_out:
            print(json.dumps(dict({"command": command, "result": self.result,
                                   "exit": self.code, "reason": ""}, **self.fields,
                                  line=self.line)))
        else:
            print(self.line, file=sys.stdout if self.code == 0 else sys.stderr)
        return self.code


def covers(record, seq):
    """Whether a record carries out USR2 number `seq` (a deferred one, several)."""
    return bool(record) and record.get("first_seq", record.get("seq")) <= seq \
        <= record.get("seq", -1)


def upgrade_step(pidfile, old, seq, progress):
    """One look at upgrade number `seq` of master `old`: raises Outcome when it ended, returns
    (old, seq) to follow next (a new master it was forwarded to)."""
    snapshot = read_status(pidfile, old)[0] or {}
    refusal = snapshot.get("upgrade_refused") or {}
    if covers(refusal, seq) and refusal.get("state") == "forwarded":
        progress.say("forwarded to new master %s: it runs the upgrade once it serves"
                     % refusal["to"])
        return refusal["to"], 1
    if covers(refusal, seq):
        raise Outcome(2, "refused", "upgrade refused: %s" % refusal["reason"], master=old,
                      seq=seq, reason=refusal["reason"])
    if covers(snapshot.get("upgrade_pending"), seq):
        progress.say("upgrade deferred: %s" % snapshot["upgrade_pending"]["reason"])
        return old, seq
    record = next((r for r in snapshot.get("upgrades") or [snapshot.get("upgrade")]
                   if covers(r, seq)), {})
    if covers(record, seq) and record["state"] in ("refused", "rolled_back"):
        code = 2 if record["state"] == "refused" else 3
        raise Outcome(code, record["state"], "upgrade %s: %s" % (
            record["state"].replace("_", " "), record["reason"]), master=old, seq=seq,
            new_master=record.get("new_master"), reason=record["reason"])
    if covers(record, seq) and record["state"] == "interrupted":
        raise Outcome(4, "interrupted", "upgrade interrupted: %s" % record["reason"],
                      master=old, seq=seq, reason=record["reason"])
    if covers(record, seq) and record.get("in_place"):
        in_place_step(snapshot, record, progress)
        return old, seq
    if covers(record, seq):
        progress.new_master = record.get("new_master")  # the old master's file goes when it exits
    new = progress.new_master
    if not new:
        if not alive(old):
            raise Outcome(4, "failed", "upgrade failed: master %s exited %s" % (
                old, "during the in-place upgrade" if progress.in_place else
                "before starting one"), master=old, seq=seq, reason="master exited")
        return old, seq
    progress.say("new master %s booting" % new)
    snapshot = read_status(pidfile, new)[0] or {}
    if snapshot:
        ready = sum(1 for w in snapshot["workers"] if w["state"] == "ready")
        progress.say("workers ready %s/%s" % (min(ready, snapshot["workers_wanted"]),
                                              snapshot["workers_wanted"]))
    if read_pid_or_none(pidfile) == new:
        progress.say("hand-over: old master %s draining" % old)
        if not alive(old) and not os.path.exists(pidfile + ".2"):
            raise Outcome(0, "promoted", "promoted: master %s" % new, master=new, seq=seq,
                          old_master=old, generation=snapshot.get("generation"))
    return old, seq


def in_place_step(snapshot, record, progress):
    """One look at an in-place upgrade (graceful_upgrade = "in-place"): the master keeps its
    PID, so its own status file says how far it is."""
    master = progress.in_place = record["new_master"]
    progress.say("upgrading in place: master %s" % master)
    if record["state"] != "done" and not alive(master):  # its status file stays behind
        raise Outcome(4, "failed", "upgrade failed: master %s exited during the in-place "
                      "upgrade" % master, master=master, seq=record["seq"],
                      reason="master exited")
    if record["state"] == "done":
        raise Outcome(0, "done", "done: master %s, generation %s serving" % (
            master, snapshot.get("generation")), master=master, seq=record["seq"],
            generation=snapshot.get("generation"))
    workers = [w for w in snapshot.get("workers", ())
               if w["generation"] == snapshot.get("generation")]
    if workers:
        ready = sum(1 for w in workers if w["state"] == "ready")
        progress.say("generation %s: workers ready %s/%s" % (
            snapshot["generation"], min(ready, snapshot["workers_wanted"]),
            snapshot["workers_wanted"]))


def pack_master(pidfile, verb, gone_code, wait=0.0):
    """(the live master's pid, its status file) to send `verb` to, or raises Outcome: no
    pidfile or a dead pid (`gone_code`), no status file (2: not a pack master). `wait`: how
    long a master that just started may take to write its first status file."""
    try:
        pid = read_pid(pidfile)
    except (OSError, ValueError) as exc:
        raise Outcome(gone_code, "not_running", "not running: cannot read pidfile %s (%s)"
                      % (pidfile, exc), reason="no pidfile") from None
    deadline = time.monotonic() + wait
    while True:
        if not alive(pid):
            raise Outcome(gone_code, "not_running", "not running: master %s from %s is gone"
                          % (pid, pidfile), master=pid, reason="master gone")
        snapshot = read_status(pidfile, pid)[0]
        if snapshot is not None and snapshot.get("pid") == pid:
            if not is_that_master(pid, snapshot):
                raise Outcome(gone_code, "not_running", "not running: pid %s from %s now runs "
                              "another process (the master is gone). Nothing was sent."
                              % (pid, pidfile), master=pid, reason="pid reused")
            return pid, snapshot
        if time.monotonic() >= deadline:
            raise Outcome(2, "refused", "%s refused: master %s has no status file %s.status: is "
                          "it started with the gunicorn-graceful config pack? Nothing was sent."
                          % (verb, pid, pidfile), master=pid, reason="no status file")
        time.sleep(POLL)


def is_that_master(pid, snapshot):
    """Whether `pid` runs the master that wrote `snapshot`: the process started when the
    master did (a status file from a release without the field: the pid alone)."""
    started = snapshot.get("process_started")
    return started is None or started == proc.start_time(pid)


def send(pid, sig, verb):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise Outcome(2, "not_running", "%s not sent: master %s is gone" % (verb, pid),
                      master=pid, reason="master gone") from None


def reported(command, follow, args):
    """Run `follow`, the part of a command that ends in an Outcome, and say that outcome."""
    try:
        return follow(args)
    except Outcome as outcome:
        return outcome.report(command, args.json)


def upgrade(args):
    return reported("upgrade", follow_upgrade, args)


def follow_upgrade(args):
    old, before = pack_master(args.pidfile, "upgrade", 1, wait=STATUS_WAIT)
    seq = before.get("upgrade_seq") or max(
        (before.get(key) or {}).get("seq", 0) for key in ("upgrade", "upgrade_refused"))
    seq += 1
    send(old, signal.SIGUSR2, "USR2")
    progress = Progress(args.json)
    progress.say("sent USR2 to master %s" % old)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        old, seq = upgrade_step(args.pidfile, old, seq, progress)
        time.sleep(POLL)
    raise Outcome(5, "timeout", "upgrade timed out after %ss; the old master's "
                  "graceful_upgrade_timeout decides what happens next" % args.timeout,
                  master=old, seq=seq, reason="timeout")


STATUS_WAIT = 1.0  # a master just started writes its first status file on its first tick
SLACK = 0.002      # the master rounds its clock readings to the millisecond


def reload(args):
    return reported("reload", follow_reload, args)


def follow_reload(args):
    """HUP, then the records of master `pid` (`intents`): the first after `seq` handled after
    `sent` is the one that carries this HUP out (one that arrived first and is replaced
    by a later one is superseded by it)."""
    pid, before = pack_master(args.pidfile, "reload", 2, wait=STATUS_WAIT)
    if "hup_seq" not in before:
        raise Outcome(2, "refused", "HUP not sent: master %s runs a release of the pack that "
                      "keeps no reload records (upgrade it first)" % pid, master=pid,
                      reason="no reload records")
    seq, sent = before["hup_seq"], time.monotonic() - SLACK
    send(pid, signal.SIGHUP, "HUP")
    progress = Progress(args.json)
    progress.say("sent HUP to master %s" % pid)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        pid, seq = reload_step(args.pidfile, pid, seq, sent, progress)
        time.sleep(POLL)
    raise Outcome(2, "timeout", "reload timed out after %ss (master %s)" % (args.timeout, pid),
                  master=pid, reason="timeout")


def reload_step(pidfile, pid, seq, sent, progress):
    """One look at the HUP: raises Outcome when it ended; (master, seq) to follow next."""
    snapshot = read_status(pidfile, pid)[0]
    if snapshot is None:
        successor = read_pid_or_none(pidfile)
        if not alive(pid) and successor not in (None, pid) and alive(successor):
            progress.say("master %s exited; following master %s" % (pid, successor))
            return successor, 0  # a hand-over: the new master ran what was forwarded to it
        if not alive(pid):
            raise Outcome(2, "interrupted", "reload interrupted: master %s exited before it "
                          "ended" % pid, master=pid, reason="master exited")
        return pid, seq
    mine = [r for r in snapshot.get("reloads", ()) if r["seq"] > seq and r["asked"] >= sent
            and r["state"] != "superseded"]
    if not mine:
        return pid, seq
    record = mine[0]
    fields = {"master": pid, "seq": record["seq"], "generation": record["generation"],
              "release": record["release"], "reason": record["reason"],
              "after": round(time.monotonic() - sent, 3)}
    state_name = record["state"]
    if state_name == "deferred":
        progress.say("reload deferred: %s" % record["reason"])
    elif state_name == "booting":
        progress.say("generation %s booting%s" % (record["generation"], release_of(record)))
    elif state_name == "forwarded":
        progress.say("forwarded to new master %s: it reloads once it serves" % record["to"])
        return record["to"], 0
    elif state_name == "done":
        raise Outcome(0, "done", "reload done: master %s, generation %s serving%s" % (
            pid, record["generation"], release_of(record)), **fields)
    elif state_name in ("rolled_back", "config_failed"):
        raise Outcome(3, state_name, "reload %s: %s" % (
            "rolled back" if state_name == "rolled_back" else "config failed",
            record["reason"]), **fields)
    else:  # refused, interrupted
        raise Outcome(2, state_name, "reload %s: %s" % (state_name, record["reason"]), **fields)
    return pid, seq


def release_of(record):
    return ", release %s" % record["release"] if record.get("release") else ""


TEMPLATES = {  # what `init` writes: a config always (ASGI's with --asgi), the rest on request
    "config": "graceful.py", "asgi": "graceful_asgi.py", "systemd": "myapp.service",
    "kubernetes": "deployment.yaml", "haproxy": "haproxy.cfg", "ansible": "deploy.yml"}
EXAMPLES = ("systemd", "kubernetes", "haproxy", "ansible")  # init's --systemd ... flags
IN_PLACE_UNIT = "myapp-inplace.service"  # --systemd writes both units: see the README


def template(name):
    return importlib.resources.files("gunicorn_graceful").joinpath("templates", name).read_text()


def init(args):
    """Write the templates into DIR; refuse to overwrite anything without --force, and never
    follow a symbolic link (a dangling one named like a template would write outside DIR)."""
    names = [TEMPLATES["asgi" if args.asgi else "config"]] + [
        TEMPLATES[k] for k in EXAMPLES if getattr(args, k)]
    if args.systemd:
        names.append(IN_PLACE_UNIT)
    targets = [os.path.join(args.dir, name) for name in names]
    problem = init_problem(args.dir, targets, args.force)
    if problem:
        print("not written: %s" % problem, file=sys.stderr)
        return 2
    try:
        os.makedirs(args.dir, exist_ok=True)
        for name, path in zip(names, targets):
            write_new(path, template(name), replace=args.force)
            print("wrote %s" % path)
    except OSError as exc:
        print("not written: %s: %s" % (exc.filename or args.dir, exc.strerror or exc),
              file=sys.stderr)
        return 2
    print("next: gunicorn -c %s yourapp:app" % targets[0])
    return 0


def init_problem(directory, targets, force):
    """Why `init` must write nothing, or None."""
    if os.path.lexists(directory) and not os.path.isdir(directory):
        return "%s is not a directory" % directory
    links = [path for path in targets if os.path.islink(path)]
    if links:
        return "%s is a symbolic link (init never follows one)" % ", ".join(links)
    existing = [path for path in targets if os.path.lexists(path)]
    if existing and not force:
        return "%s already exists (--force overwrites)" % ", ".join(existing)
    return None


def write_new(path, text, replace):
    """Create `path` as a new file (O_EXCL, O_NOFOLLOW: no link is followed, nothing that
    appeared meanwhile is overwritten); `replace` removes the regular file there first."""
    if replace and os.path.lexists(path) and not os.path.islink(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gunicorn-graceful")
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser("status", help="show the master's and workers' states")
    status_parser.add_argument("--pidfile", required=True, help="the master's pidfile")
    status_parser.add_argument("--json", action="store_true", help="print the raw status")
    status_parser.set_defaults(run=status)
    for name, verb, said, run in (
            ("upgrade", "USR2", "exit 0 on promotion, non-zero on rollback", upgrade),
            ("reload", "HUP", "exit 0 once served, 3 on rollback, 2 if refused", reload)):
        follower = commands.add_parser(name, help="%s and follow it: %s" % (verb, said))
        follower.add_argument("--pidfile", required=True, help="the master's pidfile")
        follower.add_argument("--timeout", type=float, default=120.0,
                              help="seconds to follow the %s (default 120)" % name)
        follower.add_argument("--json", action="store_true", help="print one JSON object")
        follower.set_defaults(run=run)
    init_parser = commands.add_parser(
        "init", help="write the config template (and deployment examples) into DIR")
    init_parser.add_argument("dir", nargs="?", default=".", help="where to write (default .)")
    for name in EXAMPLES:
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
