"""The graceful ASGI workers under real signals, with real WebSocket, SSE and HTTP clients."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import websockets

from gunicorn_graceful import compat
from tests.harness import (ROOT, Load, Sockets, process_alive, quick_stop, usr2_new_master,
                           wait_for, write_asgi_app)

UVICORN = "gunicorn_graceful.workers.GracefulUvicornWorker"
NATIVE = "gunicorn_graceful.workers.GracefulASGIWorker"


def _classes(uvicorn_on_every_line, native_on_every_line=True):
    """The classes as test parameters; `lines` marks those that run on every line.

    Gunicorn's native asgi worker differs between lines: the tests that go through its
    internals (the drain, the close handshake, heartbeats, lifespan, counting) run on
    every line. uvicorn's worker reaches Gunicorn only through what the sync tests cover
    on every line: a smoke set (SMOKE: the signal paths) on every line. The rest is the
    pack's own logic, the same on every line: NEWEST runs it on the newest line only."""
    uvicorn = [pytest.mark.lines] if uvicorn_on_every_line else []
    params = [pytest.param(UVICORN, id="GracefulUvicornWorker", marks=uvicorn)]
    if compat.NATIVE_ASGI:
        native = [pytest.mark.lines] if native_on_every_line else []
        params.append(pytest.param(NATIVE, id="GracefulASGIWorker", marks=native))
    return params


CLASSES = _classes(uvicorn_on_every_line=False)
SMOKE = _classes(uvicorn_on_every_line=True)
NEWEST = _classes(uvicorn_on_every_line=False, native_on_every_line=False)

CONFIG = 'graceful_readiness_path = "/ready"\n'


@pytest.fixture
def asgi(workdir, servers):
    """Start an ASGI server: `asgi(worker_class, config_body=..., workers=...)`."""
    write_asgi_app(workdir, "1")
    marker = os.path.join(workdir, "lifespan.log")

    def start(worker, config_body=CONFIG, workers=2, env=None, **kwargs):
        env = dict({"EXAMPLE_LIFESPAN_MARKER": marker}, **(env or {}))
        server = servers(workdir, worker=worker, workers=workers, app="asgiapp:app",
                         config_body=config_body, env=env, **kwargs)
        server.marker = marker
        return server
    return start


def shutdowns(server):
    if not os.path.exists(server.marker):
        return 0
    with open(server.marker) as handle:
        return sum(1 for line in handle if line.startswith("shutdown"))


def echo_pid(server):
    async def once():
        async with websockets.connect(server.url.replace("http://", "ws://") + "/ws",
                                      open_timeout=10) as ws:
            await ws.send("again")
            return int((await asyncio.wait_for(ws.recv(), 10)).rsplit(" ", 1)[1])
    return asyncio.run(once())


