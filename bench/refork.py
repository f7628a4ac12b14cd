"""`python -m bench --refork`: what reforking could save, measured before it is built.

Pitchfork's reforking (a warmed worker seeds the next generation's mold) shares what
workers build lazily: caches filled by the first requests, compiled templates, URL
resolvers, lazy imports. In Python every object a worker touches has its reference
count written, so a page shared at fork is copied when touched: the gain is not known
until measured. This measures the memory side on the process tree reforking would
build, with no HTTP between (what a request does to memory is the app's, not the
server's): two apps, side by side, in one run:

- `lazy`: builds a cache of about 50 MB (100,000 dicts) on its first request; each request
  reads a few random entries of it.
- `django`: a fresh `django-admin startproject`, admin on (SQLite, migrated, one
  superuser), warmed through Django's full handler stack (middleware, URL resolver,
  sessions, templates) over the admin's login, index and changelists and two views.

Two variants, 4 workers each, PSS of the tree that would serve (mold + workers; the
master holds no app code with the mold and is added apart), after each worker
served the requests given: 2,000 (and, for `lazy`, 10,000: what is left of the gain once
the workers touched more of what they share):

- `mold`: the mold imports the app, `gc.freeze()`s, forks the workers, each warms itself
  (the tree of stock `preload_app` + `gc.freeze()` too, the importer being Gunicorn's
  master: `python -m bench --mold` compares the two servers for real);
- `refork`: the mold forks one worker, which serves 2,000 requests, then (as pitchfork's
  refork) collects, freezes and forks the next workers itself; each serves the same;
  the tree is the new mold (that warmed worker) and its workers.
"""

import gc
import importlib
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time

from bench import mold, report
from bench.mold import pss_mib, tree
from bench.scenarios import stop_server

WORKERS = 4
WARM = 2000  # requests the warmed worker of a refork serves before it forks
VARIANTS = ("mold", "refork")

LAZY_APP = '''\
import random

CACHE = {}


def _fill():
    for i in range(100000):
        CACHE["key-%07d" % i] = {"id": i, "name": "item-%07d" % i, "score": i * 0.5,
                                 "tags": ["t%d" % (i % 97), "u%d" % (i % 89)]}


def handle(number):
    if not CACHE:
        _fill()
    picked = [CACHE["key-%07d" % random.randrange(100000)] for _ in range(20)]
    return sum(len(item["name"]) for item in picked)
'''

DJANGO_VIEWS = '''\
from django.http import JsonResponse
from django.shortcuts import render


def items(request):
    return JsonResponse({"items": [{"id": i, "name": "item %d" % i} for i in range(50)]})


def page(request):
    return render(request, "page.html", {"rows": range(100)})
'''
DJANGO_TEMPLATE = ("{% extends 'admin/base_site.html' %}{% block content %}<ul>"
                   "{% for row in rows %}<li>{{ row }} {{ row|add:1 }}</li>{% endfor %}"
                   "</ul>{% endblock %}")
DJANGO_PATHS = ("/admin/login/", "/admin/", "/admin/auth/user/", "/admin/auth/group/",
                "/admin/auth/user/1/change/", "/items/", "/page/")


def lazy_app(workdir):
    """(import it, serve request n) for the lazy-cache app."""
    with open(os.path.join(workdir, "lazyapp.py"), "w") as handle:
        handle.write(LAZY_APP)

    def load():
        sys.path.insert(0, workdir)
        return importlib.import_module("lazyapp").handle
    return load


def django_app(workdir):
    """A fresh project (startproject, migrate, a superuser), loaded as WSGI sees it."""
    python = sys.executable
    subprocess.run([python, "-m", "django", "startproject", "site_", workdir], check=True,
                   timeout=60)
    package = os.path.join(workdir, "site_")
    with open(os.path.join(package, "views.py"), "w") as handle:
        handle.write(DJANGO_VIEWS)
    os.makedirs(os.path.join(package, "templates"))
    with open(os.path.join(package, "templates", "page.html"), "w") as handle:
        handle.write(DJANGO_TEMPLATE)
    with open(os.path.join(package, "urls.py"), "a") as handle:
        handle.write("\nfrom site_ import views\nurlpatterns += [path('items/', views.items), "
                     "path('page/', views.page)]\n")
    with open(os.path.join(package, "settings.py"), "a") as handle:
        handle.write("\nALLOWED_HOSTS = ['*']\nTEMPLATES[0]['DIRS'] = [BASE_DIR / 'site_' / "
                     "'templates']\n")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="site_.settings", PYTHONPATH=workdir)
    subprocess.run([python, "-m", "django", "migrate", "-v", "0"], check=True, cwd=workdir,
                   env=env, timeout=120)
    subprocess.run([python, "-c", "import django; django.setup(); from django.contrib.auth."
                    "models import User; User.objects.create_superuser('admin', '', 'pw')"],
                   check=True, cwd=workdir, env=env, timeout=60)

    def load():
        sys.path.insert(0, workdir)
        os.environ["DJANGO_SETTINGS_MODULE"] = "site_.settings"
        from django.core.wsgi import get_wsgi_application
        get_wsgi_application()
        from django import db
        from django.test import Client  # the full handler stack, no socket
        clients = {}  # per process: a database connection does not cross a fork

        def handle(number):
            client = clients.get(os.getpid())
            if client is None:
                db.connections.close_all()
                client = clients[os.getpid()] = Client()
                client.login(username="admin", password="pw")
            answer = client.get(DJANGO_PATHS[number % len(DJANGO_PATHS)], follow=True)
            assert answer.status_code == 200, (answer.status_code, number)
        return handle
    return load


