"""A user's server hook that raised, and what the master does about it (one rule a hook).

Gunicorn lets an exception out of a hook it calls in the master kill the master: a HUP
to a config whose `pre_fork` raises takes the service down. The pack's hooks run first
and the user's after them (`hooks.chain`); when the user's raises, one ERROR line names
the hook, the release and the error, then:

- `pre_fork` and `on_reload` fail the generation they were called for (`HookFailed`,
  caught by the master: a HUP or in-place upgrade rolls back, a replacement in steady
  state backs off and is retried, the first generation halts with the reason);
- `when_ready` in the new code of an in-place upgrade fails that code: it execs the old
  code back, as for anything else the new code raises before its first tick;
- `pre_exec` (in the forked child of a USR2) refuses that upgrade (`hooks.chain`);
- every other hook the master calls (`when_ready` otherwise, `child_exit`,
  `nworkers_changed`, `on_exit`, ...) only logs: the service stays up, and the hook's own
  work is what was lost. Hooks that run in a worker (`post_fork`, `pre_request`, ...)
  fail that worker, as in Gunicorn.
"""

import os

from gunicorn_graceful.events import emit

FAILS = {"pre_fork": "the generation fails", "on_reload": "the generation fails",
         "pre_exec": "the upgrade is refused"}  # the hooks whose failure stops what they began
IN_WORKER = ("post_fork", "post_worker_init", "worker_int", "worker_abort", "pre_request",
             "post_request", "worker_exit")


class HookFailed(Exception):
    """A user hook that fails what it was called for (a generation, an upgrade); `reason`
    for the rollback or the refusal."""

    def __init__(self, hook, error, hook_args=()):
        super().__init__("%s hook raised %s: %s" % (hook, type(error).__name__, error))
        self.hook, self.error, self.hook_args = hook, error, hook_args
        self.reason = str(self)


def failed(hook, args, error):
    """The user's `hook`, called with `args` (the server first), raised `error`: log it,
    then raise or go on."""
    server = args[0]
    if hook in IN_WORKER:
        raise error
    action = FAILS.get(hook) or (
        "the generation fails" if hook == "when_ready" and _upgrading_in_place(server) else None)
    cfg = getattr(server, "cfg", None)
    release = os.path.realpath(cfg.chdir) if cfg is not None and cfg.chdir else ""
    emit(server.log, "error", "hook.failed", pid=os.getpid(), hook=hook, release=release,
         error="%s: %s" % (type(error).__name__, error), action=action or "the master goes on")
    if action:
        raise HookFailed(hook, error, args) from error


def _upgrading_in_place(server):
    """Whether `server` is the new code of an in-place upgrade (its phase, read by value:
    this floor module does not import the master's wing)."""
    phase = getattr(getattr(server, "phase", None), "value", None)
    return getattr(phase, "value", None) == "upgrading_in_place"