def slow_request(server, seconds, timeout=40):
    """A /slow request in a thread, once it reached the app: (thread, {"response"|"error": ...})."""
    outcome = {}

    def run():
        try:
            outcome["response"] = requests.get(server.url + "/slow?seconds=%s" % seconds,
                                               timeout=timeout)
        except requests.RequestException as exc:
            outcome["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server.wait_started("/slow")
    return thread, outcome


@pytest.mark.parametrize("worker", SMOKE)
def test_term_closes_websockets_with_1001_and_finishes_http(asgi, worker):
    server = asgi(worker)
    sockets = Sockets(server.url, 5).start()
    thread, slow = slow_request(server, 2)
    term = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    exited = time.monotonic()
    assert exited - term < 10  # the handlers end with their sockets, not at the cut (25 s)
    assert sockets.join() == [1001] * 5, server.tail()
    assert all(at <= exited for _, at in sockets.codes)
    thread.join(10)
    assert slow["response"].status_code == 200
    assert server.count(r"event=drain\.websockets_close pid=\d+ websockets=\d+ code=1001") >= 1
    assert shutdowns(server) == 2


@pytest.mark.parametrize("worker", NEWEST)  # the worker's 1012 path: the USR2 twin, on every line
def test_hup_closes_old_websockets_with_1012_and_loses_no_request(asgi, workdir, worker):
    server = asgi(worker)
    old_pids = {pid for pid in server.children()}
    sockets = Sockets(server.url, 4).start()
    load = Load(server.url, threads=4).start()
    load.wait_count(50)
    write_asgi_app(workdir, "2")
    server.signal(signal.SIGHUP)
    server.wait_log("event=reload.done")
    codes = sockets.join()
    wait_for(lambda: load.results and load.results[-1].version == "2", 20, "version 2 served")
    load.stop()
    assert codes == [1012] * 4, server.tail()
    assert load.failures() == [], load.summary()
    assert echo_pid(server) not in old_pids  # a client that reconnects reaches the new generation


@pytest.mark.parametrize("worker", NEWEST)
def test_sse_stream_ends_with_its_final_event(asgi, worker):
    server = asgi(worker, workers=1)
    client = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    # Connection: close, because Gunicorn 24-26's asgi worker never times out an idle
    # kept-alive connection (README, Supported Gunicorn): the stream is what is tested here.
    client.sendall(b"GET /events?every=0.2 HTTP/1.1\r\nHost: localhost\r\n"
                   b"Connection: close\r\n\r\n")
    received = b""
    deadline = time.monotonic() + 15
    while b"tick 1" not in received and time.monotonic() < deadline:
        chunk = client.recv(4096)
        assert chunk, received
        received += chunk
    server.signal(signal.SIGTERM)
    while time.monotonic() < deadline:
        chunk = client.recv(4096)
        if not chunk:
            break
        received += chunk
    client.close()
    assert b"event: bye\r\ndata: stop" in received or b"event: bye\ndata: stop" in received
    assert server.wait_exit(timeout=20) == 0
    assert server.count(r"event=drain\.cut") == 0


# The drain's reporter thread wakes 0.3 s after the deadline, as on a loaded host: the
# worker's own cut must still name what it cut (CI once lost the line to that race).
LATE_REPORTER = (
    "def post_fork(server, worker):\n"
    "    import time\n"
    "    from gunicorn_graceful.workers import inflight\n"
    "    run = inflight.DrainReporter._run\n"
    "    def late(self):\n"
    "        if self._begun.wait(60):\n"
    "            time.sleep(max(self.deadline - time.monotonic(), 0) + 0.3)\n"
    "        run(self)\n"
    "    inflight.DrainReporter._run = late\n")


@pytest.mark.parametrize("worker", NEWEST)
def test_cut_at_the_deadline_still_runs_the_lifespan_shutdown(asgi, worker):
    server = asgi(worker, workers=1, config_body=CONFIG + LATE_REPORTER + (
        "graceful_timeout = 4\ngraceful_lifespan_shutdown_timeout = 1.5\n"
        "graceful_deadline_warning = 1\n"))
    thread, outcome = slow_request(server, 30, timeout=20)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0
    assert time.monotonic() - started < 6
    thread.join(10)
    assert "error" in outcome  # the stuck request was cut
    assert server.count(r"event=drain\.cut pid=\d+ method=GET path=/slow\?\[redacted\]") == 1
    assert shutdowns(server) == 1
    assert "WORKER TIMEOUT" not in server.log()


@pytest.mark.parametrize("worker", CLASSES)
def test_slow_lifespan_shutdown_is_bounded_and_reported(asgi, worker):
    server = asgi(worker, workers=1, env={"EXAMPLE_LIFESPAN_SHUTDOWN_SECONDS": "30"},
                  config_body=CONFIG + "graceful_timeout = 5\n"
                  "graceful_lifespan_shutdown_timeout = 1\n")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0
    assert time.monotonic() - started < 4
    assert server.count(r"event=lifespan\.shutdown_timeout pid=\d+ timeout=1\.00") == 1


@pytest.mark.parametrize("worker", NEWEST)
def test_broken_asgi_code_on_hup_rolls_back(asgi, workdir, worker):
    server = asgi(worker)
    load = Load(server.url, threads=4).start()
    load.wait_count(50)
    write_asgi_app(workdir, "2", before="raise RuntimeError('deploy broke the import')")
    server.signal(signal.SIGHUP)
    server.wait_log("event=reload.rollback ")
    load.wait_count(len(load.results) + 50)
    load.stop()
    assert load.failures() == [], load.summary()
    assert {r.version for r in load.results if r.ok} == {"1"}
    assert "deploy broke the import" in server.log()
    assert server.alive()


@pytest.mark.parametrize("worker", NEWEST)
def test_failing_readiness_path_rolls_back_hup_with_one_line(asgi, workdir, worker):
    server = asgi(worker)
    write_asgi_app(workdir, "2")
    with open(os.path.join(workdir, "gunicorn_conf.py")) as handle:
        body = handle.read()
    with open(os.path.join(workdir, "gunicorn_conf.py"), "w") as handle:
        handle.write(body.replace('"/ready"', '"/missing"'))
    server.signal(signal.SIGHUP)
    server.wait_log("event=reload.rollback ")
    assert server.count(r"event=worker\.not_ready pid=\d+ reason=\"NotReady: readiness path "
                        r"/missing answered 404 \(point graceful_readiness_path at a route that "
                        r"answers 2xx, or set graceful_readiness_accept = '<500'") >= 1
    assert requests.get(server.url + "/", timeout=5).json()["version"] == "1"


@pytest.mark.parametrize("worker", CLASSES)
def test_long_drain_outlives_timeout_by_heartbeating(asgi, worker):
    server = asgi(worker, workers=1, config_body=CONFIG + "graceful_timeout = 30\ntimeout = 3\n")
    thread, outcome = slow_request(server, 7)  # more than twice the timeout
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=40) == 0
    thread.join(10)
    assert outcome["response"].status_code == 200
    assert "WORKER TIMEOUT" not in server.log()
    assert shutdowns(server) == 1


