"""The pack's own settings: defaults, environment overrides and validation.

Gunicorn ignores names it does not know in a config file, so the pack reads its
own names (`graceful_*`) from the config module's globals, the way
gunicorn-worker-healthcheck does, and from `GRACEFUL_*` environment variables,
which win. A bad value stops the start (and a HUP keeps the running
configuration) with one line that names the setting, the value and what is
allowed.
"""

import dataclasses
import difflib
import importlib.machinery
import importlib.util
import os
import sys
import types

from gunicorn.config import KNOWN_SETTINGS

# What starts each line the pack stops a start with (a SystemExit); a HUP logs the rest.
ERROR = "Error: gunicorn-graceful: "
# Set by an old master for its new master on USR2 (`master/upgrade_report`), not by users.
UPGRADE_REPORT_ENV = "GRACEFUL_UPGRADE_REPORT_FD"
IN_PLACE_ENV = "GRACEFUL_IN_PLACE_FD"  # an in-place upgrade's hand-over (`master.inplace`)

_GUNICORN_NAMES = frozenset(setting.name for setting in KNOWN_SETTINGS)


class SettingError(ValueError):
    """A pack setting with a value it does not allow."""

    def __init__(self, name, value, allowed):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__("invalid setting %s=%r: allowed %s" % (name, value, allowed))


