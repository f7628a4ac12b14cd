"""A fleet deploy, stock against the pack: three hosts (127.0.0.2-4) behind HAProxy, a good
release then a broken one, each rolled by the real `ansible-playbook` under load through the
balancer. Stock: plain Gunicorn and bench/stock_deploy.yml (link switch, `kill -HUP`). The
pack: the shipped conf/ansible/deploy.yml (`gunicorn-graceful reload` as the gate), without
the HAProxy drain, so that the balancer sends traffic to each host throughout its HUP."""

import collections
import os
import shutil
import tempfile
import time

from tests.harness import Load
from tests.harness.fleet import PLAYBOOK, Fleet

from bench import report

STOCK_PLAYBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stock_deploy.yml")
RELEASES = [("good", "2", {}),
            ("broken", "3", {"before": "raise RuntimeError('database url missing')"})]


def run(flavour):
    """Both releases on one fleet; a row per release."""
    base = tempfile.mkdtemp(prefix="gg-fleet-")
    fleet, rows = Fleet(base, stock=flavour == "stock"), []
    try:
        fleet.start()
        for label, name, app in RELEASES:
            archive = fleet.archive(name, **app)
            load = Load(fleet.proxy.url, threads=4, slow_threads=1, max_seconds=120).start()
            load.wait_count(50)
            started = time.monotonic()
            played = fleet.play(name, archive, STOCK_PLAYBOOK if flavour == "stock" else PLAYBOOK,
                                drain=False)
            took = time.monotonic() - started
            time.sleep(2.0)  # what the balancer sees after the play: a host left down shows
            results = load.stop()
            touched = sum("ok: [%s]" % h.name in played.stdout or "changed: [%s]" % h.name
                          in played.stdout for h in fleet.hosts)
            failed = collections.Counter(r.kind for r in results if not r.ok)
            rows.append("| %s | %s | %s | %s / %s (%s) | %s | %.1f s (%.1f s a host) |" % (
                flavour, label, played.returncode, sum(failed.values()), len(results),
                ", ".join("%s %s" % item for item in sorted(failed.items())) or "-",
                " ".join("%s:%s" % (h.name, h.serves()) for h in fleet.hosts), took,
                took / max(touched, 1)))
            print(rows[-1], flush=True)
        return rows
    finally:
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(out):
    began = time.monotonic()
    rows = run("stock") + run("pack")
    text = "\n".join([
        "# A fleet deploy: three hosts behind HAProxy, rolled by ansible-playbook",
        "", "Command: `python -m bench --fleet`. Machine: %s. Took %.0f s." % (
            report.machine(), time.monotonic() - began), "",
        __doc__.replace("\n", " "), "Load through HAProxy: 4 client threads on keep-alive and "
        "new connections plus 1 on /slow, no retries, from before the play to 2 s after it. "
        "*hosts after*: the release each host answers with (down: nothing answers).", "",
        "| | release | play exit | failed requests / all | hosts after | play (per host touched) |",
        "|---|---|---|---|---|---|"] + rows) + "\n"
    path = os.path.join(out, "fleet.md")
    with open(path, "w") as handle:
        handle.write(text)
    print("wrote", path)
    return 0
