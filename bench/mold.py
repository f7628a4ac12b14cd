"""`python -m bench --mold`: what graceful_mold changes, with an app whose import builds ~80 MB
of Python objects and takes 1 s of CPU, 4 sync workers, side by side in one run:

- stock Gunicorn; stock with `preload_app` and `gc.freeze()` in `when_ready` (what users
  paste by hand); the pack without the mold; the pack with `graceful_mold = True`.

For each: the PSS of the whole service (every process: master, mold, workers) after 2,000
requests; how long a SIGKILLed worker takes to be replaced and ready (kill to the new
worker's `post_worker_init`); the CPU a HUP costs (every process, the ones that exited
included, measured without load); the peak PSS during that HUP against the steady total;
then a HUP under load: failed requests and whether the new code serves.
"""

import os
import signal
import tempfile
import threading
import time

from bench import report
from bench.scenarios import launch, stop_server as stop, write_config
from tests.harness import Load, Server, wait_for

WORKERS = 4
VARIANTS = ("stock", "stock_preload_freeze", "pack", "pack_mold")
STOCK_SYNC, PACK_SYNC = "gunicorn.workers.sync.SyncWorker", "sync"

APP = '''\
import os
import time

_began = time.process_time()
VERSION = {version!r}
DATA = [{{"id": i, "name": "item-%07d" % i, "tags": [i, i * 2]}} for i in range(200000)]
while time.process_time() - _began < 1.0:  # the rest of a 1 s import, as a big app's
    pass
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports.log"), "a") as _h:
    _h.write("%d %.3f\\n" % (os.getpid(), time.process_time() - _began))


def app(environ, start_response):
    item = DATA[hash(environ.get("PATH_INFO", "/") + str(time.monotonic())) % len(DATA)]
    body = ('{{"version": "%s", "pid": %d, "item": %d}}'
            % (VERSION, os.getpid(), item["id"])).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

# Every variant logs when a worker can serve: Gunicorn calls post_worker_init once the app
# is loaded (after the pack's readiness check, for the pack).
READY_HOOK = '''
def post_worker_init(worker):
    import os, time
    with open({path!r}, "a") as handle:
        handle.write("%d %.6f\\n" % (os.getpid(), time.monotonic()))
'''
PRELOAD_FREEZE = '''
preload_app = True

def when_ready(server):
    import gc
    gc.collect()
    gc.freeze()
