#!/usr/bin/env bash
# Configures an OpenBao (or Vault) for vaultgate and ONE caller, idempotently, over the HTTP API
# with curl only (no bao CLI, no jq). It mirrors what `vaultgate dev` provisions
# (src/dev/provision.rs): Transit, KV v2, optionally the database engine on PostgreSQL, JWT auth,
# and for the caller a least-privilege policy, a JWT role and its own Transit key. Run it once per
# caller; running it again changes nothing. It also writes the role the snapshot CronJob logs in as.
#
# Required:
#   BAO_ADDR        e.g. https://openbao.openbao.svc:8200
#   BAO_TOKEN       an admin token (root or a policy allowing sys/mounts, sys/auth, sys/policies/acl,
#                   auth/<jwt>/*, transit/keys/*, database/*); sent in a header file, never on argv
#   CALLER          caller name: its Vault role, policy, Transit key, KV folder and database role
# Optional (default):
#   BAO_CACERT      CA file for BAO_ADDR's TLS                                          (system CAs)
#   BAO_NAMESPACE   X-Vault-Namespace                                                   (none)
#   CALLER_SUBJECT  the JWT `sub` the role admits (system:serviceaccount:$CALLER:$CALLER)
#   CALLER_AUDIENCE the JWT `aud` the role requires; vaultgate's callers send tokens for it (vaultgate)
#   TOKEN_TTL, TOKEN_MAX_TTL   the caller's Vault token lifetime (1h, 24h); TOKEN_MAX_TTL must be
#                   >= DB_MAX_TTL: database credentials die with the token that created them
#   TRANSIT_MOUNT, KV_MOUNT, DB_MOUNT, JWT_MOUNT   (transit, secret, database, jwt)
#   TRANSIT_KEY_TYPE (aes256-gcm96)
#   JWT auth, which verifies callers' tokens: exactly one of
#     JWT_OIDC_DISCOVERY_URL [+ JWT_OIDC_DISCOVERY_CA_FILE]   (https://kubernetes.default.svc.cluster.local)
#     JWT_JWKS_URL [+ JWT_JWKS_CA_FILE]
#     JWT_PUBKEY_FILE   a PEM public key (e.g. from `kubectl get --raw /openid/v1/jwks`, converted)
#   JWT_BOUND_ISSUER    required `iss` (the discovery URL in discovery mode, else none)
#   JWT_SUPPORTED_ALGS  comma-separated (RS256,ES256)
#   Database engine, only when PG_HOST is set:
#     PG_HOST, PG_PORT (5432), PG_DATABASE (postgres), PG_USER, PG_PASSWORD, PG_SSLMODE (require)
#     DB_CONNECTION (postgres), DB_DEFAULT_TTL (1h), DB_MAX_TTL (24h)
#     DB_CREATION_SQL   (CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';)
#   PKI (PKI=false skips it): an intermediate CA at PKI_MOUNT (pki) signed by a root CA kept in a
#     separate mount PKI_ROOT_MOUNT (pki-root; in production, take that root offline or sign the
#     intermediate's CSR elsewhere and pass PKI_INTERMEDIATE_CERT_FILE, the signed PEM + its chain),
#     CRL and issuing URLs under PKI_URL_BASE (BAO_ADDR), and the caller's PKI role issuing EC
#     P-256 certificates for names under PKI_DOMAINS (comma-separated; $CALLER.svc.cluster.local),
#     PKI_TTL (24h), PKI_MAX_TTL (72h). PKI_ROOT_CN, PKI_INTERMEDIATE_CN (vaultgate root CA, vaultgate
#     intermediate CA). The caller may issue/sign with its own PKI role and revoke with proof of
#     possession (revoke-with-key), HMAC and verify with its own Transit key.
#   SNAPSHOT_SUBJECT    subject of the snapshot job (system:serviceaccount:openbao:openbao-snapshot);
#                       empty: no snapshot role. SNAPSHOT_AUDIENCE (openbao)
#   GATEWAY_SUBJECT     subject of the gateway's own service account (system:serviceaccount:vaultgate:vaultgate);
#                       empty: none. Its JWT role `vaultgate-gateway` signs and verifies lease-ownership
#                       tags with Transit key `vaultgate-leases` and renews lease parents by accessor
#                       (vaultgate.toml [leases]). GATEWAY_AUDIENCE (vaultgate)
#
# Prints one line per step and, at the end, the [[callers]] rule for vaultgate.toml.
set -euo pipefail

