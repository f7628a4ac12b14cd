"""`python -m bench --instructions`: what the request path costs, counted in instructions.

CPU time per request moves by about 2% from run to run on a shared 2-core machine,
more than the differences worth cutting on the request path; callgrind's count of
instructions repeats for the same code and the same requests. One worker of each
flavour runs under callgrind and serves a fixed stream of requests to a hello-world
WSGI app (so the server's share is what is counted): fresh connections for sync,
one kept-alive connection for gthread. Only that worker counts, switched on once it
served its first requests, so imports, boot and the master stay out. User-space instructions only: the kernel's
share of a request is not in it. Needs valgrind (Debian's package).
"""

import glob
import http.client
import os
import shutil
import subprocess
import sys
import tempfile

from bench import report
from bench.scenarios import COMMON, PACK, WORKER_CLASSES, stop_server
from tests.harness import Server

REQUESTS, WARMUP = 300, 20
KINDS = ("sync", "gthread")
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


def _control(*args):
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def per_request(flavour, kind):
    """Instructions one worker of this flavour and kind spends per request."""
    workdir = tempfile.mkdtemp(prefix="gg-bench-instr-")
    with open(os.path.join(workdir, "hello.py"), "w") as handle:
        handle.write(HELLO)
    head, tail = PACK if flavour == "pack" else ("", "")
    config = os.path.join(workdir, "bench_conf.py")
    with open(config, "w") as handle:
        handle.write(head + COMMON + SLOW + tail)
    out = os.path.join(workdir, "callgrind.%p")
    server = Server(workdir, config, app="hello:app", worker=WORKER_CLASSES[flavour][kind], workers=1,
                    launcher=["valgrind", "--tool=callgrind", "--trace-children=yes",
                              "--instr-atstart=no", "--callgrind-out-file=" + out,
                              sys.executable, "-m", "gunicorn"])
    try:
        server.start().wait_http(timeout=300)
        keep_alive = kind == "gthread"
        _requests(server.port, WARMUP, keep_alive)
        worker = str(server.children()[0])
        _control("-i", "on", worker)
        _requests(server.port, REQUESTS, keep_alive)
        _control("-d", "measured", worker)
        (dump,) = glob.glob(os.path.join(workdir, "callgrind.%s.*" % worker))
        with open(dump) as handle:
            summary = next(line for line in handle if line.startswith("summary:"))
        return int(summary.split()[1]) / REQUESTS
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


def main(out):
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench --instructions needs valgrind (apt-get install valgrind)")
        return 2
    rows = ["| worker | stock | pack | pack / stock |", "|---|---|---|---|"]
    for kind in KINDS:
        stock, pack = per_request("stock", kind), per_request("pack", kind)
        rows.append("| %s | %.1fk | %.1fk | %.3f |" % (kind, stock / 1e3, pack / 1e3, pack / stock))
        print(rows[-1], flush=True)
    text = "\n".join(["# Instructions per request", __doc__.split("\n\n", 1)[1].strip(),
                      "%d requests after %d to warm up, one worker. Machine: %s."
                      % (REQUESTS, WARMUP, report.machine()),
                      "", *rows])
    with open(os.path.join(out, "instructions.md"), "w") as handle:
        handle.write(text + "\n")
    print("wrote", os.path.join(out, "instructions.md"))
    return 0
