"""SIGTERM under load: every request sent before the master exits is answered, and the drain is logged."""

import json
import os
import re
import signal
import socket
import threading
import time

import pytest
import requests

from gunicorn_graceful import compat
from tests.harness import WORKERS, Load, free_port, quick_stop, wait_for, write_app

# `lines`: the drain goes through each worker class's accept loop and connection handling,
# which differ between lines; the pack's own reporting (escaping, health) runs on the newest.

BEFORE_SEND = ("refused", "connect_timeout")


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_term_with_slow_requests_in_flight_answers_every_request_sent(workdir, servers, worker):
    server = servers(workdir, worker=worker, workers=2)
    load = Load(server.url, threads=4).start()
    slow = Load(server.url, threads=2, path="/slow?seconds=1.5&token=secret").start()
    load.wait_count(50)
    slow.wait_count(2)
    # One more has just begun, so it is in flight at TERM. (Counted from now: waiting for the
    # 50 answers above can take long enough that the first slow ones are long over.)
    server.wait_started("/slow", count=server.started("/slow") + 1)
    term_at = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=40) == 0
    exited_at = time.monotonic()
    load.stop()
    slow.stop()
    print("load:", load.summary(), "slow:", slow.summary())
    # A connect that began a moment before SIGTERM may meet the closed door: refused, never sent.
    before_term = [r for r in load.results + slow.results
                   if r.started < term_at and r.kind not in BEFORE_SEND]
    assert before_term and all(r.ok for r in before_term), load.summary()
    # After the master got SIGTERM a new client may be refused before it sends anything;
    # nothing else may fail: no reset, no disconnect, no 5xx, no timeout.
    assert load.failures(allow=BEFORE_SEND) == [], load.summary()
    assert slow.failures(allow=BEFORE_SEND) == [], slow.summary()
    assert [r for r in slow.results if r.ok and r.ended > term_at + 0.5], \
        "no slow request finished during the drain"
    log = server.log()
    assert "event=master.stopping" in log and "door_closed=http://127.0.0.1" in log
    assert server.count(r"event=drain\.progress .*oldest_path=/slow\?\[redacted\]") >= 1
    assert server.count(r"event=drain\.done pid=\d+ duration=\S+ served=\d+ in_flight=0") == 2
    assert "secret" not in log
    assert exited_at - term_at < 10


@pytest.mark.parametrize("worker", WORKERS)
def test_ctrl_c_under_graceful_int_drain_drains_as_term(workdir, servers, worker):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (the master and
    every worker at once): with graceful_int = "drain" nothing in flight is cut."""
    server = servers(workdir, worker=worker, workers=2, config_body='graceful_int = "drain"\n')
    load = Load(server.url, threads=4).start()
    slow = Load(server.url, threads=2, path="/slow?seconds=1.5").start()
    load.wait_count(50)
    server.wait_started("/slow", count=server.started("/slow") + 1)
    int_at = time.monotonic()
    os.killpg(server.pid, signal.SIGINT)
    assert server.wait_exit(timeout=40) == 0
    load.stop()
    slow.stop()
    assert load.failures(allow=BEFORE_SEND) == [], load.summary()
    assert slow.failures(allow=BEFORE_SEND) == [], slow.summary()
    assert [r for r in slow.results if r.ok and r.started < int_at < r.ended], slow.summary()
    assert server.count(r"event=drain\.done pid=\d+ .* in_flight=0") == 2, server.tail()
    assert "event=request.cut_quick" not in server.log()


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_request_outliving_graceful_timeout_is_listed_as_cut(workdir, servers, worker):
    server = servers(workdir, worker=worker, workers=1,
                     config_body="graceful_timeout = 3\ngraceful_deadline_warning = 1.5\n")
    outcome = {}

    def long_request():
        try:
            outcome["response"] = requests.get(server.url + "/slow?seconds=30&api_key=hunter2",
                                               timeout=20)
        except requests.RequestException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=long_request, daemon=True)
    thread.start()
    server.wait_started("/slow")
    server.signal(signal.SIGTERM)
    server.wait_exit(timeout=20)
    thread.join(timeout=20)
    # Warned before the deadline, then named once more by the worker that cut it.
    soon = server.count(r"\[WARNING\] event=drain\.cut_soon pid=\d+ method=GET "
                        r"path=/slow\?\[redacted\] peer=127\.0\.0\.1:\d+ age=\S+ time_left=\S+")
    cut = server.count(r"(?m)\[WARNING\] event=drain\.cut pid=\d+ method=GET "
                       r"path=/slow\?\[redacted\] peer=127\.0\.0\.1:\d+ age=\S+$")
    assert (soon, cut) == (1, 1), server.tail()
    assert "hunter2" not in server.log()
    assert "error" in outcome, "a request cut by the deadline cannot have succeeded"


@pytest.mark.parametrize("signals", [("SIGQUIT",), ("SIGTERM", "SIGQUIT")],
                         ids=["quit", "quit-during-the-drain"])
@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_a_quick_stop_ends_within_a_second_and_says_what_it_cut(workdir, servers, worker,
                                                                signals):
    """The asyncio classes' twin is in test_asgi."""
    server = servers(workdir, worker=worker, workers=1, config_body="graceful_timeout = 20\n")
    outcome = {}

    def long_request():
        try:
            outcome["response"] = requests.get(server.url + "/slow?seconds=30", timeout=40)
        except requests.RequestException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=long_request, daemon=True)
    thread.start()
    server.wait_started("/slow")
    assert quick_stop(server, during_drain=len(signals) == 2) < 3, server.tail()
    thread.join(10)
    # Cut: no answer, or Gunicorn's 500 for the SystemExit that ends the sync worker.
    assert "error" in outcome or outcome["response"].status_code == 500
    assert server.count(r"event=request\.cut_quick pid=\d+ method=GET path=/slow") == 1


