#!/usr/bin/env bash
# Fuzzing (issue 5): builds the cargo-fuzz targets of fuzz/ and runs each for SECONDS (default 60),
# printing per target how many inputs ran, then `fuzz: N passed, M failed` (a crash, a panic, a
# timeout or running out of memory fails its target); exits non-zero on any failure.
#
#   bash scripts/fuzz.sh [SECONDS]          every target
#   FUZZ_TARGETS="config requests" bash scripts/fuzz.sh 30
#   FUZZ_SANITIZER=address bash scripts/fuzz.sh 60
# The default sanitizer is none: vaultgate forbids unsafe code, so panics and overflow checks (on in
# these builds) are what we look for, at about twice the speed; another sanitizer rebuilds everything.
#
# Only a stable toolchain is installed: cargo-fuzz's nightly flags (-Zsanitizer, sancov passes)
# are accepted with RUSTC_BOOTSTRAP=1. Seeds live in fuzz/corpus/<target>/ (read-only here); what
# the fuzzer learns goes to fuzz/target/corpus/<target>/, crashes to fuzz/artifacts/<target>/.
# Inputs that once crashed a target live in fuzz/regressions/<target>/ and are replayed first.
# Reproduce a crash: fuzz/target/x86_64-unknown-linux-gnu/release/<target> fuzz/artifacts/<target>/crash-…
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
[[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || { echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2; }
read -r -a targets <<<"${FUZZ_TARGETS:-ciphertext config vault_json jwt_claims requests}"
sanitizer=${FUZZ_SANITIZER:-none}
triple=x86_64-unknown-linux-gnu

export PATH="$PWD/.tools/cargo/bin:$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz into .tools/cargo"
    cargo install --locked --root .tools/cargo cargo-fuzz --version 0.13.2 || exit 1
fi

echo "fuzz: building ${targets[*]} (sanitizer $sanitizer)"
for t in "${targets[@]}"; do
    if ! cargo fuzz build -s "$sanitizer" --target "$triple" "$t"; then
        echo "fuzz: build of $t failed"
        echo "fuzz: 0 passed, ${#targets[@]} failed"
        exit 1
    fi
done

bin=fuzz/target/$triple/release
mkdir -p fuzz/target/logs
# What a failed run's log says: the panic, its message, the first frame in vaultgate's own code
# (a panic inside std names std), libFuzzer's verdict and the input.
why() {
    { grep -m 1 -A 1 "panicked at" "$1"
      grep -m 1 -E "^ +at \./src/" "$1" | sed 's/^ */in vaultgate: /'
      grep -E "ERROR: libFuzzer|Test unit written to|^Base64:" "$1"; } | head -n 8 | sed 's/^/    /'
}
passed=0 failed=0 total=0
for t in "${targets[@]}"; do
    ok=1
    # Inputs that once crashed this target (fuzz/regressions/<target>/): each must pass, every run.
    for input in fuzz/regressions/"$t"/*; do
        [[ -f $input ]] || continue
        log=fuzz/target/logs/$t.regression.log
        if ! "$bin/$t" -timeout=10 -rss_limit_mb=2048 "$input" >"$log" 2>&1; then
            ok=0
            echo "fuzz: $t: regression input $input FAILS"
            why "$log"
        fi
    done
    work=fuzz/target/corpus/$t
    mkdir -p "$work" "fuzz/artifacts/$t"
    log=fuzz/target/logs/$t.log
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: memory must stay bounded.
    "$bin/$t" "$work" "fuzz/corpus/$t" -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    execs=${execs:-0}
    total=$((total + execs))
    if [[ $rc -eq 0 ]]; then
        echo "fuzz: $t: $execs executions in ${secs}s, no crash"
    else
        ok=0
        echo "fuzz: $t: CRASH (exit $rc) after $execs executions; log $log"
        why "$log"
    fi
    if [[ $ok -eq 1 ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "fuzz: $total executions in all"
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
