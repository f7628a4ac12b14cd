"""The operator's commands at their edges: a master without the pack, a stale pidfile."""

import json
import os
import subprocess
import time

import pytest

from tests.harness import Server, cli


def test_upgrade_refuses_at_once_a_master_started_without_the_pack(workdir):
    config = os.path.join(workdir, "plain.py")
    with open(config, "w") as handle:
        handle.write("workers = 1\n")
    server = Server(workdir, config, worker="gunicorn.workers.sync.SyncWorker", workers=1).start()
    try:
        server.wait_http()
        asked = time.monotonic()
        done = cli("upgrade", "--pidfile", server.pidfile, "--timeout", "60")
        assert done.returncode == 2, done.stderr
        assert "has no status file" in done.stderr and "Nothing was sent" in done.stderr
        assert time.monotonic() - asked < 10  # at once, not after --timeout
        assert "usr2" not in server.log().lower() and server.alive()
    finally:
        server.stop()


def test_upgrade_and_status_with_a_stale_pidfile_say_so_in_one_line(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)  # a pid that ran and was reaped: nobody's master
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text("%s\n" % gone.pid)
    for command in ("upgrade", "status"):
        done = cli(command, "--pidfile", str(pidfile))
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "not running: master %s from %s is gone" % (gone.pid, pidfile)], done.stderr


@pytest.mark.parametrize("content", ["0", "-1", "99999999999999999999"])
def test_a_pidfile_that_names_no_single_process_is_refused_in_one_line(tmp_path, content):
    """Before: 0 signalled the CLI's own process group (it killed itself), -1 every process
    the user may signal, a huge number an OverflowError traceback."""
    pidfile = tmp_path / "odd.pid"
    pidfile.write_text(content + "\n")
    for command, code in (("upgrade", 1), ("reload", 2), ("status", 1)):
        done = cli(command, "--pidfile", str(pidfile))
        assert done.returncode == code, (command, done.returncode, done.stderr)
        assert "is not a process id" in done.stderr and "Traceback" not in done.stderr


def test_a_stale_pidfile_whose_pid_now_runs_another_process_is_not_signalled(tmp_path):
    """The master died and its pid went to another process of the same user; its status
    file is still there. Before: `upgrade` sent that process SIGUSR2 (it died of it)."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "stale.pid"
        pidfile.write_text("%s\n" % other.pid)
        (tmp_path / "stale.pid.status").write_text(json.dumps(
            {"pid": other.pid, "process_started": 1, "upgrade_seq": 0, "hup_seq": 0}))
        for command, code in (("upgrade", 1), ("reload", 2)):  # their "not running" codes
            done = cli(command, "--pidfile", str(pidfile), "--timeout", "5")
            assert done.returncode == code, (command, done.stderr)
            assert "now runs another process (the master is gone). Nothing was sent." \
                in done.stderr, done.stderr
        assert other.poll() is None, "the other process was signalled"
    finally:
        other.kill()
        other.wait(timeout=10)
