"""The worker pool: one reconcile step per master tick, as Puma's `check_workers`.

The step compares the wanted generation with the workers that are ready and
shrinks the difference by one step: notice ready workers, report boot
failures, spawn what is missing, retire surplus, report when the wanted
generation is complete. The pool gathers the facts and carries out the plan;
what to spawn, retire and kill is decided from those facts alone (`plan`).
What a failure or a complete generation means in the master's phase (a
rollback, a halt, a hand-over) is decided by `core`.

Invariants:
- Old workers are told to stop only when the whole wanted generation is ready,
  so the number of workers able to serve never drops below `workers`.
- At most `graceful_max_booting` new workers boot at once (0: no limit).
- A worker is stopped with SIGTERM, whatever the master believes of it: a ready
  one drains, one still booting exits at once. SIGKILL follows only when its
  own state bit still says booting `plan.KILL_GRACE` later (it has accepted
  nothing), or when it still drains after graceful_timeout.
- A replacement that cannot boot while others serve is retried with back-off
  and the pool is `degraded` (status file, systemd STATUS=) until the wanted
  generation is complete again; the master never exits for it.
"""

import dataclasses
import os
import signal


from gunicorn_graceful import clock, compat, state
from gunicorn_graceful.events import emit, format_fields
from gunicorn_graceful.master import plan, recycle
from gunicorn_graceful.master.records import Record

_BACKOFF_LIMIT = 30.0


@dataclasses.dataclass
class BootFailure:
    pid: int
    generation: int
    reason: str
    elapsed: float
    exit_code: int


