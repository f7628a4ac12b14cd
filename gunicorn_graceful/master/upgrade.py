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
What each fact (`facts`) means for the phase, for systemd and for the new master's
process is decided by `core`: the watches (`watch`, `watch_old_master`, `watch_answer`)
only observe.

An old master that is not the pack's (a stock Gunicorn's USR2 into the pack) passes
no channel: its new master is never acknowledged, so it serves on trial until
that master is stopped (Gunicorn's own USR2 procedure), then claims the pidfile.
"""

import dataclasses
import os
import signal

from gunicorn_graceful import clock, compat
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import handover, metrics, upgrade_report
from gunicorn_graceful.master.facts import (Acknowledged, NewMasterAsks, NewMasterExited,
                                            NewMasterKillDue, OldMasterGone, UpgradeLate)
from gunicorn_graceful.master.plan import kill_due, late
from gunicorn_graceful.master.pool import signal_name

HISTORY = 4  # upgrade records in the status file
# Exit codes of the forked child of a USR2 that never became a new master.
EXEC_FAILED = 70
PRE_EXEC_FAILED = 71


@dataclasses.dataclass
class Upgrade:
    """A USR2 upgrade, as its old master sees it."""

    seq: int
    new_master: int
    report: object
    first_seq: int = 0  # a deferred upgrade carries out the USR2s first_seq..seq
    started: float = dataclasses.field(default_factory=clock.monotonic)
    exit_status: object = None
    stop_sent: float = 0.0


class Upgrades:
    """The USR2 side of one master: as an old master, and as a new master on trial."""

    def __init__(self, arbiter, system):
        self.arbiter, self.system = arbiter, system
        self.current = None
        self.seq = 0
        self.last = None        # the last upgrade's outcome, for the status file
        self.history = []       # the last HISTORY ones: one may end and the next start in a tick
        self.last_refusal = None
        self.pending = None     # the USR2(s) waiting for the phase (`core.run_deferred`)
        self.report_fd, self.ack_fd = upgrade_report.take(
            os.environ, arbiter.cfg.env_orig)
        self.asked = False
        self.claimed = False  # the pidfile, claimed once the old master is gone (`claim_pidfile`)
        self.heard = b""  # what the old master wrote on the ack pipe
        self.handed_to = None  # as an old master: the upgrade it handed the service to
        if arbiter.master_pid:  # a new master: woken (SIGCHLD: a reap, a tick) by its old
            system.signal_at_parent_exit(signal.SIGCHLD)  # master's exit, not up to 1 s later

    # -- the old master -------------------------------------------------------------------

    def arrived(self):
        """A USR2 arrived: its number (what `gunicorn-graceful upgrade` follows)."""
        self.seq += 1

    def defer(self, reason):
        """The phase cannot start an upgrade now: this USR2 waits, joining one that waits."""
        if self.pending is None:
            self.pending = {"seq": self.seq, "first_seq": self.seq, "state": "deferred",
                            "new_master": None, "reason": reason}
        self.pending.update(seq=self.seq, reason=reason, asked=round(clock.monotonic(), 3))
        emit(self.arbiter.log, "info", "upgrade.deferred", pid=self.arbiter.pid, seq=self.seq,
             first_seq=self.pending["first_seq"], reason=reason)

    def take_pending(self):
        """The first USR2 number the upgrade that starts now carries out."""
        pending, self.pending = self.pending, None
        return pending["first_seq"] if pending else self.seq

    def refused(self, reason):
        """A USR2 refused (`core` asked `refusal` and the phase), with those that waited: say
        why, once."""
        first_seq = self.take_pending()
        self.last_refusal = {"seq": self.seq, "first_seq": first_seq, "reason": reason}
        emit(self.arbiter.log, "error", "upgrade.refused", pid=self.arbiter.pid, seq=self.seq,
             reason=reason)

    def forward(self, new_master):
        """A hand-over: the new master runs the USR2 that waited (`core` sends it there)."""
        pending, self.pending = self.pending, None
        self.last_refusal = dict(pending, state="forwarded", to=new_master,
                                 reason="handed to new master %s" % new_master)
        emit(self.arbiter.log, "info", "upgrade.forwarded", pid=self.arbiter.pid,
             new_master=new_master)

    def start(self, notify_address, endpoint):
        """USR2: start a new master that takes over only once all its workers are ready
        (`notify_address`: systemd's socket, which the pack took out of the environment;
        `endpoint`: the metrics, whose listener the new master inherits)."""
        arbiter = self.arbiter
        first_seq = self.take_pending()
        self.drop_files()
        report = upgrade_report.Channel()
        self.prepare_reexec(report, notify_address)
        lent = metrics.lend(endpoint, arbiter.cfg.env_orig)
        parent = os.getpid()
        try:
            arbiter.reexec()
        except BaseException:
            if os.getpid() != parent:
                os._exit(EXEC_FAILED)  # a forked child that cannot exec must never run this loop
            raise
        finally:
            arbiter.cfg.env_orig.pop(upgrade_report.ENV, None)
            arbiter.cfg.env_orig.pop(metrics.ENV, None)
            if lent is not None:
                os.close(lent)
            report.after_fork()
        self.current = Upgrade(self.seq, arbiter.reexec_pid, report, first_seq)

    def announce(self):
        emit(self.arbiter.log, "info", "upgrade.start", pid=self.arbiter.pid,
             new_master=self.arbiter.reexec_pid, timeout=self.arbiter.settings.upgrade_timeout)

    def deferral(self):
        """Why a USR2 must wait, beyond the phase (`core`), or None: Gunicorn's reexec would
        ignore it ("Child exists") while the last upgrade's new master still stops."""
        if self.arbiter.reexec_pid:
            return "the new master %s of the last upgrade is still stopping" \
                % self.arbiter.reexec_pid
        return None

    def refusal(self):
        """Why a USR2 cannot run at all, or None, beyond what the phase refuses (`core`)."""
        if os.getpid() == 1:
            return ("this master is PID 1: its exit would end the container; set "
                    "graceful_upgrade = 'in-place', run it under an init (tini, dumb-init), "
                    "or use HUP")
        if self.arbiter.cfg.reuse_port:
            return "reuse_port is on: Gunicorn cannot hand its listeners to a new master"
        return None

    def prepare_reexec(self, report, notify_address):
        """Fix what the new master will be started with (Gunicorn's START_CTX and environment).

        Started as `python -m gunicorn`, Gunicorn would re-execute its `__main__.py`
        as a script (`handover.command` says why not). With
        graceful_release_link, the new master starts in the release the deploy
        symlink points to now. Its environment gets back systemd's NOTIFY_SOCKET,
        which the pack took out of this process's (and a HUP's config copies
        this process's), and carries the report channel's write end.
        """
        arbiter = self.arbiter
        if notify_address:
            arbiter.cfg.env_orig["NOTIFY_SOCKET"] = notify_address
        arbiter.cfg.env_orig[upgrade_report.ENV] = report.environ_value()
        arbiter.START_CTX["args"] = handover.command(arbiter.START_CTX["args"])
        if self.arbiter.settings.release_link:
            arbiter.START_CTX["cwd"] = self.arbiter.settings.release_link

    def new_master_exited(self, status):
        """Reaped (possibly inside the SIGCHLD handler): only note it; `watch` acts."""
        if self.current is not None:
            self.current.exit_status = status

    def watch(self):
        """Old master, each tick: what became of the new master (`facts`)."""
        upgrade = self.current
        if upgrade is None or not self.arbiter.reexec_pid:
            return self.exited()
        now = clock.monotonic()
        if not upgrade.stop_sent:
            if upgrade.report.asks_to_take_over():
                return [NewMasterAsks(upgrade)]
            if late(upgrade.started, now, self.arbiter.settings.upgrade_timeout):
                return [UpgradeLate(upgrade, now - upgrade.started)]
        elif kill_due(upgrade.stop_sent, now, False, self.arbiter.cfg.graceful_timeout):
            return [NewMasterKillDue(upgrade)]
        return []

    def exited(self):
        """Old master, each tick (in lame duck too): whether its new master was reaped."""
        upgrade = self.current
        return [NewMasterExited(upgrade)] if upgrade and not self.arbiter.reexec_pid else []

    def told_to_stop(self, upgrade):
        """`core` sent the late new master SIGTERM: from now on it is only waited for."""
        upgrade.stop_sent = clock.monotonic()

    def reaped_outcome(self, upgrade):
        """The new master was reaped: ("refused" | "rolled_back" | "gone", reason, totals)
        ("gone": it had been rolled back already); its files and channel are gone now."""
        self.current = None
        reported, totals = upgrade.report.reason(), upgrade.report.returned_totals()
        self.clean_up()
        if exited_pre_exec_refused(upgrade.exit_status):
            return "refused", reported or "the checks before the exec failed", totals
        if upgrade.stop_sent:
            return "gone", "", totals
        return "rolled_back", describe_master_exit(upgrade.exit_status, reported), totals

    def name_successor(self, upgrade):
        """Before answering: the pidfile names the new master (else this master's own exit
        could unlink it before the new master rewrites it)."""
        if self.arbiter.pidfile is not None:
            self.arbiter.files.write(self.arbiter.pidfile.fname, "%s\n" % upgrade.new_master)

    def hand_over(self, upgrade):
        """Answer the new master that asked: it takes the service, this master stops (`core`
        wakes it with SIGCHLD to read the answer now)."""
        upgrade.report.acknowledge()
        self.handed_to = upgrade
        self.record(upgrade, "handed_over")
        emit(self.arbiter.log, "info", "upgrade.handing_over", pid=self.arbiter.pid,
             new_master=upgrade.new_master, after=clock.monotonic() - upgrade.started)

    def ended(self, upgrade, kind, reason):
        """The new master failed, is late, or was refused before its exec (`kind`): one line,
        and the outcome `gunicorn-graceful upgrade` reads."""
        arbiter = self.arbiter
        if kind == "refused":
            emit(arbiter.log, "error", "upgrade.refused", pid=arbiter.pid, reason=reason)
        else:
            emit(arbiter.log, "error", "upgrade.rollback", pid=arbiter.pid,
                 new_master=upgrade.new_master, after=clock.monotonic() - upgrade.started,
                 reason=reason)
        self.record(upgrade, kind, reason)

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
            self.arbiter.files.remove_pidfile(pidfile + ".2")

    def record(self, upgrade, state_name, reason="", in_place=False):
        """The outcome `gunicorn-graceful upgrade` follows in the status file (`upgrade`: an
        Upgrade, or an in-place Trial, whose new master is this one)."""
        self.last = {"seq": upgrade.seq, "first_seq": upgrade.first_seq or upgrade.seq,
                     "state": state_name, "new_master": upgrade.new_master, "reason": reason}
        if in_place:
            self.last["in_place"] = True
        self.history = [r for r in self.history if r["seq"] != upgrade.seq][1 - HISTORY:] \
            + [self.last]

    # -- the new master -------------------------------------------------------------------

    def ask_to_take_over(self):
        """New master, each tick once all its workers are ready: ask the old master for the
        service; whether to take it now, with nobody left to ask: the old master is gone
        (SIGKILL, OOM; or stopped, when it is not the pack's). Its answer comes as a fact
        (`watch_answer`), read once a tick."""
        arbiter = self.arbiter
        if not self.asked:
            self.asked = True
            upgrade_report.tell(self.report_fd, upgrade_report.HANDOVER)
            emit(arbiter.log, "info", "upgrade.asking", pid=arbiter.pid,
                 old_master=arbiter.master_pid, generation=arbiter.generation)
        return self.old_master_gone()

    def acknowledged(self):
        """Whether the old master answered (what it wrote on the ack pipe is kept)."""
        self.heard += upgrade_report.read_available(self.ack_fd)
        return upgrade_report.acknowledged(self.heard)

    def watch_answer(self):
        """New master on trial that asked, each tick: `facts.Acknowledged` once answered,
        whether or not all its workers are still ready (a crash since it asked): the old
        master stops from then on."""
        return [Acknowledged()] if self.asked and self.report_fd is not None \
            and self.acknowledged() else []

    def take_over(self):
        """Become the service: the pidfile names this master (`core` tells systemd)."""
        arbiter = self.arbiter
        self.claimed = True
        if arbiter.cfg.pidfile is not None:
            arbiter.files.write(arbiter.cfg.pidfile, "%s\n" % arbiter.pid)
        emit(arbiter.log, "info", "upgrade.handover", pid=arbiter.pid,
             old_master=arbiter.master_pid, generation=arbiter.generation)
        upgrade_report.close(self.report_fd)  # the ack pipe stays open: the old master's totals
        self.report_fd = None

    def may_promote(self):
        """Gunicorn promotes as soon as its parent changed; the pack waits until it serves
        (`core` checks the phase)."""
        return self.old_master_gone()

    def old_master_gone(self):
        """New master: whether the master that started it is gone (this one was reparented)."""
        arbiter = self.arbiter
        return bool(arbiter.master_pid) and arbiter.master_pid != self.system.parent()

    def watch_old_master(self):
        """New master, each tick: whether its old master is gone while the pidfile does not
        name this master yet (`facts.OldMasterGone`)."""
        return [OldMasterGone()] if self.old_master_gone() and not self.claimed else []

    def claim_pidfile(self):
        """New master on trial whose old master is gone (SIGKILL, OOM): the pidfile names
        this master from now on, not a dead process, though its workers are not all ready
        yet (`take_over` writes it again)."""
        arbiter = self.arbiter
        self.claimed = True
        if arbiter.cfg.pidfile is not None:
            arbiter.files.write(arbiter.cfg.pidfile, "%s\n" % arbiter.pid)
        emit(arbiter.log, "warning", "upgrade.old_master_gone", pid=arbiter.pid,
             old_master=arbiter.master_pid, action="the pidfile names this master, which "
             "serves once its workers are ready")

    def promoted(self, old_master, trial_pidfile):
        """Promoted: the pidfile and status file of the trial go; the old master's metrics
        totals, which it wrote on the ack pipe (`core` carries them)."""
        arbiter = self.arbiter
        self.heard += upgrade_report.read_available(self.ack_fd)
        upgrade_report.close(self.ack_fd)
        self.ack_fd = None
        emit(arbiter.log, "info", "upgrade.promoted", pid=arbiter.pid, old_master=old_master)
        if trial_pidfile is not None:
            arbiter.files.remove_pidfile(trial_pidfile.fname)
        return upgrade_report.totals(self.heard)

    def send_totals(self, metrics):
        """Once this master's workers are gone, its `metrics`' totals go to the master that
        serves on (`upgrade_report`): an old master that handed over gives them to its new
        master; a new master stopped on trial returns them to its old master."""
        if not metrics:
            return
        if self.handed_to is not None:
            self.handed_to.report.send_totals(metrics.export())
        elif self.report_fd is not None:
            upgrade_report.send_totals(self.report_fd, metrics.export())

    def report_halt(self, reason):
        """A new master on trial that halts tells its old master why."""
        upgrade_report.tell(self.report_fd, reason)


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
