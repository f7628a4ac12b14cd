"""HUP: a new generation boots beside the serving one and replaces it only when ready.

Invariants:
- Never fewer than `workers` ready workers while a rollout runs: the serving
  generation is retired by the pool only when the new one is complete.
- A rollback restores everything the reload changed: configuration, pack
  settings, environment, listeners and pidfile; the listeners and pidfile the
  new config replaced stay open until the new generation serves.
- Generation numbers are never reused, a rolled-back one included, and with
  graceful_release_link each generation is pinned to the release the link
  pointed to when it started (`generations` owns both).
- A config that fails to load on HUP changes nothing.
Whether a HUP may start, and what follows a complete or a failed generation,
is decided by `core`; this module loads, applies and restores.
"""

import dataclasses
import os

from gunicorn import util
from gunicorn.pidfile import Pidfile

from gunicorn_graceful import clock, compat, settings, userhooks
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import binds, files


@dataclasses.dataclass
class Rollout:
    """A reload in progress: the generation being booted and what to go back to."""

    generation: int
    previous_generation: int
    previous_cfg: object
    previous_settings: object
    previous_listeners: list
    previous_pidfile: object
    started: float = dataclasses.field(default_factory=clock.monotonic)
    started_at: float = dataclasses.field(default_factory=clock.wall)
    superseded: object = None  # the generation of the rollout this one replaced, if any
    hook_failure: str = None   # the user's on_reload raised: this generation fails (`core`)


