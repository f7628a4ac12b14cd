"""`python -m bench --in-place-mold`: an in-place USR2 with graceful_mold against the other
upgrades, with an app whose import takes 3 s (1 s of CPU, building ~80 MB of objects, then
2 s of waiting, as an app that reads its settings from a slow service), 4 sync workers, side
by side in one run:

- stock Gunicorn, its documented USR2 (USR2, wait for the new workers, QUIT the old master);
- the pack in place without the mold (its check imports, then each new worker);
- the pack in place with the mold (the check that imported is the new generation's mold);
- the pack's new-master USR2 with the mold (the new master's mold imports);
- the pack in place with the mold again, with an import of 3 s of CPU and no waiting: what
  an upgrade costs beyond its import is fixed (two interpreters start: the check's and the
  exec'd master's), so its share of the CPU depends on the import's.

For each: USR2 to the first answer of the new code, under load (and the import's own wall
time in that run: the target is one import + 0.5 s); failed requests; the imports of the app
the upgrade cost; with the same master pid, the CPU the upgrade cost (every process, idle).
For the pack's in-place variants: a release whose workers fail readiness, under load (rolled
back, failed requests), then a worker SIGKILLed after it: how long until its replacement is
ready, and whether that cost an import.
"""

import os
import signal
import tempfile
import time

import requests

from bench import report
from bench.mold import READY_HOOK, launch_variant, ready, tree, tree_cpu
from bench.scenarios import manual_usr2, stop_server as stop
from tests.harness import Load, wait_for

WORKERS = 4
VARIANTS = ("stock", "pack_in_place", "pack_in_place_mold", "pack_new_master_mold",
            "pack_in_place_mold_cpu")  # the last: an import of 3 s of CPU, no waiting

