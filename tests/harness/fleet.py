"""A fleet on one machine: hosts on 127.0.0.2 and up behind a real HAProxy, rolled by the real
`ansible-playbook` running a playbook (the shipped conf/ansible/deploy.yml, or the bench's
stock one for plain Gunicorn hosts) with an inventory written here (connection local: each
host is a directory, an address and a master)."""

import os
import shutil
import subprocess
import sys
import tarfile

import requests

from tests.harness.apps import make_release, point_link, write_app, write_config
from tests.harness.peers import HAProxy
from tests.harness.server import ROOT, Server

PLAYBOOK = os.path.join(ROOT, "conf", "ansible", "deploy.yml")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
# tests/run.sh installs the fleet extra (ansible) into the newest line's venv only.
ANSIBLE_MISSING = None if os.path.exists(ANSIBLE_PLAYBOOK) else (
    "ansible-playbook is not in this venv: tests/run.sh installs the [fleet] extra "
    "into .venv only")
PACK = "graceful_readiness_path = '/healthz'\ngraceful_health_path = '/health'\n" \
       "graceful_release_link = %r\n"
STOCK_WORKER = "gunicorn.workers.gthread.ThreadWorker"
INVENTORY_VARS = """\
[web:vars]
ansible_connection=local
ansible_python_interpreter={python}
graceful_cli={python} -m gunicorn_graceful.cli
graceful_timeout=60
"""


class Host:
    """One host: <root>/releases/<name>, the link <root>/current, a master on `address`."""

    def __init__(self, root, name, address, stock=False):
        self.root, self.name, self.address = root, name, address
        self.link = os.path.join(root, "current")
        os.makedirs(root)
        point_link(self.link, make_release(root, "1"))
        if stock:  # plain Gunicorn (the bench's side by side): an empty config
            config = os.path.join(root, "gunicorn_conf.py")
            open(config, "w").close()
        else:
            config = write_config(root, body=PACK % self.link)
        self.server = Server(self.link, config, workers=2, rundir=root, host=address,
                             worker=STOCK_WORKER if stock else "gthread")

    def release(self):
        """The release the link points at now."""
        return os.path.basename(os.readlink(self.link))

    def version(self):
        return self.server.version()

    def serves(self):
        """The release the host answers with, or "down"."""
        try:
            return self.version()
        except (requests.RequestException, ValueError):  # refused, reset, a 5xx without JSON
            return "down"


class Fleet:
    """`count` hosts behind HAProxy (admin socket for the drain), each serving release 1."""

    def __init__(self, workdir, count=3, stock=False):
        self.workdir = workdir
        self.hosts = [Host(os.path.join(workdir, "web%s" % n), "web%s" % n,
                           "127.0.0.%s" % (n + 1), stock) for n in range(1, count + 1)]
        self.proxy = None

    def start(self):
        for host in self.hosts:
            host.server.start()
        for host in self.hosts:
            host.server.wait_http()
        self.proxy = HAProxy(self.workdir, {h.name: "%s:%s" % (h.address, h.server.port)
                                            for h in self.hosts}, health="/healthz").start()
        for host in self.hosts:
            self.proxy.wait_status(host.name, "UP")
        return self

    def archive(self, name, **app):
        """release `name` as the tarball a build would make (the playbook unpacks it)."""
        staging = os.path.join(self.workdir, "build-%s" % name)
        os.makedirs(staging)
        write_app(staging, name, **app)
        path = os.path.join(self.workdir, "app-%s.tar.gz" % name)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(os.path.join(staging, "testapp.py"), arcname="testapp.py")
        return path

    def inventory(self, drain=True):
        lines = ["[web]"] + ["%s app_root=%s app_pidfile=%s" % (
            h.name, h.root, h.server.pidfile) for h in self.hosts]
        extra = "haproxy_socket=%s\n" % self.proxy.stats if drain else ""
        path = os.path.join(self.workdir, "inventory")
        with open(path, "w") as handle:
            handle.write("\n".join(lines) + "\n" + INVENTORY_VARS.format(python=sys.executable)
                         + extra)
        return path

    def play(self, release, archive, playbook=PLAYBOOK, drain=True, timeout=240):
        """ansible-playbook with this fleet's inventory; the CompletedProcess."""
        home = os.path.join(self.workdir, "ansible-home")
        env = dict(os.environ, ANSIBLE_HOME=home, ANSIBLE_LOCAL_TEMP=os.path.join(home, "tmp"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", LC_ALL="C.UTF-8",
                   PYTHONPATH=ROOT)
        return subprocess.run([ANSIBLE_PLAYBOOK, "-i", self.inventory(drain), playbook,
                               "-e", "release=%s" % release, "-e", "release_archive=%s" % archive],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=self.workdir)

    def stop(self):
        for host in self.hosts:
            host.server.stop()
        if self.proxy is not None:
            self.proxy.stop()
        shutil.rmtree(os.path.join(self.workdir, "ansible-home"), ignore_errors=True)
