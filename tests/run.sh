#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, runs them all on the newest
# supported Gunicorn, then the contract and restart tests on every older supported line
# (23.0.0 and the newest 24.x, 25.x, 26.x): the range pyproject.toml promises.
set -euo pipefail
cd "$(dirname "$0")/.."

venv() {  # venv DIR GUNICORN_SPEC: a virtualenv with the package, its test extras and that Gunicorn
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' "$2"
}

# HAProxy (Debian's package) for the rolling-restart test behind a real load balancer.
# Without root it cannot be installed: those tests then skip, saying why.
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  else
    echo "tests/run.sh: haproxy is missing and installing it needs root: its tests will skip" >&2
  fi
fi

venv .venv 'gunicorn>=27,<28'
echo "== all tests, newest Gunicorn: $(.venv/bin/python -m gunicorn --version 2>&1 | head -1)"
.venv/bin/python -m pytest -q tests

for line in 23:'gunicorn==23.0.0' 24:'gunicorn>=24,<25' 25:'gunicorn>=25,<26' 26:'gunicorn>=26,<27'; do
  dir=.venv-gunicorn${line%%:*}
  venv "$dir" "${line#*:}"
  echo "== contract and restart tests, $("$dir"/bin/python -m gunicorn --version 2>&1 | head -1)"
  "$dir"/bin/python -m pytest -q tests/test_compat.py tests/test_drain.py tests/test_reload.py \
    tests/test_upgrade.py tests/test_lame_duck.py tests/test_haproxy.py tests/test_faults.py \
    tests/test_recycle.py tests/test_asgi.py
done
