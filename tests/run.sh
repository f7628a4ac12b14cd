#!/usr/bin/env bash
# The test command (README.md): installs what the tests need, runs every test on the newest
# supported Gunicorn, then, on every older supported line (23.0.0 and the newest 24.x, 25.x,
# 26.x: the range pyproject.toml promises), the tests marked `lines`: the contract tests and
# those that go through a Gunicorn internal that differs between lines; beside those,
# Gunicorn's and uvicorn-worker's own suites against the pack (tests/upstream/run.py).
# Prints its duration.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

venv() {  # venv DIR GUNICORN_SPEC [EXTRAS]: a virtualenv with the package, its extras (test
  # by default) and that Gunicorn
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/python" -m pip install -q --disable-pip-version-check -e ".[${3:-test}]" "$2"
}

# Debian's packages: HAProxy for the rolling-restart test behind a real load balancer,
# Prometheus for the metrics test against a real scraper, supervisor and tini for the
# in-place upgrade under the supervisors that follow a PID. They install while pip builds
# the newest line's virtualenv (both mostly wait on downloads). Without root they cannot
# be installed: those tests then skip, saying why.
missing=""
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v prometheus >/dev/null || missing="$missing prometheus"
command -v supervisord >/dev/null || missing="$missing supervisor"
command -v tini >/dev/null || missing="$missing tini"
apt_log=$(mktemp)
apt_pid=""
if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
  # shellcheck disable=SC2086  # one word per package
  ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends $missing ) >"$apt_log" 2>&1 &
  apt_pid=$!
elif [ -n "$missing" ]; then
  echo "tests/run.sh: missing:$missing; installing needs root: their tests will skip" >&2
fi

LINES="23:gunicorn==23.0.0 24:gunicorn>=24,<25 25:gunicorn>=25,<26 26:gunicorn>=26,<27"

# The fleet extra (ansible, for the fleet test's real ansible-playbook) on the newest line only.
venv .venv 'gunicorn>=27,<28' test,fleet,upstream
if [ -n "$apt_pid" ]; then
  wait "$apt_pid" || { cat "$apt_log"; exit 1; }
fi
# The older lines' virtualenvs install while the newest line's tests run (mostly waiting on
# downloads and disk); their output is shown only if one fails.
prepared=$(mktemp)
( for line in $LINES; do venv ".venv-gunicorn${line%%:*}" "${line#*:}"; done ) >"$prepared" 2>&1 &
preparing=$!
# Two tests at a time (pytest-xdist): most of a test's time is spent waiting on real
# processes (boots, drains, timeouts), so the two cores are not both busy with one.
PARALLEL="-n 2 --dist worksteal"
echo "== all tests, newest Gunicorn: $(.venv/bin/python -m gunicorn --version 2>&1 | head -1)"
# shellcheck disable=SC2086  # PARALLEL is several words
.venv/bin/python -m pytest -q $PARALLEL tests
wait "$preparing" || { cat "$prepared"; exit 1; }
# Gunicorn's and uvicorn-worker's own suites against the pack's classes (docs/upstream.md),
# on the newest line, while the older lines' tests run; its counts are printed at the end.
upstream_log=$(mktemp)
.venv/bin/python tests/upstream/run.py >"$upstream_log" 2>&1 &
upstream=$!

for line in $LINES; do
  dir=.venv-gunicorn${line%%:*}
  echo "== tests marked lines, $("$dir"/bin/python -m gunicorn --version 2>&1 | head -1)"
  # shellcheck disable=SC2086
  "$dir"/bin/python -m pytest -q $PARALLEL -m lines tests
done
upstream_status=0
wait "$upstream" || upstream_status=$?
echo "== Gunicorn's and uvicorn-worker's own tests with the pack's classes (docs/upstream.md)"
cat "$upstream_log"
[ "$upstream_status" = 0 ] || exit "$upstream_status"
echo "tests/run.sh: done in $(( $(date +%s) - started )) s"
