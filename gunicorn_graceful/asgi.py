"""What an ASGI app sees of a drain: the draining API (the guard around the app is
`workers/guard.py`).

The draining API (`Draining`) is what an app sees: `scope["state"]["graceful_draining"]`
(Starlette and FastAPI: `request.state.graceful_draining`), or
`gunicorn_graceful.asgi.draining()` anywhere in the worker process.
"""

import asyncio

GOING_AWAY = 1001       # WebSocket close code on a stop
SERVICE_RESTART = 1012  # on a reload, a recycle, an upgrade: come back in a moment
STATE_KEY = "graceful_draining"


class Draining:
    """Whether this worker drains: set once, when the drain starts.

    `await draining.wait()` in a server-sent-event generator or a WebSocket
    handler ends it cleanly (a final event, the app's own close) before the
    worker closes or cuts it. `reason` is "stop" or "restart"; `close_code` the
    WebSocket code the worker closes with (1001 on a stop, 1012 on a restart).
    Futures, not an asyncio.Event: it is made before the worker's loop exists.
    """

    def __init__(self):
        self.reason = None
        self.close_code = None
        self._waiters = []

    def is_set(self):
        return self.reason is not None

    async def wait(self):
        if self.reason is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def set(self, reason):
        """In the worker, at drain start (in its event loop)."""
        if self.reason is not None:
            return
        self.reason = reason
        self.close_code = GOING_AWAY if reason == "stop" else SERVICE_RESTART
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


_current = Draining()


def draining():
    """This worker's `Draining`, for code that has no request scope at hand."""
    return _current
