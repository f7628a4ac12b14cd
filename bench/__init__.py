"""The benchmark: stock Gunicorn and gunicorn-graceful, same app, same load, same signals, one run.

    python -m bench            # everything, ~10 minutes on 2 cores
    python -m bench --quick    # one repetition, fewer scenarios: checks the harness works

It drives real servers with the tests' harness (`tests.harness`), so the tests
and the benchmark start servers and count failures the same way.
"""