@pytest.mark.parametrize("worker", NEWEST)
def test_app_closes_its_own_websockets_first_within_the_delay(asgi, worker):
    server = asgi(worker, workers=1, config_body=CONFIG + "graceful_websocket_close_delay = 3\n")

    async def polite():
        async with websockets.connect(server.url.replace("http://", "ws://") + "/ws-polite",
                                      open_timeout=10) as ws:
            server.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 20)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code, closed.rcvd.reason
    assert asyncio.run(polite()) == (4000, "see you after the stop")
    assert server.wait_exit(timeout=20) == 0
    assert server.count("event=drain.websockets_close") == 0  # nothing was left to close


@pytest.mark.parametrize("worker", CLASSES)
def test_lame_duck_answers_503_and_closes_kept_alive_connections(asgi, worker):
    server = asgi(worker, config_body=CONFIG + "graceful_health_path = '/health'\n"
                  "graceful_liveness_path = '/live'\ngraceful_shutdown_delay = 3\n")
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    load = Load(server.url, threads=4).start()
    try:
        load.wait_count(50)
        server.signal(signal.SIGTERM)
        server.wait_log(r"event=master\.lame_duck pid=")
        wait_for(lambda: requests.get(server.url + "/health", timeout=5).status_code == 503, 5,
                 "/health to answer 503")
        assert requests.get(server.url + "/live", timeout=5).text.strip() == "lame duck"
        with requests.Session() as session:
            kept = session.get(server.url + "/", timeout=5)
        assert kept.status_code == 200 and kept.headers["connection"] == "close"
        assert server.wait_exit(timeout=30) == 0
    finally:
        load.stop()
    assert load.failures(allow=("refused", "connect_timeout")) == [], load.summary()


@pytest.mark.parametrize("worker", CLASSES)
def test_max_requests_recycles_ready_first_with_zero_failures(asgi, worker):
    server = asgi(worker, config_body=CONFIG + "max_requests = 40\nmax_requests_jitter = 5\n")
    load = Load(server.url, threads=4).start()
    try:
        server.wait_log(r"event=worker\.recycle pid=\d+ reason=max_requests", count=4)
    finally:
        load.stop()
    assert load.failures() == [], load.summary()
    assert "Maximum request limit" not in server.log()  # uvicorn's own exit is disabled


@pytest.mark.parametrize("worker", CLASSES)
def test_workers_of_a_killed_master_finish_their_work_and_exit(asgi, worker):
    server = asgi(worker, config_body=CONFIG + "timeout = 4\n")  # the heartbeat, and the check
    workers = server.children()
    sockets = Sockets(server.url, 2).start()
    thread, outcome = slow_request(server, 2)
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    thread.join(20)
    assert outcome["response"].status_code == 200
    assert sockets.join() == [1012, 1012]
    wait_for(lambda: not any(process_alive(pid) for pid in workers), 30,
             lambda: "the orphaned workers to exit:\n" + server.tail())
    assert server.count(r"event=worker\.orphaned pid=\d+ ppid=%s" % server.pid) == 2


