"""HUP with a changed configuration: what can be applied is, what cannot is one logged refusal.

Whatever the new config says (another bind address, a missing certificate, a user's
own hook, no pack at all), the master stays up and the serving generation keeps
serving; the master never holds the application's code.
"""

import os
import signal
import socket
import subprocess
import sys

import pytest
import requests

from support import Load, ROOT, free_port, wait_for, write_config

PACKAGE_APP = '''\
from myapp.version import VERSION


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [VERSION.encode()]
'''


def write_package_app(root, version):
    """`myapp:app`, a package whose answer is `version` (in `myapp/version.py`), with a
    readiness check in `myapp/checks.py`."""
    package = os.path.join(root, "myapp")
    os.makedirs(package, exist_ok=True)
    with open(os.path.join(package, "__init__.py"), "w") as handle:
        handle.write(PACKAGE_APP)
    with open(os.path.join(package, "version.py"), "w") as handle:
        handle.write("VERSION = %r\n" % version)
    with open(os.path.join(package, "checks.py"), "w") as handle:
        handle.write("def ready(app):\n    return True\n")


def test_hup_with_a_dotted_readiness_callable_serves_the_new_code(tmp_path, servers):
    root = str(tmp_path)
    write_package_app(root, "v1")
    server = servers(root, app="myapp:app", workers=2,
                     config_body="graceful_readiness_callable = 'myapp.checks:ready'\n")
    assert server.get("/").text == "v1"
    write_package_app(root, "v2")
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.done generation=2")
    answers = {server.get("/").text for _ in range(20)}
    assert answers == {"v2"}, server.tail()


def test_checking_a_dotted_readiness_callable_imports_nothing_of_the_app(tmp_path):
    """The master's start check: `myapp` raises at import, so importing it would show."""
    root = str(tmp_path)
    write_package_app(root, "v1")
    with open(os.path.join(root, "myapp", "__init__.py"), "a") as handle:
        handle.write("raise SystemExit('the master imported the app')\n")
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from gunicorn_graceful import settings\n"
              "before = set(sys.modules)\n"
              "good = settings.Settings(readiness_callable='myapp.checks:ready')\n"
              "bad = settings.Settings(readiness_callable='myapp.nothing:ready')\n"
              "print(settings.callable_problem(good))\n"
              "print(settings.callable_problem(bad))\n"
              "print(sorted(m for m in set(sys.modules) - before if m.startswith('myapp')))\n"
              % root)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    good, bad, imported = out.stdout.splitlines()
    assert good == "None"
    assert "graceful_readiness_callable" in bad and "no module named 'myapp.nothing'" in bad
    assert imported == "[]"
