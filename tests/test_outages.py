"""Operations users perform every week that must never take the master down.

Each test is one path an operator takes (a signal without a name, a hand-over with a
shutdown delay, a hook of their own) with real processes, and asserts that the
master is still up and the service still answers.
"""

import os
import signal

import pytest

from support import NotifySocket, process_alive, usr2_new_master, wait_for, write_app

READINESS = "graceful_readiness_path = '/healthz'\n"
NAMELESS = signal.SIGRTMIN + 1  # Python has no name for it: signal.Signals(35) raises


def test_a_booting_worker_killed_by_a_nameless_signal_is_a_rollback(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(30)")
    server.signal(signal.SIGHUP)
    booting = server.wait_log(r"event=worker\.booting pid=(\d+) ppid=\d+ generation=2")
    os.kill(int(booting.group(1)), NAMELESS)
    server.wait_log(r'event=reload\.rollback generation=2 kept_generation=1 worker=%s after=\S+ '
                    r'reason="killed by signal %s before it was ready"'
                    % (booting.group(1), int(NAMELESS)))
    assert server.alive() and server.version() == "1", server.tail()


def test_a_ready_worker_killed_by_a_nameless_signal_is_replaced(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    ready = server.wait_log(r"event=worker\.ready pid=(\d+)")
    os.kill(int(ready.group(1)), NAMELESS)
    server.wait_log(r"Worker \(pid:%s\) was sent signal %s!" % (ready.group(1), int(NAMELESS)))
    server.wait_log(r"event=worker\.ready pid=\d+", count=3)
    assert server.alive() and server.version() == "1", server.tail()


def test_a_new_master_killed_by_a_nameless_signal_is_a_rollback(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(30)")
    new_master = usr2_new_master(server)
    os.kill(new_master, NAMELESS)
    server.wait_log(r'event=upgrade\.rollback pid=%s new_master=%s after=\S+ '
                    r'reason="new master killed by signal %s before it took over"'
                    % (server.pid, new_master, int(NAMELESS)))
    assert server.alive() and server.version() == "1", server.tail()