APP = '''\
import os
import time

_began, _wall = time.process_time(), time.monotonic()
VERSION = {version!r}
DATA = [{{"id": i, "name": "item-%07d" % i, "tags": [i, i * 2]}} for i in range(200000)]
while time.process_time() - _began < {cpu}:  # CPU, as a big app's import
    pass
time.sleep(max(0.0, 3.0 - (time.monotonic() - _wall)))  # then waiting, to 3 s in all
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports.log"), "a") as _h:
    _h.write("%d %.3f %.3f\\n" % (os.getpid(), time.process_time() - _began,
                                  time.monotonic() - _wall))


def app(environ, start_response):
    failing = VERSION == "bad" and environ.get("PATH_INFO") == "/healthz"
    body = ('{{"version": "%s", "pid": %d}}' % (VERSION, os.getpid())).encode()
    start_response("503 Service Unavailable" if failing else "200 OK",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def write_app(workdir, version):
    """The release on disk, written whole and renamed into place (as a deploy tool does);
    its import's CPU seconds are in the directory's name (see `start`)."""
    path = os.path.join(workdir, "slowapp.py")
    cpu = 3.0 if workdir.endswith("-cpu") else 1.0
    with open(path + ".new", "w") as handle:
        handle.write(APP.format(version=version, cpu=cpu))
    os.replace(path + ".new", path)


def start(variant):
    workdir = tempfile.mkdtemp(prefix="gg-bench-inplace-mold-",
                               suffix="-cpu" if variant.endswith("_cpu") else "")
    write_app(workdir, "1")
    extra = READY_HOOK.format(path=os.path.join(workdir, "ready.log"))
    if variant.startswith("pack_in_place"):
        extra += "graceful_upgrade = 'in-place'\n"
    if "_mold" in variant:
        extra += "graceful_mold = True\n"
    return launch_variant(workdir, variant, extra, "slowapp:app", WORKERS)


def imports(server):
    """(pid, CPU seconds, wall seconds) of every import of the app so far."""
    try:
        with open(os.path.join(server.workdir, "imports.log")) as handle:
            rows = [line.split() for line in handle if line.strip()]
    except OSError:
        return []
    return [(int(pid), float(cpu), float(wall)) for pid, cpu, wall in rows]


def upgrade(server, variant):
    """The variant's USR2 (stock: its documented procedure)."""
    if variant == "stock":
        manual_usr2(server, WORKERS)
    else:
        server.signal(signal.SIGUSR2)


def serving(server, version):
    """Whether `version` answers."""
    try:
        return requests.get(server.url + "/", timeout=5).json()["version"] == version
    except (OSError, ValueError):
        return False


def completed(server, variant, began, version):
    """The upgrade begun at `began` is over: WORKERS new workers ready, `version` answers,
    and (same master) only the new workers and their mold are left."""
    wait_for(lambda: len(ready(server, since=began)) >= WORKERS and serving(server, version),
             90, "%s: the upgrade to %s" % (variant, version))
    if variant.startswith("pack_in_place"):
        wait_for(lambda: len(tree(server.pid)) - 1
                 <= WORKERS + (1 if "_mold" in variant else 0), 60, "the old gone")


def loaded_upgrade(server, variant, version):
    """An upgrade to `version` under load: (seconds from USR2 to its first answer, failed
    requests, the wall time of the first import of it, imports it cost)."""
    before = len(imports(server))
    load = Load(server.url, threads=4).start()
    try:
        load.wait_count(200, timeout=60)
        write_app(server.workdir, version)
        began = time.monotonic()
        upgrade(server, variant)

        def answers():
            return [r.ended for r in list(load.results)
                    if r.version == version and r.started > began]
        wait_for(answers, 90, "%s: %s answers" % (variant, version))
        first = min(answers())
        completed(server, variant, began, version)
        load.wait_count(len(load.results) + 400, timeout=60)
    finally:
        load.stop()
    time.sleep(0.5)  # an import still running would be logged by now
    walls = [wall for _, _, wall in imports(server)[before:]]
    return first - began, len(load.failures()), min(walls), len(walls)


def idle_upgrade(server, variant, version):
    """An upgrade to `version` without load, same master: CPU seconds of the tree."""
    time.sleep(1.0)  # idle: the CPU counted next is the upgrade's
    cpu = tree_cpu(server.pid)
    write_app(server.workdir, version)
    began = time.monotonic()
    upgrade(server, variant)
    completed(server, variant, began, version)
    time.sleep(0.5)  # the CPU of the last exits lands in the master's counts
    return tree_cpu(server.pid) - cpu


def rollback(server, variant):
    """A release whose workers fail readiness, under load: (failed requests, then a worker
    SIGKILLed: its replacement's ready time, imports that cost)."""
    load = Load(server.url, threads=4).start()
    try:
        load.wait_count(200, timeout=60)
        write_app(server.workdir, "bad")
        server.signal(signal.SIGUSR2)
        server.wait_log(r"event=upgrade\.adopted pid=\d+ direction=back", timeout=120)
        load.wait_count(len(load.results) + 400, timeout=60)
    finally:
        load.stop()
    wait_for(lambda: serving(server, "3"), 30, "the kept release to answer")
    write_app(server.workdir, "3")  # the deploy tool puts the kept release back on disk
    before = len(imports(server))
    live = set(tree(server.pid))
    victim = next(pid for pid, _ in reversed(ready(server)) if pid in live)
    began = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    found = wait_for(lambda: ready(server, since=began), 60, "a replacement")
    time.sleep(0.5)  # an import the replacement needed would be logged by now
    return len(load.failures()), found[0][1] - began, len(imports(server)) - before


def measure(variant):
    server = start(variant)
    try:
        took, failed, import_wall, count = loaded_upgrade(server, variant, "2")
        row = {"variant": variant, "cpu": None, "imports": count, "took": took,
               "failed": failed, "import_wall": import_wall, "rollback": None}
        if variant.startswith("pack_in_place"):  # the same master: signalled again
            row["cpu"] = idle_upgrade(server, variant, "3")
            row["rollback"] = rollback(server, variant)
        row["import_cpu"] = min(c for _, c, _ in imports(server))
        return row
    finally:
        stop(server)


def cell(value, form):
    return "-" if value is None else form % value


def table(rows):
    return report.side_by_side(rows, [
        ("USR2 to the first answer of the new code, under load (s)",
         lambda r: "%.2f" % r["took"]),
        ("its import's wall time in that run (s)", lambda r: cell(r["import_wall"], "%.2f")),
        ("failed requests", lambda r: str(r["failed"])),
        ("imports of the app per upgrade", lambda r: str(r["imports"])),
        ("CPU of an upgrade, every process, idle (s; same master only)",
         lambda r: cell(r["cpu"], "%.2f")),
        ("... in imports (one import's CPU, s)",
         lambda r: "-" if r["cpu"] is None else
         "%.2f (%.2f)" % (r["cpu"] / r["import_cpu"], r["import_cpu"])),
        ("rolled back (workers fail readiness), under load: failed requests",
         lambda r: "-" if r["rollback"] is None else str(r["rollback"][0])),
        ("then a SIGKILLed worker replaced and ready (s)",
         lambda r: "-" if r["rollback"] is None else "%.3f" % r["rollback"][1]),
        ("... imports that cost", lambda r: "-" if r["rollback"] is None
         else str(r["rollback"][2])),
    ])


def main(out):
    began = time.monotonic()
    text = table([measure(variant) for variant in VARIANTS])
    return report.write_result(
        out, "inplace-mold.md", "Command: `python -m bench --in-place-mold`. Machine: %s. Took "
        "%.0f s. App: an import of 3 s (1 s of CPU building ~80 MB of objects, then waiting; "
        "the last column: 3 s of CPU); %d sync workers. stock: USR2, wait for the new workers, "
        "QUIT the old master." % (report.machine(), time.monotonic() - began, WORKERS), text)
