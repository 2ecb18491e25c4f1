#!/usr/bin/env bash
# The property-based tests with many more cases than `.ci/run` gives them
# (proptest's default, 256 each): everything pgfleet reads from outside
# (ingest decoding, the masker, QueryMetrics' matchers and ranges, each
# binary's TOML) and the aggregator's apply under any stream of snapshots.
#
#   bash bench/properties.sh            # 100,000 cases each
#   PROPTEST_CASES=1000000 bash bench/properties.sh
#
# A failure prints proptest's minimal failing input, and proptest keeps it
# under proptest-regressions/ to be tried first next time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-100000}"
echo "bench/properties.sh: ${PROPTEST_CASES} cases each"
cargo test --release -p pgfleet-tests --test properties
cargo test --release -p pgfleet-collector --lib any_stream_of_snapshots
