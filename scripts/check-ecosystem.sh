#!/usr/bin/env bash
# Ecosystem check: the example clients (Python, Node, Go, Java), the grpcurl commands of README.md
# and docs/, the docs' "Operate it" commands and buf, against a real `vaultgate dev` (OpenBao +
# PostgreSQL) started on a free port in a temporary directory; a real Prometheus
# (deploy/prometheus/dev.yml) scraping `vaultgate dev --mtls` and evaluating the alerting rules
# (scripts/check_scrape.py).
#
#   bash scripts/check-ecosystem.sh
#
# Needs: target/debug/vaultgate (`cargo build --bin vaultgate`; or $VAULTGATE_BIN), the tools of
# scripts/tools.sh in .tools/ (venv, bao, grpcurl, buf), node + npm. Runs `npm ci` in
# examples/node only when node_modules is missing or was installed from another lockfile.
# Prints one line per check and ends with `ecosystem: N passed, M failed`; exits 1 if any
# failed. Leaves nothing running and nothing behind but examples/node/node_modules.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export PATH="$ROOT/.tools/bin:$PATH"
export VAULTGATE_BAO="$ROOT/.tools/bin/bao"
BIN="${VAULTGATE_BIN:-$ROOT/target/debug/vaultgate}"
PY="$ROOT/.tools/venv/bin/python3"
READY_TIMEOUT=60 # seconds for `vaultgate dev` to print `ready`
STOP_TIMEOUT=30  # seconds for it to exit after SIGTERM

TMP="$(mktemp -d "${TMPDIR:-/tmp}/vaultgate-ecosystem.XXXXXX")"
DEV_DIR="$TMP/dev"
DEV_PID="" DRAIN_PID="" PROM_PID=""
passed=0 failed=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
pass() { printf 'ok    %-28s %s\n' "$1" "$2"; passed=$((passed + 1)); }
fail() { # fail NAME WHY [LOGFILE]
    printf 'FAIL  %-28s %s\n' "$1" "$2"
    if [[ -n "${3:-}" && -s "$3" ]]; then tail -n 25 "$3" | sed 's/^/        /'; fi
    failed=$((failed + 1))
}

# run NAME CMD...: one check; output kept in $TMP/NAME.log and shown on failure.
run() {
    local name="$1" t log
    shift
    log="$TMP/${name// /-}.log"
    t="$(now)"
    if "$@" >"$log" 2>&1; then pass "$name" "$(since "$t")"; else fail "$name" "exit $? after $(since "$t")" "$log"; fi
}

# Processes started for DEV_DIR (OpenBao and PostgreSQL name it in their arguments).
leftovers() { pgrep -f -- "$DEV_DIR/" 2>/dev/null | grep -vx "$$" || true; }

