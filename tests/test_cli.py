"""The operator's commands at their edges: a master without the pack, a stale pidfile."""

import os
import subprocess
import time

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
