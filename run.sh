#!/usr/bin/env bash
# One entry point for a fresh machine with Python 3.11:
#   ./run.sh demo     install, then start the API + dashboard and run a short comparison sweep
#   ./run.sh test     install (with test tools and a headless browser), then run the test suite
#   ./run.sh install  only install (what the Dockerfile does)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

install() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    # constraints.txt pins the CPU torch wheel; unpinned, pip would pull CUDA builds.
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[all]"
}

system_packages() {
    # chromium for the browser tests, iproute2 for emulated network links, PostgreSQL for
    # the run store's second database (root only; without them those tests skip).
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing ${missing[*]} with apt-get"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "note: ${missing[*]} missing and not installable here; the tests needing them will skip"
        fi
    fi
}

case "${1:-}" in
    install)
        install
        ;;
    demo)
        install
        shift
        exec "$VENV/bin/lightning-quant" demo "$@"
        ;;
    test)
        install
        system_packages
        shift
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"
        exec "$VENV/bin/python" -m pytest -n 2 -q "$@"
        ;;
    *)
        echo "usage: ./run.sh demo | ./run.sh test | ./run.sh install" >&2
        exit 2
        ;;
esac
