"""Put the pack's classes where Gunicorn's (and uvicorn-worker's) are looked up, so their own
test suites run against the pack: `gunicorn.arbiter.Arbiter`, the worker modules' classes and
Gunicorn's `-k` short names. Imported by the pytest plugin and, in the servers those suites
start, by `site/sitecustomize.py`."""

import importlib
import os

SWAPS = [  # (module, attribute, the pack's replacement as module:attribute)
    ("gunicorn.arbiter", "Arbiter", "graceful_swap:PackArbiter"),
    ("gunicorn.workers.sync", "SyncWorker", "gunicorn_graceful.workers:GracefulSyncWorker"),
    ("gunicorn.workers.gthread", "ThreadWorker", "gunicorn_graceful.workers:GracefulThreadWorker"),
    ("gunicorn.workers.gasgi", "ASGIWorker", "gunicorn_graceful.workers:GracefulASGIWorker"),
    ("uvicorn_worker", "UvicornWorker", "gunicorn_graceful.workers:GracefulUvicornWorker"),
    ("uvicorn_worker._workers", "UvicornWorker",
     "gunicorn_graceful.workers:GracefulUvicornWorker"),
]
SHORT_NAMES = {"sync": "gunicorn_graceful.workers.GracefulSyncWorker",
               "gthread": "gunicorn_graceful.workers.GracefulThreadWorker",
               "asgi": "gunicorn_graceful.workers.GracefulASGIWorker"}


def pack_arbiter():
    """A GracefulArbiter made as a config with the pack makes it, where Gunicorn's suite makes
    an Arbiter: Gunicorn's own __init__ (the pack is not installed yet then), then the pack's
    hooks chained into the cfg and `GracefulArbiter.install`, which a real start runs from
    on_starting (here it runs once, at construction: the tests call methods without start)."""
    from gunicorn_graceful import hooks
    from gunicorn_graceful.master.arbiter import GracefulArbiter

    (stock,) = GracefulArbiter.__bases__  # Gunicorn's Arbiter, swapped or not

    class PackArbiter(GracefulArbiter):
        def __init__(self, app):
            self.__class__ = stock
            stock.__init__(self, app)
            self.pid = _GETPID()  # start() sets it before on_starting
            for name, pack_hook in hooks.HOOKS.items():
                if name != "on_starting":
                    self.cfg.set(name, hooks.chain(pack_hook, self.cfg.settings[name].get()))
            self.cfg.set("on_starting", hooks.chain(lambda server: None,
                                                    self.cfg.settings["on_starting"].get()))
            PackArbiter.install(self, hooks.check_config, hooks.worker_class_of)
    return PackArbiter


_PACK_ARBITER = []
_GETPID = os.getpid  # not a test's patched one: the tests count their own calls


def __getattr__(name):
    """`PackArbiter`, made on first use (importing the pack's master imports Gunicorn's)."""
    if name == "PackArbiter":
        if not _PACK_ARBITER:
            _PACK_ARBITER.append(pack_arbiter())
        return _PACK_ARBITER[0]
    raise AttributeError(name)


def _load(spec):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def swap():
    """Replace every class of SWAPS whose module exists here; the names of those replaced."""
    done = []
    for module_name, name, spec in SWAPS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # uvicorn-worker not installed, or another layout of it
            continue
        if hasattr(module, name):
            setattr(module, name, _load(spec))
            done.append("%s.%s" % (module_name, name))
    from gunicorn import workers
    workers.SUPPORTED_WORKERS.update(SHORT_NAMES)
    return done
