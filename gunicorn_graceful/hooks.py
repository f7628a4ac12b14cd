"""Server hooks: one stable key=value line per lifecycle event, chained with the user's hooks.

`install(globals())`, the last line of a config that uses the pack, does two
things: it reads and validates the `graceful_*` settings, and it chains every
hook the config defines itself after the pack's hook of the same name, so a
user's `post_fork` keeps running and the pack's lines still appear.
"""

import functools
import os
import tempfile

from gunicorn import __version__ as gunicorn_version

from gunicorn_graceful import __version__, compat, forked, settings, userhooks
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import preflight, upgrade_report
from gunicorn_graceful.master.arbiter import GracefulArbiter
from gunicorn_graceful.master.upgrade import PRE_EXEC_FAILED
from gunicorn_graceful.workers import GracefulMixin, GracefulThreadWorker

WORKER_CLASSES = ("GracefulThreadWorker", "GracefulSyncWorker", "GracefulUvicornWorker",
                  "GracefulASGIWorker")


def on_starting(server):
    """Install the graceful master, then log the effective settings once."""
    problem = settings.callable_problem(settings.current())
    if problem:
        raise SystemExit(settings.ERROR + problem)
    if getattr(server, "is_check", False):  # an in-place check with graceful_mold
        GracefulArbiter.become_check_mold(server, check_config, worker_class_of)
    GracefulArbiter.install(server, check_config, worker_class_of)
    emit(server.log, "info", "master.starting", pid=server.pid, version=__version__,
         gunicorn=gunicorn_version, worker_class=server.cfg.worker_class_str,
         workers=server.cfg.workers)
    current = settings.current()
    emit(server.log, "info", "settings", graceful_timeout=server.cfg.graceful_timeout,
         timeout=server.cfg.timeout, keepalive=server.cfg.keepalive, **current.as_fields())
    for warning in settings.timing_warnings(server.cfg, current) + settings.name_warnings():
        emit(server.log, "warning", "settings.warning", problem=warning)
    if not compat.THREAD_WORKER_STOP_HOOK and issubclass(server.worker_class,
                                                         GracefulThreadWorker):
        emit(server.log, "warning", "settings.warning",
             problem="GracefulThreadWorker on Gunicorn %s stops with Gunicorn's own thread "
                     "worker shutdown, which drops kept-alive connections; use Gunicorn >= 27 "
                     "or GracefulSyncWorker" % gunicorn_version)


def when_ready(server):
    emit(server.log, "info", "master.listening", pid=server.pid,
         listeners=",".join(str(lnr) for lnr in server.LISTENERS))


def on_reload(server):
    """The generation about to boot (numbers are never reused)."""
    generations = getattr(server, "generations", None)
    emit(server.log, "info", "master.reload", pid=server.pid,
         generation=generations.upcoming() if generations else 0)


def pre_exec(server):
    """In the forked child of a USR2: say which release starts; refuse what cannot work.

    A new master that cannot write its `.2` pidfile would exit at once with a
    traceback; one whose app cannot import (graceful_preflight) would boot
    workers that all fail. Both are refused here, before the exec, and the
    reason reaches the old master through the upgrade report channel.
    """
    current = settings.current()
    cwd = server.START_CTX["cwd"]
    emit(server.log, "info", "master.reexec", pid=server.pid, cwd=cwd,
         release=os.path.realpath(cwd))
    failure = pidfile_failure(server.cfg.pidfile)
    if not failure and current.preflight:
        failure = preflight.check(server, cwd, current.readiness_timeout)
        failure = failure and "pre-flight import failed: %s" % failure
    if failure:
        refuse_exec(server, failure)


def refuse_exec(server, failure):
    """In the forked child of a USR2: no exec; the old master reads why (its upgrade line)."""
    emit(server.log, "error", "upgrade.refused", pid=os.getppid(),
         release=server.START_CTX["cwd"], reason=failure)
    upgrade_report.tell(upgrade_report.fds(server.cfg.env_orig[upgrade_report.ENV])[0],
                        failure)
    os._exit(PRE_EXEC_FAILED)


def pidfile_failure(pidfile):
    """Why the new master could not write `<pidfile>.2`, or None when it can."""
    if pidfile is None:
        return None
    path = pidfile + ".2"
    try:
        fd, probe = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return "cannot write the pidfile %s: %s" % (path, exc.strerror or exc)
    return None


def pre_fork(server, worker):
    """In the master, before the fork (the worker's record is made by the arbiter, not here:
    a config may replace this hook)."""
    emit(server.log, "debug", "worker.forking", generation=getattr(server, "generation", 0),
         age=worker.age)


def post_fork(server, worker):
    fields = {"pid": worker.pid, "ppid": server.pid,
              "generation": getattr(server, "generation", 0)}
    if forked.release:
        fields["release"] = forked.release
    emit(server.log, "info", "worker.booting", **fields)


def post_worker_init(worker):
    emit(worker.log, "info", "worker.loaded", pid=worker.pid)


def worker_int(worker):
    emit(worker.log, "warning", "worker.int", pid=worker.pid,
         in_flight=len(getattr(worker, "inflight", ())))


def worker_abort(worker):
    emit(worker.log, "warning", "worker.abort", pid=worker.pid,
         in_flight=len(getattr(worker, "inflight", ())))


