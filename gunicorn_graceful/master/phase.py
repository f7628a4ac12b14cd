"""The master's one phase value, the transitions it may take, and what each phase refuses.

Invariants:
- The master is in exactly one phase; `move` is the only way to change it, and
  every change is one line: `event=master.phase from=... to=...`.
- A transition that is not in ALLOWED is a bug: it is logged at ERROR and
  taken anyway (a restart tool must not crash over its own bookkeeping).
- A HUP or USR2 that a phase cannot start now waits (DEFERRALS) and runs once
  the master serves; only lame duck and stopping refuse one, with the reason from
  REFUSALS, before anything is done: never half-done.

Phases: `starting` (first generation booting), `trial` (a USR2 new master whose
workers are not all ready yet), `taking_over` (that new master took over; its
old master drains), `serving`, `reloading` (a HUP generation boots),
`upgrading` (a new master of ours is on trial), `upgrading_in_place` (an in-place
upgrade: its check, its exec, its new generation, a rollback's exec back),
`lame_duck`, `stopping`.
"""

import enum

from gunicorn_graceful.events import emit


class Phase(enum.Enum):
    STARTING = "starting"
    TRIAL = "trial"
    TAKING_OVER = "taking_over"
    SERVING = "serving"
    RELOADING = "reloading"
    UPGRADING = "upgrading"
    IN_PLACE = "upgrading_in_place"
    LAME_DUCK = "lame_duck"
    STOPPING = "stopping"


P = Phase
ALLOWED = {
    P.STARTING: {P.SERVING, P.LAME_DUCK, P.STOPPING},
    P.TRIAL: {P.TAKING_OVER, P.LAME_DUCK, P.STOPPING},
    P.TAKING_OVER: {P.SERVING, P.LAME_DUCK, P.STOPPING},
    P.SERVING: {P.RELOADING, P.UPGRADING, P.IN_PLACE, P.LAME_DUCK, P.STOPPING},
    P.RELOADING: {P.SERVING, P.LAME_DUCK, P.STOPPING},
    P.UPGRADING: {P.SERVING, P.LAME_DUCK, P.STOPPING},
    P.IN_PLACE: {P.SERVING, P.LAME_DUCK, P.STOPPING},
    P.LAME_DUCK: {P.STOPPING},
    P.STOPPING: set(),
}

_UPGRADE_RUNS = "a USR2 upgrade is in progress (old master %(old)s, new master %(new)s)"
_NEW_MASTER = "this master is a new master not yet promoted (old master %(old)s)"
_IN_PLACE = "an in-place upgrade is in progress (USR2 number %(seq)s)"
# A HUP or USR2 a phase cannot start now waits, and runs as soon as the master serves
# (`intents`, `core.run_deferred`): a deploy that was asked for must not silently not happen.
DEFERRALS = {
    ("reload", P.STARTING): "the first generation is still booting",
    ("reload", P.TRIAL): _NEW_MASTER,
    ("reload", P.TAKING_OVER): _NEW_MASTER,
    ("reload", P.UPGRADING): _UPGRADE_RUNS,
    ("reload", P.IN_PLACE): _IN_PLACE,
    ("upgrade", P.STARTING): "the first generation is still booting",
    ("upgrade", P.TRIAL): _NEW_MASTER,
    ("upgrade", P.TAKING_OVER): _NEW_MASTER,
    ("upgrade", P.RELOADING): "a HUP reload is in progress (generation %(generation)s)",
    ("upgrade", P.UPGRADING): _UPGRADE_RUNS,
    ("upgrade", P.IN_PLACE): _IN_PLACE,
}
# Only where running it later would be wrong is a HUP or USR2 refused.
_LAME_DUCK = "the master is in lame duck, about to stop"
_STOPPING = "the master is stopping"
REFUSALS = {
    ("reload", P.LAME_DUCK): _LAME_DUCK,
    ("reload", P.STOPPING): _STOPPING,
    ("upgrade", P.LAME_DUCK): _LAME_DUCK,
    ("upgrade", P.STOPPING): _STOPPING,
}


class PhaseKeeper:
    """Holds the phase; logs and checks each move."""

    def __init__(self, log, pid, initial):
        self.log, self.pid, self.value = log, pid, initial

    def is_in(self, *phases):
        return self.value in phases

    def move(self, to):
        if to is self.value:
            return
        level = "info" if to in ALLOWED[self.value] else "error"
        emit(self.log, level, "master.phase", pid=self.pid, **{"from": self.value.value},
             to=to.value)
        self.value = to

    def refusal(self, action, **context):
        """Why `action` ("reload", "upgrade") must not run in this phase, or None."""
        template = REFUSALS.get((action, self.value))
        return template % context if template else None

    def deferral(self, action, **context):
        """Why `action` must wait for this phase to end, or None."""
        template = DEFERRALS.get((action, self.value))
        return template % context if template else None
