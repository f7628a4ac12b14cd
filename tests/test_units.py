"""Units: the in-flight registry, the drain reporter, the settings, the event format."""

import os
import socket
import time

import pytest

from gunicorn_graceful import listeners, settings
from gunicorn_graceful.events import format_event, redact
from gunicorn_graceful.master import files, preflight, upgrade_report
from gunicorn_graceful.workers import inflight
from tests.harness import wait_for


class Lines:
    """A logger that keeps what it is told."""

    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda text, *args: self.lines.append((level, text % args if args else text))


def environ(path="/a", query=""):
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5000"}


def test_registry_lists_requests_oldest_first_until_their_body_is_closed():
    registry = inflight.Registry()
    app = inflight.track(lambda env, start: [b"x"], registry)
    first = app(environ("/first"), None)
    second = app(environ("/second", "token=abc"), None)
    assert [r.path for r in registry.snapshot()] == ["/first", "/second?[redacted]"]
    first.close()
    assert [r.path for r in registry.snapshot()] == ["/second?[redacted]"]
    second.close()
    assert len(registry) == 0 and registry.finished == 2


def test_registry_forgets_a_request_whose_app_raised():
    registry = inflight.Registry()

    def broken(env, start):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        inflight.track(broken, registry)(environ(), None)
    assert len(registry) == 0


def test_a_request_registered_around_handle_request_reads_gunicorns_parsed_request():
    class Req:  # what Gunicorn's parser made (gunicorn.http.message.Request)
        method, path, query = "POST", "/login", "password=hunter2"

    request = inflight.Parsed(Req(), ("127.0.0.1", 5000))
    assert (request.method, request.path, request.peer) == \
        ("POST", "/login?[redacted]", "127.0.0.1:5000")
    assert inflight.Parsed(Req(), "").peer == "-"  # a unix socket's peer has no address


def test_drain_reporter_logs_progress_cut_requests_and_done():
    log, registry = Lines(), inflight.Registry()
    key = registry.begin(environ("/slow", "secret=1"))
    reporter = inflight.DrainReporter(log, registry, 42, interval=0.05, warn_before=0.1)
    reporter.start()
    reporter.begin(time.monotonic() + 0.3, queued=3)
    deadline = time.monotonic() + 5
    while not any("drain.cut" in text for _, text in log.lines) and time.monotonic() < deadline:
        time.sleep(0.02)
    registry.end(key)
    reporter.finish()
    texts = [text for _, text in log.lines]
    assert texts[0].startswith("event=drain.start pid=42 in_flight=1 idle_conns=0 reading=0 "
                               "queued=3")
    assert any(t.startswith("event=drain.progress pid=42 in_flight=1") for t in texts)
    cut = [(lvl, t) for lvl, t in log.lines if "drain.cut" in t]
    assert len(cut) == 1 and cut[0][0] == "warning"
    assert "method=GET path=/slow?[redacted] peer=127.0.0.1:5000" in cut[0][1]
    assert texts[-1].startswith("event=drain.done pid=42") and "served=1 in_flight=0" in texts[-1]
    assert not any("secret" in t for t in texts)


def test_drain_reporter_counts_and_warns_about_clients_still_sending_their_request():
    log = Lines()
    reporter = inflight.DrainReporter(log, inflight.Registry(), 42, interval=0.05,
                                      warn_before=0.1, reading=lambda: 1)
    reporter.start()
    reporter.begin(time.monotonic() + 0.3, queued=0)
    deadline = time.monotonic() + 5
    while not any("drain.cut_reading" in text for _, text in log.lines) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    reporter.finish()
    assert any(t.startswith("event=drain.progress pid=42 in_flight=0 idle_conns=0 reading=1 ")
               for _, t in log.lines)
    cut = [(lvl, t) for lvl, t in log.lines if "drain.cut_reading" in t]
    assert len(cut) == 1 and cut[0][0] == "warning" and "reading=1" in cut[0][1]


def test_drain_reporter_says_nothing_when_no_drain_began():
    log = Lines()
    reporter = inflight.DrainReporter(log, inflight.Registry(), 1, 0.05, 0.1)
    reporter.start()
    reporter.finish()
    assert log.lines == []


def test_event_lines_quote_only_what_needs_it():
    assert format_event("a.b", pid=1, path="/x y", age=1.234, empty="") == \
        'event=a.b pid=1 path="/x y" age=1.23 empty=""'
    assert redact("/p?q=1") == "/p?[redacted]" and redact("/p") == "/p"


def test_event_lines_escape_every_control_character():
    line = format_event("a.b", path="/a\r\n\x1b[2K\x00\x7f\x85\t")
    assert line == 'event=a.b path="/a\\x0d\\x0a\\x1b[2K\\x00\\x7f\\x85\\x09"'
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in line)


def test_settings_come_from_config_then_environment():
    loaded = settings.load({"graceful_drain_log_interval": 2, "graceful_readiness_path": "/h"},
                           {"GRACEFUL_READINESS_PATH": "/ready",
                            "GRACEFUL_READINESS_WARMUP": "/a, /b"})
    assert loaded.drain_log_interval == 2.0
    assert loaded.readiness_path == "/ready"
    assert loaded.readiness_warmup == ("/a", "/b")
    assert settings.load({}, {}) == settings.Settings()