def child_exit(server, worker):
    """In the master: how the worker ended, in the state it last reported."""
    record = getattr(server, "records", None) and server.records.by_pid.get(worker.pid)
    if not record:
        return
    status = record.exit_status
    fields = {"pid": worker.pid, "generation": record.generation, "state": record.final_state}
    if status is not None:
        if os.WIFSIGNALED(status):
            fields["signal"] = os.WTERMSIG(status)
        else:
            fields["code"] = os.WEXITSTATUS(status)
    emit(server.log, "info", "worker.exited", **fields)


def worker_exit(server, worker):
    """In the worker, its last line; the master's line about the same exit is `worker.exited`."""
    emit(server.log, "info", "worker.exiting", pid=worker.pid)


def nworkers_changed(server, new_value, old_value):
    """A change of `workers` (TTIN, TTOU, a reload). Gunicorn's first call comes from its
    constructor, before "Starting gunicorn": `master.starting` carries that value."""
    if old_value is not None and new_value != old_value:
        emit(server.log, "info", "master.workers", wanted=new_value, previous=old_value)


def on_exit(server):
    emit(server.log, "info", "master.exit", pid=server.pid)


HOOKS = {fn.__name__: fn for fn in (
    on_starting, when_ready, on_reload, pre_exec, pre_fork, post_fork, post_worker_init,
    worker_int, worker_abort, child_exit, worker_exit, nworkers_changed, on_exit)}
for _hook in HOOKS.values():
    _hook.graceful_hook = True


def chain(pack_hook, user_hook):
    """The pack's hook, then the user's. `wraps` keeps the arity Gunicorn checks."""
    @functools.wraps(pack_hook)
    def chained(*args):
        pack_hook(*args)
        try:
            return user_hook(*args)
        except Exception as exc:  # what the master does about it: `userhooks`
            try:
                return userhooks.failed(pack_hook.__name__, args, exc)
            except userhooks.HookFailed as failed:
                if pack_hook is pre_exec:  # no new master runs without what it set up
                    refuse_exec(args[0], failed.reason)
                raise
    chained.graceful_hook = True
    return chained


def install(namespace):
    """Validate the pack settings and chain the config's own hooks after the pack's.

    Called as the last line of a config file with its `globals()`. A bad
    setting raises SystemExit with one line naming it, so Gunicorn stops at
    start (exit 1) and a HUP keeps the running configuration. A hook the config
    defines after this line replaces the pack's: `check_config` chains it at
    start and on each HUP.
    """
    try:
        settings.set_current(settings.load(namespace), settings.near_misses(namespace))
    except settings.SettingError as exc:
        raise SystemExit("Error: gunicorn-graceful: %s" % exc)
    for name, pack_hook in HOOKS.items():
        hook = namespace.get(name)
        if hook is None:
            namespace[name] = pack_hook
        elif not getattr(hook, "graceful_hook", False):
            namespace[name] = chain(pack_hook, hook)


def check_config(cfg, log):
    """Why a loaded config cannot run under the pack, or None; chains the hooks it defined
    after `install(globals())` (one WARNING each). The one check a config passes, at start
    (`GracefulArbiter.install`) and on every HUP (`core.config_problem`).

    Without the pack's hooks the master would lose its lifecycle lines; without
    its `on_starting` the config does not use the pack at all (a HUP to it is
    refused: the running master would keep the pack's decisions on settings it
    no longer reads).
    """
    if not getattr(cfg.on_starting, "graceful_hook", False):
        return ("the config does not install gunicorn-graceful: it must end with "
                "install(globals()) and define no on_starting after it")
    worker_class = worker_class_of(cfg)
    if not issubclass(worker_class, GracefulMixin):
        # No worker of another class ever says it is ready: the master would halt later
        # with a misleading readiness reason (or a HUP roll back).
        return ("worker_class=%s is not a gunicorn-graceful worker; use one of "
                "gunicorn_graceful.workers.%s (-k on the command line overrides the config)"
                % (cfg.worker_class_str, ", ".join(WORKER_CLASSES)))
    reason = worker_class_problem(worker_class, cfg, log)
    if reason:
        return reason
    for name, pack_hook in HOOKS.items():
        hook = cfg.settings[name].get()
        if not getattr(hook, "graceful_hook", False):
            cfg.set(name, chain(pack_hook, hook))
            emit(log, "warning", "settings.warning",
                 problem="%s is defined after install(globals()): it runs after the pack's %s; "
                         "define hooks before install(globals())" % (name, name))
    return None


def worker_class_problem(worker_class, cfg, log):
    """The worker class's own checks (HTTP/2, the ASGI lifespan and its budget), as one line,
    or None. Gunicorn runs them at start only (`Arbiter.start`): a HUP to a config they
    refuse would have been taken."""
    try:
        worker_class.check_config(cfg, log)
    except SystemExit as exc:
        return str(exc.code).replace(settings.ERROR, "", 1)
    return None


def worker_class_of(cfg):
    """The class the pack runs for `cfg`: Gunicorn's choice, except that GracefulSyncWorker
    with threads > 1 becomes GracefulThreadWorker (`GracefulArbiter.keep_graceful_worker`)."""
    configured = cfg.settings["worker_class"].get()
    name = configured if isinstance(configured, str) else configured.__name__
    if name.endswith("GracefulSyncWorker") and cfg.threads > 1:
        return GracefulThreadWorker
    return cfg.worker_class
