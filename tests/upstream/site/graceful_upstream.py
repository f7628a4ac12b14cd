"""A pytest plugin for Gunicorn's and uvicorn-worker's own suites (`-p graceful_upstream`):
swaps the pack's classes in before any test module is imported, and writes each test's
outcome to the JSON file named by GUNICORN_GRACEFUL_OUTCOMES."""

import json
import os

from graceful_swap import swap

_outcomes = {}


def pytest_configure(config):
    config.graceful_swapped = swap()


def pytest_report_header(config):
    return "gunicorn-graceful swapped in: %s" % ", ".join(config.graceful_swapped)


def pytest_runtest_logreport(report):
    """One outcome per test: a failure in setup or teardown counts as the test's."""
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session):
    path = os.environ.get("GUNICORN_GRACEFUL_OUTCOMES")
    if path:
        with open(path, "w") as handle:
            json.dump(_outcomes, handle, indent=0, sort_keys=True)