die() { echo "setup.sh: error: $*" >&2; exit 1; }
say() { echo "setup.sh: $*"; }

: "${BAO_ADDR:?BAO_ADDR must be set}"
: "${BAO_TOKEN:?BAO_TOKEN must be set (an admin token)}"
: "${CALLER:?CALLER must be set (the caller name, e.g. billing)}"
BAO_ADDR="${BAO_ADDR%/}"
CALLER_SUBJECT="${CALLER_SUBJECT:-system:serviceaccount:$CALLER:$CALLER}"
CALLER_AUDIENCE="${CALLER_AUDIENCE:-vaultgate}"
TOKEN_TTL="${TOKEN_TTL:-1h}"
TOKEN_MAX_TTL="${TOKEN_MAX_TTL:-24h}"
TRANSIT_MOUNT="${TRANSIT_MOUNT:-transit}"
KV_MOUNT="${KV_MOUNT:-secret}"
DB_MOUNT="${DB_MOUNT:-database}"
JWT_MOUNT="${JWT_MOUNT:-jwt}"
TRANSIT_KEY_TYPE="${TRANSIT_KEY_TYPE:-aes256-gcm96}"
JWT_SUPPORTED_ALGS="${JWT_SUPPORTED_ALGS:-RS256,ES256}"
DB_CONNECTION="${DB_CONNECTION:-postgres}"
DB_DEFAULT_TTL="${DB_DEFAULT_TTL:-1h}"
DB_MAX_TTL="${DB_MAX_TTL:-24h}"
# (In a variable of its own: a "}" inside ${VAR:-default} would end the expansion.)
default_sql='CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '"'{{password}}'"' VALID UNTIL '"'{{expiration}}'"';'
DB_CREATION_SQL="${DB_CREATION_SQL:-$default_sql}"
SNAPSHOT_SUBJECT="${SNAPSHOT_SUBJECT-system:serviceaccount:openbao:openbao-snapshot}"
SNAPSHOT_AUDIENCE="${SNAPSHOT_AUDIENCE:-openbao}"
GATEWAY_SUBJECT="${GATEWAY_SUBJECT-system:serviceaccount:vaultgate:vaultgate}"
GATEWAY_AUDIENCE="${GATEWAY_AUDIENCE:-vaultgate}"
PKI="${PKI:-true}"
PKI_MOUNT="${PKI_MOUNT:-pki}"
PKI_ROOT_MOUNT="${PKI_ROOT_MOUNT:-pki-root}"
PKI_DOMAINS="${PKI_DOMAINS:-$CALLER.svc.cluster.local}"
PKI_TTL="${PKI_TTL:-24h}"
PKI_MAX_TTL="${PKI_MAX_TTL:-72h}"
PKI_ROOT_CN="${PKI_ROOT_CN:-vaultgate root CA}"
PKI_INTERMEDIATE_CN="${PKI_INTERMEDIATE_CN:-vaultgate intermediate CA}"