class Pool:
    """Spawns, watches and retires the workers of one master.

    It receives what it uses: the arbiter for Gunicorn's own calls and state
    (WORKERS, spawn_worker, kill_worker), the records, and the release of a
    generation (`rollout`); its recycler is its own.
    """

    def __init__(self, arbiter, records, release_of):
        self.arbiter, self.records, self.release_of = arbiter, records, release_of
        self.recycler = recycle.Recycler(arbiter)
        self.boot_failures = []
        self.failure_streak = 0
        self.respawn_after = 0.0
        self.degraded = None
        self.halted_on = None  # the boot failure the master halts on

    # -- what the pool holds -----------------------------------------------------------

    def members(self, generation):
        """Workers of `generation` the master has not told to stop."""
        return [(w, r) for w, r in self.workers() if r.generation == generation and not r.retired]

    def old(self):
        wanted = self.arbiter.generation
        return [(w, r) for w, r in self.workers() if r.generation != wanted and not r.retired]

    def workers(self):
        """(worker, record) for each worker Gunicorn runs, every one of them counted."""
        records = self.records
        return [(w, records.of(w) or records.adopt(w, self.new_record()))
                for w in list(self.arbiter.WORKERS.values()) if w.pid]

    # -- forking and stopping -------------------------------------------------------------

    def new_record(self):
        """The record of a worker of the wanted generation, made before its fork."""
        generation = self.arbiter.generation
        return Record(generation, self.release_of(generation),
                      age_jitter=recycle.age_jitter(self.arbiter.settings.max_worker_age_jitter))

    def retire(self, worker, record, reason):
        """Tell a worker to stop (SIGTERM); it no longer counts as serving."""
        record.retire_reason = reason
        emit(self.arbiter.log, "info", "worker.retire", pid=worker.pid,
             generation=record.generation, reason=reason)
        self.terminate(worker, record)

    def retire_generation(self, generation, reason):
        for worker, record in self.members(generation):
            self.retire(worker, record, reason)

    def terminate(self, worker, record):
        record.term_sent = clock.monotonic()
        self.arbiter.kill_worker(worker.pid, signal.SIGTERM)

    def kill(self, worker, record):
        record.killed = True
        self.arbiter.kill_worker(worker.pid, signal.SIGKILL)

    # -- the reconcile tick ---------------------------------------------------------------

    def observe(self):
        """Forget the reaped workers (`records.prune`), notice the ready ones."""
        self.records.prune(self.arbiter.WORKERS)
        self.notice_ready()

    def reconcile(self, recycling):
        """Spawn what is missing, retire surplus, recycle (only while `recycling`): the
        plan of these facts (`plan.decide`), carried out in its order."""
        if recycling:
            self.recycler.notice(self.members(self.arbiter.generation))
        pool = dict((w.pid, (w, r)) for w, r in self.workers())
        step = plan.decide(self.facts(pool.values(), recycling))
        for _ in range(step.spawn + step.replace):
            self.arbiter.spawn_worker()
        for pid in step.surplus:
            self.retire(*pool[pid], "surplus")
        for pid, replacement in step.going:
            self.recycle(*pool[pid], replacement)

    def facts(self, workers, recycling):
        """What the plan decides from: every worker as a `plan.Member`, and the settings."""
        arbiter = self.arbiter
        return plan.Facts(
            members=tuple(member(w, r) for w, r in workers), generation=arbiter.generation,
            workers=arbiter.num_workers, max_booting=arbiter.settings.max_booting,
            recycling=recycling, backing_off=clock.monotonic() < self.respawn_after)

    def recycle(self, worker, record, replacement):
        """A waiting worker goes now that `replacement` serves: one line, then SIGTERM."""
        details = record.recycle
        emit(self.arbiter.log, "info", "worker.recycle", pid=worker.pid,
             reason=details.get("reason"), served=details.get("served", "-"),
             rss_mib=details.get("rss_mib"), replacement=replacement or "-",
             after=clock.monotonic() - details["noticed"])
        self.retire(worker, record, "recycled")

    def complete(self):
        """How many workers of the wanted generation serve, once they are all ready; else None."""
        members = self.members(self.arbiter.generation)
        ready = sum(1 for _, r in members if r.ready_at)
        return len(members) if ready >= self.arbiter.num_workers else None

    def retire_old(self):
        """The wanted generation is complete: every other worker goes."""
        for worker, record in self.old():
            self.retire(worker, record, "replaced")

    def notice_ready(self):
        for worker, record in self.workers():
            if record.ready_at is None and state.was_ready(worker.tmp):
                record.ready_at = clock.monotonic()
                self.failure_streak = 0
                emit(self.arbiter.log, "info", "worker.ready", pid=worker.pid,
                     generation=record.generation, boot_time=record.ready_at - record.spawned)

    def recovered(self):
        """Whether the pool stops being degraded now: every wanted worker is ready again
        (none waits for a replacement). One line saying what it had been."""
        if self.degraded is None:
            return False
        members = self.members(self.arbiter.generation)
        if sum(1 for _, r in members if r.ready_at and r.recycle is None) \
                < self.arbiter.num_workers:
            return False
        arbiter = self.arbiter
        emit(arbiter.log, "info", "master.recovered", pid=arbiter.pid,
             generation=arbiter.generation, workers=arbiter.num_workers,
             reason=self.degraded["reason"])
        self.degraded = None
        return True

    # -- exits and failures ---------------------------------------------------------------

    def exited(self, worker, status):
        """A worker was reaped: note how it ended while its heartbeat file is still open;
        its record (None for a worker the pack has none of).

        On Gunicorn 23 this runs inside the SIGCHLD handler: it only records; the
        tick acts on what it recorded.
        """
        record = self.records.of(worker)
        if record is None:
            return None
        record.exit_status = status
        record.final_state = state.read(worker.tmp)
        record.timed_out = compat.timed_out(worker)
        log_signal_exit(self.arbiter.log, worker.pid, status, record)
        if record.final_state == state.BOOTING and not record.retired:
            reason = record.kill_reason or state.read_reason(worker.tmp) or describe_status(status)
            self.boot_failures.append(BootFailure(
                worker.pid, record.generation, reason, clock.monotonic() - record.spawned,
                os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1))
        return record

    def hook_failed(self, generation, reason, elapsed=0.0):
        """A user hook failed `generation` where no worker was forked (`userhooks`): a boot
        failure, decided as any other (rollback, back-off, halt)."""
        self.boot_failures.append(BootFailure(None, generation, reason, elapsed,
                                              self.arbiter.WORKER_BOOT_ERROR))

    def take_boot_failures(self):
        """The boot failures reaped since the last tick (`core` decides what each means)."""
        failures, self.boot_failures = self.boot_failures, []
        return failures

    def halt(self, failure):
        """No worker ever served (`core` halts): (reason, exit code), as Gunicorn's halt, but
        saying why."""
        arbiter = self.arbiter
        code = failure.exit_code if failure.exit_code in (arbiter.WORKER_BOOT_ERROR,
                                                          arbiter.APP_LOAD_ERROR) \
            else arbiter.WORKER_BOOT_ERROR
        self.halted_on = failure
        return halt_reason(code == arbiter.APP_LOAD_ERROR, failure), code

    def halt_detail(self):
        """Why the master halts on a boot failure, in the pack's words (a new master on trial
        tells its old master this, for its rollback line), or None."""
        failure = self.halted_on
        return None if failure is None else "worker %s failed to boot: %s" % (
            failure.pid, failure.reason)

    def back_off(self, failure):
        """A replacement failed to boot while others serve: retry later, never halt."""
        arbiter = self.arbiter
        self.failure_streak += 1
        delay = min(2.0 ** (self.failure_streak - 1), _BACKOFF_LIMIT)
        self.respawn_after = clock.monotonic() + delay
        emit(arbiter.log, "error", "worker.boot_failed", pid=failure.pid,
             generation=failure.generation, after=failure.elapsed, retry_in=delay,
             reason=failure.reason)
        if self.degraded is None:
            self.degraded = {"since": round(clock.wall(), 1)}
        self.degraded.update(failures=self.failure_streak, reason=failure.reason)

    def reset_back_off(self):
        """A new generation starts: its first workers boot at once."""
        self.failure_streak, self.respawn_after = 0, 0.0

    # -- deadlines Gunicorn does not have -------------------------------------------------

    def enforce_deadlines(self):
        """Stop a worker not ready within the readiness timeout (Gunicorn never times out a
        worker before its first heartbeat); SIGKILL one that ignored SIGTERM (see the top)."""
        pool = dict((w.pid, (w, r)) for w, r in self.workers())
        facts = [(member(w, r), not state.was_ready(w.tmp), r.term_sent)
                 for w, r in pool.values()]
        terminate, kill = plan.deadlines(facts, clock.monotonic(),
                                         self.arbiter.settings.readiness_timeout,
                                         self.arbiter.cfg.graceful_timeout)
        for pid, reason in terminate:
            worker, record = pool[pid]
            record.kill_reason = reason
            self.terminate(worker, record)
        for pid in kill:
            self.kill(*pool[pid])