def _send_raw(port, path):
    """Open a connection and send a full request without waiting for the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                  % path).encode())
    return sock


def _read_answer(sock):
    """(status, body) of an answer that closes its connection."""
    data = b""
    with sock:
        for _ in range(10000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _read_status(sock):
    """The status code of the answer, or the name of the error that replaced it."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return "eof"
            data += chunk
        return int(data.split(b" ", 2)[1])
    except ConnectionResetError:
        return "reset"
    except socket.timeout:
        return "timeout"
    finally:
        sock.close()


@pytest.mark.lines
@pytest.mark.parametrize("worker", ["sync", "gthread"])  # gthread on Gunicorn 23 too
def test_connections_waiting_in_the_backlog_at_term_are_served_not_reset(workdir, servers,
                                                                         worker):
    # One worker with one thread, busy with a slow request: what comes next waits in the
    # listen backlog. Stock sync workers reset most of those when the master gets SIGTERM.
    # The thread worker accepts up to worker_connections at once: 2 (Gunicorn 23's never
    # reads a connection with 1), so the rest really wait in the kernel's backlog.
    server = servers(workdir, worker=worker, workers=1,
                     extra_args=["--threads", "1", "--worker-connections", "2"])
    busy = _send_raw(server.port, "/slow?seconds=1.5")
    server.wait_started("/slow")
    queued = [_send_raw(server.port, "/") for _ in range(12)]
    server.signal(signal.SIGTERM)
    statuses = [_read_status(sock) for sock in [busy] + queued]
    server.wait_exit(timeout=30)
    print("statuses:", statuses)
    # Before 27, Gunicorn's thread worker drops the connection its own loop accepted and had
    # not begun (its own shutdown; a WARNING at start says so): the second one. What waited
    # in the kernel's queue is served on every line.
    held = 1 if worker == "gthread" and not compat.THREAD_WORKER_STOP_HOOK else 0
    assert statuses[:1] + statuses[1 + held:] == [200] * (13 - held), statuses
    assert server.count(r"event=drain\.start pid=\d+ in_flight=\d+ idle_conns=\d+ reading=\d+ "
                        r"queued=[1-9]\d*") == 1