@pytest.mark.parametrize("worker", SMOKE)
def test_usr2_hands_over_and_old_websockets_get_1012(asgi, worker):
    server = asgi(worker)
    sockets = Sockets(server.url, 3).start()
    load = Load(server.url, threads=4).start()
    new_master = None
    try:
        load.wait_count(50)
        new_master = usr2_new_master(server)
        assert server.wait_exit(timeout=40) == 0  # the old master retires once the new serves
        codes = sockets.join()
        load.wait_count(len(load.results) + 50)
    finally:
        load.stop()
        if new_master is not None:  # it runs in the server's process group: stopped either way
            os.kill(new_master, signal.SIGTERM)
    wait_for(lambda: not process_alive(new_master), 30, "the new master to stop")
    assert codes == [1012] * 3
    assert load.failures() == [], load.summary()


STARTUP_APP = '''\
import asyncio
import contextlib
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    {startup}
    yield


async def home(request):
    return PlainTextResponse("ok")

app = Starlette(lifespan=lifespan, routes=[Route("/", home), Route("/ready", home)])
'''


def write_startup_app(workdir, startup):
    with open(os.path.join(workdir, "asgiapp.py"), "w") as handle:
        handle.write(STARTUP_APP.format(startup=startup))


@pytest.mark.parametrize("worker", CLASSES)
def test_a_failing_lifespan_startup_on_hup_rolls_back_with_its_reason(asgi, workdir, worker):
    server = asgi(worker)
    write_startup_app(workdir, "raise RuntimeError('cache warm-up failed')")
    server.signal(signal.SIGHUP)
    server.wait_log("event=reload.rollback ")
    assert server.count(r"event=reload\.rollback .*reason=\"lifespan startup failed: .*"
                        r"cache warm-up failed") == 1, server.tail()
    assert requests.get(server.url + "/", timeout=5).json()["version"] == "1"


@pytest.mark.parametrize("worker", NEWEST)
def test_a_hanging_lifespan_startup_on_hup_is_killed_and_rolled_back(asgi, workdir, worker):
    server = asgi(worker, config_body=CONFIG + "graceful_readiness_timeout = 3\n")
    write_startup_app(workdir, "await asyncio.sleep(60)")
    server.signal(signal.SIGHUP)
    server.wait_log("event=reload.rollback ", timeout=20)
    assert requests.get(server.url + "/", timeout=5).json()["version"] == "1"


@pytest.mark.parametrize("worker", SMOKE)
def test_term_while_the_lifespan_startup_hangs_stops_at_once(asgi, workdir, worker):
    write_startup_app(workdir, "await asyncio.sleep(60)")
    server = asgi(worker, serve=False)
    server.wait_log(r"event=worker\.loaded pid=\d+", count=2)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("worker", CLASSES)
def test_term_serves_the_connections_waiting_in_the_listen_queue(asgi, worker):
    server = asgi(worker, workers=1)
    blocker = threading.Thread(target=lambda: requests.get(server.url + "/block", timeout=20),
                               daemon=True)
    blocker.start()
    server.wait_started("/block")  # the worker's event loop is blocked for 2 s from here
    answers = []

    def queued_client():
        try:
            answers.append(requests.get(server.url + "/", timeout=20,
                                        headers={"Connection": "close"}).status_code)
        except requests.RequestException as exc:
            answers.append(repr(exc))
    clients = [threading.Thread(target=queued_client, daemon=True) for _ in range(5)]
    for client in clients:
        client.start()
    wait_for(lambda: _queued(server.port) >= 5, 5, "5 connections in the listen queue")
    server.signal(signal.SIGTERM)
    for client in clients:
        client.join(20)
    assert answers == [200] * 5, answers
    assert server.wait_exit(timeout=20) == 0
    assert server.count(r"event=master\.stopping .*door_closed=http") == 1


@pytest.mark.parametrize("signals", [("SIGQUIT",), ("SIGTERM", "SIGQUIT")],
                         ids=["quit", "quit-during-the-drain"])
