#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and reports executions and crashes.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]    (default 60; needs a nightly toolchain and cargo-fuzz)
# Installs cargo-fuzz if missing. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
declare -A seeds=([jpeg_to_rgb]=seeds [model_jpeg]=seeds [config_parse]=seeds_config)
status=0
for t in jpeg_to_rgb model_jpeg config_parse; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[$t]}" -- -max_total_time="$secs" >"$log" 2>&1; then r=ok; else r=CRASH; status=1; fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || grep -o '#[0-9]* *DONE' "$log" | grep -o '[0-9]*' | head -1)
  echo "$t: $r, ${execs:-?} executions in ${secs}s (log: $log)"
done
exit $status