def _seconds(minimum, strict):
    def parse(name, value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        ok = number is not None and (number > minimum if strict else number >= minimum)
        if not ok:
            raise SettingError(name, value, "a number of seconds %s %s" % (">" if strict else ">=", minimum))
        return number
    return parse


def _count(name, value):
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise SettingError(name, value, "a whole number >= 0 (0 means no limit)")
    return number


def _mebibytes(name, value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1
    if not number >= 0:
        raise SettingError(name, value, "a size in MiB >= 0 (0 means no limit)")
    return number


def _path(name, value):
    value = "" if value is None else str(value)
    if value and not value.startswith("/"):
        raise SettingError(name, value, "a URL path starting with '/', or empty for none")
    return value


def _items(name, value, meaning):
    """The items of a list setting: a comma-separated string, or a list or tuple."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, (list, tuple)):
        return list(value)
    raise SettingError(name, value, meaning)


_PATHS = "URL paths starting with '/', comma-separated or a list of strings"


def _paths(name, value):
    items = _items(name, value, _PATHS)
    if not all(isinstance(item, str) for item in items):
        raise SettingError(name, value, _PATHS)
    return tuple(_path(name, item.strip()) for item in items if item.strip())


ACCEPT = {"2xx": (200, 300), "<500": (100, 500)}
UPGRADES = ("new-master", "in-place")
INT_MODES = ("quick", "drain")


def _choice(allowed, meaning):
    """A parser for one word of `allowed`; `meaning` is the error's list of what each does."""
    def parse(name, value):
        text = str(value).strip()
        if text not in allowed:
            raise SettingError(name, value, meaning)
        return text
    return parse


def _callable_ref(name, value):
    value = "" if value is None else str(value)
    module, sep, attr = value.partition(":")
    if value and not (sep and module and attr):
        raise SettingError(name, value, "'module:function', or empty for none")
    return value


def _address(name, value):
    text = "" if value is None else str(value).strip()
    host, sep, port = text.rpartition(":")
    if text and not (sep and port.isdigit() and 0 < int(port) < 65536):
        raise SettingError(name, value, "'host:port' (for example 127.0.0.1:9191), or empty "
                                        "for none")
    return text


_BOUNDS = "increasing numbers of seconds > 0, comma-separated or a list"


def _bounds(name, value):
    items = _items(name, value, _BOUNDS)
    try:
        bounds = tuple(float(item) for item in items if str(item).strip())
    except (TypeError, ValueError):
        bounds = ()
    if not bounds or bounds[0] <= 0 or list(bounds) != sorted(set(bounds)):
        raise SettingError(name, value, _BOUNDS)
    return bounds


def _switch(name, value):
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise SettingError(name, value, "true or false (1/0, yes/no, on/off)")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Effective values; each field's metadata holds its parser and its doc."""

    drain_log_interval: float = dataclasses.field(default=1.0, metadata={
        "parse": _seconds(0, True),
        "doc": "Seconds between the INFO lines a draining worker logs."})
    deadline_warning: float = dataclasses.field(default=2.0, metadata={
        "parse": _seconds(0, False),
        "doc": "Seconds before graceful_timeout runs out at which every request still in "
               "flight is logged as about to be cut (`drain.cut_soon`, one WARNING each); "
               "what the deadline then cuts is named again (`drain.cut`)."})
    readiness_path: str = dataclasses.field(default="", metadata={
        "parse": _path,
        "doc": "Path a new worker calls in-process (no network) before it counts as ready; "
               "its answer must be one graceful_readiness_accept allows. Empty: ready once "
               "the app is loaded."})
    readiness_accept: str = dataclasses.field(default="2xx", metadata={
        "parse": _choice(ACCEPT, "'2xx' (a health route) or '<500' (any answer of an app "
                                 "that imported and runs)"),
        "doc": "Which answers of the readiness path count as ready: '2xx' (a health route "
               "of yours) or '<500' (any answer below 500: the app imported and runs, so "
               "'/' of any app will do, a 404 or a login redirect included)."})
    readiness_warmup: tuple = dataclasses.field(default=(), metadata={
        "parse": _paths,
        "doc": "Paths called in-process before the readiness path, to warm caches "
               "(comma-separated in the environment). Their status is not checked."})
    readiness_callable: str = dataclasses.field(default="", metadata={
        "parse": _callable_ref,
        "doc": "'module:function' called with the app (WSGI, or ASGI: then it may be a "
               "coroutine function) in a new worker; it must return "
               "true for the worker to count as ready. Runs after the readiness path. At start "
               "the master checks that the module can be found, without importing it (its "
               "import runs in the workers only)."})
    readiness_timeout: float = dataclasses.field(default=30.0, metadata={
        "parse": _seconds(0, True),
        "doc": "Seconds a new worker has from fork to ready (app loaded, checks passed). "
               "A worker that takes longer is killed and its generation rolled back."})
    max_booting: int = dataclasses.field(default=0, metadata={
        "parse": _count,
        "doc": "How many new workers may boot at once during a reload (bounds memory and "
               "CPU on big hosts). 0: all of them. Recycling boots at most this many "
               "replacements at once, 1 when it is 0."})

    max_worker_rss: float = dataclasses.field(default=0.0, metadata={
        "parse": _mebibytes,
        "doc": "Recycle a worker whose resident memory exceeds this many MiB (checked by the "
               "worker between requests and by the master every second): its replacement "
               "boots first, then it drains. 0: no limit."})
    max_worker_age: float = dataclasses.field(default=0.0, metadata={
        "parse": _seconds(0, False),
        "doc": "Recycle a worker after this many seconds (plus a random part of "
               "graceful_max_worker_age_jitter), replacement first. 0: no limit."})
    max_worker_age_jitter: float = dataclasses.field(default=0.0, metadata={
        "parse": _seconds(0, False),
        "doc": "Up to this many seconds added at random to each worker's "
               "graceful_max_worker_age, so workers started together do not all retire "
               "together (as max_requests_jitter does for max_requests)."})

    lifespan_shutdown_timeout: float = dataclasses.field(default=5.0, metadata={
        "parse": _seconds(0, False),
        "doc": "ASGI workers: seconds kept at the end of a drain for the app's lifespan "
               "shutdown. Connections still open graceful_timeout minus this after SIGTERM are "
               "cut, so the shutdown always runs, and the worker exits by graceful_timeout. "
               "Where this plus graceful_websocket_close_delay reaches graceful_timeout, both "
               "shrink in proportion to half of it (one WARNING at start says what each gets)."})
    websocket_close_delay: float = dataclasses.field(default=0.0, metadata={
        "parse": _seconds(0, False),
        "doc": "ASGI workers: seconds the app has, from the start of a drain, to close its "
               "WebSockets itself (its handlers wait on the draining API) before the worker "
               "closes the rest with 1012 (restart) or 1001 (stop). 0: the worker closes them "
               "at once."})

    upgrade_timeout: float = dataclasses.field(default=60.0, metadata={
        "parse": _seconds(0, True),
        "doc": "Seconds the old master gives a USR2 upgrade to take over (new master up, all "
               "its workers ready); then it stops the new master and keeps serving. In place: "
               "from the USR2 to the new generation ready, the new code's check included; "
               "then the new generation stops and the old code comes back."})
    upgrade: str = dataclasses.field(default="new-master", metadata={
        "parse": _choice(UPGRADES, "'new-master' (a second master takes over, with a new "
                                   "PID) or 'in-place' (the master execs the new code "
                                   "itself and keeps its PID)"),
        "doc": "What USR2 does. 'new-master': a new master starts beside this one (new PID) "
               "and takes over once its workers are ready. 'in-place': this master checks the "
               "new code in a child, then execs it itself (same PID: supervisord, tini, PID 1 "
               "and Type=notify units follow), keeping its workers serving; the new generation "
               "boots, and the old one drains once it is ready; a failure execs the old code "
               "back. With graceful_mold, the check that imported the new code becomes the "
               "new generation's mold (one import) and the kept generation's mold crosses "
               "both execs. Not with reuse_port or dirty workers."})
    release_link: str = dataclasses.field(default="", metadata={
        "parse": lambda name, value: "" if value is None else str(value),
        "doc": "The deploy symlink (for example /srv/app/current -> releases/42). A USR2 "
               "upgrade starts the new master in the release it points to at that moment, "
               "even when Gunicorn was started from the resolved directory; each HUP "
               "generation is pinned to the release it points to when the HUP comes, so a "
               "worker replaced after a rollback loads the kept release. Empty: Gunicorn's "
               "own start directory."})
    mold: bool = dataclasses.field(default=False, metadata={
        "parse": _switch,
        "doc": "Per generation, one process (the mold) imports the app once, runs gc.freeze() "
               "and forks that generation's workers: they share its memory and a killed or "
               "recycled worker is replaced in milliseconds, and HUP still loads new code "
               "(a new mold). Linux only; not with preload_app or reload. Changes on a "
               "restart or a USR2 only."})
    preflight: bool = dataclasses.field(default=False, metadata={
        "parse": _switch,
        "doc": "Before a USR2 upgrade execs the new master, import the app in a subprocess "
               "(bounded by graceful_readiness_timeout) and refuse the upgrade if it fails."})

    health_path: str = dataclasses.field(default="", metadata={
        "parse": _path,
        "doc": "Path the worker answers itself, without calling the app, for load balancers: "
               "200 while the service serves (also from a worker a HUP, a USR2 or recycling "
               "replaces, answering what waited for it: `retiring`), 503 in lame duck and "
               "while the service stops (`draining`). Empty (the default): off, so the pack "
               "never shadows one of your app's routes."})
    liveness_path: str = dataclasses.field(default="", metadata={
        "parse": _path,
        "doc": "Like graceful_health_path, but 200 as long as the worker runs, draining "
               "included: for a liveness probe that must not kill a draining pod. Empty: off."})
    health_access_log: bool = dataclasses.field(default=False, metadata={
        "parse": _switch,
        "doc": "Write health and liveness probes to the access log. Off: a probe every "
               "few seconds from each balancer would drown the requests that matter."})
    shutdown_delay: float = dataclasses.field(default=0.0, metadata={
        "parse": _seconds(0, False),
        "doc": "Lame duck on SIGTERM: for this many seconds every worker keeps serving, the "
               "health path answers 503 and responses close their connection, so balancers "
               "move clients away; then the drain starts. A second SIGTERM, or SIGINT/SIGQUIT, "
               "skips it. 0: drain at once."})
    metrics_bind: str = dataclasses.field(default="", metadata={
        "parse": _address,
        "doc": "Address of the master's Prometheus endpoint (GET /metrics), a listener of its "
               "own, for example 127.0.0.1:9191. Needs the [metrics] extra. Empty: off. Changes "
               "on a restart only (a HUP that changes it is refused)."})
    metrics_buckets: tuple = dataclasses.field(
        default=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), metadata={
            "parse": _bounds,
            "doc": "Upper bounds, in seconds, of gunicorn_request_duration_seconds's buckets."})
    termination_grace_period: float = dataclasses.field(default=0.0, metadata={
        "parse": _seconds(0, False),
        "doc": "The pod's terminationGracePeriodSeconds, when known: the start warns when "
               "shutdown_delay + graceful_timeout + 2 s does not fit in it. 0: unknown."})
    # Last: a field named `int` shadows the builtin in the annotations after it.
    int: str = dataclasses.field(default="quick", metadata={
        "parse": _choice(INT_MODES, "'quick' (Gunicorn's: SIGINT cuts what is in flight) "
                                    "or 'drain' (SIGINT does what SIGTERM does)"),
        "doc": "What SIGINT does, to the master and to a worker. 'quick' (Gunicorn's): stop "
               "at once, cutting what is in flight (worker_int runs). 'drain': exactly what "
               "SIGTERM does (lame duck, drain, graceful_timeout), for Nomad, whose default "
               "kill_signal for non-Docker tasks is SIGINT, and Ctrl-C in a terminal. SIGQUIT "
               "stays the quick stop."})

    @classmethod
    def fields(cls):
        return dataclasses.fields(cls)

    def as_fields(self):
        """The values, ready to log as one event line."""
        return {f.name: ",".join(map(str, v)) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in self.fields()}


def config_name(field_name):
    return "graceful_" + field_name


def env_name(field_name):
    return "GRACEFUL_" + field_name.upper()


def load(namespace, environ=None):
    """Settings from a config module's globals, overridden by the environment."""
    environ = os.environ if environ is None else environ
    values = {}
    for field in Settings.fields():
        name = config_name(field.name)
        if env_name(field.name) in environ:
            name, raw = env_name(field.name), environ[env_name(field.name)]
        elif name in namespace:
            raw = namespace[name]
        else:
            continue
        values[field.name] = field.metadata["parse"](name, raw)
    ours = {config_name(f.name) for f in Settings.fields()}
    unknown = sorted(k for k in namespace if k.startswith("graceful_")
                     and k not in ours and k not in _GUNICORN_NAMES)
    if unknown:
        allowed = ", ".join(config_name(f.name) for f in Settings.fields())
        raise SettingError(unknown[0], namespace[unknown[0]], "a known setting name: " + allowed)
    return Settings(**values)


def near_misses(namespace, environ=None):
    """Names that look like a pack setting but are not one, each with the closest name.

    A typo (`gracefull_readiness_timeout`), a missing prefix (`readiness_path`)
    or a misspelt variable (`GRACEFUL_READINES_PATH`) would otherwise have no
    effect and say nothing.
    """
    environ = os.environ if environ is None else environ
    ours = [config_name(f.name) for f in Settings.fields()]
    warnings = []
    for key, value in namespace.items():
        if key in ours or key in _GUNICORN_NAMES or key.startswith("_") \
                or callable(value) or isinstance(value, types.ModuleType):
            continue
        guess = ("graceful_" + key) if ("graceful_" + key) in ours else next(
            iter(difflib.get_close_matches(key, ours, n=1, cutoff=0.85)), None)
        if guess:
            warnings.append("%s in the config is not a setting: did you mean %s?" % (key, guess))
    known_env = [env_name(f.name) for f in Settings.fields()] + [UPGRADE_REPORT_ENV,
                                                                 IN_PLACE_ENV]
    for key in environ:
        if key.startswith("GRACEFUL_") and key not in known_env:
            guess = next(iter(difflib.get_close_matches(key, known_env, n=1, cutoff=0.8)), None)
            warnings.append("%s in the environment is not a setting%s" % (
                key, ": did you mean %s?" % guess if guess else ""))
    return warnings


_current = None
_name_warnings = []
_installed = False


def current():
    """The settings of this process: what the config pack installed, else the environment's.

    Workers are forked from the master, so they inherit what it installed.
    """
    global _current
    if _current is None:
        _current = load({})
    return _current


def checked():
    """`current()`, or a SystemExit with its one line: a worker class used without the pack
    reads its settings from GRACEFUL_* here, at the master's start (`check_config`), not in
    each worker, where a bad value would be a traceback and a respawn loop."""
    try:
        return current()
    except SettingError as exc:
        raise SystemExit(ERROR + str(exc))


def set_current(settings, name_warnings=None):
    """Install the settings of this process (and the near misses found with them: only the
    config pack's `install` passes those, which is how `installed` knows it ran)."""
    global _current, _name_warnings, _installed
    _current = settings
    if name_warnings is not None:
        _name_warnings, _installed = name_warnings, True


def installed():
    """Whether a config in this process called the pack's `install(globals())`."""
    return _installed


def name_warnings():
    return list(_name_warnings)


def callable_problem(settings):
    """Why graceful_readiness_callable cannot work, or None; checked in the master at start.

    The module is located, not imported (`locate`): the master must never hold
    application code, since every worker forked after a HUP inherits its
    modules and would run the code the master saw at start. Its import (and
    whatever it does) runs in each worker, as the app's does. A missing
    function is reported by the first worker that looks it up.
    """
    module = settings.readiness_callable.partition(":")[0]
    if not module:
        return None
    why = locate(module)
    if why:
        return str(SettingError("graceful_readiness_callable", settings.readiness_callable,
                                "'module:function' with an importable module (%s)" % why))
    return None


def locate(dotted):
    """Why the module `dotted` cannot be found on sys.path, or None; imports nothing.

    `importlib.util.find_spec("a.b")` imports the package `a` to read its
    `__path__`; here each level is looked up in the previous one's directories.
    """
    if dotted in sys.modules:  # the master imported it already (the standard library)
        return None
    path = None
    for depth, part in enumerate(dotted.split(".")):
        name = ".".join(dotted.split(".")[:depth + 1])
        if not part.isidentifier():
            return "%r is not a module name" % dotted
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path) \
                or (importlib.util.find_spec(name) if depth == 0 else None)
        except (ImportError, ValueError) as exc:
            return str(exc)
        if spec is None:
            return "no module named %r on the Python path" % name
        path = spec.submodule_search_locations
        if path is None and name != dotted:
            return "%r is not a package" % name
    return None


