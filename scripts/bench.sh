#!/usr/bin/env bash
# The Transit benchmark (issue 12's table, each row with its goal): builds the release gateway and the load generator
# (benches/transit.rs), then runs it. `make bench` installs the tools first and puts
# .tools/bin on PATH; run standalone, this script does the same.
#
# The bench pins itself to CPU 0 and OpenBao + the gateway to CPU 1 (taskset), so keep the
# machine otherwise idle. Knobs: VAULTGATE_BENCH_SECS (window, default 5), VAULTGATE_BENCH_WARMUP
# (default 1), VAULTGATE_BENCH_CONCURRENCY (default 1,16,64,256), VAULTGATE_BENCH_GATEWAY_LOG.
# Output: a table on stdout, target/bench/transit-<UTC time>.json and target/bench/latest.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.tools/bin:$HOME/.cargo/bin:$PATH"
if [[ -z "${VAULTGATE_BAO:-}" && -x "$ROOT/.tools/bin/bao" ]]; then
    export VAULTGATE_BAO="$ROOT/.tools/bin/bao"
fi
command -v taskset >/dev/null || echo "bench.sh: taskset not found (util-linux): results will be unpinned" >&2

# `cargo bench` builds its own copy of the gateway with the dev-dependencies' features (tokio
# "full", which adds parking_lot) into target/release; measure the production build instead,
# kept aside in target/bench.
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo bench --bench transit --no-run
cargo build --release --bin vaultgate
mkdir -p "$TARGET/bench"
cp "$TARGET/release/vaultgate" "$TARGET/bench/vaultgate"
export VAULTGATE_BIN="${VAULTGATE_BIN:-$TARGET/bench/vaultgate}"
exec cargo bench --bench transit
