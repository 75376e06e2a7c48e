#!/usr/bin/env bash
# Runs the Edgepipe benchmarks B1–B11 and writes a Markdown table to stdout and to
# target/bench/results.md. Every row carries a baseline measured in the same run and the
# ratio to it, so results from a noisy machine still compare.
#
#   tests/bench/run.sh            # all benchmarks
#   tests/bench/run.sh b1 b7 b8   # a selection
#   B9_PIPELINES=200 tests/bench/run.sh b9   # B9 (real control plane, kwok) on a smaller fleet
#   tests/bench/run.sh b10        # B10: 1,000 agents keeping their fleet records
#   BENCH_SCALE=0.2 tests/bench/run.sh   # fewer messages (quick look)
#
# Needs: /usr/sbin/mosquitto and mosquitto_sub (apt mosquitto, mosquitto-clients), python3
# (for the TFLite reference interpreter, installed here into target/bench/venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/bench
mkdir -p "$out"

if [[ ! -x /usr/sbin/mosquitto ]] || ! command -v mosquitto_sub >/dev/null; then
  apt-get install -y -q mosquitto mosquitto-clients >&2
fi
venv="$out/venv"
if ! "$venv/bin/python" -c 'import ai_edge_litert, numpy' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q ai-edge-litert==2.3.0 numpy==2.4.6 >&2
fi

agent_benches=()
run_b8=1
run_b9=1
run_b10=1
if [[ $# -gt 0 ]]; then
  run_b8=0
  run_b9=0
  run_b10=0
  for b in "$@"; do
    case "$b" in
      b8|B8) run_b8=1 ;;
      b9|B9) run_b9=1 ;;
      b10|B10) run_b10=1 ;;
      *) agent_benches+=("$b") ;;
    esac
  done
fi

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cores=$(nproc)
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
results="$out/results.md"
status=0
{
  echo "Machine: $cpu, $cores cores, $mem RAM; $(date -u '+%Y-%m-%d %H:%M UTC'); $(rustc --version)"
  echo
  echo "| Benchmark | Measured | Baseline (same run) | Ratio | Goal |"
  echo "|---|---|---|---|---|"
} | tee "$results"
start=$SECONDS
# One package per command, exactly as the benchmarks run below (building both in one
# command unifies their dependencies' features differently, so the runs would rebuild and
# re-link the agent with LTO once more). The bench build also writes the agent binary the
# harness runs, target/release/edge-agent. Only what the selection runs is built.
if [[ $# -eq 0 || ${#agent_benches[@]} -gt 0 ]]; then
  cargo bench --no-run -p edge-agent --bench pipeline >&2
fi
if [[ $run_b8 -eq 1 ]]; then
  cargo bench --no-run -p edge-operator --bench operator >&2
fi
if [[ $# -eq 0 || ${#agent_benches[@]} -gt 0 ]]; then
  # B11 starts its agent through the test kit, which runs the binary in EDGEPIPE_BIN_DIR.
  EDGEPIPE_BIN_DIR="$PWD/target/release" \
    cargo bench -q -p edge-agent --bench pipeline -- "${agent_benches[@]}" 2>"$out/pipeline.log" \
    | grep '^|' | tee -a "$results" || status=1
fi
if [[ $run_b8 -eq 1 ]]; then
  cargo bench -q -p edge-operator --bench operator 2>"$out/operator.log" \
    | grep '^|' | tee -a "$results" || status=1
fi
if [[ $run_b9 -eq 1 ]]; then
  tests/scripts/install-deps.sh >&2
  # The operator under test is the release build; the harness itself needs no optimising.
  cargo build -q --release -p edge-operator >&2
  EDGEPIPE_BIN_DIR="$PWD/target/release" cargo bench -q --profile dev -p edge-tests --bench fleet \
    2>"$out/fleet.log" \
    | grep '^|' | tee -a "$results" || status=1
fi
if [[ $run_b10 -eq 1 ]]; then
  tests/scripts/install-deps.sh >&2
  cargo build -q --release -p edge-operator >&2
  EDGEPIPE_BIN_DIR="$PWD/target/release" cargo bench -q --profile dev -p edge-tests --bench records \
    2>"$out/records.log" \
    | grep '^|' | tee -a "$results" || status=1
fi
echo >&2
echo "benchmarks took $((SECONDS - start)) s; table in $results" >&2
exit $status
