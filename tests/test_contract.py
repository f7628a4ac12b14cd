"""Where the pack's classes keep Gunicorn's contract: the words scripts look for, the lines
operators expect. Each was broken once (issue 37) and is checked on real processes."""

import os
import shutil

import pytest

from tests.harness import GUNICORN, write_app

ORPHAN_APP = '''\
import os
import time


def app(environ, start_response):
    """Double-forks, as apps that spawn daemons do: the grandchild is reparented to PID 1
    of the PID namespace (the master) and exits 7 once its parent is gone."""
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        grandchild = os.fork()
        if grandchild == 0:
            while os.getppid() != 1:
                time.sleep(0.01)
            os._exit(7)
        os.write(write, str(grandchild).encode())
        os._exit(0)
    os.waitpid(middle, 0)
    body = os.read(read, 32)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''


@pytest.mark.lines
@pytest.mark.parametrize("app_fails", [False, True], ids=["worker-boot", "app-load"])
def test_a_first_generation_that_cannot_boot_halts_with_gunicorns_reason(
        workdir, servers, app_fails):
    """Stock's sentence first (uvicorn-worker's test_uvicorn_worker_boot_error looks for it),
    the pack's detail after it; the exit code is Gunicorn's: 4 when the app object is not
    found, 3 for any other failure (an import that raises too, as stock)."""
    app = "testapp:app"
    if app_fails:
        app, sentence, code, cause = "testapp:missing", r"App failed to load\.", 4, "missing"
    else:
        write_app(workdir, "1", before="raise RuntimeError('db down')")
        sentence, code, cause = r"Worker failed to boot\.", 3, r"RuntimeError: db down"
    server = servers(workdir, serve=False, app=app, workers=1)
    assert server.wait_exit(30) == code
    assert server.count(r"Reason: %s worker=\d+ cause=\"[^\n]*%s" % (sentence, cause)) == 1, \
        server.tail()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a PID namespace needs root and unshare(1)")
def test_a_reaped_orphan_is_logged_as_gunicorn_logs_it(workdir, servers):
    """The master as PID 1 of a PID namespace (a container without an init) reaps what the
    app's daemons leave: Gunicorn logs each at debug, and so does the pack."""
    with open(os.path.join(workdir, "orphans.py"), "w") as handle:
        handle.write(ORPHAN_APP)
    server = servers(workdir, serve=False, app="orphans:app", worker="sync", workers=1,
                     config_body='loglevel = "debug"\n',
                     launcher=["unshare", "--pid", "--fork", "--kill-child"] + GUNICORN)
    server.wait_log(r"event=master\.serving")
    grandchild = int(server.get("/").text)
    server.wait_log(r"Reaped unknown child process \(pid:%d, status:1792\)" % grandchild)
    assert server.count(r"Reaped unknown child process") == 1
    assert server.alive()


def test_the_upstream_runner_fails_on_a_new_failure_and_on_a_fixed_difference():
    """tests/upstream/run.py's verdict: what the README test command relies on."""
    from tests.upstream import run
    expected = {"t.py::known": "reason", "t.py::fixed": "reason", "t.py::renamed": "reason"}
    results = {"t.py::known": "failed", "t.py::fixed": "passed", "t.py::new": "failed",
               "t.py::fine": "passed"}
    line, problems = run.compare("gunicorn", "27.0.1", results, expected)
    assert line.startswith("upstream gunicorn 27.0.1: 2 passed, 1 expected differences, ")
    assert problems == ["unexpected failure: t.py::new",
                        "passes now (remove it from docs/upstream.md): t.py::fixed",
                        "not in the suite any more: t.py::renamed"]


def test_every_expected_upstream_difference_has_a_reason():
    from tests.upstream import run
    expected = run.expected_differences()
    assert set(expected) == {suite.name for suite in run.SUITES}
    assert len(expected["gunicorn"]) > 0
    assert all(reason for tests in expected.values() for reason in tests.values())
