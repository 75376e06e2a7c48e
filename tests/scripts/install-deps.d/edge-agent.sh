#!/usr/bin/env bash
# The agent's TLS test makes its certificates with the openssl CLI. Idempotent.
set -euo pipefail
if ! command -v openssl >/dev/null 2>&1; then
    echo "install-deps: apt-get install openssl"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
