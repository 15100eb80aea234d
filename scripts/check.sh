#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs lint, types and tests.
# This is the README's test command and what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the tests start their own Mosquitto and InfluxDB 1.x on loopback.
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v influxd >/dev/null || [ -x /usr/bin/influxd ] || need+=(influxdb)
# The dashboard test drives Debian's Chromium through Playwright (no browser download).
[ -x /usr/bin/chromium ] || need+=(chromium)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "== installing Debian packages: ${need[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "beacon-hub needs Python >= 3.11; python3 is $(python3 --version)" >&2
  exit 1
}
[ -x .venv/bin/python ] || python3 -m venv .venv
echo "== installing beacon-hub[gateway,hub,dev] into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[gateway,hub,dev]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy --strict
echo "== example sites are what the generator writes"
.venv/bin/python scripts/generate_sites.py --check
# The real-data tests read ../shared/datasets beside the repository. A clone made elsewhere
# (a temporary folder) finds it beside the repository it was cloned from.
if [ -z "${BEACON_HUB_DATASETS:-}" ] && [ ! -d ../shared/datasets ]; then
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  if [ -n "$origin" ] && [ -d "$origin/../shared/datasets" ]; then
    BEACON_HUB_DATASETS=$(cd "$origin/../shared/datasets" && pwd)
    export BEACON_HUB_DATASETS
    echo "== datasets: $BEACON_HUB_DATASETS"
  fi
fi
echo "== pytest"
# Most of the suite's time is spent waiting on real servers and real time (on 2 cores it used
# 7 minutes of CPU in 12.7 minutes), so 3 workers take it to about 5.5 minutes. A file stays on
# one worker (--dist loadfile): module fixtures (a calibration, a recorded run) are built once.
.venv/bin/python -m pytest -n 3 --dist loadfile "$@"
echo "== soak: 2 minutes of faults through Mosquitto, the hub, SQLite and InfluxDB (docs/soak.md)"
.venv/bin/python bench/soak.py --minutes 2
