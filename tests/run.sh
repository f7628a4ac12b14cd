#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, runs them all on the newest
# supported Gunicorn, then the restart tests again on the oldest supported one (23.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."

venv() {  # venv DIR GUNICORN_SPEC: a virtualenv with the package, its test extras and that Gunicorn
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' "$2"
}

# HAProxy (Debian's package) for the rolling-restart test behind a real load balancer.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: haproxy is missing and installing it needs root (apt-get install haproxy)" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi

venv .venv 'gunicorn>=27,<28'
echo "== all tests, newest Gunicorn: $(.venv/bin/python -m gunicorn --version 2>&1 | head -1)"
.venv/bin/python -m pytest -q tests

venv .venv-gunicorn23 'gunicorn==23.0.0'
echo "== restart tests, Gunicorn 23.0.0"
.venv-gunicorn23/bin/python -m pytest -q tests/test_drain.py tests/test_reload.py tests/test_upgrade.py \
  tests/test_lame_duck.py tests/test_haproxy.py tests/test_faults.py
