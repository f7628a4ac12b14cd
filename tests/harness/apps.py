"""The test apps: a Flask app and an ASGI app written into a scratch directory, releases, configs."""

import os


APP_TEMPLATE = '''\
import os
import time
{before}
from examples.flask_app import create_app

_app = create_app({version!r})
_started = os.path.join(os.path.dirname(os.path.abspath(__file__)), "started.log")
_grown = []  # /grow?mib=N keeps N MiB, written so that they are resident


def app(environ, start_response):
    # Tests poll this file to know a request reached the app, instead of sleeping.
    if {record}:
        with open(_started, "a") as handle:
            handle.write(environ["PATH_INFO"] + "\\n")
    if environ["PATH_INFO"] == "/grow":
        _grown.append(b"x" * (int(environ["QUERY_STRING"].partition("=")[2]) << 20))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"grown\\n"]
    if environ["PATH_INFO"] == "/healthz":
        time.sleep({healthz_seconds})  # a worker that becomes ready this long after its fork
    if environ["PATH_INFO"] == "/healthz" and {healthz} != 200:
        start_response("{healthz} Not Ready", [("Content-Type", "text/plain")])
        return [b"not ready\\n"]
    return _app(environ, start_response)
'''


ASGI_APP = '''\
import os
import time
{before}
os.environ["APP_VERSION"] = {version!r}
from examples.asgi_app import app as _app

_started = os.path.join(os.path.dirname(os.path.abspath(__file__)), "started.log")


async def app(scope, receive, send):
    # Tests poll this file to know a request reached the app, instead of sleeping.
    if {record} and scope["type"] != "lifespan":
        with open(_started, "a") as handle:
            handle.write(scope["path"] + "\\n")
    if scope["type"] == "http" and scope["path"] == "/block":
        time.sleep(2)  # blocks the event loop: new connections wait in the listen queue
    await _app(scope, receive, send)
'''


def make_release(root, name, **app):
    """releases/<name> under `root`, holding the test app as release `name`."""
    path = os.path.join(root, "releases", name)
    os.makedirs(path)
    write_app(path, name, **app)
    return path


def point_link(link, target):
    """Switch the deploy symlink atomically, as deploy tools do."""
    tmp = link + ".new"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def replace_file(path, text):
    """Write `path` whole and rename it into place, as deploy tools do: a worker importing
    the module meanwhile reads the old release or the new one, never an empty file."""
    tmp = path + ".new"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_asgi_app(directory, version, before="", record=True):
    """The example Starlette app as release `version` (APP_VERSION), recording what starts."""
    replace_file(os.path.join(directory, "asgiapp.py"),
                 ASGI_APP.format(version=version, before=before, record=record))


def write_app(directory, version, before="", healthz=200, record=True, healthz_seconds=0):
    """A test app module (`testapp:app`) serving `version`; `before` runs at import;
    /healthz answers `healthz` after `healthz_seconds`.

    `record` appends each request's path to started.log (see `Server.wait_started`).
    """
    replace_file(os.path.join(directory, "testapp.py"),
                 APP_TEMPLATE.format(before=before, version=version, healthz=healthz,
                                     record=record, healthz_seconds=healthz_seconds))


def write_config(directory, name="gunicorn_conf.py", body="", pack=True):
    """A Gunicorn config: `body` inside the pack's (pack=False: `body` alone, a config that
    uses a graceful worker class without the pack)."""
    path = os.path.join(directory, name)
    if pack:
        body = "from gunicorn_graceful.conf import *  # noqa\n%s\ninstall(globals())\n" % body
    replace_file(path, body)
    return path