def serve(handle, requests):
    for number in range(requests):
        handle(number)


def fork_worker(handle, warmed, requests):
    """A worker that serves `requests`, says so on `warmed`, and waits to be measured."""
    pid = os.fork()
    if pid == 0:
        try:
            random.seed(os.getpid())
            serve(handle, requests)
            os.write(warmed, b"w")
            signal.pause()
        finally:
            os._exit(0)
    return pid


def measure(load, variant, requests):
    """PSS (MiB) of the tree a variant builds, once every worker served `requests` (the
    warmed worker of a refork serves WARM before it forks)."""
    read, warmed = os.pipe()
    mold = os.fork()
    if mold == 0:  # the mold (or a master with preload_app): imports, freezes, forks
        try:
            handle = load()
            gc.collect()
            gc.freeze()
            if variant == "refork":
                seed = os.fork()
                if seed == 0:  # the warmed worker that becomes the next mold
                    serve(handle, WARM)
                    gc.collect()
                    gc.freeze()
                    [fork_worker(handle, warmed, requests) for _ in range(WORKERS)]
                    os.write(warmed, b"m")
                    signal.pause()
                    os._exit(0)
            else:
                [fork_worker(handle, warmed, requests) for _ in range(WORKERS)]
                os.write(warmed, b"m")
            signal.pause()
        finally:
            os._exit(0)
    try:
        got, deadline = b"", time.monotonic() + 600
        while len(got) < WORKERS + 1 and time.monotonic() < deadline:
            if select.select([read], [], [], 1.0)[0]:
                got += os.read(read, 16)
        assert len(got) == WORKERS + 1, "%s: workers not warmed in time: %r" % (variant, got)
        pids = tree(mold)
        if variant == "refork":
            pids.remove(mold)  # the old mold: retired once the new one serves
        return pss_mib(pids)
    finally:
        for pid in reversed(tree(mold)):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(mold, 0)
        os.close(read)
        os.close(warmed)


def master_pss():
    """PSS (MiB) of a real pack master with graceful_mold (it holds no app code), serving:
    what the whole service adds to the trees measured here, the same in every variant."""
    server = mold.start("pack_mold")
    try:
        return pss_mib([server.pid])
    finally:
        stop_server(server)


def main(out):
    master = master_pss()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gg-bench-refork-") as workdir:
        for name, make, runs in (("lazy", lazy_app, (WARM, 10000)),
                                 ("django", django_app, (WARM,))):
            directory = os.path.join(workdir, name)
            os.makedirs(directory)
            load = make(directory)
            for requests in runs:
                pss = {variant: measure(load, variant, requests) for variant in VARIANTS}
                rows.append((name, requests, pss))
                print(name, requests, pss, flush=True)
    text = report.table(
        [(name, "{:,}".format(requests), "%.0f" % pss["mold"], "%.0f" % pss["refork"], "%.1f%%" % (100 * (1 - pss["refork"] / pss["mold"])),
          "%.1f%%" % (100 * (1 - (pss["refork"] + master) / (pss["mold"] + master))))
         for name, requests, pss in rows],
        ("app", "requests per worker", "mold (MiB)", "refork (MiB)", "refork saves", "of the service (+ master, %.0f MiB)" % master))
    print(text)
    with open(os.path.join(out, "refork.md"), "w") as handle:
        handle.write("# What reforking could save (`python -m bench --refork`)\n\n"
                     "Machine: %s. %d workers; PSS of the mold and its workers once each "
                     "worker served the requests given (bench/refork.py says how).\n\n%s\n"
                     % (report.machine(), WORKERS, text))
    return 0
