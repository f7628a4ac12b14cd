"""The benchmark harness runs end to end in its quick mode (no timing is asserted here)."""

import os
import subprocess
import sys

from tests.harness import ROOT


def test_quick_bench_writes_a_row_per_scenario_and_server(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(os.path.join(tmp_path, "results.md")) as handle:
        results = handle.read()
    for scenario in ("hup_broken", "term_slow"):
        for server in ("stock", "pack"):
            assert "| %s | gthread | %s |" % (scenario, server) in results
    assert "| gthread |" in results.split("## Steady-state throughput")[1]
