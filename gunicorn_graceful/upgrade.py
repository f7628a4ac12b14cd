"""USR2: a new master beside the old one, handed the service only when it is ready.

tableflip's rules. Invariants:
- At most two masters, at most one of them not ready; no new upgrade until the
  previous one ended, its new master reaped included (refusals:
  `phase.REFUSALS` and `refusal` below).
- The hand-over is asked and acknowledged (`upgrade_report`): a new master
  whose workers are all ready asks; its old master acknowledges only if it has
  not rolled back, then stops itself (a hand-over: no lame duck, no STOPPING);
  the new master takes the service only once acknowledged or once its old
  master is gone. The two masters can never both stop.
- The pidfile always names a live master that serves: the new master rewrites
  it (atomically) only when all its workers are ready, also when its old
  master died meanwhile; then it is promoted.
- Only the master that is the service speaks for it to systemd: MAINPID and
  READY from a new master at its take-over, never STOPPING from one on trial.
- A new master that fails or is late is rolled back by the old master, which
  keeps serving, logs the reason the new master reported (`upgrade_report`),
  removes `<pidfile>.2` and its status file, and re-binds the control socket.
"""

import dataclasses
import os
import signal

from gunicorn_graceful import clock, compat, files, settings, upgrade_report
from gunicorn_graceful.events import emit
from gunicorn_graceful.phase import Phase
from gunicorn_graceful.pool import KILL_GRACE, signal_name

# Exit codes of the forked child of a USR2 that never became a new master.
EXEC_FAILED = 70
PRE_EXEC_FAILED = 71


@dataclasses.dataclass
class Upgrade:
    """A USR2 upgrade, as its old master sees it."""

    seq: int
    new_master: int
    report: object
    started: float = dataclasses.field(default_factory=clock.monotonic)
    exit_status: object = None
    stop_sent: float = 0.0


