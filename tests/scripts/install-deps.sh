#!/usr/bin/env bash
# Installs what the test suite needs, from package registries only, and only when it is
# missing: Debian packages (Mosquitto, Prometheus/promtool, tmux), and a Python venv in .venv
# with the Kubernetes schema and chart tooling. Idempotent and quiet: a second run takes
# a second or two.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Python tooling: pinned in tests/requirements.txt; reinstalled when that file changes.
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "install-deps: python venv (.venv) from tests/requirements.txt"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
    echo "$WANT" > "$STAMP"
fi

# Extra installers dropped in by components (e.g. the Helm CLI); each is idempotent.
for extra in tests/scripts/install-deps.d/*.sh; do
    [ -e "$extra" ] || continue
    bash "$extra"
done