# --- input checks, before anything is written -------------------------------------------------
name_ok() { [[ "$2" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "$1: ${2@Q} must match [A-Za-z0-9][A-Za-z0-9_.-]*"; }
mount_ok() { [[ "$2" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$ ]] || die "$1: ${2@Q} is not a mount path"; }
name_ok CALLER "$CALLER"
name_ok DB_CONNECTION "$DB_CONNECTION"
for m in TRANSIT_MOUNT KV_MOUNT DB_MOUNT JWT_MOUNT PKI_MOUNT PKI_ROOT_MOUNT; do mount_ok "$m" "${!m}"; done
[[ "$PKI" == true || "$PKI" == false ]] || die "PKI: ${PKI@Q} must be true or false"

# Duration ("90", "90s", "30m", "24h", "7d", "1h30m") -> seconds.
seconds() {
    local d="$1" total=0 n u
    [[ "$d" =~ ^[0-9]+$ ]] && { echo "$d"; return; }
    [[ "$d" =~ ^([0-9]+[smhd])+$ ]] || die "not a duration: ${d@Q} (use e.g. 30m, 24h)"
    while [[ "$d" =~ ^([0-9]+)([smhd])(.*)$ ]]; do
        n="${BASH_REMATCH[1]}" u="${BASH_REMATCH[2]}" d="${BASH_REMATCH[3]}"
        case "$u" in s) total=$((total + n)) ;; m) total=$((total + n * 60)) ;;
            h) total=$((total + n * 3600)) ;; d) total=$((total + n * 86400)) ;; esac
    done
    echo "$total"
}
(($(seconds "$TOKEN_TTL") <= $(seconds "$TOKEN_MAX_TTL"))) || die "TOKEN_TTL ($TOKEN_TTL) exceeds TOKEN_MAX_TTL ($TOKEN_MAX_TTL)"
if [[ -n "${PG_HOST:-}" ]]; then
    : "${PG_USER:?PG_USER must be set with PG_HOST}" "${PG_PASSWORD:?PG_PASSWORD must be set with PG_HOST}"
    (($(seconds "$TOKEN_MAX_TTL") >= $(seconds "$DB_MAX_TTL"))) ||
        die "TOKEN_MAX_TTL ($TOKEN_MAX_TTL) must be >= DB_MAX_TTL ($DB_MAX_TTL): credentials die with the caller's token"
fi

sources=0
[[ -n "${JWT_OIDC_DISCOVERY_URL:-}" ]] && sources=$((sources + 1))
[[ -n "${JWT_JWKS_URL:-}" ]] && sources=$((sources + 1))
[[ -n "${JWT_PUBKEY_FILE:-}" ]] && sources=$((sources + 1))
((sources <= 1)) || die "set only one of JWT_OIDC_DISCOVERY_URL, JWT_JWKS_URL, JWT_PUBKEY_FILE"
((sources == 1)) || JWT_OIDC_DISCOVERY_URL="https://kubernetes.default.svc.cluster.local"
if [[ -n "${JWT_OIDC_DISCOVERY_URL:-}" ]]; then JWT_BOUND_ISSUER="${JWT_BOUND_ISSUER-$JWT_OIDC_DISCOVERY_URL}"; fi
JWT_BOUND_ISSUER="${JWT_BOUND_ISSUER:-}"
for f in BAO_CACERT JWT_OIDC_DISCOVERY_CA_FILE JWT_JWKS_CA_FILE JWT_PUBKEY_FILE PKI_INTERMEDIATE_CERT_FILE; do
    if [[ -n "${!f:-}" && ! -r "${!f}" ]]; then die "$f: cannot read ${!f}"; fi
done