class Upgrades:
    """The USR2 side of one master: as an old master, and as a new master on trial."""

    def __init__(self, arbiter):
        self.arbiter = arbiter
        self.current = None
        self.seq = 0
        self.last = None        # the last upgrade's outcome, for the status file
        self.last_refusal = None
        self.report_fd, self.ack_fd, self.returns_totals = upgrade_report.take(
            os.environ, arbiter.cfg.env_orig)
        self.asked = False
        self.heard = b""  # what the old master wrote on the ack pipe
        self.handed_to = None  # as an old master: the upgrade it handed the service to

    # -- the old master -------------------------------------------------------------------

    def start(self):
        """USR2: start a new master that takes over only once all its workers are ready."""
        arbiter = self.arbiter
        self.seq += 1
        reason = self.refusal()
        if reason:
            self.last_refusal = {"seq": self.seq, "reason": reason}
            arbiter.status.write()
            emit(arbiter.log, "error", "upgrade.refused", pid=arbiter.pid, reason=reason)
            return
        self.drop_files()
        report = upgrade_report.Channel()
        self.prepare_reexec(report)
        parent = os.getpid()
        try:
            arbiter.reexec()
        except BaseException:
            if os.getpid() != parent:
                os._exit(EXEC_FAILED)  # a forked child that cannot exec must never run this loop
            raise
        finally:
            arbiter.cfg.env_orig.pop(upgrade_report.ENV, None)
            report.after_fork()
        self.current = Upgrade(self.seq, arbiter.reexec_pid, report)
        arbiter.phase.move(Phase.UPGRADING)
        self.record(self.current, "booting")
        emit(arbiter.log, "info", "upgrade.start", pid=arbiter.pid, new_master=arbiter.reexec_pid,
             timeout=settings.current().upgrade_timeout)
        arbiter.notifier.status(arbiter.log, "upgrading: new master %s booting"
                                % arbiter.reexec_pid)

    def refusal(self):
        """Why a USR2 cannot start now, or None. Each reason avoids a half state."""
        arbiter = self.arbiter
        reason = arbiter.phase.refusal("upgrade", old=arbiter.master_pid or arbiter.pid,
                                       new=arbiter.reexec_pid or arbiter.pid,
                                       generation=arbiter.generation)
        if reason:
            return reason
        if arbiter.reexec_pid:  # Gunicorn's reexec would ignore the USR2 ("Child exists")
            return ("the new master %s of the last upgrade is still stopping: USR2 again once "
                    "it exited" % arbiter.reexec_pid)
        if os.getpid() == 1:
            return ("this master is PID 1: its exit would end the container; run it under an "
                    "init (tini, dumb-init) or use HUP")
        if arbiter.cfg.reuse_port:
            return "reuse_port is on: Gunicorn cannot hand its listeners to a new master"
        return None

    def prepare_reexec(self, report):
        """Fix what the new master will be started with (Gunicorn's START_CTX and environment).

        Started as `python -m gunicorn`, Gunicorn re-executes `.../gunicorn/__main__.py`
        as a script, which puts the gunicorn package first on sys.path so that
        `import http` finds gunicorn.http and the new master's app fails to
        import; it is re-executed as `-m gunicorn` instead. With
        graceful_release_link, the new master starts in the release the deploy
        symlink points to now. Its environment gets back systemd's NOTIFY_SOCKET,
        which the pack took out of this process's (and a HUP's config copies
        this process's), and carries the report channel's write end.
        """
        arbiter = self.arbiter
        if arbiter.notifier.address:
            arbiter.cfg.env_orig["NOTIFY_SOCKET"] = arbiter.notifier.address
        arbiter.cfg.env_orig[upgrade_report.ENV] = report.environ_value()
        args = arbiter.START_CTX["args"]
        if len(args) > 1 and args[1].endswith(os.path.join("gunicorn", "__main__.py")):
            arbiter.START_CTX["args"] = [args[0], "-m", "gunicorn"] + args[2:]
        if settings.current().release_link:
            arbiter.START_CTX["cwd"] = settings.current().release_link

    def new_master_exited(self, status):
        """Reaped (possibly inside the SIGCHLD handler): only note it; `watch` acts."""
        if self.current is not None:
            self.current.exit_status = status

    def watch(self):
        """Old master, each tick: roll back when the new master died or ran out of time."""
        arbiter, upgrade = self.arbiter, self.current
        if upgrade is None:
            return
        waited = clock.monotonic() - upgrade.started
        if not arbiter.reexec_pid:
            self.current = None
            if arbiter.metrics:
                arbiter.metrics.carry(upgrade.report.returned_totals())
            reported = upgrade.report.reason()
            if exited_pre_exec_refused(upgrade.exit_status):
                self.refused_before_exec(upgrade, reported)
            elif not upgrade.stop_sent:
                self.roll_back(upgrade, waited, describe_master_exit(upgrade.exit_status,
                                                                     reported))
            self.clean_up()
        elif not upgrade.stop_sent and upgrade.report.asks_to_take_over():
            self.hand_over(upgrade)
        elif not upgrade.stop_sent and waited > settings.current().upgrade_timeout:
            upgrade.stop_sent = clock.monotonic()
            self.roll_back(upgrade, waited, "new master not ready after %.1fs "
                           "(graceful_upgrade_timeout)" % waited)
            signal_process(upgrade.new_master, signal.SIGTERM)
        elif upgrade.stop_sent and clock.monotonic() - upgrade.stop_sent \
                > arbiter.cfg.graceful_timeout + KILL_GRACE:
            signal_process(upgrade.new_master, signal.SIGKILL)

    def hand_over(self, upgrade):
        """The new master's workers are all ready and it asks: give it the service, then stop
        (Gunicorn's loop halts on StopIteration; `stop` sees the new master and neither
        closes the door nor tells systemd the service stops).

        The old master names its successor itself, before it answers: the pidfile
        (else its own exit could unlink it before the new master rewrites it) and
        systemd's MAINPID (which systemd takes from the main process without
        NotifyAccess=all, and must know before this process exits). The SIGCHLD
        wakes the new master to read the answer now.
        """
        arbiter = self.arbiter
        if arbiter.pidfile is not None:
            files.write(arbiter.log, arbiter.pidfile.fname, "%s\n" % upgrade.new_master)
        arbiter.notifier.send(arbiter.log, MAINPID=upgrade.new_master,
                              STATUS="handing over to new master %s" % upgrade.new_master)
        upgrade.report.acknowledge()
        self.handed_to = upgrade
        signal_process(upgrade.new_master, signal.SIGCHLD)
        self.record(upgrade, "handed_over")
        emit(arbiter.log, "info", "upgrade.handing_over", pid=arbiter.pid,
             new_master=upgrade.new_master, after=clock.monotonic() - upgrade.started)
        raise StopIteration

    def roll_back(self, upgrade, waited, reason):
        arbiter = self.arbiter
        emit(arbiter.log, "error", "upgrade.rollback", pid=arbiter.pid,
             new_master=upgrade.new_master, after=waited, reason=reason)
        self.record(upgrade, "rolled_back", reason)
        arbiter.phase.move(Phase.SERVING)
        arbiter.notifier.ready(arbiter.log, "upgrade rolled back, master %s still serving: %s"
                               % (arbiter.pid, reason))

    def refused_before_exec(self, upgrade, reason):
        """The forked child's checks (pidfile, pre-flight import) refused: no new master ran."""
        arbiter = self.arbiter
        reason = reason or "the checks before the exec failed"
        emit(arbiter.log, "error", "upgrade.refused", pid=arbiter.pid, reason=reason)
        self.record(upgrade, "refused", reason)
        arbiter.phase.move(Phase.SERVING)
        arbiter.notifier.ready(arbiter.log, "upgrade refused, master %s still serving: %s"
                               % (arbiter.pid, reason))

    def clean_up(self):
        """The new master is gone without taking over: nothing of it may linger.

        Its `.2` pidfile and status file go (a SIGKILLed one removed neither),
        and the control socket path it re-bound (then unlinked, or left dead)
        is bound to this master again, so that gunicornc keeps working.
        """
        self.drop_files()
        compat.rebind_control_socket(self.arbiter)

    def drop_files(self):
        """Remove `<pidfile>.2` and its status file: with no new master running they are stale
        (and a stale one naming a pid that is alive again would stop the next new master)."""
        pidfile = self.arbiter.cfg.pidfile
        if pidfile is not None:
            files.remove(self.arbiter.log, pidfile + ".2.status")
            files.remove(self.arbiter.log, pidfile + ".2")

    def record(self, upgrade, state_name, reason=""):
        """The outcome `gunicorn-graceful upgrade` follows in the status file."""
        self.last = {"seq": upgrade.seq, "state": state_name, "new_master": upgrade.new_master,
                     "reason": reason}
        self.arbiter.status.write()

    # -- the new master -------------------------------------------------------------------

    def ask_to_take_over(self):
        """New master, each tick once all its workers are ready: ask the old master for the
        service; take it once acknowledged, or once the old master is gone (SIGKILL, OOM)
        and nobody is left to ask. An old master of an earlier version, which passed no
        ack fd, is told by SIGTERM, as it used to be."""
        arbiter = self.arbiter
        if self.ack_fd is None:
            self.take_over()
            if arbiter.master_pid == os.getppid():  # still our parent: never a reused pid
                signal_process(arbiter.master_pid, signal.SIGTERM)
            return
        if not self.asked:
            self.asked = True
            upgrade_report.tell(self.report_fd, upgrade_report.HANDOVER)
            emit(arbiter.log, "info", "upgrade.asking", pid=arbiter.pid,
                 old_master=arbiter.master_pid, generation=arbiter.generation)
        self.heard += upgrade_report.read_available(self.ack_fd)
        if upgrade_report.acknowledged(self.heard) or arbiter.master_pid != os.getppid():
            self.take_over()

    def take_over(self):
        """Become the service: pidfile, systemd MAINPID and READY (the old master stops)."""
        arbiter = self.arbiter
        arbiter.phase.move(Phase.TAKING_OVER)
        if arbiter.cfg.pidfile is not None:
            files.write(arbiter.log, arbiter.cfg.pidfile, "%s\n" % arbiter.pid)
        arbiter.notifier.send(arbiter.log, MAINPID=arbiter.pid)
        arbiter.notifier.ready(arbiter.log, "new master %s serving, old master %s draining"
                               % (arbiter.pid, arbiter.master_pid))
        emit(arbiter.log, "info", "upgrade.handover", pid=arbiter.pid,
             old_master=arbiter.master_pid, generation=arbiter.generation)
        upgrade_report.close(self.report_fd)  # the ack pipe stays open: the old master's totals
        self.report_fd = None

    def may_promote(self):
        """Gunicorn promotes as soon as its parent changed; the pack waits until it serves."""
        arbiter = self.arbiter
        return arbiter.master_pid and arbiter.master_pid != os.getppid() \
            and arbiter.phase.is_in(Phase.TAKING_OVER)

    def promoted(self, old_master, trial_pidfile):
        """Promoted: the pidfile and status file of the trial go, and the control socket path
        is bound to this master again (Gunicorn 27's old master re-binds it at each fork,
        so a worker it replaced during the upgrade took the path back)."""
        arbiter = self.arbiter
        compat.rebind_control_socket(arbiter)
        arbiter.phase.move(Phase.SERVING)
        self.heard += upgrade_report.read_available(self.ack_fd)
        upgrade_report.close(self.ack_fd)
        self.ack_fd = None
        if arbiter.metrics:
            arbiter.metrics.carry(upgrade_report.totals(self.heard))
        emit(arbiter.log, "info", "upgrade.promoted", pid=arbiter.pid, old_master=old_master)
        if trial_pidfile is not None:
            files.remove(arbiter.log, trial_pidfile.fname + ".status")
            files.remove(arbiter.log, trial_pidfile.fname)

    def send_totals(self):
        """Once this master's workers are gone, its metrics' totals go to the master that
        serves on (`upgrade_report`): an old master that handed over gives them to its new
        master; a new master stopped on trial returns them to its old master."""
        metrics = self.arbiter.metrics
        if not metrics:
            return
        if self.handed_to is not None:
            self.handed_to.report.send_totals(metrics.export())
        elif self.report_fd is not None and self.returns_totals:
            upgrade_report.send_totals(self.report_fd, metrics.export())

    def report_halt(self, reason):
        """A new master on trial that halts tells its old master why."""
        if reason and self.arbiter.phase.is_in(Phase.TRIAL):
            upgrade_report.tell(self.report_fd, reason)


def signal_process(pid, sig):
    """os.kill, where a process that is already gone is no error: it is what was wanted (and
    one that is not ours any more, EPERM, is left alone rather than crash the master)."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exited_pre_exec_refused(status):
    """Whether the forked child exited on its own pre-exec checks (no new master ran)."""
    return status is not None and os.WIFEXITED(status) \
        and os.WEXITSTATUS(status) == PRE_EXEC_FAILED


def describe_master_exit(status, reported=""):
    """Why a new master ended before it took over: its signal, its own report, its exit code."""
    if status is not None and os.WIFSIGNALED(status):
        return "new master killed by %s before it took over" \
            % signal_name(os.WTERMSIG(status))
    if reported:
        return reported
    if status is None:
        return "new master gone before it took over"
    if os.WEXITSTATUS(status) == EXEC_FAILED:
        return "the new master could not be executed"
    return "new master exited with code %s before it took over" % os.WEXITSTATUS(status)
