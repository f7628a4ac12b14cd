"""A deploy with two releases and a `current` symlink, upgraded under load with USR2.

    .venv/bin/python -m examples.deploy_demo   # from the repository, after the README's first command

Builds releases/1 and releases/2 of the example app in a scratch directory,
starts Gunicorn with the graceful config pack from `current -> releases/1`,
drives load with `requests` (keep-alive and new connections, no retries), flips
`current` to releases/2, runs `gunicorn-graceful upgrade`, and prints how many
requests failed. It uses the tests' load generator (`tests.harness`).
"""

import os
import shutil
import subprocess
import sys
import tempfile

from tests.harness import Load, Server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP = '''from examples.flask_app import create_app
app = create_app({version!r})
'''
CONFIG = '''from gunicorn_graceful.conf import *  # noqa
graceful_readiness_path = "/healthz"
install(globals())
'''


def release(base, version):
    path = os.path.join(base, "releases", version)
    os.makedirs(path)
    with open(os.path.join(path, "myapp.py"), "w") as handle:
        handle.write(APP.format(version=version))
    return path


def point(link, target):
    """Flip the symlink in one rename, as deploy tools do."""
    tmp = link + ".new"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def main():
    base = tempfile.mkdtemp(prefix="gg-deploy-")
    current = os.path.join(base, "current")
    point(current, release(base, "1"))
    release(base, "2")
    config = os.path.join(base, "graceful_conf.py")
    with open(config, "w") as handle:
        handle.write(CONFIG)
    server = Server(current, config, app="myapp:app", workers=2, rundir=base,
                    env={"GRACEFUL_RELEASE_LINK": current})
    try:
        server.start().wait_log("event=master.serving")
        print("serving release 1 at", server.url)
        load = Load(server.url, threads=6, slow_threads=1, max_seconds=120).start()
        load.wait_count(200)
        point(current, os.path.join(base, "releases", "2"))
        print("current -> releases/2; upgrading")
        done = subprocess.run([sys.executable, "-m", "gunicorn_graceful.cli", "upgrade",
                               "--pidfile", server.pidfile, "--timeout", "60"], timeout=90)
        load.wait_count(len(load.results) + 200)
        load.stop()
        print("upgrade exit code:", done.returncode)
        print("load:", load.summary())
        failed = len(load.failures())
        print("failed requests:", failed)
        return 0 if failed == 0 and done.returncode == 0 else 1
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
