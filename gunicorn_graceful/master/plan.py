"""The pool's decisions as functions of facts: what the workers are -> what to do.

Nothing here signals, forks, reads a file or the clock: `pool` gathers the
facts (Gunicorn's WORKERS, the records, the state bits, the clock, what the
recycler noticed) and carries out the actions. So the rules the pool states
(`pool`, `recycle`) can be checked on plain values, every case of them, and the
simulation checks them against the master that carries them out.

One tick's plan, in the order the pool carries it out:
1. spawn what is missing (a crash, TTIN, a new generation), within the
   booting limit, unless the pool backs off after a failed boot;
2. spawn replacements for workers waiting to be recycled (only while
   recycling), booting and recycled-draining workers counting against the
   limit (1 when it is 0);
3. retire surplus (TTOU, a smaller `workers`): booting workers first, they
   hold nothing, then the oldest; a worker waiting to be recycled is not
   surplus;
4. retire waiting workers once a ready worker beyond the wanted count lets
   them go, the one that asked first first (only while recycling).
"""

import dataclasses

KILL_GRACE = 1.0  # how long a process told to stop has before SIGKILL (see `kill_due`)


@dataclasses.dataclass(frozen=True)
class Member:
    """One worker of the pool, as the plan sees it."""
    pid: int
    generation: int
    age: int                      # Gunicorn's fork order
    spawned: float
    ready: bool = False           # the master saw its ready bit
    retire_reason: str = None     # why the master told it to stop, if it did
    recycle_noticed: float = None  # when it began to wait to be recycled

    @property
    def retired(self):
        return self.retire_reason is not None

    @property
    def waiting(self):
        return self.recycle_noticed is not None


@dataclasses.dataclass(frozen=True)
class Facts:
    members: tuple                # every worker Gunicorn runs, as Members
    generation: int               # the wanted generation
    workers: int                  # how many it wants
    max_booting: int              # graceful_max_booting (0: no limit)
    recycling: bool = False       # the master serves: recycling may run
    backing_off: bool = False     # a failed boot's back-off is not over

    def wanted(self):
        """Members of the wanted generation the master has not told to stop."""
        return [m for m in self.members if m.generation == self.generation and not m.retired]


@dataclasses.dataclass
class Plan:
    spawn: int = 0                # missing workers to fork now
    replace: int = 0              # replacements for waiting workers to fork now
    surplus: list = dataclasses.field(default_factory=list)  # pids to retire as surplus
    going: list = dataclasses.field(default_factory=list)    # (pid, replacement pid or None)


def decide(facts):
    """The tick's plan (see the top). The forks of steps 1 and 2 are counted as booting
    members of the wanted generation in the steps after them."""
    plan = Plan()
    members = facts.wanted()
    if not facts.backing_off:
        plan.spawn = missing(members, facts)
        if facts.recycling:
            plan.replace = replacements(members, facts, booting_added=plan.spawn)
    forked = plan.spawn + plan.replace
    plan.surplus = [m.pid for m in surplus(members, facts.workers - forked)]
    if facts.recycling:
        staying = [m for m in members if m.pid not in plan.surplus]
        plan.going = going(staying, facts.workers)
    return plan


def missing(members, facts):
    """How many to fork for what is missing, within the booting limit."""
    count = facts.workers - len(members)
    if facts.max_booting and count > 0:
        count = min(count, facts.max_booting - sum(1 for m in members if not m.ready))
    return max(count, 0)


def replacements(members, facts, booting_added=0):
    """How many replacements to boot now for members waiting to be recycled. Booting
    workers and recycled workers still draining both count against the limit, so the
    process count stays within workers + the limit."""
    size = len(members) + booting_added
    staying = sum(1 for m in members if not m.waiting) + booting_added
    needed = facts.workers - staying - max(facts.workers - size, 0)
    limit = facts.max_booting or 1
    in_transit = sum(1 for m in members if not m.ready) + booting_added + sum(
        1 for m in facts.members if m.retire_reason == "recycled")
    return max(min(needed, limit - in_transit), 0)


def surplus(members, room):
    """The members beyond `room` (the wanted count less what this tick forks, which is
    never surplus): booting ones first, then the oldest; waiting ones are not surplus."""
    staying = [m for m in members if not m.waiting]
    by_cost = sorted(staying, key=lambda m: (m.ready, m.age))
    return by_cost[:max(len(staying) - room, 0)]


def going(members, workers):
    """The waiting members to retire now, each with the worker named as its replacement.

    Each ready worker beyond `workers` lets one go, the one that asked first.
    Usually the replacement is a fresh worker. After a paused spell (a reload
    rolled back) every ready worker may be waiting, the replacements included:
    then the newest of the others is named; there is one, as at least one more
    worker than wanted is ready, unless `workers` is 0 (a HUP to such a config)."""
    waiting = sorted((m for m in members if m.waiting), key=lambda m: m.recycle_noticed)
    ready = sum(1 for m in members if m.ready and not m.waiting)
    leaving = waiting[:max(ready + len(waiting) - workers, 0)]
    pairs = []
    for member in leaving:
        replacement = max((m for m in members if m.ready and m not in leaving),
                          key=lambda m: (not m.waiting, m.spawned), default=None)
        pairs.append((member.pid, replacement.pid if replacement else None))
    return pairs


def deadlines(members, now, readiness_timeout, graceful_timeout):
    """What the master does about workers Gunicorn never times out: (terminate, kill).

    `members` are (Member, booting, term_sent) with `booting` the worker's own state
    bit. One not ready within the readiness timeout is told to stop (pid, reason);
    one told to stop is SIGKILLed only as `kill_due` says."""
    terminate, kill = [], []
    for member, booting, term_sent in members:
        if term_sent is None:
            if booting and late(member.spawned, now, readiness_timeout):
                terminate.append((member.pid, "not ready after %.1fs "
                                  "(graceful_readiness_timeout)" % (now - member.spawned)))
        elif kill_due(term_sent, now, booting, graceful_timeout):
            kill.append(member.pid)
    return terminate, kill


def late(started, now, limit):
    """Whether what began at `started` has overrun `limit` seconds: the one rule of the
    master's timeouts (a worker's readiness, a mold's import, a USR2, its check)."""
    return now - started > limit


def kill_due(term_sent, now, booting, graceful_timeout):
    """Whether a process told to stop at `term_sent` gets SIGKILL now: one still booting (it
    has accepted nothing) after KILL_GRACE, one that may drain after graceful_timeout more."""
    return late(term_sent, now, KILL_GRACE if booting else graceful_timeout + KILL_GRACE)