@pytest.mark.parametrize("name, value, allowed", [
    ("graceful_drain_log_interval", "soon", "a number of seconds > 0"),
    ("graceful_deadline_warning", -1, "a number of seconds >= 0"),
    ("graceful_readiness_path", "healthz", "a URL path starting with '/'"),
    ("graceful_max_worker_rss", "-5", "a size in MiB >= 0"),
    ("graceful_max_worker_age", "soon", "a number of seconds >= 0"),
    ("graceful_max_worker_age_jitter", "-1", "a number of seconds >= 0"),
    ("graceful_readiness_callable", "nocolon", "'module:function'"),
    ("graceful_max_booting", "2.5", "a whole number >= 0"),
    ("graceful_readiness_accept", "3xx", "'2xx' (a health route) or '<500'"),
    ("graceful_readines_path", "/h", "a known setting name"),
    ("graceful_int", "soft", "'quick' (Gunicorn's: SIGINT cuts what is in flight) or 'drain'"),
])
def test_a_bad_setting_names_itself_its_value_and_what_is_allowed(name, value, allowed):
    with pytest.raises(settings.SettingError) as err:
        settings.load({name: value}, {})
    assert name in str(err.value) and repr(value) in str(err.value)
    assert allowed in str(err.value)


def test_environment_errors_name_the_variable():
    with pytest.raises(settings.SettingError, match="GRACEFUL_READINESS_TIMEOUT"):
        settings.load({}, {"GRACEFUL_READINESS_TIMEOUT": "0"})


class Cfg:
    def __init__(self, graceful_timeout=30, timeout=30, keepalive=2):
        self.graceful_timeout, self.timeout, self.keepalive = graceful_timeout, timeout, keepalive


def test_timing_warnings_name_the_fix():
    assert settings.timing_warnings(Cfg(), settings.Settings()) == []
    warnings = settings.timing_warnings(Cfg(graceful_timeout=60, timeout=30, keepalive=90),
                                        settings.Settings())
    assert any("raise timeout" in w for w in warnings)
    assert any("lower keepalive" in w for w in warnings)
    assert any("no time to drain" in w
               for w in settings.timing_warnings(Cfg(graceful_timeout=0), settings.Settings()))


def test_every_setting_is_in_the_settings_table():
    import os
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "settings.md")) as handle:
        readme = handle.read()
    for field in settings.Settings.fields():
        row = "| `%s` | `%s` |" % (settings.config_name(field.name), settings.env_name(field.name))
        assert row in readme, row
        assert field.metadata["doc"] in readme, field.name


@pytest.mark.parametrize("app_uri, paste, why", [
    (None, None, "no module:variable given to Gunicorn"),
    ("/srv/app/production.ini#main", "/srv/app/production.ini", "a paste config"),
])
def test_preflight_refuses_an_app_it_cannot_locate(app_uri, paste, why):
    class Cfg:
        pythonpath, env_orig = None, {}

    class App:
        pass
    server, server.app, server.cfg = App(), App(), Cfg()
    server.app.app_uri, server.cfg.paste = app_uri, paste
    reason = preflight.check(server, ".", 5)
    assert reason and why in reason and "graceful_preflight = False" in reason


def test_a_file_failure_is_logged_again_after_the_path_worked_in_between(tmp_path):
    log, target = Lines(), str(tmp_path / "missing" / "app.pid")
    assert not files.write(log, target, "1\n") and not files.write(log, target, "1\n")
    assert len(log.lines) == 1  # once per spell, not every tick
    (tmp_path / "missing").mkdir()
    assert files.write(log, target, "1\n")
    (tmp_path / "missing" / "app.pid").unlink()
    (tmp_path / "missing").rmdir()
    assert not files.write(log, target, "1\n")
    assert len(log.lines) == 2 and all("event=master.file_failed" in t for _, t in log.lines)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_the_door_reads_as_closed_only_once_closed_and_the_check_copies_nothing():
    """listeners.door_closed asks the kernel for the filter's length only (a length of 0):
    a buffer-taking read made the kernel copy an 8-byte instruction into a 4-byte int."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert listeners.door_closed(sock) is False
        assert listeners.close_door(sock) is True
        assert listeners.door_closed(sock) is True
    with socket.socket(socket.AF_UNIX) as unix:
        assert listeners.door_closed(unix) is False


def test_the_door_drops_new_clients_but_lets_a_handshake_under_way_into_the_queue():
    """A client whose handshake was under way when the door closed: with TCP_DEFER_ACCEPT the
    listener completes it only when the request arrives, after the door closed. The door
    used to drop that packet too (every packet): the client was reset at the shut."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        sock.listen()
        with socket.create_connection(sock.getsockname(), timeout=5) as client:
            assert listeners.queued(sock) == 0
            assert listeners.close_door(sock) is True
            client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            deadline = time.monotonic() + 5
            while listeners.queued(sock) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert listeners.queued(sock) == 1
            conn, _ = sock.accept()
            with conn:
                assert conn.recv(64).startswith(b"GET / ")
        with socket.socket() as late:
            late.settimeout(0.5)  # its SYN is dropped: it waits, then retransmits
            with pytest.raises(socket.timeout):
                late.connect(sock.getsockname())


