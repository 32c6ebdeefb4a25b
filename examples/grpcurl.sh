#!/usr/bin/env bash
# Runs every grpcurl command of README.md's "Quick start" against a running `vaultgate dev`
# and checks each output, so the README cannot rot.
#
#   examples/grpcurl.sh [--addr 127.0.0.1:50051] [--dir .dev] [--print]
#
# How it stays in sync: the commands are not copied here. They are read from README.md, from
# the first ```sh block after the "## Quick start" heading (lines joined at trailing `\`,
# comments and blank lines dropped), and run verbatim with bash, with only two adjustments:
# the README's address 127.0.0.1:50051 is replaced by --addr, and they run in a scratch
# directory whose `.dev` is a symlink to --dir. Every command must match one of the checks
# below (by its method, or `list`) and every check must match a command: a command added to,
# or removed from, the README without a check here makes this script fail.
#
# --addr defaults to $VAULTGATE_ADDR or 127.0.0.1:50051, --dir to $VAULTGATE_DEV_DIR or
# <repo>/.dev (what `make dev` uses). --print only lists the extracted commands.
# grpcurl must be on PATH (.tools/bin after scripts/tools.sh; added here when present).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
README="$ROOT/README.md"
README_ADDR="127.0.0.1:50051"
ADDR="${VAULTGATE_ADDR:-$README_ADDR}"
DIR="${VAULTGATE_DEV_DIR:-$ROOT/.dev}"
PRINT=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --addr) ADDR="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        --print) PRINT=1; shift ;;
        *) echo "usage: $0 [--addr HOST:PORT] [--dir DEV_DIR] [--print]" >&2; exit 2 ;;
    esac
done
[[ -d "$ROOT/.tools/bin" ]] && export PATH="$ROOT/.tools/bin:$PATH"

# The Quick start commands, one per line (continuations joined).
extract_commands() {
    awk '
        /^## / { in_section = ($0 == "## Quick start") ; next }
        in_section && !done && /^```sh[[:space:]]*$/ { in_block = 1; next }
        in_block && /^```/ { in_block = 0; done = 1; next }
        in_block {
            line = $0
            sub(/^[[:space:]]+/, "", line)
            if (cmd == "" && (line == "" || line ~ /^#/)) next
            if (line ~ /\\$/) { sub(/[[:space:]]*\\$/, " ", line); cmd = cmd line; next }
            print cmd line; cmd = ""
        }
    ' "$README"
}

mapfile -t COMMANDS < <(extract_commands)
if [[ ${#COMMANDS[@]} -eq 0 ]]; then
    echo "grpcurl.sh: FAIL: no \`\`\`sh block found under \"## Quick start\" in $README" >&2
    exit 1
fi
if [[ $PRINT == 1 ]]; then
    printf '%s\n' "${COMMANDS[@]}"
    exit 0
fi

command -v grpcurl >/dev/null || { echo "grpcurl.sh: FAIL: grpcurl not on PATH (run scripts/tools.sh)" >&2; exit 1; }
[[ -f "$DIR/callers/billing.jwt" ]] \
    || { echo "grpcurl.sh: FAIL: $DIR/callers/billing.jwt not found (--dir must be vaultgate dev's directory)" >&2; exit 1; }
DIR="$(cd "$DIR" && pwd)"

# check_json OUTPUT PYTHON_EXPR: the expression, over `r` (the parsed JSON output), must be true.
check_json() {
    python3 -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2" 2>/dev/null
}

# check NAME OUTPUT: the expectation for each README command, keyed by its method.
check() {
    local name="$1" out="$2"
    case "$name" in
        list)
            local s
            for s in grpc.health.v1.Health vaultgate.v1.DatabaseService vaultgate.v1.EncryptionService \
                    vaultgate.v1.SecretService vaultgate.v1.PkiService; do
                grep -qx "$s" <<<"$out" || return 1
            done ;;
        Encrypt)
            check_json "$out" 'r["ciphertext"].startswith("vault:v") and r["keyVersion"] >= 1' ;;
        GetSecret)
            check_json "$out" 'r["data"]["stripe_key"] == "sk_test_demo" and r["version"] >= 1' ;;
        GetDbCreds)
            check_json "$out" 'r["username"] and r["password"] and r["leaseId"].startswith("database/creds/billing/") and r["leaseDuration"].endswith("s")' ;;
        Check)
            check_json "$out" 'r == {"status": "SERVING"}' ;;
        IssueCertificate)
            check_json "$out" 'r["certificate"].startswith("-----BEGIN CERTIFICATE-----") and r["privateKey"].startswith("-----BEGIN PRIVATE KEY-----") and r["serialNumber"] and r["caChain"] and r["expiration"]' ;;
        *) return 1 ;;
    esac
}
EXPECTED=(list Encrypt GetSecret GetDbCreds Check IssueCertificate)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ln -s "$DIR" "$WORK/.dev"

passed=0 failed=0 seen=()
for cmd in "${COMMANDS[@]}"; do
    if [[ "$cmd" != grpcurl* ]]; then
        echo "FAIL  not a grpcurl command in the README's Quick start (add a check here): $cmd"
        failed=$((failed + 1)); continue
    fi
    last="${cmd##* }"                 # `list` or `pkg.Service/Method`
    name="${last##*/}"
    seen+=("$name")
    if [[ " ${EXPECTED[*]} " != *" $name "* ]]; then
        echo "FAIL  no check in examples/grpcurl.sh for the README's command: $cmd"
        failed=$((failed + 1)); continue
    fi
    run="${cmd//"$README_ADDR"/$ADDR}"
    if out="$(cd "$WORK" && bash -c "$run" 2>&1)"; then rc=0; else rc=$?; fi
    if [[ $rc -eq 0 ]] && check "$name" "$out"; then
        echo "ok    grpcurl $last"
        passed=$((passed + 1))
    else
        echo "FAIL  grpcurl $last (exit $rc): $run"
        sed 's/^/        /' <<<"$out" | grep -v -i -e password -e bearer -e privateKey | head -n 20
        failed=$((failed + 1))
    fi
done
for name in "${EXPECTED[@]}"; do
    if [[ " ${seen[*]} " != *" $name "* ]]; then
        echo "FAIL  the README's Quick start no longer shows the $name command (update examples/grpcurl.sh)"
        failed=$((failed + 1))
    fi
done
echo "grpcurl.sh: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