# --- JSON and HTTP -------------------------------------------------------------------------------
# A JSON string literal (control characters other than \n \r \t do not occur in our inputs).
json() {
    local s="$1"
    s="${s//\\/\\\\}" s="${s//\"/\\\"}" s="${s//$'\n'/\\n}" s="${s//$'\r'/\\r}" s="${s//$'\t'/\\t}"
    printf '"%s"' "$s"
}
# A JSON array of strings from a comma-separated list.
json_list() {
    local IFS=, out="" item
    for item in $1; do [[ -n "$item" ]] && out+="${out:+,}$(json "$item")"; done
    printf '[%s]' "$out"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The token (and namespace) go in a header file, so they never show in the process list.
umask 077
{
    printf 'X-Vault-Token: %s\n' "$BAO_TOKEN"
    [[ -z "${BAO_NAMESPACE:-}" ]] || printf 'X-Vault-Namespace: %s\n' "$BAO_NAMESPACE"
} >"$work/headers"
curl_tls=()
[[ -z "${BAO_CACERT:-}" ]] || curl_tls=(--cacert "$BAO_CACERT")

STATUS="" RESP=""
# request METHOD PATH [JSON]: sets STATUS and RESP. The body goes through stdin, never argv.
request() {
    local method="$1" path="$2" body="${3-}"
    STATUS="$(printf '%s' "$body" | curl -sS --max-time 60 "${curl_tls[@]}" -H @"$work/headers" \
        -H 'Content-Type: application/json' -X "$method" ${body:+--data-binary @-} \
        -o "$work/resp" -w '%{http_code}' "$BAO_ADDR/v1/$path")" || die "$method $path: cannot reach $BAO_ADDR"
    RESP="$(cat "$work/resp")"
}
errors() { printf '%s' "$RESP" | sed -n 's/.*"errors":\[\(.*\)\].*/\1/p' | head -c 500; }
# must METHOD PATH [JSON]: the request must succeed (2xx).
must() {
    request "$@"
    [[ "$STATUS" == 2* ]] || die "$1 $2: HTTP $STATUS $(errors)"
}
# field NAME: the first string value of "NAME" in RESP.
field() { printf '%s' "$RESP" | grep -o "\"$1\":\"[^\"]*\"" | head -n1 | sed 's/.*:"\(.*\)"/\1/'; }

# --- steps ---------------------------------------------------------------------------------------
request GET auth/token/lookup-self
[[ "$STATUS" == 200 ]] || die "BAO_TOKEN was refused by $BAO_ADDR (HTTP $STATUS $(errors))"

# enable KIND(mounts|auth) PATH TYPE [OPTIONS_JSON]: mount unless already mounted with that type.
enable() {
    local kind="$1" path="$2" type="$3" options="${4-}" have
    request GET "sys/$kind/$path"
    if [[ "$STATUS" == 200 ]]; then
        have="$(field type)"
        [[ "$have" == "$type" ]] || die "$path/ is already a $have mount, not $type"
        if [[ "$type" == kv ]] && ! printf '%s' "$RESP" | grep -q '"version":"2"'; then
            die "$path/ is KV version 1; vaultgate needs KV v2 (bao kv enable-versioning $path)"
        fi
        say "ok   $type at $path/ (already enabled)"
        return
    fi
    must POST "sys/$kind/$path" "{\"type\":$(json "$type")${options:+,\"options\":$options}}"
    say "ok   $type at $path/ (enabled)"
}

enable mounts "$TRANSIT_MOUNT" transit
enable mounts "$KV_MOUNT" kv '{"version":"2"}'
enable auth "$JWT_MOUNT" jwt

# JWT auth: how Vault verifies every caller's token (rewritten each run: the same input gives the
# same config).
jwt_config="\"jwt_supported_algs\":$(json_list "$JWT_SUPPORTED_ALGS")"
if [[ -n "${JWT_OIDC_DISCOVERY_URL:-}" ]]; then
    jwt_config+=",\"oidc_discovery_url\":$(json "$JWT_OIDC_DISCOVERY_URL")"
    [[ -z "${JWT_OIDC_DISCOVERY_CA_FILE:-}" ]] || jwt_config+=",\"oidc_discovery_ca_pem\":$(json "$(cat "$JWT_OIDC_DISCOVERY_CA_FILE")")"
    source_desc="OIDC discovery $JWT_OIDC_DISCOVERY_URL"
elif [[ -n "${JWT_JWKS_URL:-}" ]]; then
    jwt_config+=",\"jwks_url\":$(json "$JWT_JWKS_URL")"
    [[ -z "${JWT_JWKS_CA_FILE:-}" ]] || jwt_config+=",\"jwks_ca_pem\":$(json "$(cat "$JWT_JWKS_CA_FILE")")"
    source_desc="JWKS $JWT_JWKS_URL"
else
    jwt_config+=",\"jwt_validation_pubkeys\":[$(json "$(cat "$JWT_PUBKEY_FILE")")]"
    source_desc="public key $JWT_PUBKEY_FILE"
fi
jwt_config+=",\"bound_issuer\":$(json "$JWT_BOUND_ISSUER")"
must POST "auth/$JWT_MOUNT/config" "{$jwt_config}"
say "ok   $JWT_MOUNT/ verifies JWTs with $source_desc${JWT_BOUND_ISSUER:+, issuer $JWT_BOUND_ISSUER}"

# The caller's own Transit key (its policy cannot create keys: no upsert through encrypt).
request GET "$TRANSIT_MOUNT/keys/$CALLER"
if [[ "$STATUS" == 200 ]]; then
    have="$(field type)"
    [[ "$have" == "$TRANSIT_KEY_TYPE" ]] || say "warn key $TRANSIT_MOUNT/keys/$CALLER exists with type $have (kept), not $TRANSIT_KEY_TYPE"
    say "ok   key $TRANSIT_MOUNT/keys/$CALLER (exists)"
else
    must POST "$TRANSIT_MOUNT/keys/$CALLER" "{\"type\":$(json "$TRANSIT_KEY_TYPE")}"
    say "ok   key $TRANSIT_MOUNT/keys/$CALLER (created, $TRANSIT_KEY_TYPE)"
fi

# PKI: the issuing (intermediate) CA at PKI_MOUNT, signed by a separate root; each is set up once.
if $PKI; then
    PKI_URL_BASE="${PKI_URL_BASE:-$BAO_ADDR}"
    # pem_field NAME: the string value of "NAME" in RESP, JSON-unescaped (PEM spans lines).
    pem_field() { local v; v="$(field "$1")"; printf '%s\n' "${v//\\n/$'\n'}"; }
    # ca_urls MOUNT: where relying parties fetch the CA and its CRL.
    ca_urls() {
        must POST "$1/config/urls" "{\"issuing_certificates\":[$(json "$PKI_URL_BASE/v1/$1/ca")],\
\"crl_distribution_points\":[$(json "$PKI_URL_BASE/v1/$1/crl")]}"
    }
    enable mounts "$PKI_MOUNT" pki
    must POST "sys/mounts/$PKI_MOUNT/tune" '{"max_lease_ttl":"43800h"}'
    request GET "$PKI_MOUNT/cert/ca"
    if [[ "$STATUS" == 200 ]]; then
        say "ok   $PKI_MOUNT/ has its issuing CA (kept)"
    else
        must POST "$PKI_MOUNT/intermediate/generate/internal" \
            "{\"common_name\":$(json "$PKI_INTERMEDIATE_CN"),\"key_type\":\"ec\",\"key_bits\":384}"
        pem_field csr >"$work/intermediate.csr"
        if [[ -n "${PKI_INTERMEDIATE_CERT_FILE:-}" ]]; then
            die "PKI_INTERMEDIATE_CERT_FILE is set but $PKI_MOUNT/ had no CA: sign $work/intermediate.csr offline first (it was just generated: rerun with the signed certificate)"
        fi
        enable mounts "$PKI_ROOT_MOUNT" pki
        must POST "sys/mounts/$PKI_ROOT_MOUNT/tune" '{"max_lease_ttl":"87600h"}'
        request GET "$PKI_ROOT_MOUNT/cert/ca"
        if [[ "$STATUS" != 200 ]]; then
            must POST "$PKI_ROOT_MOUNT/root/generate/internal" \
                "{\"common_name\":$(json "$PKI_ROOT_CN"),\"key_type\":\"ec\",\"key_bits\":384,\"ttl\":\"87600h\"}"
            say "ok   root CA \"$PKI_ROOT_CN\" at $PKI_ROOT_MOUNT/ (created; its key never leaves that mount)"
        fi
        ca_urls "$PKI_ROOT_MOUNT"
        must POST "$PKI_ROOT_MOUNT/root/sign-intermediate" "{\"csr\":$(json "$(cat "$work/intermediate.csr")"),\
\"common_name\":$(json "$PKI_INTERMEDIATE_CN"),\"ttl\":\"43800h\",\"format\":\"pem\"}"
        pem_field certificate >"$work/intermediate.pem"
        request GET "$PKI_ROOT_MOUNT/cert/ca"
        pem_field certificate >>"$work/intermediate.pem"
        must POST "$PKI_MOUNT/intermediate/set-signed" "{\"certificate\":$(json "$(cat "$work/intermediate.pem")")}"
        say "ok   intermediate CA \"$PKI_INTERMEDIATE_CN\" at $PKI_MOUNT/ (signed by $PKI_ROOT_MOUNT/)"
    fi
    ca_urls "$PKI_MOUNT"
    say "ok   $PKI_MOUNT/ CRL and issuing URLs under $PKI_URL_BASE/v1/$PKI_MOUNT/"
    must POST "$PKI_MOUNT/roles/$CALLER" "{\"allowed_domains\":$(json_list "$PKI_DOMAINS"),\
\"allow_subdomains\":true,\"allow_bare_domains\":false,\"allow_localhost\":false,\"allow_ip_sans\":false,\
\"key_type\":\"ec\",\"key_bits\":256,\"ttl\":$(json "$PKI_TTL"),\"max_ttl\":$(json "$PKI_MAX_TTL")}"
    say "ok   $PKI_MOUNT/roles/$CALLER: names under $PKI_DOMAINS (ttl $PKI_TTL, max $PKI_MAX_TTL)"
fi

database=false
if [[ -n "${PG_HOST:-}" ]]; then
    database=true
    enable mounts "$DB_MOUNT" database
    # One connection serves every caller: keep the roles other runs allowed, add this one.
    allowed="$CALLER"
    request GET "$DB_MOUNT/config/$DB_CONNECTION"
    if [[ "$STATUS" == 200 ]]; then
        existing="$(printf '%s' "$RESP" | grep -o '"allowed_roles":\[[^]]*\]' | head -n1 | sed 's/.*\[\(.*\)\]/\1/; s/"//g')"
        for r in ${existing//,/ }; do [[ ",$allowed," == *",$r,"* ]] || allowed+=",$r"; done
    fi
    url="postgresql://{{username}}:{{password}}@${PG_HOST}:${PG_PORT:-5432}/${PG_DATABASE:-postgres}?sslmode=${PG_SSLMODE:-require}"
    must POST "$DB_MOUNT/config/$DB_CONNECTION" "{\"plugin_name\":\"postgresql-database-plugin\",\
\"connection_url\":$(json "$url"),\"username\":$(json "$PG_USER"),\"password\":$(json "$PG_PASSWORD"),\
\"allowed_roles\":$(json_list "$allowed"),\"verify_connection\":true}"
    say "ok   $DB_MOUNT/config/$DB_CONNECTION -> ${PG_HOST}:${PG_PORT:-5432} (allowed roles: $allowed)"
    must POST "$DB_MOUNT/roles/$CALLER" "{\"db_name\":$(json "$DB_CONNECTION"),\
\"creation_statements\":[$(json "$DB_CREATION_SQL")],\"default_ttl\":$(json "$DB_DEFAULT_TTL"),\
\"max_ttl\":$(json "$DB_MAX_TTL")}"
    say "ok   $DB_MOUNT/roles/$CALLER (ttl $DB_DEFAULT_TTL, max $DB_MAX_TTL)"
fi

# The caller's policy: only its own key, KV folder and database role (as src/dev/provision.rs).
policy="# vaultgate caller $CALLER (deploy/openbao/setup.sh): its own Transit key, KV folder, database role.
path \"$TRANSIT_MOUNT/encrypt/$CALLER\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/decrypt/$CALLER\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/rewrap/$CALLER\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/datakey/plaintext/$CALLER\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/datakey/wrapped/$CALLER\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/keys/$CALLER\" { capabilities = [\"read\"] }
path \"$TRANSIT_MOUNT/keys/$CALLER/rotate\" { capabilities = [\"update\"] }
path \"$KV_MOUNT/data/$CALLER/*\" { capabilities = [\"read\"] }
path \"$KV_MOUNT/metadata/$CALLER/*\" { capabilities = [\"read\", \"list\"] }
path \"$TRANSIT_MOUNT/hmac/$CALLER\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/verify/$CALLER\" { capabilities = [\"update\"] }
"
if $PKI; then
    policy+="path \"$PKI_MOUNT/issue/$CALLER\" { capabilities = [\"update\"] }
path \"$PKI_MOUNT/sign/$CALLER\" { capabilities = [\"update\"] }
path \"$PKI_MOUNT/revoke-with-key\" { capabilities = [\"update\"] }
"
fi
if $database; then
    policy+="path \"$DB_MOUNT/creds/$CALLER\" { capabilities = [\"read\"] }
path \"sys/leases/revoke\" { capabilities = [\"update\"] }
"
fi
must PUT "sys/policies/acl/$CALLER" "{\"policy\":$(json "$policy")}"
say "ok   policy $CALLER"

# jwt_role NAME SUBJECT AUDIENCE POLICY TTL MAX_TTL: admits only JWTs for exactly that subject
# and audience, and issues a service token with that one policy (plus "default": renew, lookup).
jwt_role() {
    must POST "auth/$JWT_MOUNT/role/$1" "{\"role_type\":\"jwt\",\"user_claim\":\"sub\",\
\"bound_subject\":$(json "$2"),\"bound_audiences\":[$(json "$3")],\"token_policies\":[$(json "$4")],\
\"token_ttl\":$(json "$5"),\"token_max_ttl\":$(json "$6"),\"token_type\":\"service\"}"
    say "ok   role $JWT_MOUNT/role/$1: sub=$2 aud=$3 -> policy $4 (ttl $5, max $6)"
}
jwt_role "$CALLER" "$CALLER_SUBJECT" "$CALLER_AUDIENCE" "$CALLER" "$TOKEN_TTL" "$TOKEN_MAX_TTL"

if [[ -n "$SNAPSHOT_SUBJECT" ]]; then
    must PUT "sys/policies/acl/openbao-snapshot" "{\"policy\":$(json '# The Raft snapshot CronJob (deploy/openbao/snapshot.sh): take snapshots, nothing else.
path "sys/storage/raft/snapshot" { capabilities = ["read"] }
')}"
    say "ok   policy openbao-snapshot"
    jwt_role openbao-snapshot "$SNAPSHOT_SUBJECT" "$SNAPSHOT_AUDIENCE" openbao-snapshot 10m 30m
fi

if [[ -n "$GATEWAY_SUBJECT" ]]; then
    # The gateway's own identity, for lease ownership any replica can verify: nothing else.
    request GET "$TRANSIT_MOUNT/keys/vaultgate-leases"
    if [[ "$STATUS" == 200 ]]; then
        say "ok   key $TRANSIT_MOUNT/keys/vaultgate-leases (exists)"
    else
        must POST "$TRANSIT_MOUNT/keys/vaultgate-leases" '{"type":"aes256-gcm96"}'
        say "ok   key $TRANSIT_MOUNT/keys/vaultgate-leases (created)"
    fi
    must PUT "sys/policies/acl/vaultgate-gateway" "{\"policy\":$(json "# vaultgate itself (deploy/openbao/setup.sh): lease-ownership tags and lease parents.
path \"$TRANSIT_MOUNT/hmac/vaultgate-leases\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/verify/vaultgate-leases\" { capabilities = [\"update\"] }
path \"auth/token/renew-accessor\" { capabilities = [\"update\"] }
")}"
    say "ok   policy vaultgate-gateway"
    jwt_role vaultgate-gateway "$GATEWAY_SUBJECT" "$GATEWAY_AUDIENCE" vaultgate-gateway 1h 24h
fi

say "done. The rule for vaultgate.toml:"
printf '[[callers]]\nrole = %s\nclaim = "sub"\nequals = %s\n' "$(json "$CALLER")" "$(json "$CALLER_SUBJECT")"
[[ -z "$JWT_BOUND_ISSUER" ]] || printf 'issuer = %s\n' "$(json "$JWT_BOUND_ISSUER")"
[[ "$JWT_MOUNT" == jwt ]] || printf 'auth_mount = %s\n' "$(json "$JWT_MOUNT")"
