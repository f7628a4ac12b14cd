"""The graceful worker on Gunicorn's native asyncio worker (Gunicorn >= 24).

Every override of that worker's internals is here (see `compat.NATIVE_ASGI`);
the drain itself is `asyncio_base`'s.
"""

import asyncio
import signal
import time

from gunicorn.workers import base

from gunicorn_graceful import compat
from gunicorn_graceful.workers import asyncio_base

if compat.NATIVE_ASGI:
    from gunicorn.workers.gasgi import ASGIWorker

    class GracefulASGIWorker(asyncio_base.AsyncGracefulMixin, ASGIWorker):
        """Gunicorn's asgi worker with the pack's drain, readiness and WebSocket close codes."""

        APP_ATTRIBUTE = "asgi"
        CUT_QUIETLY = False  # a cancelled call is a client that left, to Gunicorn: quiet
        HEARS_CLOSE_REPLY = compat.native_websocket_hears_close_reply()
        COUNTS_CONNECTIONS = compat.native_asgi_counts_connections()
        serving_task = draining_task = None

        @classmethod
        def check_config(cls, cfg, log):
            super().check_config(cfg, log)
            if getattr(cfg, "asgi_lifespan", "auto") == "off":
                raise SystemExit("Error: gunicorn-graceful: asgi_lifespan=off leaves no place "
                                 "for the readiness check (allowed: auto, on)")
            asyncio_base.check_settings(cfg, log)

        async def _serve(self):
            """The base's, remembering its task (the drain ends its serving loop), after the
            app's startup and readiness check: Gunicorn's lifespan manager gives those 30 s,
            then serves as if the app had no lifespan; here `graceful_readiness_timeout`
            governs, as on every class. The manager then finds the startup done."""
            self.serving_task = asyncio.current_task()
            await self.guard.start({"type": "lifespan", "state": self.state,
                                    "asgi": {"version": "3.0", "spec_version": "2.4"}})
            await super()._serve()

        def init_signals(self):
            """Under graceful_int = "drain", SIGINT is the master's (`GracefulMixin.handle_int`):
            the loop's handler goes, the base's no-op comes back (the loop's replaced it)."""
            super().init_signals()
            if self.drains_on_int():
                self.loop.remove_signal_handler(signal.SIGINT)
                signal.signal(signal.SIGINT, self.handle_int)

        def handle_exit_signal(self):
            """SIGTERM, from the event loop: drain at once (not at the next one-second tick
            of the base's serving loop), then end that loop; `alive` stays true meanwhile
            (see AsyncGracefulMixin.start_drain)."""
            self.exit_if_booting()
            if self.heartbeat is None:
                self.draining_task = asyncio.ensure_future(self._drain_then_exit())

        def handle_quit_signal(self):
            """SIGINT/SIGQUIT: a quick stop now (the base's would end in our full drain)."""
            self._quick_shutdown = True  # the base's cleanup then waits 1 s at most
            self.quick_stop()

        async def _drain_then_exit(self):
            await self.graceful_shutdown()
            self.alive = False
            self.serving_task.cancel()  # the base's loop catches it and calls _shutdown

        async def _shutdown(self):
            """The base's loop ended: after our drain, or because the master is gone."""
            if self.draining_task is not None:
                return
            self.check_parent()
            await self.graceful_shutdown()

        def asyncio_servers(self):
            return self.servers

        def open_connections(self):
            """Gunicorn's count; where it leaks (see compat), the connections are taken as
            closed once no call has run for `keepalive` seconds into the drain: a draining
            worker's responses close their connections, and idle ones close at keepalive."""
            if self.COUNTS_CONNECTIONS:
                return self.nr_conns
            return int(time.monotonic() < self.drain_began + self.cfg.keepalive)

        def abort_connections(self):
            """Nothing: cancelling a call makes Gunicorn close its connection."""

        async def shutdown_lifespan(self):
            """The app's shutdown first, bounded by the drain (Gunicorn's manager would cancel
            it at 30 s), then the manager's, which finds it done."""
            await self.guard.shutdown_app()
            if self.lifespan is not None:
                await self.lifespan.shutdown()

else:
    class GracefulASGIWorker(base.Worker):
        """Stands in on a Gunicorn without a native asgi worker: refuses to start, in one line."""

        @classmethod
        def check_config(cls, cfg, log):
            from gunicorn import __version__
            raise SystemExit("Error: gunicorn-graceful: GracefulASGIWorker needs Gunicorn's "
                             "native asgi worker (Gunicorn >= 24; this is %s); use "
                             "gunicorn_graceful.workers.GracefulUvicornWorker" % __version__)
