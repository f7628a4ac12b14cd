"""Steady-state throughput of each graceful worker against the stock worker of the same kind.

A lean HTTP/1.1 client on raw sockets (keep-alive where the server allows it)
keeps the client cheap, so the server is what is measured. Stock and pack runs
alternate, repetition after repetition, and the ratio is their median.
"""

import socket
import threading
import time

from bench.scenarios import rss_kib, start_server, stop_server

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLIENTS = 4


def _read_response(sock, buffer):
    """Read one response; (rest of buffer, keep-alive?) or raise on a closed socket."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    headers = head.decode("latin-1").lower()
    length = int(headers.split("content-length:")[1].split("\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return body[length:], "connection: close" not in headers


def _client(port, stop_at, counts, index, per_connection, limit=None):
    """One closed-loop client until `stop_at` (or `limit` answers); its answers in
    counts[index], also those before a failure."""
    sock, buffer, done = None, b"", 0
    try:
        while time.monotonic() < stop_at and (limit is None or done < limit):
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                buffer = b""
            sock.sendall(REQUEST)
            buffer, keep = _read_response(sock, buffer)
            done += 1
            if not keep or (per_connection and done % per_connection == 0):
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()
        counts[index] = done


def measure(port, seconds, per_connection=None):
    """Requests per second over `seconds`, from CLIENTS closed-loop clients.

    `per_connection`: open a new connection after that many requests. Kept-alive
    connections stick to the worker that accepted them, and 4 of them over 3 workers
    land 2-1-1 in one run and 4-0-0 in the next; reconnecting spreads them as real
    traffic does, so the runs measure the server, not where the clients landed."""
    counts = [0] * CLIENTS
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(port, stop_at, counts, i, per_connection),
                                daemon=True)
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    return sum(counts) / seconds


def one(flavour, kind, seconds):
    server = start_server(flavour, kind, app="examples.flask_app:app")
    try:
        measure(server.port, 0.5)  # warm-up: imports, first connections
        rps = measure(server.port, seconds)
        workers = server.children()
        return {"rps": rps, "master_rss": rss_kib(server.pid),
                "worker_rss": rss_kib(workers[0]) if workers else None}
    finally:
        stop_server(server)


def compare(kind, repetitions, seconds):
    """Alternating stock/pack runs; the per-repetition ratios and RSS of the last runs."""
    runs = {"stock": [], "pack": []}
    for rep in range(repetitions):
        order = ("stock", "pack") if rep % 2 == 0 else ("pack", "stock")
        for flavour in order:
            runs[flavour].append(one(flavour, kind, seconds))
    ratios = [p["rps"] / s["rps"] for s, p in zip(runs["stock"], runs["pack"])]
    return {"kind": kind, "ratios": ratios, "stock": runs["stock"], "pack": runs["pack"]}
