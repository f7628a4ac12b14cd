"""An example Starlette app for the graceful ASGI workers: a JSON route, a slow route, a
WebSocket echo, a WebSocket that closes itself when its worker drains, and a
server-sent-event stream that ends cleanly when its worker drains.

    gunicorn -c conf/graceful_asgi.py examples.asgi_app:app

The stream uses the draining API: `request.state.graceful_draining` (the same object as
`gunicorn_graceful.asgi.draining()`), set when the worker starts to drain.
Set EXAMPLE_LIFESPAN_MARKER to a file path to have the lifespan shutdown append a line to it.
"""

import asyncio
import contextlib
import os
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

STARTED = time.time()


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"started": STARTED}
    marker = os.environ.get("EXAMPLE_LIFESPAN_MARKER")
    delay = float(os.environ.get("EXAMPLE_LIFESPAN_SHUTDOWN_SECONDS", "0"))
    if delay:
        await asyncio.sleep(delay)
    if marker:
        with open(marker, "a") as handle:
            handle.write("shutdown pid=%d\n" % os.getpid())


async def home(request):
    return JSONResponse({"pid": os.getpid(), "version": os.environ.get("APP_VERSION", "1")})


async def slow(request):
    await asyncio.sleep(float(request.query_params.get("seconds", "2")))
    return JSONResponse({"pid": os.getpid(), "slept": request.query_params.get("seconds", "2")})


async def ready(request):
    return JSONResponse({"ready": True})


async def events(request):
    """One event a second until the worker drains, then a final `bye` event."""
    draining = request.state.graceful_draining

    async def stream():
        count = 0
        while not draining.is_set():
            yield "data: tick %d pid %d\n\n" % (count, os.getpid())
            count += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(draining.wait(), timeout=float(
                    request.query_params.get("every", "1")))
        yield "event: bye\ndata: %s\n\n" % draining.reason
    return StreamingResponse(stream(), media_type="text/event-stream")


async def echo(websocket):
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text("%s pid %d" % (text, os.getpid()))
    except WebSocketDisconnect:
        pass


async def polite(websocket):
    """A socket that says goodbye itself, with a code of its own, when its worker drains
    (with graceful_websocket_close_delay set, the worker waits for it)."""
    await websocket.accept()
    draining = websocket.state.graceful_draining
    await draining.wait()
    await websocket.close(code=4000, reason="see you after the %s" % draining.reason)


app = Starlette(lifespan=lifespan, routes=[
    Route("/", home), Route("/slow", slow), Route("/ready", ready), Route("/events", events),
    WebSocketRoute("/ws", echo), WebSocketRoute("/ws-polite", polite),
])