class Rollouts:
    """The HUP side of one master: the current rollout (`generations`: the numbers)."""

    def __init__(self, arbiter, generations, system):
        self.arbiter, self.generations, self.system = arbiter, generations, system
        self.current = None

    def reload(self, config_problem):
        """HUP: load the config again; (the Rollout that starts, None) or (None, why the config
        failed).

        `config_problem(cfg, settings, log)` says why a loaded config cannot run (`core`).
        """
        arbiter = self.arbiter
        previous_cfg, previous_settings = arbiter.cfg, arbiter.settings
        reset_environment(previous_cfg)
        new_listeners = arbiter.LISTENERS
        try:
            arbiter.app.reload()  # the config's install(globals()) sets settings.current()
            failure = config_problem(arbiter.app.cfg, settings.current(), arbiter.log)
            if not failure and binds.changed(previous_cfg, arbiter.app.cfg):
                new_listeners = binds.reopen(arbiter.app.cfg, self.held(), arbiter.log,
                                             self.system.open_listener)
        except binds.BindFailure as exc:
            failure = str(exc)
        except (Exception, SystemExit) as exc:
            failure = config_failure(exc)
        if failure:
            arbiter.app.cfg = previous_cfg
            settings.set_current(previous_settings)
            apply_environment(previous_cfg)
            emit(arbiter.log, "error", "reload.config_failed", config=previous_cfg.config,
                 reason=failure, kept_generation=arbiter.generation)
            return None, failure
        arbiter.settings = settings.current()
        compat.count_reload(arbiter)
        generation = self.generations.upcoming()
        if self.current is None:
            rollout = Rollout(generation, arbiter.generation, previous_cfg, previous_settings,
                              arbiter.LISTENERS, arbiter.pidfile)
        else:  # a HUP during a HUP: a rollback goes back to what the first one replaced
            self.supersede(self.current, new_listeners)
            rollout = dataclasses.replace(self.current, generation=generation,
                                          started=clock.monotonic(), started_at=clock.wall(),
                                          superseded=self.current.generation)
        try:
            self.apply_config(rollout.previous_cfg, new_listeners)
        except userhooks.HookFailed as failed:  # the user's on_reload: the generation fails
            rollout = dataclasses.replace(rollout, hook_failure=failed.reason)
        self.begin(rollout)
        return rollout, None

    def held(self):
        """Every listener the master holds now: the serving ones and a booting rollout's."""
        previous = self.current.previous_listeners if self.current else []
        return self.arbiter.LISTENERS + [lnr for lnr in previous
                                         if lnr not in self.arbiter.LISTENERS]

    def apply_config(self, kept_cfg, new_listeners):
        """What Gunicorn's reload does with a new config, minus spawning and killing workers
        (the listeners were opened by `reload`, where a failure could still be refused)."""
        arbiter = self.arbiter
        arbiter.setup(arbiter.app)
        arbiter.log.reopen_files()
        if new_listeners is not arbiter.LISTENERS:
            arbiter.LISTENERS = new_listeners
            emit(arbiter.log, "info", "master.listening",
                 listeners=",".join(str(lnr) for lnr in arbiter.LISTENERS))
        arbiter.cfg.on_reload(arbiter)
        if arbiter.cfg.pidfile != kept_cfg.pidfile:
            arbiter.pidfile = new_pidfile(arbiter, arbiter.cfg.pidfile)
        util._setproctitle("master [%s]" % arbiter.proc_name)
        if arbiter.cfg.preload_app:
            emit(arbiter.log, "warning", "reload.preload", generation=self.generations.upcoming(),
                 reason="preload_app is on: the master imported the app once and HUP cannot "
                        "reload its code; workers are replaced with the same code. Use USR2 "
                        "to deploy new code")

    def begin(self, rollout):
        """A new generation boots from the release the deploy link points to now."""
        arbiter = self.arbiter
        self.current = rollout
        self.generations.begin(arbiter.settings.release_link)
        emit(arbiter.log, "info", "reload.start", generation=arbiter.generation,
             previous_generation=rollout.previous_generation, workers=arbiter.num_workers,
             max_booting=arbiter.settings.max_booting)

    def supersede(self, rollout, new_listeners):
        """A newer HUP replaces a rollout still booting: drop what it opened (but the listeners
        the newer one keeps); `core` retires its workers."""
        arbiter = self.arbiter
        self.generations.forget(rollout.generation)
        self.drop_files(rollout, keep=new_listeners)
        arbiter.LISTENERS, arbiter.pidfile = rollout.previous_listeners, rollout.previous_pidfile

    def finish(self, workers):
        """The new generation serves: close the listeners and pidfile it replaced."""
        arbiter, rollout = self.arbiter, self.current
        emit(arbiter.log, "info", "reload.done", generation=arbiter.generation,
             duration=clock.monotonic() - rollout.started, workers=workers)
        self.current = None
        self.generations.forget_before(rollout.generation)
        binds.close_unused(rollout.previous_listeners, keep=arbiter.LISTENERS)
        if arbiter.pidfile is not rollout.previous_pidfile and rollout.previous_pidfile:
            arbiter.files.remove_pidfile(rollout.previous_pidfile.fname)

    def roll_back(self, failure):
        """A worker of the new generation failed: restore what the previous one runs with;
        the generation to stop (`core` retires its workers)."""
        arbiter, rollout = self.arbiter, self.current
        self.current = None
        self.generations.roll_back(rollout.generation, to=rollout.previous_generation)
        self.drop_files(rollout)
        reset_environment(arbiter.cfg)
        arbiter.app.cfg = rollout.previous_cfg
        arbiter.settings = rollout.previous_settings
        settings.set_current(rollout.previous_settings)  # what a worker forked later inherits
        arbiter.setup(arbiter.app)
        arbiter.LISTENERS, arbiter.pidfile = rollout.previous_listeners, rollout.previous_pidfile
        emit(arbiter.log, "error", "reload.rollback", generation=rollout.generation,
             kept_generation=rollout.previous_generation, worker=failure.pid,
             after=failure.elapsed, reason=failure.reason)
        return rollout.generation

    def stopped(self):
        """The master stopped during a HUP that moved the pidfile: the kept pidfile and its
        status file go too (Gunicorn removes only the current one at exit)."""
        rollout = self.current
        if rollout and rollout.previous_pidfile \
                and rollout.previous_pidfile is not self.arbiter.pidfile:
            self.arbiter.files.remove_pidfile(rollout.previous_pidfile.fname)

    def drop_files(self, rollout, keep=()):
        """Close the listeners and remove the pidfile a rollout opened in place of the kept ones."""
        arbiter = self.arbiter
        binds.close_unused(arbiter.LISTENERS, keep=list(rollout.previous_listeners) + list(keep))
        if arbiter.pidfile is not rollout.previous_pidfile and arbiter.pidfile is not None:
            arbiter.files.remove_pidfile(arbiter.pidfile.fname)


def new_pidfile(arbiter, path):
    """A Pidfile for `path` naming this master, written atomically (None without a path)."""
    if path is None:
        return None
    pidfile = files.adopt_pidfile(Pidfile(path), arbiter.log)
    pidfile.pid = arbiter.pid
    arbiter.files.write(path, "%s\n" % arbiter.pid)
    return pidfile


def reset_environment(cfg):
    """Undo the config's `raw_env` so the reloaded config sees the original environment."""
    for key in cfg.env:
        if key in cfg.env_orig:
            os.environ[key] = cfg.env_orig[key]
        else:
            os.environ.pop(key, None)


def apply_environment(cfg):
    for key, value in cfg.env.items():
        os.environ[key] = value


def config_failure(exc):
    """One line for a config that failed on HUP; Gunicorn printed its traceback to stderr."""
    if isinstance(exc, SystemExit):
        if isinstance(exc.code, str):
            return exc.code
        return "the config failed to load (exit %s); its traceback is on stderr" % exc.code
    return "%s: %s" % (type(exc).__name__, exc)