GRACE_MARGIN = 2


def timing_warnings(cfg, settings):
    """Combinations of Gunicorn's timing settings that defeat a graceful drain, each with its fix."""
    warnings = []
    if cfg.graceful_timeout <= 0:
        warnings.append("graceful_timeout=%s leaves no time to drain: set it above the "
                        "longest request you serve" % cfg.graceful_timeout)
    elif cfg.timeout and cfg.timeout < cfg.graceful_timeout:
        warnings.append("timeout=%s is below graceful_timeout=%s: a sync worker busy with "
                        "one request longer than timeout is killed before its drain ends; "
                        "raise timeout to at least graceful_timeout"
                        % (cfg.timeout, cfg.graceful_timeout))
    if cfg.graceful_timeout > 0 and settings.deadline_warning >= cfg.graceful_timeout:
        warnings.append("graceful_deadline_warning=%s is not below graceful_timeout=%s: "
                        "requests would be reported as cut at once; lower it"
                        % (settings.deadline_warning, cfg.graceful_timeout))
    needed = settings.shutdown_delay + cfg.graceful_timeout + GRACE_MARGIN
    if settings.termination_grace_period and needed > settings.termination_grace_period:
        warnings.append("graceful_shutdown_delay=%s + graceful_timeout=%s + %ss margin does not "
                        "fit in terminationGracePeriodSeconds=%s: Kubernetes kills the pod "
                        "mid-drain; raise the grace period to at least %s"
                        % (settings.shutdown_delay, cfg.graceful_timeout, GRACE_MARGIN,
                           settings.termination_grace_period, int(needed + 0.999)))
    if cfg.keepalive > cfg.graceful_timeout > 0:
        warnings.append("keepalive=%s exceeds graceful_timeout=%s: idle kept-alive "
                        "connections outlive the drain; lower keepalive"
                        % (cfg.keepalive, cfg.graceful_timeout))
    return warnings
