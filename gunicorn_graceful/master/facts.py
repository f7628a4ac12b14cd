"""What the master's helpers observe, as typed facts: `core` alone decides what each means.

A helper's watch returns a list of these and changes nothing; `core.Core.TABLE`
maps (phase, type of fact) to the one handler that acts, so every timeout,
rollback, halt and retirement is decided in one place.
"""

import dataclasses

fact = dataclasses.dataclass(frozen=True)


# -- the pool and the molds (`pool`, `mold`) ----------------------------------------------------

@fact
class GenerationComplete:
    """Every wanted worker of the wanted generation is ready."""
    ready: int


@fact
class BootFailed:
    """A worker (or the mold) of the wanted generation failed to boot (`pool.BootFailure`)."""
    failure: object


@fact
class Recovered:
    """The pool, degraded by failed replacements, has every wanted worker ready again."""


@fact
class MoldLate:
    """A mold still imports past graceful_readiness_timeout (`mold.Mold`)."""
    mold: object
    limit: float


# -- USR2, the old master's side (`upgrade`) ----------------------------------------------------

@fact
class NewMasterAsks:
    """The new master's workers are all ready: it asks for the service."""
    upgrade: object


@fact
class UpgradeLate:
    """The new master is not ready within graceful_upgrade_timeout."""
    upgrade: object
    waited: float


@fact
class NewMasterKillDue:
    """The new master told to stop still runs past its workers' graceful_timeout."""
    upgrade: object


@fact
class NewMasterExited:
    """The new master was reaped (`upgrade.Upgrade.exit_status`)."""
    upgrade: object


# -- USR2, the new master's side (`upgrade`) ----------------------------------------------------

@fact
class OldMasterGone:
    """The master that started this one is gone (SIGKILL, OOM) before it handed over."""


@fact
class Acknowledged:
    """The old master answered this master's request: it stops, this one is the service."""


# -- USR2 in place (`inplace`) -----------------------------------------------------------------

@fact
class CheckEnded:
    """The new code's check exited: `reason` is why it failed, None when it passed."""
    reason: object


@fact
class CheckImported:
    """With graceful_mold, in the code the exec started: the check, which passed its config
    before the exec, imported the app (`reason` None) or failed to."""
    reason: object


@fact
class CheckLate:
    """The new code's check still runs past graceful_upgrade_timeout."""
    limit: float


@fact
class ExecFailed:
    """An exec (`direction` "new" or "back") returned: this code runs on. `problem`: why."""
    direction: str
    problem: str


@fact
class Adopted:
    """The first tick of a code an exec started: `direction` "new" or "back", why it went
    back (`reason`) and what the upgrade became (`outcome`: "rolled_back", or "refused"
    when the check failed after the exec)."""
    direction: str
    reason: object
    outcome: str = "rolled_back"


@fact
class InPlaceLate:
    """The new generation of an in-place upgrade is not complete within
    graceful_upgrade_timeout."""
    generation: int
    waited: float


@fact
class RollbackDrained:
    """The failed new generation's workers are all gone: the old code can come back."""
    reason: str


# -- TERM (`stop`) -----------------------------------------------------------------------------

@fact
class LameDuckOver:
    """graceful_shutdown_delay has passed since the first TERM."""