@pytest.mark.parametrize("accept, code, ready", [
    ("2xx", 200, True), ("2xx", 404, False), ("<500", 404, True), ("<500", 302, True),
    ("<500", 500, False)])
def test_the_readiness_path_accepts_what_the_setting_says(accept, code, ready):
    from gunicorn_graceful.workers import readiness
    pack = settings.Settings(readiness_path="/", readiness_accept=accept)

    def app(environ, start_response):
        start_response("%s X" % code, [])
        return [b""]
    if ready:
        readiness.check(app, pack)
        return
    with pytest.raises(readiness.NotReady) as failed:
        readiness.check(app, pack)
    assert ("graceful_readiness_accept = '<500'" in str(failed.value)) == (code < 500)


def _queue_of(count):
    """A listener on 127.0.0.1 with `count` connections waiting in its accept queue."""
    listener = socket.create_server(("127.0.0.1", 0))
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(count)]
    wait_for(lambda: listeners.queued(listener) == count, 5, "the queue to fill")
    return listener, clients


def test_a_stop_takes_one_connection_at_a_time_and_shuts_the_listener_behind_the_last():
    listener, clients = _queue_of(3)
    try:
        taken = [listeners.take_one(listener) for _ in range(3)]
        assert all(taken) and listeners.take_one(listener) is None
        with pytest.raises(ConnectionRefusedError):  # shut behind the last: refused at once
            socket.create_connection(listener.getsockname(), timeout=2)
    finally:
        for sock in clients + [client for client, _ in taken] + [listener]:
            sock.close()


def test_taking_from_the_queue_stops_at_the_open_file_limit_and_never_shuts_the_listener():
    """EMFILE: what is left stays for another worker or the deadline (a shut listener would
    reset it)."""
    import errno

    class Listener:
        shut = False

        def accept(self):
            raise OSError(errno.EMFILE, "Too many open files")

        def shutdown(self, how):
            self.shut = True

    listener = Listener()
    assert listeners.take_one(listener) is None and not listener.shut


def test_the_hand_off_gives_each_connection_to_one_worker_and_the_queue_goes_in_parallel():
    """The decision of a full stop, with a real hand-off and a fake worker: the master hands
    what waits; a worker takes one connection per free thread (`room`), never past the
    deadline, and each connection reaches exactly one taker."""
    from gunicorn_graceful import handoff
    from gunicorn_graceful.workers import GracefulMixin

    listener, clients = _queue_of(5)
    pair = handoff.Handoff()
    served = []

    class Drain:
        left = 10.0

        def time_left(self):
            return self.left

    class Worker:
        sockets = [listener]
        drain = Drain()
        next_queued = GracefulMixin.next_queued
        serve_queue = GracefulMixin.serve_queue

    old, handoff.shared = handoff.shared, pair
    try:
        assert pair.hand([(0, listener)]) == 5 and pair.handed() == 5
        assert listeners.queued(listener) == 0
        first, second = Worker(), Worker()
        first.serve_queue(lambda lnr, client, addr: served.append(("first", addr)),
                          room=lambda: 2 - sum(1 for who, _ in served if who == "first"))
        second.serve_queue(lambda lnr, client, addr: served.append(("second", addr)),
                           room=lambda: 2 - sum(1 for who, _ in served if who == "second"))
        assert [who for who, _ in served] == ["first", "first", "second", "second"]
        second.drain.left = 0.0  # past the deadline: nothing more is taken
        second.serve_queue(lambda lnr, client, addr: served.append(("late", addr)))
        assert len(served) == 4
        second.drain.left = 10.0
        first.serve_queue(lambda lnr, client, addr: served.append(("first", addr)))
        peers = [addr for _, addr in served]
        assert len(served) == 5 and len(set(peers)) == 5
        assert sorted(peers) == sorted(client.getsockname() for client in clients)
        assert first.next_queued() is None
    finally:
        handoff.shared = old
        pair.close()
        for sock in clients + [listener]:
            sock.close()


def test_the_report_channel_reads_whole_lines_and_tells_reasons_from_returned_totals():
    """A rolled-back new master writes its reason, then its totals; the old master reads
    them apart, however the writes were split."""
    channel = upgrade_report.Channel()
    try:
        report_fd, ack_fd = upgrade_report.take(
            {upgrade_report.ENV: channel.environ_value()}, {})
        assert (report_fd, ack_fd) == (channel.write_fd, channel.ack_read_fd)
        upgrade_report.tell(report_fd, "worker boot failed:\n  ImportError")
        line = (upgrade_report.METRICS + '{"requests": {"2xx": 7}}\n').encode()
        os.write(report_fd, line[:9])
        assert channel.returned_totals() is None  # half a line is not read yet
        os.write(report_fd, line[9:])
        assert channel.returned_totals() == '{"requests": {"2xx": 7}}'
        assert channel.reason() == "worker boot failed: ImportError"
    finally:
        channel.after_fork()
