#!/usr/bin/env bash
# The test command: installs what the tests need (if missing), then runs formatting,
# lints and every test layer this machine supports. Usage: tests/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

tests/scripts/install-deps.sh
export PATH="$ROOT/.venv/bin:$ROOT/tests/.tools/bin:/usr/sbin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
