"""`python -m bench [--quick] [--only NAMES] [--asgi] [--metrics] [--instructions] [--mold] [--refork] [--in-place-mold] [--out DIR]`: run, print the tables, write DIR/results.md.

`--only hup_storm,term_slow` runs just those restart scenarios (no HAProxy and no
throughput runs) and writes DIR/only-<names>.md, leaving the full results alone.
"""

import argparse
import os
import signal
import sys
import time

from bench import (asgi, fleet, inplace_mold, instructions, metrics_cost, mold, refork,
                   report, rolling, scenarios, throughput)


# The benches that run alone (`--asgi` ... `--instructions`), by their flag's attribute.
SEPARATE = {"asgi": asgi, "metrics": metrics_cost, "mold": mold, "fleet": fleet,
            "refork": refork, "in_place_mold": inplace_mold, "instructions": instructions}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true",
                        help="one repetition, fewer scenarios, gthread only: checks the harness")
    parser.add_argument("--only", help="comma-separated restart scenarios to run, alone")
    parser.add_argument("--asgi", action="store_true",
                        help="the ASGI classes against stock UvicornWorker and asgi (results/asgi.md)")
    parser.add_argument("--metrics", action="store_true",
                        help="what graceful_metrics_bind costs and whether its counts hold "
                             "(results/metrics.md)")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions, system calls and page faults per request, "
                             "stock against the pack with metrics off and on "
                             "(results/instructions.md; needs valgrind and strace)")
    parser.add_argument("--mold", action="store_true",
                        help="memory, replacement time and HUP cost with graceful_mold, "
                             "against stock and stock preload + gc.freeze (results/mold.md)")
    parser.add_argument("--in-place-mold", action="store_true",
                        help="an in-place USR2 with graceful_mold against stock and the other "
                             "upgrades, a 3 s import (results/inplace-mold.md)")
    parser.add_argument("--refork", action="store_true",
                        help="the memory reforking could save, on a lazy-cache app and a "
                             "Django project, before it is built (results/refork.md)")
    parser.add_argument("--fleet", action="store_true",
                        help="three hosts behind HAProxy rolled by ansible-playbook, a good "
                             "and a broken release: stock kill -HUP against the pack's "
                             "playbook (results/fleet.md; needs the [fleet] extra)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    for flag, bench in SEPARATE.items():  # each its own run and its own results file
        if getattr(args, flag):
            os.makedirs(args.out, exist_ok=True)
            return bench.main(args.out)
    names = {s.name for s in scenarios.SCENARIOS}
    only = set(args.only.split(",")) if args.only else None
    if only and not only <= names:
        parser.error("--only: unknown scenario %s (known: %s)"
                     % (",".join(sorted(only - names)), ",".join(sorted(names))))
    # Stopped with SIGTERM, still stop every server it started (the runs' finally blocks).
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    os.makedirs(args.out, exist_ok=True)
    began = time.monotonic()
    kinds = ["gthread"] if args.quick else ["sync", "gthread"]
    chosen = [s for s in scenarios.SCENARIOS if (s.name in only if only else
                                                  not args.quick or s.name in scenarios.QUICK)]
    steady = 1.5 if args.quick else 3.0

    rows, plots, runs = [], [], {}
    for scenario in chosen:
        for kind in kinds:
            pair = [scenarios.run(label, flavour, action, kind, scenario, steady)
                     for label, flavour, action in scenario.variants()]
            runs.update(((scenario.name, kind, run["flavour"]), run) for run in pair)
            rows += [report.row(run) for run in pair]
            print(report.table(rows[-len(pair):]), flush=True)
            name = "%s-%s.png" % (scenario.name, kind)
            if report.plot(pair, os.path.join(args.out, name)):
                plots.append(name)

    recycling, stopping = report.recycling_table(runs), report.stop_table(runs)
    print(recycling, stopping, sep="\n\n")
    if only:
        path = os.path.join(args.out, "only-%s.md" % "-".join(sorted(only)))
        with open(path, "w") as handle:
            handle.write("Command: `python -m bench --only %s`. Machine: %s. Took %.0f s.\n\n%s\n\n%s\n\n%s\n"
                         % (args.only, report.machine(), time.monotonic() - began,
                            report.table(rows), recycling, stopping))
        print("wrote", path)
        return 0

    if not args.quick:
        for kind in kinds:
            pair = [rolling.run(flavour, kind) for flavour in ("stock", "pack")]
            rows += [report.row(run) for run in pair]
            print(report.table(rows[-2:]), flush=True)
            name = "haproxy_rolling-%s.png" % kind
            if report.plot(pair, os.path.join(args.out, name)):
                plots.append(name)

    comparisons = [throughput.compare(kind, 1 if args.quick else 5, 1.0 if args.quick else 4.0)
                   for kind in kinds]
    text = "\n\n".join([
        "# gunicorn-graceful benchmark",
        "Command: `python -m bench%s`. Machine: %s. Took %.0f s." % (
            " --quick" if args.quick else "", report.machine(), time.monotonic() - began),
        "Load: %d closed-loop client threads with `requests` on `/`, half on keep-alive "
        "sessions, half on new connections, plus %d on `/slow?seconds=0.5`; no retries. "
        "Workers: %d. Window: from the signal to %s after it (TERM: 1 s after the master "
        "exited). *longest gap*: longest time in the window with no successful answer; "
        "*lowest rate*: the lowest 250 ms throughput in the window as a share of the steady "
        "rate." % (scenarios.LOAD_THREADS, scenarios.SLOW_THREADS, scenarios.WORKERS, "the scenario's window"),
        "USR2, stock: *manual* is Gunicorn's documented procedure (USR2, wait until the new "
        "master logged booting its workers, QUIT the old master); *naive* is a script that "
        "TERMs the old master 1 s after USR2. Pack: `kill -USR2` alone; *pack* starts a new "
        "master (the default), *pack (in place)* execs the new code in the same master "
        "(`graceful_upgrade = 'in-place'`; *master*: `same pid` when the pidfile still names "
        "the first master). *new version after*: "
        "from the signal to the first answer from the new release; *handed over after*: from "
        "USR2 to the old master's exit; *hand-over minus import*: that, less the time the new "
        "release spends importing on purpose (3 s in the *_slow scenarios). haproxy_rolling: "
        "two backends behind HAProxy (active checks every 200 ms), each TERMed and started "
        "again in turn; stock checked on the app's /healthz, the pack on its health path with "
        "a 1.5 s lame duck.",
        "## Restarts", report.table(rows),
        "## Recycling", "max_requests 200, jitter 50, against the same 12 s without recycling "
        "(stock: the worker exits, then its replacement boots; the pack: the replacement boots "
        "first).", recycling or "(not run)",
        "## A new client during a stop", "Clients that connect between SIGTERM and the "
        "master's exit (term_slow): refused before sending is clean, failed after sending is "
        "not; how long a refused one waited.", stopping or "(not run)",
        "## Steady-state throughput and memory",
        "Raw-socket clients (%d threads) on `/` of the example Flask app; stock and pack "
        "runs alternate." % throughput.CLIENTS,
        report.throughput_table(comparisons),
        "## Timelines", "\n".join("![%s](%s)" % (p, p) for p in plots) or "(matplotlib not "
        "installed: no plots)"])
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(text + "\n")
    print(report.throughput_table(comparisons))
    print("wrote", os.path.join(args.out, "results.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