@pytest.mark.parametrize("worker", SMOKE)
def test_a_quick_stop_ends_within_a_second_and_says_what_it_cut(asgi, worker, signals):
    """Gunicorn's quick stop (SIGQUIT; also to a worker already draining, as Gunicorn >= 27
    sends it on Ctrl-C during a stop) cuts what is in flight at once, one line per cut call;
    without a drain before it, WebSockets are cut too (no close round)."""
    server = asgi(worker, workers=1, config_body=CONFIG + "graceful_timeout = 20\n")
    sockets = Sockets(server.url, 2).start()
    thread, outcome = slow_request(server, 30, timeout=40)
    assert quick_stop(server, during_drain=len(signals) == 2) < 3, server.tail()
    thread.join(10)
    assert "error" in outcome  # the slow request was cut, not finished
    assert server.count(r"event=request\.cut_quick pid=\d+ method=GET path=/slow") == 1
    codes = sockets.join()
    if len(signals) == 1:  # no drain: the sockets are cut with the rest, no close round
        assert server.count(r"event=request\.cut_quick pid=\d+ method=WEBSOCKET") == 2
        assert 1001 not in codes and 1012 not in codes, codes
    else:  # the drain's close round came first: a stop's 1001
        assert codes == [1001, 1001], codes


@pytest.mark.parametrize("worker", NEWEST)
def test_ctrl_c_under_graceful_int_drain_drains_as_term(asgi, worker):
    """SIGINT to the process group (Ctrl-C) with graceful_int = "drain": the drain of a
    SIGTERM, WebSockets closed with a stop's 1001, the slow request finished."""
    server = asgi(worker, workers=1, config_body=CONFIG + 'graceful_int = "drain"\n')
    sockets = Sockets(server.url, 2).start()
    thread, outcome = slow_request(server, 1.5, timeout=20)
    os.killpg(server.pid, signal.SIGINT)
    assert server.wait_exit(timeout=30) == 0, server.tail()
    thread.join(10)
    assert outcome["response"].status_code == 200, outcome
    assert sockets.join() == [1001, 1001]
    assert "event=request.cut_quick" not in server.log()


EDGE_APP = '''\
import asyncio
import os
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

_started = os.path.join(os.path.dirname(os.path.abspath(__file__)), "started.log")


def record(line):
    with open(_started, "a") as handle:
        handle.write(line + "\\n")


async def home(request):
    return PlainTextResponse("ok")


async def own_close(request):
    return PlainTextResponse("ok", headers={"Connection": "close"})


async def own_keep_alive(request):
    return PlainTextResponse("ok", headers={"Connection": "keep-alive"})


async def late(websocket):
    """Accepts only after a slow check (authentication, say)."""
    record("/late")
    await asyncio.sleep(1.5)
    await websocket.accept()
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


async def bye(websocket):
    """Closes the socket itself, then its handler still runs a while."""
    await websocket.accept()
    await websocket.receive_text()
    await websocket.close(code=4001)
    record("/bye-closed")
    await asyncio.sleep(3)


app = Starlette(routes=[Route("/", home), Route("/ready", home),
                        Route("/own-close", own_close), Route("/own-keep-alive", own_keep_alive),
                        WebSocketRoute("/late", late), WebSocketRoute("/bye", bye)])
'''


def write_edge_app(workdir):
    """asgiapp.py: an app for the edge cases (late accepts, own closes, own headers)."""
    with open(os.path.join(workdir, "asgiapp.py"), "w") as handle:
        handle.write(EDGE_APP)


def websocket_close_code(url, say=None, timeout=30):
    """Open a WebSocket to `url` in a thread (optionally sending `say`); (thread, codes):
    the close code it received, once closed."""
    codes = []

    async def run():
        async with websockets.connect(url.replace("http://", "ws://"), open_timeout=10,
                                      close_timeout=5) as ws:
            if say:
                await ws.send(say)
            try:
                await asyncio.wait_for(ws.recv(), timeout)
            except websockets.ConnectionClosed as closed:
                codes.append(closed.rcvd.code if closed.rcvd else None)
    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    return thread, codes


@pytest.mark.parametrize("worker", NEWEST)
def test_a_websocket_accepted_after_the_close_round_gets_its_close_at_once(asgi, workdir,
                                                                           worker):
    write_edge_app(workdir)
    server = asgi(worker, workers=1, config_body=CONFIG + "graceful_timeout = 20\n")
    thread, codes = websocket_close_code(server.url + "/late")
    server.wait_started("/late")  # the handshake reached the app; it accepts 1.5 s later
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    thread.join(20)
    assert codes == [1001], server.tail()
    assert server.wait_exit(timeout=30) == 0
    assert time.monotonic() - started < 10  # not held until the cut


