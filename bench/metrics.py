"""What one scenario run shows: failures by kind, latency, gaps, dip, survival, new version."""

import collections
import statistics

BUCKET = 0.25


def percentile(values, fraction):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def longest_gap(ok_ends, start, end):
    """The longest time inside [start, end] with no successful answer."""
    points = [start] + sorted(t for t in ok_ends if start <= t <= end) + [end]
    return max(b - a for a, b in zip(points, points[1:]))


def lowest_rate(ok_ends, start, end, steady_rate):
    """The lowest share of the steady throughput in any BUCKET-long slice of [start, end]."""
    if steady_rate <= 0 or end - start < BUCKET:
        return None
    counts = collections.Counter(int((t - start) / BUCKET) for t in ok_ends if start <= t < end)
    slices = int((end - start) / BUCKET)
    return min(counts.get(i, 0) for i in range(slices)) / (steady_rate * BUCKET)


def summarize(results, signal_at, window_end, steady_from, new_version=None):
    """Numbers for one run; times are monotonic seconds, results are tests.harness.Result rows."""
    steady = [r for r in results if steady_from <= r.started < signal_at]
    window = [r for r in results if r.started >= signal_at]
    ok_ends = [r.ended for r in results if r.ok]
    steady_ok = [r for r in steady if r.ok]
    steady_rate = len(steady_ok) / max(signal_at - steady_from, 1e-9)
    latency = lambda rows, q: percentile([r.ended - r.started for r in rows if r.ok], q)
    kinds = collections.Counter(r.kind for r in results if not r.ok)
    first_new = [r.ended - signal_at for r in window if r.ok and new_version is not None
                 and r.version == new_version]
    return {
        "requests": len(results),
        "failed": sum(kinds.values()),
        "failures": dict(kinds),
        "p50_steady": latency(steady, 0.5),
        "p99_steady": latency(steady, 0.99),
        "p99_window": latency(window, 0.99),
        "longest_gap": longest_gap(ok_ends, signal_at, window_end),
        "lowest_rate": lowest_rate(ok_ends, signal_at, window_end, steady_rate),
        "steady_rps": steady_rate,
        "new_version_after": min(first_new) if first_new else None,
    }


def median(values):
    return statistics.median(values) if values else None
