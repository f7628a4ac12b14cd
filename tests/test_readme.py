"""The README's commands, run verbatim in a fresh copy of the repository, as a newcomer would.

The commands are read from README.md itself, so an edit there is tested too.
Only the bind address is changed (through Gunicorn's GUNICORN_CMD_ARGS, which
wins over the config file): port 0, so a busy 8000 cannot fail the test.
Blocks that start with `$` are transcripts with example paths (the README says
so); `bash tests/run.sh` is the command this very test runs under.
"""

import os
import re
import shutil
import signal
import subprocess

import pytest
import requests

from tests.harness import ROOT, wait_for

IGNORED = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                 ".pytest_cache", "gunicorn.pid", "*.status")


def readme():
    with open(os.path.join(ROOT, "README.md")) as handle:
        return handle.read()


def command_after(text, marker):
    """The indented command block that follows the paragraph containing `marker`."""
    found = re.search(re.escape(marker) + r".*?\n\n    (.+?)\n", text, re.S)
    assert found, "README: no command block after %r" % marker
    return found.group(1)


def inline(text, pattern):
    found = re.search(r"`(%s[^`]*)`" % pattern, text)
    assert found, "README: no inline command matching %r" % pattern
    return found.group(1)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A copy of the repository without any virtualenv or build output."""
    path = tmp_path_factory.mktemp("newcomer") / "gunicorn-graceful"
    shutil.copytree(ROOT, str(path), ignore=IGNORED, symlinks=True)
    return str(path)


class Shell:
    """One README command running in the clone, in a process group of its own."""

    def __init__(self, clone, command, name):
        self.clone, self.logpath = clone, os.path.join(clone, name + ".log")
        env = dict(os.environ, GUNICORN_CMD_ARGS="--bind 127.0.0.1:0", PYTHONUNBUFFERED="1")
        env.pop("VIRTUAL_ENV", None)
        self.log_file = open(self.logpath, "wb")
        self.proc = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self):
        with open(self.logpath, errors="replace") as handle:
            return handle.read()

    def wait_serving(self, timeout):
        wait_for(lambda: "event=master.serving" in self.log() or self.proc.poll() is not None,
                 timeout, lambda: self.log()[-3000:])
        assert self.proc.poll() is None, self.log()[-3000:]
        return int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log()).group(1))

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log_file.close()
        return self.proc.returncode


def test_the_readme_commands_work_verbatim_from_a_fresh_copy(clone):
    text = readme()
    main = command_after(text, "Set up and run the example Flask app")
    status = inline(text, r"\.venv/bin/gunicorn-graceful status")
    demo = inline(text, r"\.venv/bin/python -m examples\.deploy_demo")
    asgi = inline(text, r"\.venv/bin/pip install -e '\.\[examples,uvicorn\]'")
    assert command_after(text, "Run the tests") == "bash tests/run.sh"

    server = Shell(clone, main, "main")
    try:
        port = server.wait_serving(timeout=600)  # the first pip install takes a while
        assert requests.get("http://127.0.0.1:%s/" % port, timeout=10).status_code == 200
        shown = subprocess.run(["bash", "-c", status], cwd=clone, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0 and "state=serving" in shown.stdout, shown
    finally:
        assert server.stop() == 0, server.log()[-3000:]

    ran = subprocess.run(["bash", "-c", demo], cwd=clone, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
    assert "failed requests: 0" in ran.stdout, ran.stdout[-2000:]

    asgi_server = Shell(clone, asgi, "asgi")
    try:
        port = asgi_server.wait_serving(timeout=600)
        answer = requests.get("http://127.0.0.1:%s/" % port, timeout=10)
        assert answer.status_code == 200 and "pid" in answer.json()
    finally:
        assert asgi_server.stop() == 0, asgi_server.log()[-3000:]


def test_transcripts_are_marked_as_such():
    """A `$` block is output shown, not a command to paste: the README says so once."""
    text = readme()
    assert re.search(r"^    \$ ", text, re.M)
    assert "Blocks that start with `$` are transcripts" in text