@pytest.mark.parametrize("worker", CLASSES)
def test_a_websocket_the_app_closed_gets_no_second_close(asgi, workdir, worker):
    write_edge_app(workdir)
    server = asgi(worker, workers=1)
    thread, codes = websocket_close_code(server.url + "/bye", say="bye")
    thread.join(20)
    assert codes == [4001]
    server.wait_started("/bye-closed")  # its handler runs 3 s more
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    assert server.count(r"event=drain\.websockets_close") == 0, server.tail()
    assert "never retrieved" not in server.log()


def test_uvicorn_leaves_health_probes_out_of_its_access_log(asgi):
    """uvicorn writes its own access lines: graceful_health_access_log (off) holds there too."""
    server = asgi(UVICORN, workers=1, extra_args=["--access-logfile", "-"],
                  config_body=CONFIG + 'graceful_health_path = "/healthz"\n'
                  'graceful_liveness_path = "/livez"\n')
    for path in ("/healthz", "/livez", "/healthz?probe=1", "/"):
        assert requests.get(server.url + path, timeout=5).status_code == 200
    wait_for(lambda: server.count(r'"GET / HTTP/1\.1" 200') == 1, 10, "the app's access line")
    assert server.count(r'"GET /(healthz|livez)') == 0, server.tail()


@pytest.mark.parametrize("worker", NEWEST)
def test_a_draining_answer_has_one_connection_header_when_the_app_sent_its_own(
        asgi, workdir, worker):
    write_edge_app(workdir)
    server = asgi(worker, workers=1, config_body=CONFIG + "graceful_shutdown_delay = 5\n")
    server.signal(signal.SIGTERM)  # lame duck: every answer closes its connection
    server.wait_log(r"event=master\.lame_duck ")
    for path in ("/own-close", "/own-keep-alive"):
        def answer():
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
                client.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path).encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(4096)
                    if not chunk:
                        break
                    head += chunk
            return head.split(b"\r\n\r\n")[0].decode().lower()
        head = wait_for(lambda: (lambda h: h if "connection: close" in h else None)(answer()),
                        10, "a lame-duck answer")
        assert head.count("connection:") == 1, head


def _queued(port):
    """Connections waiting in the accept queue of the listener on `port` (from `ss`)."""
    out = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], capture_output=True, text=True,
                         timeout=10).stdout.split()
    return int(out[1]) if len(out) > 1 else 0


def test_importing_the_workers_does_not_import_uvicorn():
    code = ("import sys, gunicorn_graceful.workers, gunicorn_graceful.hooks; "
            "print('uvicorn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("pack", [True, False], ids=["pack", "class-alone"])
@pytest.mark.parametrize("worker", SMOKE)
def test_a_short_graceful_timeout_fits_the_lifespan_budget_and_serves(asgi, worker, pack):
    """Gunicorn and uvicorn-worker start with any graceful_timeout (uvicorn-worker's own tests
    use 1 s): the default 5 s lifespan budget shrinks to half of 2 s, so a request in flight
    at SIGTERM still finishes and the lifespan shutdown runs, with or without the pack."""
    body = CONFIG + "graceful_timeout = 2\n" if pack else "graceful_timeout = 2\n"
    server = asgi(worker, serve=pack, pack=pack, config_body=body, workers=1)
    if not pack:  # a stock master: no pack lines to wait for (its one worker answers)
        server.wait_http()
    thread, slow = slow_request(server, 0.5)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=20) == 0, server.tail()
    thread.join(10)
    assert slow["response"].status_code == 200, slow
    assert shutdowns(server) == 1
    assert server.count(r"event=settings\.warning problem=\"graceful_lifespan_shutdown_timeout="
                        r"5\.0 plus graceful_websocket_close_delay=0\.0 do not fit in "
                        r"graceful_timeout=2: the drain keeps 1\.0s for the lifespan shutdown "
                        r"and 0\.0s for the app's own WebSocket closes; connections get "
                        r"1\.0s\"") == 1
