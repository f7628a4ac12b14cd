"""The benchmark: stock Gunicorn and gunicorn-graceful, same app, same load, same signals, one run.

    python -m bench            # everything, ~10 minutes on 2 cores
    python -m bench --quick    # one repetition, fewer scenarios: checks the harness works

It drives real servers with the tests' harness (tests/support.py), so the tests
and the benchmark start servers and count failures the same way.
"""

import os
import sys

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
