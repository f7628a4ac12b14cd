"""The table users read (markdown) and a timeline plot per scenario (PNG, with matplotlib)."""

import os
import platform

import gunicorn

from bench import metrics

COLUMNS = ("scenario", "worker", "server", "requests", "failed", "failures by kind",
           "p50 steady", "p99 steady", "p99 window", "longest gap", "lowest rate",
           "master", "new version after", "handed over after", "hand-over minus import")


def _ms(value):
    return "-" if value is None else "%.0f ms" % (value * 1000)


def _s(value):
    return "-" if value is None else "%.2f s" % value


def row(run):
    numbers = metrics.summarize(run["results"], run["signal_at"], run["window_end"],
                                run["steady_from"], run["new_version"])
    failures = ", ".join("%s %s" % (k, v) for k, v in sorted(numbers["failures"].items()))
    lowest = numbers["lowest_rate"]
    handed_over = run.get("handed_over")  # USR2 to the old master's exit
    return [run["scenario"].name, run["kind"], run["flavour"], str(numbers["requests"]),
            str(numbers["failed"]), failures or "-", _ms(numbers["p50_steady"]),
            _ms(numbers["p99_steady"]), _ms(numbers["p99_window"]),
            _s(numbers["longest_gap"]), "-" if lowest is None else "%.0f%%" % (lowest * 100),
            run["master"], _s(numbers["new_version_after"]), _s(handed_over),
            _s(None if handed_over is None else handed_over - run["scenario"].import_seconds)]


def stop_table(runs):
    """What a client that connects between SIGTERM and the master's exit meets (term_slow)."""
    rows = []
    for (name, kind, flavour), run in sorted(runs.items()):
        if name != "term_slow" or run.get("exited_at") is None:
            continue
        new = [r for r in run["results"] if run["signal_at"] <= r.started < run["exited_at"]]
        refused = sorted(r.ended - r.started for r in new if r.kind in ("refused",
                                                                        "connect_timeout"))
        after_send = sum(1 for r in new if not r.ok and r.kind not in ("refused",
                                                                       "connect_timeout"))
        waits = ["-"] * 3 if not refused else [
            _ms(metrics.percentile(refused, q)) for q in (0.5, 0.99)] + [_ms(refused[-1])]
        rows.append([kind, flavour, "%.2f s" % (run["exited_at"] - run["signal_at"]),
                     str(len(new)), str(sum(1 for r in new if r.ok)), str(len(refused)),
                     str(after_send)] + waits)
    return table(rows, ("worker", "server", "TERM to exit", "new clients", "served",
                        "refused before sending", "failed after sending", "refused after p50",
                        "p99", "max")) if rows else ""


def recycling_table(runs):
    """Successful answers in the window with max_requests recycling against the same run
    without it (scenarios recycle and recycle_off), for each worker kind and server."""
    def served(run):
        return sum(1 for r in run["results"] if r.ok and r.started >= run["signal_at"])
    rows = []
    for (name, kind, flavour), run in sorted(runs.items()):
        reference = runs.get(("recycle_off", kind, flavour))
        if name == "recycle" and reference is not None:
            with_, without = served(run), served(reference)
            rows.append([kind, flavour, str(with_), str(without),
                         "%.2f" % (with_ / without) if without else "-"])
    return table(rows, ("worker", "server", "successful, recycling", "successful, no recycling",
                        "ratio")) if rows else ""


def table(rows, columns=COLUMNS):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def side_by_side(rows, fields):
    """A column per variant (`rows`, each with its "variant"), a line per (name, cell of a
    row) in `fields`."""
    lines = ["| | " + " | ".join(r["variant"] for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for name, cell in fields:
        lines.append("| %s | %s |" % (name, " | ".join(cell(r) for r in rows)))
    return "\n".join(lines)


def write_result(out, name, header, text):
    """Print `text` and write it to out/`name` under `header` (a paragraph)."""
    print(text)
    path = os.path.join(out, name)
    with open(path, "w") as handle:
        handle.write("%s\n\n%s\n" % (header, text))
    print("wrote", path)
    return 0


def throughput_table(comparisons):
    rows = []
    for c in comparisons:
        ratio = metrics.median(c["ratios"])
        rows.append([c["kind"], "%.0f" % metrics.median([r["rps"] for r in c["stock"]]),
                     "%.0f" % metrics.median([r["rps"] for r in c["pack"]]),
                     "%.3f" % ratio, ", ".join("%.3f" % r for r in c["ratios"]),
                     "%s / %s" % (c["stock"][-1]["master_rss"], c["pack"][-1]["master_rss"]),
                     "%s / %s" % (c["stock"][-1]["worker_rss"], c["pack"][-1]["worker_rss"])])
    return table(rows, ("worker", "stock req/s", "pack req/s", "pack/stock (median)",
                        "ratios per repetition", "master RSS KiB stock/pack",
                        "worker RSS KiB stock/pack"))


def machine():
    return "%s, %s cores, Python %s, Gunicorn %s" % (
        platform.platform(), os.cpu_count(), platform.python_version(), gunicorn.__version__)


def plot(runs, path):
    """Stock above pack: each request as a dot at its end time, latency up, failures in red."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.6 * len(runs)), sharex=True)
    for ax, run in zip(axes, runs):
        t0 = run["signal_at"]
        ok = [r for r in run["results"] if r.ok]
        bad = [r for r in run["results"] if not r.ok]
        ax.scatter([r.ended - t0 for r in ok], [(r.ended - r.started) * 1000 for r in ok],
                   s=3, color="tab:blue", label="answered (%d)" % len(ok))
        ax.scatter([r.ended - t0 for r in bad], [(r.ended - r.started) * 1000 for r in bad],
                   s=14, color="tab:red", marker="x", label="failed (%d)" % len(bad))
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("latency ms")
        ax.set_title("%s: %s, %s worker" % (run["flavour"], run["scenario"].title, run["kind"]),
                     fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1].set_xlabel("seconds since the signal")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
