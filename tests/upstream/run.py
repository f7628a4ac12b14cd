"""Gunicorn's and uvicorn-worker's own test suites, run against the pack's classes.

The pack's arbiter and worker classes subclass Gunicorn's (and uvicorn-worker's): where the
pack does not document a difference, their own tests must pass. This fetches the sdist of the
installed version of each, runs the modules that exercise the arbiter and the workers with
the pack's classes swapped in (`site/graceful_swap.py`, in the test process and in every
server a test starts), and compares the failures with the expected differences listed in
docs/upstream.md, each under the reason that states it. A test that starts to fail, or an
expected difference that starts to pass, fails the run. Prints one line of counts a suite.

    python tests/upstream/run.py   (from the repository; a step of tests/run.sh)
"""

import dataclasses
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE = os.path.join(ROOT, "tests", "upstream", "site")
CACHE = os.path.join(ROOT, ".upstream")
EXPECTED = os.path.join(ROOT, "docs", "upstream.md")
_SUITE_TIMEOUT = 600  # seconds: both suites take about 25 s on a quiet machine


@dataclasses.dataclass
class Suite:
    name: str         # the PyPI name, as the headings of docs/upstream.md name it
    modules: list     # test modules, relative to the sdist
    select: str = ""  # a pytest -k expression: the tests of the classes the pack replaces


SUITES = [
    # The arbiter, the sync, thread and asgi workers, and the integration tests that start
    # real servers and signal them. Left out: parsers, config, HTTP/2, dirty arbiters
    # (nothing of the pack runs there) and the control socket's 30 s integration test.
    Suite("gunicorn", ["tests/test_arbiter.py", "tests/test_gthread.py",
                       "tests/test_gthread_keepalive_shutdown.py", "tests/test_asgi_worker.py",
                       "tests/test_asgi_lifespan.py", "tests/test_asgi_nr_conns_shutdown.py",
                       "tests/test_signal_integration.py", "tests/test_reload.py",
                       "tests/test_request_line_error.py"]),
    # Its tests for UvicornWorker (swapped for GracefulUvicornWorker); the H11 variant is not
    # one of the pack's classes, and the pack's master refuses a foreign class (documented).
    Suite("uvicorn-worker", ["tests/test_workers.py"], select="GracefulUvicornWorker"),
]


def expected_differences(path=EXPECTED):
    """{suite name: {test id: reason heading}} from docs/upstream.md: under `## <suite>`, each
    `### <reason>` section lists its tests as "- `<test id>`" lines."""
    expected, suite, reason = {}, None, None
    with open(path) as handle:
        for line in handle:
            if line.startswith("## "):
                suite, reason = line[3:].strip().strip("`"), None
                expected.setdefault(suite, {})
            elif line.startswith("### "):
                reason = line[4:].strip()
            else:
                found = re.match(r"- `([^`]+::[^`]+)`", line)
                if found and suite and reason:
                    expected[suite][found.group(1)] = reason
    return expected


def sdist(name):
    """The directory of the installed version's sdist, fetched from the index once."""
    version = importlib.metadata.version(name)
    stem = "%s-%s" % (name.replace("-", "_"), version)
    for directory in (stem, "%s-%s" % (name, version)):
        if os.path.isdir(os.path.join(CACHE, directory)):
            return os.path.join(CACHE, directory), version
    os.makedirs(CACHE, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--no-deps", "--no-binary", ":all:", "%s==%s" % (name, version),
                    "-d", CACHE], check=True, timeout=300)
    archive = next(f for f in os.listdir(CACHE) if f.endswith(".tar.gz")
                   and f.lower().startswith((stem.lower() + ".", name.lower() + "-" + version)))
    with tarfile.open(os.path.join(CACHE, archive)) as tar:
        tar.extractall(CACHE, filter="data")
    return sdist(name)


def outcomes(suite, directory):
    """{test id: passed|failed|skipped} of one run of the suite's modules with the swap."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        env = dict(os.environ, PYTHONPATH=SITE, GUNICORN_GRACEFUL_SWAP="1",
                   GUNICORN_GRACEFUL_OUTCOMES=report.name,  # the suites run `gunicorn`:
                   PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        env.pop("PYTEST_ADDOPTS", None)
        run = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
             "graceful_upstream", "-o", "addopts=", "--tb=line",
             *(["-k", suite.select] if suite.select else []), *suite.modules],
            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            stdout, stderr = run.communicate(timeout=_SUITE_TIMEOUT)
        finally:
            stop_group(run.pid)
        with open(report.name) as handle:
            text = handle.read()
        if not text:
            raise SystemExit("%s's suite did not run:\n%s%s" % (suite.name, stdout[-3000:],
                                                               stderr[-3000:]))
        return json.loads(text), stdout


def stop_group(group):
    """What the suite left running in its process group: uvicorn-worker's signal test sends
    its stock master USR2 and stops only the old one, so the new master outlives the run.
    TERM, then KILL what is left after 5 s."""
    deadline = time.monotonic() + 5
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def compare(name, version, results, expected):
    """The counts line, and the problems: unexpected failures, expected ones that pass now
    or are gone (renamed upstream)."""
    failed = {test for test, outcome in results.items() if outcome == "failed"}
    unexpected = sorted(failed - set(expected))
    now_pass = sorted(t for t in expected if results.get(t) == "passed")
    gone = sorted(t for t in expected if t not in results)
    count = {o: sum(1 for v in results.values() if v == o) for o in ("passed", "skipped")}
    line = ("upstream %s %s: %d passed, %d expected differences, %d skipped, %d unexpected "
            "failures, %d expected differences that pass now, %d not found"
            % (name, version, count["passed"], len(failed & set(expected)), count["skipped"],
               len(unexpected), len(now_pass), len(gone)))
    problems = (["unexpected failure: %s" % t for t in unexpected]
                + ["passes now (remove it from docs/upstream.md): %s" % t for t in now_pass]
                + ["not in the suite any more: %s" % t for t in gone])
    return line, problems


def main():
    expected = expected_differences()
    status = 0
    for suite in SUITES:
        directory, version = sdist(suite.name)
        results, output = outcomes(suite, directory)
        line, problems = compare(suite.name, version, results, expected.get(suite.name, {}))
        print(line)
        for problem in problems:
            print("  " + problem)
        if problems:
            print(output[-4000:])
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
