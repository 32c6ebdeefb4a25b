#!/usr/bin/env bash
# The Transit benchmark of issue 4: builds the release gateway and the load generator
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

cargo build --release --bin vaultgate
cargo bench --bench transit --no-run
exec cargo bench --bench transit