'''


def write_app(workdir, version):
    with open(os.path.join(workdir, "heavyapp.py"), "w") as handle:
        handle.write(APP.format(version=version))


def start(variant):
    workdir = tempfile.mkdtemp(prefix="gg-bench-mold-")
    write_app(workdir, "1")
    extra = READY_HOOK.format(path=os.path.join(workdir, "ready.log"))
    if variant == "stock_preload_freeze":
        extra += PRELOAD_FREEZE
    if variant == "pack_mold":
        extra += "graceful_mold = True\n"
    return launch_variant(workdir, variant, extra, "heavyapp:app")


def launch_variant(workdir, variant, extra, app, workers=WORKERS):
    """A server of `variant` (the pack's when its name says so, else stock) with `extra`
    in its config, once `workers` sync workers logged ready."""
    flavour = "pack" if variant.startswith("pack") else "stock"
    server = Server(workdir, write_config(workdir, flavour, extra), app=app,
                    worker=PACK_SYNC if flavour == "pack" else STOCK_SYNC, workers=workers)
    return launch(server, lambda: wait_for(lambda: len(ready(server)) >= workers, 60,
                                           "%s: workers ready" % variant))


def ready(server, since=0.0):
    """(pid, when) of every worker that became ready after `since` (monotonic)."""
    try:
        with open(os.path.join(server.workdir, "ready.log")) as handle:
            rows = [line.split() for line in handle if line.strip()]
    except OSError:
        return []
    return [(int(pid), float(when)) for pid, when in rows if float(when) > since]


def tree(pid):
    """`pid` and every live descendant."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open("/proc/%d/task/%d/children" % (current, current)) as handle:
                todo += [int(child) for child in handle.read().split()]
        except OSError:
            pass
    return found


def pss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as handle:
                total += next(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024.0


def tree_cpu(pid):
    """CPU seconds of `pid`'s tree so far: each live process's own and its reaped children's
    (a worker that exited counts in its reaper's)."""
    total = 0
    for member in tree(pid):
        try:
            with open("/proc/%d/stat" % member) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def workers(server):
    """The live workers: pids that logged ready and are still in the master's tree."""
    live = set(tree(server.pid))
    return [pid for pid, _ in ready(server) if pid in live]


def replace_time(server):
    victim = workers(server)[0]
    began = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    found = wait_for(lambda: ready(server, since=began), 60, "a replacement")
    return found[0][1] - began


def hup(server, version, load=None):
    """HUP with `version` on disk; until every old worker is gone and WORKERS new ones are
    ready: (CPU seconds of the tree, peak PSS MiB, seconds)."""
    old = set(workers(server))
    write_app(server.workdir, version)
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], pss_mib(tree(server.pid)))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    cpu = tree_cpu(server.pid)
    began = time.monotonic()
    sampler.start()
    server.signal(signal.SIGHUP)
    try:
        wait_for(lambda: len(ready(server, since=began)) >= WORKERS
                 and not old & set(tree(server.pid)), 90, "the HUP to complete")
    finally:
        done.set()
        sampler.join(5)
    took = time.monotonic() - began
    time.sleep(0.5)  # the CPU of the old workers' last exits lands in the master's counts
    return tree_cpu(server.pid) - cpu, peak[0], took


def measure(variant):
    server = start(variant)
    try:
        load = Load(server.url, threads=4, max_requests=2000).start()
        load.wait_count(2000, timeout=120)
        load.stop()
        steady = pss_mib(tree(server.pid))
        per_worker = steady / WORKERS
        replace = replace_time(server)
        wait_for(lambda: len(workers(server)) >= WORKERS, 30, "the pool complete again")
        time.sleep(1.0)  # idle: the CPU counted next is the HUP's
        cpu, peak, took = hup(server, "2")
        load = Load(server.url, threads=4).start()
        load.wait_count(200, timeout=60)
        hup(server, "3")
        load.wait_count(len(load.results) + 200, timeout=60)
        load.stop()
        served = {r.version for r in load.results[-50:] if r.ok}
        with open(os.path.join(server.workdir, "imports.log")) as handle:
            imports = [float(line.split()[1]) for line in handle if line.strip()]
        return {"variant": variant, "steady": steady, "per_worker": per_worker,
                "replace": replace, "hup_cpu": cpu, "import_cpu": min(imports),
                "peak": peak, "hup_seconds": took, "failed": len(load.failures()),
                "new_code": "3" in served, "imports": len(imports)}
    finally:
        stop(server)


def table(rows):
    return report.side_by_side(rows, [
        ("the whole service, PSS after 2,000 requests (MiB)", lambda r: "%.0f" % r["steady"]),
        ("per worker (PSS of all / workers, MiB)", lambda r: "%.1f" % r["per_worker"]),
        ("a SIGKILLed worker replaced and ready (s)", lambda r: "%.3f" % r["replace"]),
        ("CPU of a HUP, every process (s)", lambda r: "%.2f" % r["hup_cpu"]),
        ("CPU of a HUP, in imports (one import's CPU, s)",
         lambda r: "%.2f (%.2f)" % (r["hup_cpu"] / r["import_cpu"], r["import_cpu"])),
        ("peak PSS during the HUP (MiB; x steady)",
         lambda r: "%.0f (%.2fx)" % (r["peak"], r["peak"] / r["steady"])),
        ("HUP to all new workers ready, old gone (s)", lambda r: "%.2f" % r["hup_seconds"]),
        ("HUP under load: failed requests", lambda r: str(r["failed"])),
        ("HUP loads the new code", lambda r: "yes" if r["new_code"] else "no"),
        ("imports of the app in the run", lambda r: str(r["imports"])),
    ])


def main(out):
    began = time.monotonic()
    text = table([measure(variant) for variant in VARIANTS])
    return report.write_result(out, "mold.md", "Command: `python -m bench --mold`. Machine: "
                               "%s. Took %.0f s. App: an import that builds ~80 MB of objects "
                               "and takes 1 s of CPU; %d sync workers."
                               % (report.machine(), time.monotonic() - began, WORKERS), text)
