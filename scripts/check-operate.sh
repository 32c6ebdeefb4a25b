#!/usr/bin/env bash
# Runs every command of the "Operate it" path in docs/operations.md against a running
# `vaultgate dev`, and checks each one's output, so the path cannot rot.
#
#   bash scripts/check-operate.sh --dir DEV_DIR      (scripts/check-ecosystem.sh calls it)
#
# The commands are read from the first ```sh block under "## Operate it" (comments and blank
# lines dropped) and run verbatim with bash from a scratch directory whose deploy/ is the
# repository's and .dev/ is DEV_DIR; `make dev`'s metrics address 127.0.0.1:9464 is replaced by
# DEV_DIR/metrics-addr. PATH has target/debug (vaultgate), .tools/bin (promtool) and .tools/venv/bin
# (kubectl). Each command needs a check below (keyed by its first words) and each check a command.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOC="$ROOT/docs/operations.md"
DIR=""
[[ "${1:-}" == "--dir" && -n "${2:-}" ]] && DIR="$2"
[[ -f "$DIR/metrics-addr" ]] || { echo "usage: $0 --dir DEV_DIR (a running vaultgate dev's directory)" >&2; exit 2; }
export PATH="${VAULTGATE_BIN:+$(dirname "$VAULTGATE_BIN"):}$ROOT/target/debug:$ROOT/.tools/bin:$ROOT/.tools/venv/bin:$PATH"

mapfile -t COMMANDS < <(awk '
    /^## / { on = ($0 ~ /^## Operate it/); next }
    on && !done && /^```sh[[:space:]]*$/ { inblock = 1; next }
    inblock && /^```/ { inblock = 0; done = 1; next }
    inblock && $0 !~ /^[[:space:]]*(#|$)/ { print }
' "$DOC")
[[ ${#COMMANDS[@]} -gt 0 ]] || { echo "FAIL  no \`\`\`sh block under \"## Operate it\" in $DOC"; exit 1; }

# check KEY OUTPUT: what each kind of command must print.
check() {
    case "$1" in
        curl) grep -q '^vaultgate_grpc_calls_total{' <<<"$2" ;;
        "promtool check rules" | "promtool test rules" | "promtool check config") grep -q 'SUCCESS' <<<"$2" && ! grep -q 'FAILED' <<<"$2" ;;
        "vaultgate check-config --print") grep -q '^\[vault\]' <<<"$2" && ! grep -q "$(cat "$DIR/root-token")" <<<"$2" ;;
        "vaultgate check-config") grep -q ': ok$' <<<"$2" ;;
        "kubectl kustomize") grep -q '^kind: PrometheusRule' <<<"$2" && grep -q '^kind: ServiceMonitor' <<<"$2" ;;
        # The traces step: the shipped [traces] table, appended to the dev config, is valid.
        "cat .dev/vaultgate.toml deploy/otel/traces.toml") grep -q '^\[traces\]' <<<"$2" && grep -q '^sample_ratio = 0.1' <<<"$2" ;;
        *) return 1 ;;
    esac
}
KEYS=("curl" "promtool check rules" "promtool test rules" "promtool check config" "vaultgate check-config --print"
    "vaultgate check-config" "kubectl kustomize" "cat .dev/vaultgate.toml deploy/otel/traces.toml")

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ln -s "$ROOT/deploy" "$WORK/deploy"
ln -s "$DIR" "$WORK/.dev"
passed=0 failed=0 seen=" "
for cmd in "${COMMANDS[@]}"; do
    key=""
    for k in "${KEYS[@]}"; do [[ "$cmd" == "$k"* && ${#k} -gt ${#key} ]] && key="$k"; done
    if [[ -z "$key" ]]; then
        echo "FAIL  no check in scripts/check-operate.sh for the docs' command: $cmd"
        failed=$((failed + 1)); continue
    fi
    seen+="$key|"
    run="${cmd//127.0.0.1:9464/$(cat "$DIR/metrics-addr")}"
    if out="$(cd "$WORK" && bash -c "$run" 2>&1)" && check "$key" "$out"; then
        echo "ok    $cmd"
        passed=$((passed + 1))
    else
        echo "FAIL  $run"
        head -n 20 <<<"$out" | sed 's/^/        /'
        failed=$((failed + 1))
    fi
done
for k in "${KEYS[@]}"; do
    [[ "$seen" == *" $k|"* || "$seen" == *"|$k|"* ]] || { echo "FAIL  the docs' Operate it path no longer shows a \`$k\` command"; failed=$((failed + 1)); }
done
echo "operate: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
