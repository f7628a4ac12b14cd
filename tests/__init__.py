"""The tests: `bash tests/run.sh` (README.md); the harness they share is `tests.harness`."""