cleanup() {
    if [[ -n "$DEV_PID" ]] && kill -0 "$DEV_PID" 2>/dev/null; then
        kill -TERM "$DEV_PID" 2>/dev/null
        timeout "$STOP_TIMEOUT" tail --pid="$DEV_PID" -f /dev/null 2>/dev/null || kill -KILL "$DEV_PID" 2>/dev/null
    fi
    local pids
    pids="$(leftovers)"
    # shellcheck disable=SC2086
    [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null
    [[ -n "$DRAIN_PID" ]] && kill "$DRAIN_PID" 2>/dev/null
    [[ -n "$PROM_PID" ]] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------
for need in "$BIN" "$PY" "$ROOT/.tools/bin/bao" "$ROOT/.tools/bin/grpcurl" "$ROOT/.tools/bin/buf"; do
    if [[ ! -x "$need" ]]; then
        fail "prerequisites" "$need missing (cargo build --bin vaultgate; bash scripts/tools.sh)"
        echo "ecosystem: $passed passed, $failed failed"
        exit 1
    fi
done

# ---------------------------------------------------------------------------------------------
# vaultgate dev on a free port; its stdout goes through a FIFO so `ready` is seen at once.
# ---------------------------------------------------------------------------------------------
# start_dev NAME [ARGS...]: starts `vaultgate dev ARGS` in DEV_DIR; sets ADDR (empty on failure).
start_dev() {
    local name="$1" port t line left why=""
    shift
    port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    rm -f "$TMP/dev.fifo"
    mkfifo "$TMP/dev.fifo"
    mkdir -p "$DEV_DIR"
    t="$(now)"
    "$BIN" dev --dir "$DEV_DIR" --listen "127.0.0.1:$port" "$@" >"$TMP/dev.fifo" 2>"$TMP/dev.err" &
    DEV_PID=$!
    exec 3<"$TMP/dev.fifo"
    ADDR=""
    local deadline=$((SECONDS + READY_TIMEOUT))
    while [[ -z "$ADDR" ]]; do
        left=$((deadline - SECONDS))
        if ((left <= 0)); then why="no ready line within ${READY_TIMEOUT}s"; break; fi
        if IFS= read -r -t "$left" line <&3; then
            printf '%s\n' "$line" >>"$TMP/dev.out"
            if [[ "$line" =~ ^ready\ ([0-9.]+:[0-9]+)(\ |$) ]]; then ADDR="${BASH_REMATCH[1]}"; fi
        elif (($? > 128)); then
            why="no ready line within ${READY_TIMEOUT}s"; break
        else
            why="exited before ready"; break
        fi
    done
    # Keep draining stdout so the gateway never blocks on a full pipe.
    cat <&3 >>"$TMP/dev.out" &
    DRAIN_PID=$!
    exec 3<&-
    if [[ -n "$ADDR" ]]; then
        pass "$name" "$(since "$t") $ADDR"
    else
        fail "$name" "$why" "$TMP/dev.err"
    fi
}

start_dev "dev ready"

# ---------------------------------------------------------------------------------------------
# Clients and grpcurl against it
# ---------------------------------------------------------------------------------------------
node_client() {
    local dir="$ROOT/examples/node" want have
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    have="$(cat "$dir/node_modules/.vaultgate-stamp" 2>/dev/null || true)"
    if [[ "$want" != "$have" ]]; then
        echo "npm ci (node_modules missing or from another lockfile)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return 1
        printf '%s' "$want" >"$dir/node_modules/.vaultgate-stamp"
    fi
    node "$dir/client.js" --addr "$ADDR" --dir "$DEV_DIR"
}

# Dev mode shows everything: metrics at DIR/metrics-addr (also on the ready line), its own audit
# log at DIR/gateway-audit.log, a config that `vaultgate check-config` accepts.
dev_files() {
    local metrics
    metrics="$(cat "$DEV_DIR/metrics-addr")" || return 1
    grep -q "metrics: http://$metrics/metrics" "$TMP/dev.out" || { echo "ready line lacks the metrics address"; cat "$TMP/dev.out"; return 1; }
    curl -sf "http://$metrics/metrics" | grep -q '^vaultgate_build_info' || { echo "no metrics at $metrics"; return 1; }
    "$BIN" check-config "$DEV_DIR/vaultgate.toml"
}
# After the clients: every call is in DIR/gateway-audit.log, none in dev mode's stdout.
dev_audit() {
    local n
    n="$(grep -c '"rpc":"Encrypt"' "$DEV_DIR/gateway-audit.log")" || { echo "no Encrypt in gateway-audit.log"; return 1; }
    echo "$n Encrypt lines in gateway-audit.log"
    ! grep -q '"request_id"' "$TMP/dev.out" || { echo "audit lines in dev mode's stdout"; return 1; }
}
CLIENTS=("python client" "node client" "go client" "java client" "grpcurl (README quick start)" "dev audit log"
    "operate it (operations.md)")
if [[ -n "$ADDR" ]]; then
    run "dev files, metrics, check-config" dev_files
    run "python client" "$PY" examples/python/client.py --addr "$ADDR" --dir "$DEV_DIR"
    run "node client" node_client
    run "go client" bash examples/go/run.sh --addr "$ADDR" --dir "$DEV_DIR"
    run "java client" bash examples/java/run.sh --addr "$ADDR" --dir "$DEV_DIR"
    run "grpcurl (README quick start)" bash examples/grpcurl.sh --addr "$ADDR" --dir "$DEV_DIR"
    run "dev audit log" dev_audit
    run "operate it (operations.md)" env VAULTGATE_BIN="$BIN" bash scripts/check-operate.sh --dir "$DEV_DIR"
else
    for name in "dev files, metrics, check-config" "${CLIENTS[@]}"; do
        fail "$name" "skipped: dev mode not ready"
    done
fi

# ---------------------------------------------------------------------------------------------
# buf
# ---------------------------------------------------------------------------------------------
run "buf lint" buf lint
run "buf breaking v0.1.0" buf breaking proto --against proto-released/v0.1.0

# ---------------------------------------------------------------------------------------------
# Stop dev mode: SIGTERM, it exits 0 and leaves neither OpenBao nor PostgreSQL running.
# ---------------------------------------------------------------------------------------------
# stop_dev SUFFIX: SIGTERM; dev mode must exit 0 and leave neither OpenBao nor PostgreSQL running.
stop_dev() {
    local suffix="$1" t rc pids
    t="$(now)"
    if kill -0 "$DEV_PID" 2>/dev/null; then
        kill -TERM "$DEV_PID"
        if timeout "$STOP_TIMEOUT" tail --pid="$DEV_PID" -f /dev/null; then
            wait "$DEV_PID"
            rc=$?
            if [[ $rc -eq 0 ]]; then pass "dev stop (SIGTERM)$suffix" "$(since "$t")"; else fail "dev stop (SIGTERM)$suffix" "exit status $rc" "$TMP/dev.err"; fi
        else
            fail "dev stop (SIGTERM)$suffix" "still running ${STOP_TIMEOUT}s after SIGTERM" "$TMP/dev.err"
        fi
    else
        wait "$DEV_PID"
        fail "dev stop (SIGTERM)$suffix" "had already exited (status $?)" "$TMP/dev.err"
    fi
    DEV_PID=""
    [[ -n "$DRAIN_PID" ]] && kill "$DRAIN_PID" 2>/dev/null
    DRAIN_PID=""
    pids="$(leftovers)"
    if [[ -z "$pids" ]]; then
        pass "no bao/postgres left$suffix" ""
    else
        fail "no bao/postgres left$suffix" "still running: $(ps -o pid=,args= -p "${pids//$'\n'/,}" | cut -c1-100 | tr '\n' ';')"
    fi
}
stop_dev ""

# ---------------------------------------------------------------------------------------------
# mTLS: `vaultgate dev --mtls` and the "Try mTLS in dev mode" commands of docs/identity.md, run verbatim
# (address replaced) from a scratch directory whose .dev is the dev directory.
# ---------------------------------------------------------------------------------------------
docs_mtls_commands() {
    awk '/^## Try mTLS in dev mode/ { on = 1 } on && /^```sh$/ { inblock = 1; next } inblock && /^```$/ { exit }
         inblock { print }' "$ROOT/docs/identity.md" | sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | grep -v '^#' | grep -v '^$'
}

mtls_commands() {
    local scratch="$TMP/mtls-scratch" n=0 out cmd
    mkdir -p "$scratch"
    ln -sfn "$DEV_DIR" "$scratch/.dev"
    local -a want=('"keyVersion": 1' '"identityKind": "uri"' '"keyVersion": 1')
    local -a also=('"ciphertext": "vault:v1:' '"identity": "spiffe://vaultgate.dev/ns/billing/sa/api"' '"ciphertext": "vault:v1:')
    while IFS= read -r cmd; do
        cmd="${cmd//localhost:50051/localhost:${ADDR##*:}}"
        out="$(cd "$scratch" && bash -c "$cmd" 2>&1)" || { echo "command failed: $cmd"; echo "$out"; return 1; }
        if [[ "$out" != *"${want[$n]}"* || "$out" != *"${also[$n]}"* ]]; then
            echo "unexpected output of: $cmd"; echo "$out"; return 1
        fi
        n=$((n + 1))
    done < <(docs_mtls_commands)
    [[ $n -eq 3 ]] || { echo "expected 3 commands in docs/identity.md's mTLS block, found $n"; return 1; }
    # The certificate caller is limited to its own key by the gateway's rule for its role.
    out="$(cd "$scratch" && grpcurl -cacert .dev/tls/ca.pem -cert .dev/callers/billing-cert.pem \
        -key .dev/callers/billing-cert-key.pem -d '{"key":"reports","plaintext":"aGVsbG8="}' \
        "localhost:${ADDR##*:}" vaultgate.v1.EncryptionService/Encrypt 2>&1)"
    [[ "$out" == *"PermissionDenied"* && "$out" == *"roles.billing-cert.transit_keys"* ]] || { echo "$out"; return 1; }
}

# A real Prometheus with deploy/prometheus/dev.yml (its target: this dev gateway's metrics) and
# the alerting rules; the TLS listener of --mtls exports the certificate-expiry metric too.
start_prometheus() {
    local port
    port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    sed -e "s#\"127.0.0.1:9464\"#\"$(cat "$DEV_DIR/metrics-addr")\"#" \
        -e "s#^  scrape_interval: .*#  scrape_interval: 1s#" -e "s#^  evaluation_interval: .*#  evaluation_interval: 1s#" \
        -e "s#- vaultgate.rules.yaml#- $ROOT/deploy/prometheus/vaultgate.rules.yaml#" \
        deploy/prometheus/dev.yml >"$TMP/prometheus.yml"
    prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/prometheus" \
        --web.listen-address="127.0.0.1:$port" >"$TMP/prometheus.log" 2>&1 &
    PROM_PID=$!
    PROM_URL="http://127.0.0.1:$port"
}

DEV_DIR="$TMP/dev-mtls"
start_dev "dev --mtls ready" --mtls
if [[ -n "$ADDR" ]]; then
    start_prometheus
    run "grpcurl mTLS (identity.md)" mtls_commands
    run "prometheus scrapes dev: rules, dashboard" "$PY" scripts/check_scrape.py "$PROM_URL"
    sed 's/^/      /' "$TMP/prometheus-scrapes-dev:-rules,-dashboard.log" | grep '^      ok' | cut -c1-400
    kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
    PROM_PID=""
else
    fail "grpcurl mTLS (identity.md)" "skipped: dev mode not ready"
    fail "prometheus scrapes dev: rules, dashboard" "skipped: dev mode not ready"
fi
stop_dev " --mtls"

echo "ecosystem: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