def member(worker, record):
    """A worker and its record as the plan sees them."""
    return plan.Member(pid=worker.pid, generation=record.generation, age=worker.age,
                       spawned=record.spawned, ready=record.ready_at is not None,
                       retire_reason=record.retire_reason,
                       recycle_noticed=record.recycle["noticed"] if record.recycle else None)


def log_signal_exit(log, pid, status, record):
    """Gunicorn's lines for a worker ended by a signal, its "Perhaps out of memory?" included
    (but not for a SIGKILL the master sent itself)."""
    if not os.WIFSIGNALED(status):
        if os.WEXITSTATUS(status):
            log.error("Worker (pid:%s) exited with code %s.", pid, os.WEXITSTATUS(status))
        return
    sig = os.WTERMSIG(status)
    name = signal_name(sig)
    if sig == signal.SIGKILL and not record.killed:
        log.error("Worker (pid:%s) was sent %s! Perhaps out of memory?", pid, name)
    elif sig == signal.SIGTERM:
        log.info("Worker (pid:%s) was sent %s!", pid, name)
    else:
        log.warning("Worker (pid:%s) was sent %s!", pid, name)


def describe_status(status):
    return "%s before it was ready" % how_it_ended(status)


def how_it_ended(status):
    """"killed by SIGSEGV" or "exited with code 3", from a wait status."""
    if os.WIFSIGNALED(status):
        return "killed by %s" % signal_name(os.WTERMSIG(status))
    return "exited with code %s" % os.WEXITSTATUS(status)


def signal_name(number):
    """SIGSEGV for 11; a number Python has no name for (SIGRTMIN+1 is 35) stays a number,
    since `signal.Signals(35)` raises and a reap must never raise."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %s" % number


def halt_reason(app_failed, failure):
    """Gunicorn's sentence first (`Reason: Worker failed to boot.`, `App failed to load.`:
    scripts and tests look for it), then the pack's detail as fields."""
    sentence = "App failed to load." if app_failed else "Worker failed to boot."
    return "%s %s" % (sentence, format_fields(worker=failure.pid, cause=failure.reason))