def test_a_probe_queued_for_a_retiring_worker_says_the_service_serves(workdir, servers):
    """A worker replaced while the service serves on (HUP, USR2 hand-over, recycling, a
    SIGTERM of its own) still answers what waited in the queue for it: a health probe
    among that speaks for the service, which serves, so it is a 200, not a 503 that
    takes the backend out. The replacement's slow import leaves the probe to the old
    worker."""
    server = servers(workdir, worker="sync", workers=1,
                     config_body="graceful_health_path = '/health'\n")
    write_app(workdir, "1", before="time.sleep(3)")  # what the replacement imports
    worker = server.children()[0]
    busy = _send_raw(server.port, "/slow?seconds=1.5")
    server.wait_started("/slow")
    probe = _send_raw(server.port, "/health")
    wait_for(lambda: _queued_at(server) >= 1, 10, "the probe in the accept queue")
    os.kill(worker, signal.SIGTERM)
    assert [_read_status(sock) for sock in (busy, probe)] == [200, 200], server.tail()
    server.wait_log(r"event=worker\.exited pid=%s" % worker)


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_new_clients_during_a_stop_are_refused_at_once_while_queued_ones_are_served(
        workdir, servers, worker):
    # Two workers, each busy with a 3 s request and able to hold only that connection (sync:
    # by nature; gthread: one thread, worker_connections 1): four more wait in the queue.
    server = servers(workdir, worker=worker, workers=2,
                     extra_args=["--threads", "1", "--worker-connections", "1"])
    busy = [_send_raw(server.port, "/slow?seconds=3") for _ in range(2)]
    server.wait_started("/slow", count=2)
    queued = [_send_raw(server.port, "/slow?seconds=0.3") for _ in range(4)]
    server.signal(signal.SIGTERM)
    server.wait_log("event=master.stopping", timeout=10)
    outcomes, waits = [], []
    for _ in range(40):  # a new client every 50 ms for 2 s, while the drain runs
        asked = time.monotonic()
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            outcomes.append("connected")
        except ConnectionRefusedError:
            outcomes.append("refused")
        except socket.timeout:
            outcomes.append("connect_timeout")
        waits.append(time.monotonic() - asked)
        time.sleep(0.05)  # the probes' pace, not a wait for anything
    answers = [_read_answer(sock) for sock in busy + queued]
    statuses = [status for status, _ in answers]
    assert server.wait_exit(timeout=30) == 0
    waits.sort()
    print("waits (ms): p50 %.1f p99 %.1f max %.1f" % (
        waits[len(waits) // 2] * 1000, waits[int(0.99 * len(waits))] * 1000, waits[-1] * 1000))
    assert outcomes == ["refused"] * len(outcomes), outcomes
    assert waits[int(0.99 * len(waits))] <= 0.1, waits
    assert statuses == [200] * 6, statuses
    # The master handed the four over at once; each worker's drain says what waited for both.
    assert server.count(r"event=master\.stopping pid=\d+ .*handed=4 queued=0 ") == 1, \
        server.tail()
    shares = [int(n) for n in re.findall(r"event=drain\.start pid=\d+ .*queued=(\d+)", server.log())]
    assert shares == [4, 4], shares
    # Both workers served the queue as each freed up: four 0.3 s requests in about 0.6 s.
    servers_of_queue = {json.loads(body)["pid"] for _, body in answers[2:]}
    assert len(servers_of_queue) == 2, answers


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_a_client_still_sending_its_request_is_reported_and_listed_as_cut(workdir, servers,
                                                                          worker):
    server = servers(workdir, worker=worker, workers=1,
                     config_body="graceful_timeout = 4\ngraceful_deadline_warning = 2\n")
    slowloris = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        slowloris.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a request, then silence
        server.signal(signal.SIGTERM)
        # Accepted before SIGTERM or taken from the queue at it: either way it is being read.
        server.wait_log(r"event=drain\.progress pid=\d+ in_flight=0 idle_conns=\d+ reading=1 ")
        server.wait_log(r"\[WARNING\] event=drain\.cut_soon pid=\d+ reading=1 ", timeout=10)
        # At the deadline the worker names what it cuts: the sync worker knows the client.
        server.wait_log(r"\[WARNING\] event=drain\.cut pid=\d+ peer=127\.0\.0\.1:\d+ "
                        r"stage=reading" if worker == "sync" else
                        r"\[WARNING\] event=drain\.cut_reading pid=\d+ reading=1 ", timeout=10)
        server.wait_exit(timeout=30)
    finally:
        slowloris.close()


SLEEPY_APP = '''\
import time


def app(environ, start_response):
    open("started", "w").close()
    time.sleep(30)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"late"]
'''


def test_control_characters_in_a_cut_request_path_are_escaped_in_the_log(workdir, servers):
    """A client cannot forge a log line or drive the operator's terminal through its path."""
    with open(os.path.join(workdir, "sleepy.py"), "w") as handle:
        handle.write(SLEEPY_APP)
    server = servers(workdir, app="sleepy:app", workers=1,
                     config_body="graceful_timeout = 3\ngraceful_deadline_warning = 1.5\n")
    sock = _send_raw(server.port, "/a%0d%0a[ERROR]%1b[2Kevent=master.exit")
    try:
        wait_for(lambda: os.path.exists(os.path.join(workdir, "started")), 10,
                 "the request to reach the app")
        server.signal(signal.SIGTERM)
        server.wait_exit(timeout=20)
    finally:
        sock.close()
    log = server.log()
    assert server.count(r'event=drain\.cut pid=\d+ method=GET '
                        r'path="/a\\x0d\\x0a\[ERROR\]\\x1b\[2Kevent=master\.exit"') == 1, \
        server.tail()
    assert "\r" not in log and "\x1b" not in log
    assert not any(line.startswith("[ERROR]") for line in log.splitlines())


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_a_stop_serves_the_queue_with_the_worker_that_frees_up_while_one_reads_an_upload(
        workdir, servers, worker):
    """At TERM one worker is in the app reading a slow upload (3 s to go), the other reads a
    client still sending its headers (0.5 s to go); four requests of 0.5 s wait. Before,
    the sync worker in the upload took the whole queue at SIGTERM and served it after the
    upload, past the deadline (2 of 4 cut); now the worker that frees up first serves it."""
    server = servers(workdir, worker=worker, workers=2, config_body="graceful_timeout = 4\n",
                     extra_args=["--threads", "1", "--worker-connections", "1"])
    upload = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    upload.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 40\r\n"
                   b"Connection: close\r\n\r\n" + b"x" * 4)
    server.wait_started("/echo")
    reader = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    reader.sendall(b"GET /?n=reader HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    wait_for(lambda: _queued_at(server) == 0, 10, "the reader taken by the other worker")
    queued = [_send_raw(server.port, "/slow?seconds=0.5") for _ in range(4)]
    wait_for(lambda: _queued_at(server) >= 4, 10, "four requests in the accept queue")
    server.signal(signal.SIGTERM)
    server.wait_log(r"event=drain\.start pid=\d+ .*queued=4", count=2, timeout=10)
    clients = threading.Thread(target=_trickle, args=(reader, upload), daemon=True)
    clients.start()
    answers = [_read_status(sock) for sock in [reader] + queued + [upload]]
    clients.join(timeout=10)
    assert answers == [200] * 6, (answers, server.tail())
    assert server.wait_exit(timeout=30) == 0


def _trickle(reader, upload):
    """The reader's last line after 0.5 s, the upload's other 36 bytes over 3 s (the clients'
    own pace, not a wait for the server)."""
    time.sleep(0.5)
    reader.sendall(b"\r\n")
    for _ in range(9):
        time.sleep(0.33)
        upload.sendall(b"x" * 4)


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_a_connection_that_sends_nothing_holds_up_nothing_queued_behind_it(workdir, servers,
                                                                          worker):
    """A browser's preconnect or a port check at the head of the queue at TERM: before, the
    sync worker that took the queue waited on it until the deadline and the six requests
    behind it were cut; now another worker serves them, and the silent one is closed."""
    server = servers(workdir, worker=worker, workers=2, config_body="graceful_timeout = 6\n",
                     extra_args=["--threads", "1", "--worker-connections", "1"])
    busy = [_send_raw(server.port, "/slow?seconds=1") for _ in range(2)]
    server.wait_started("/slow", count=2)
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    wait_for(lambda: _queued_at(server) >= 1, 10, "the silent connection at the queue's head")
    queued = [_send_raw(server.port, "/slow?seconds=0.3") for _ in range(6)]
    wait_for(lambda: _queued_at(server) >= 7, 10, "six requests behind it")
    server.signal(signal.SIGTERM)
    answers = [_read_status(sock) for sock in busy + queued]
    assert answers == [200] * 8, (answers, server.tail())
    assert _read_status(silent) in ("eof", "reset")
    assert server.wait_exit(timeout=30) == 0
    if worker == "sync":  # Gunicorn's thread worker gives it its own 5 s, then the deadline
        assert server.count(r"event=drain\.idle_closed pid=\d+ peer=127\.0\.0\.1:\d+ "
                            r"waited=2\.00 ") == 1, server.tail()


@pytest.mark.parametrize("worker", WORKERS)
def test_what_the_master_handed_over_is_served_when_it_is_killed_during_the_stop(
        workdir, servers, worker):
    """The master SIGKILLed once it handed the queue over: the orphaned workers still serve
    it (the thread worker dropped all eight: its orphan check refused what it held)."""
    server = servers(workdir, worker=worker, workers=2,
                     extra_args=["--threads", "1", "--worker-connections", "1"])
    busy = [_send_raw(server.port, "/slow?seconds=0.5") for _ in range(2)]
    server.wait_started("/slow", count=2)
    queued = [_send_raw(server.port, "/slow?seconds=0.3") for _ in range(8)]
    wait_for(lambda: _queued_at(server) >= 8, 10, "eight requests in the accept queue")
    server.signal(signal.SIGTERM)
    server.wait_log(r"event=drain\.start pid=\d+ .*queued=8", count=2, timeout=10)
    os.kill(server.pid, signal.SIGKILL)
    answers = [_read_status(sock) for sock in busy + queued]
    assert answers == [200] * 10, (answers, server.tail())


LIBC_READ_APP = """\
import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)


def app(environ, start_response):
    # A C library's blocking read that does not retry on EINTR, as some drivers do.
    fd = os.open(os.path.join(os.path.dirname(__file__), "fifo"), os.O_RDONLY)
    open(os.path.join(os.path.dirname(__file__), "started"), "w").close()
    buf = ctypes.create_string_buffer(16)
    count = _libc.read(fd, buf, 16)
    os.close(fd)
    if count < 0:
        start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
        return [("read failed: %s" % os.strerror(ctypes.get_errno())).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [buf.raw[:count]]
"""


@pytest.mark.lines  # Gunicorn 27 restarts the call anyway; 23-26 failed it on the old code
def test_a_stop_does_not_interrupt_a_system_call_in_the_app_and_is_reported_at_once(
        workdir, servers):
    """Before, the sync worker made SIGTERM interrupt system calls: the app's read failed
    (EINTR, a 502). Now the read goes on, and the drain is still reported at once."""
    with open(os.path.join(workdir, "libcread.py"), "w") as handle:
        handle.write(LIBC_READ_APP)
    fifo = os.path.join(workdir, "fifo")
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # a writer from the start: the app's open does not wait
    try:
        server = servers(workdir, app="libcread:app", workers=1)
        sock = _send_raw(server.port, "/")
        wait_for(lambda: os.path.exists(os.path.join(workdir, "started")), 10,
                 "the request in the app's read")
        server.signal(signal.SIGTERM)
        server.wait_log(r"event=drain\.start pid=\d+ in_flight=1 ", timeout=10)
        os.write(writer, b"hello")
        status, body = _read_answer(sock)
    finally:
        os.close(writer)
    assert status == 200 and b"hello" in body, (status, body)
    assert server.wait_exit(timeout=30) == 0


def test_a_file_sent_with_sendfile_stays_in_flight_until_its_last_byte_with_metrics_on(
        workdir, servers):
    """Before, with metrics on, a wsgi.file_wrapper response left the registry when the app
    returned: the drain said in_flight=0 while the file was sent, and the deadline's cut
    named nothing."""
    with open(os.path.join(workdir, "big.bin"), "wb") as handle:
        handle.truncate(40 << 20)
    with open(os.path.join(workdir, "sendfile.py"), "w") as handle:
        handle.write("import os\n\n\ndef app(environ, start_response):\n"
                     "    start_response('200 OK', [('Content-Length', str(40 << 20))])\n"
                     "    return environ['wsgi.file_wrapper'](open(os.path.join("
                     "os.path.dirname(__file__), 'big.bin'), 'rb'))\n")
    server = servers(workdir, app="sendfile:app", workers=1, config_body=(
        "graceful_timeout = 3\ngraceful_metrics_bind = '127.0.0.1:%d'\n" % free_port()))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(b"GET /file HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")  # then it reads no more
        server.signal(signal.SIGTERM)
        server.wait_log(r"event=drain\.start pid=\d+ in_flight=1 ", timeout=10)
        server.wait_log(r"\[WARNING\] event=drain\.cut pid=\d+ method=GET path=/file ",
                        timeout=10)
        server.wait_exit(timeout=30)
    finally:
        sock.close()


def _queued_at(server):
    """How many connections wait in the server's accept queue (Linux: /proc/net/tcp)."""
    port = "%04X" % server.port
    with open("/proc/net/tcp") as handle:
        rows = [line.split() for line in handle.readlines()[1:]]
    listening = [r for r in rows if r[1].endswith(":" + port) and r[3] == "0A"]
    return int(listening[0][4].split(":")[1], 16) if listening else 0
