"""The graceful worker on uvicorn-worker's `UvicornWorker` (extra: gunicorn-graceful[uvicorn]).

Every override of uvicorn's internals is here: the server's exit signal and its
`shutdown`, replaced by the pack's drain (`asyncio_base`); its connections
(`server_state.connections`), closed or aborted there.
"""

import logging
import signal
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from gunicorn_graceful import settings
from gunicorn_graceful.workers import asyncio_base, health


class GracefulServer(Server):
    """uvicorn's server, draining the pack's way on SIGTERM, stopping at once on SIGINT/SIGQUIT."""

    def __init__(self, config, worker):
        super().__init__(config)
        self.worker = worker

    def handle_exit(self, sig, frame):
        """uvicorn's signal handler. SIGINT/SIGQUIT: Gunicorn's quick stop (`quick_stop`);
        SIGTERM: a booting worker has accepted nothing and ends at once, a serving one drains.
        Under graceful_int = "drain", SIGINT is the master's (`GracefulMixin.handle_int`)."""
        if sig == signal.SIGINT and self.worker.drains_on_int():
            return
        if sig in (signal.SIGINT, signal.SIGQUIT):
            self.worker.quick_stop()
        self.worker.exit_if_booting()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None):
        await self.worker.graceful_shutdown()


class GracefulUvicornWorker(asyncio_base.AsyncGracefulMixin, UvicornWorker):
    """uvicorn-worker's UvicornWorker with the pack's drain, readiness and WebSocket close codes."""

    APP_ATTRIBUTE = "wsgi"
    CUT_QUIETLY = True  # uvicorn logs a cancelled call as an app error; the cut is logged already

    @classmethod
    def check_config(cls, cfg, log):
        asyncio_base.check_settings(cfg, log)

    def init_process(self):
        self.server = None
        paths = health.unlogged_paths(settings.current())
        if paths:
            logging.getLogger("uvicorn.access").addFilter(_NoProbes(paths))
        super().init_process()

    def handle_exit(self, sig, frame):
        """Also SIGQUIT, which UvicornWorker routes here: Gunicorn's quick stop."""
        if sig == signal.SIGQUIT and self.server is not None:
            self.server.handle_exit(sig, frame)
            return
        super().handle_exit(sig, frame)

    async def _serve(self):
        """UvicornWorker's, with the graceful server; the pack recycles (not uvicorn's limit)."""
        self.config.app = self.wsgi
        self.config.limit_max_requests = None
        self.server = GracefulServer(self.config, self)
        self._install_sigquit_handler()
        await self.server.serve(sockets=self.sockets)
        if not self.server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def callback_notify(self):
        """uvicorn's heartbeat tick; UvicornWorker never checks that its master lives."""
        self.notify()
        if not self.check_parent():
            self.server.should_exit = True

    def asyncio_servers(self):
        return self.server.servers

    def open_connections(self):
        return len(self.server.server_state.connections)

    def abort_connections(self):
        for connection in list(self.server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()

    async def shutdown_lifespan(self):
        await self.server.lifespan.shutdown()


class _NoProbes(logging.Filter):
    """uvicorn writes its own access lines (not through Gunicorn's `access`, which
    `health.quiet` wraps): the probes' are left out here. The path, with its query, is the
    third argument of uvicorn's access record."""

    def __init__(self, paths):
        super().__init__()
        self.paths = paths

    def filter(self, record):
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) > 2 and str(args[2]).split("?", 1)[0] in self.paths)
