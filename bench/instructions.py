"""`python -m bench --instructions`: what the request path costs, counted instead of timed.

CPU time per request moves by about 2% from run to run on a shared 2-core machine,
more than the differences worth cutting on the request path; counts repeat for the
same code and the same requests. One worker of each flavour (stock, the pack with
metrics off, the pack with metrics on) serves a fixed stream of requests: fresh
connections for sync, one kept-alive connection for gthread, to a hello-world WSGI app
(the server's share is what is counted) and to the Flask example app (the throughput
bench's app). Only that worker counts, from after its first requests (imports, boot
and the master stay out). Three counts per request, each from a run of its own:
user-space instructions (callgrind), system calls (strace -c) and minor page faults
(/proc). Needs valgrind and strace (Debian's packages).
"""

import glob
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench import report
from bench.scenarios import COMMON, PACK, WORKER_CLASSES, stop_server
from tests.harness import Server, free_port, wait_for

REQUESTS, WARMUP = 300, 20
KINDS = ("sync", "gthread")
VARIANTS = ("stock", "off", "on")
APPS = {"hello": "hello:app", "flask": "examples.flask_app:app"}
# Generous: everything runs some 50 times slower under valgrind.
SLOW = "timeout = 600\ngraceful_readiness_timeout = 300\n"
HELLO = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"hello\\n"]
"""


def _requests(port, count, keep_alive):
    connection = None
    for _ in range(count):
        connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("GET", "/")
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError("the worker answered %s" % answer.status)
        if not keep_alive or answer.will_close:
            connection.close()
            connection = None
    if connection:
        connection.close()


def _server(variant, kind, app, extra="", launcher=None):
    """One worker of `variant` (stock, off, on) serving `app` (a key of APPS)."""
    workdir = tempfile.mkdtemp(prefix="gg-bench-instr-")
    with open(os.path.join(workdir, "hello.py"), "w") as handle:
        handle.write(HELLO)
    head, tail = ("", "") if variant == "stock" else PACK
    if variant == "on":
        extra += 'graceful_metrics_bind = "127.0.0.1:%d"\n' % free_port()
    config = os.path.join(workdir, "bench_conf.py")
    with open(config, "w") as handle:
        handle.write(head + COMMON + extra + tail)
    flavour = "stock" if variant == "stock" else "pack"
    launch = {"launcher": launcher} if launcher else {}
    return Server(workdir, config, app=APPS[app], worker=WORKER_CLASSES[flavour][kind],
                  workers=1, **launch)


def _measured(server, kind, count, wait=30):
    """Start `server`, warm its worker up; (its pid, a function sending the measured
    requests). The caller stops the server."""
    server.start().wait_http(timeout=wait)
    keep_alive = kind == "gthread"
    _requests(server.port, WARMUP, keep_alive)
    return server.children()[0], lambda: _requests(server.port, count, keep_alive)


def _control(*args):
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def instructions(variant, kind, app):
    """User-space instructions the worker spends per request (callgrind)."""
    out = "callgrind.%p"
    server = _server(variant, kind, app, extra=SLOW, launcher=[
        "valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
        "--callgrind-out-file=" + out, sys.executable, "-m", "gunicorn"])
    try:
        worker, send = _measured(server, kind, REQUESTS, wait=300)
        _control("-i", "on", str(worker))
        send()
        _control("-d", "measured", str(worker))
        (dump,) = glob.glob(os.path.join(server.workdir, "callgrind.%s.*" % worker))
        with open(dump) as handle:
            summary = next(line for line in handle if line.startswith("summary:"))
        return int(summary.split()[1]) / REQUESTS
    finally:
        _stop(server)


def calls_and_faults(variant, kind, app):
    """(system calls, minor page faults) of the worker per request (strace -c, /proc)."""
    server = _server(variant, kind, app)
    try:
        worker, send = _measured(server, kind, REQUESTS)
        log = os.path.join(server.workdir, "strace.txt")
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", log, "-p", str(worker)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            attached = tracer.stderr.readline()  # "strace: Process N attached"
            if "attached" not in attached:
                raise RuntimeError("strace did not attach: %s" % attached.strip())
            faults = _minor_faults(worker)
            send()
            faults = _minor_faults(worker) - faults
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.communicate(timeout=30)
        wait_for(lambda: os.path.getsize(log) > 0, 10, lambda: "strace's summary")
        with open(log) as handle:
            total = next(line for line in handle if line.rstrip().endswith(" total"))
        return int(total.split()[3]) / REQUESTS, faults / REQUESTS
    finally:
        _stop(server)


def _minor_faults(pid):
    """The process's minor page faults so far, its threads included (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[7])


def _stop(server):
    stop_server(server)
    shutil.rmtree(server.workdir, ignore_errors=True)


def main(out):
    missing = [tool for tool in ("valgrind", "callgrind_control", "strace")
               if shutil.which(tool) is None]
    if missing:
        print("bench --instructions needs %s (apt-get install valgrind strace)"
              % ", ".join(missing))
        return 2
    counted = ["| worker | app | stock | pack, metrics off | pack, metrics on | off / stock "
               "| on / stock |", "|---|---|---|---|---|---|---|"]
    kernel = ["| worker | app | system calls: stock / off / on | minor faults: stock / off "
              "/ on |", "|---|---|---|---|"]
    began = time.monotonic()
    for kind in KINDS:
        for app in APPS:
            counts = [instructions(variant, kind, app) for variant in VARIANTS]
            counted.append("| %s | %s | %s | %.3f | %.3f |" % (
                kind, app, " | ".join("%.1fk" % (c / 1e3) for c in counts),
                counts[1] / counts[0], counts[2] / counts[0]))
            print(counted[-1], flush=True)
            calls = [calls_and_faults(variant, kind, app) for variant in VARIANTS]
            kernel.append("| %s | %s | %s | %s |" % (
                kind, app, " / ".join("%.2f" % c for c, _ in calls),
                " / ".join("%.2f" % f for _, f in calls)))
            print(kernel[-1], flush=True)
    text = "\n".join([
        "# The request path, counted", __doc__.split("\n\n", 1)[1].strip(), "",
        "%d requests after %d to warm up, one worker, %.0f s. Machine: %s."
        % (REQUESTS, WARMUP, time.monotonic() - began, report.machine()),
        "", "## User-space instructions per request", "", *counted,
        "", "## The kernel's share: system calls and minor page faults per request", "",
        *kernel])
    with open(os.path.join(out, "instructions.md"), "w") as handle:
        handle.write(text + "\n")
    print("wrote", os.path.join(out, "instructions.md"))
    return 0
