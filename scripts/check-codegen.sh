#!/usr/bin/env bash
# Codegen check: runs the one-command stub generation of docs/clients.md ("## Generating stubs",
# the first ```sh block under each "### <language>") verbatim, in a scratch directory whose proto/
# is this repository's, and checks what each produced:
#   Go      the four .pb.go and _grpc.pb.go files, package vaultgatev1, google.rpc.Status from
#           genproto, gofmt parses them
#   Java    dev/vaultgate/v1/*.java (java_multiple_files), compiled with javac against Debian's
#           protobuf and grpc-java jars (com.google.rpc.Status generated from our status.proto,
#           standing in for proto-google-common-protos)
#   Python  imports the stubs together with googleapis-common-protos' google.rpc.status_pb2 (one
#           Status type, no descriptor clash) and checks the file options and new fields
#   Node    proto-loader-gen-types wrote the service types
# and that proto/google/rpc/status.proto is byte for byte googleapis-common-protos' copy.
# A language whose generator is not installed is reported as skipped (scripts/tools.sh installs
# Python's; Node's comes with examples/node's npm ci; Go's and Java's from Debian packages).
# Prints one line per check, then `codegen: N passed, M failed, K skipped`; exits 1 on a failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOC="$ROOT/docs/clients.md"
VENV="$ROOT/.tools/venv/bin"
START=$SECONDS
export PATH="$ROOT/.tools/bin:$VENV:$ROOT/examples/node/node_modules/.bin:$PATH"
WORK="$(mktemp -d /tmp/vaultgate-codegen.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
passed=0 failed=0 skipped=0
ok() { echo "pass $*"; passed=$((passed + 1)); }
bad() { echo "fail $*"; failed=$((failed + 1)); }
skip() { echo "skip $*"; skipped=$((skipped + 1)); }

# The command block of one language (continuation lines joined).
command_of() {
    awk -v lang="### $1" '
        /^## / { in_section = ($0 == "## Generating stubs"); next }
        in_section && /^### / { in_lang = ($0 == lang); next }
        in_section && in_lang && !done && /^```sh[[:space:]]*$/ { in_block = 1; next }
        in_block && /^```/ { in_block = 0; done = 1; next }
        in_block { print }
    ' "$DOC" | sed -e ':a' -e '/\\$/N; s/\\\n//; ta'
}

# run LANG: runs its block in a fresh scratch directory ($WORK/LANG); 0 when it succeeded.
run() {
    local dir="$WORK/$1" cmd
    cmd="$(command_of "$1")"
    if [[ -z "$cmd" ]]; then
        bad "$1: no \`\`\`sh block under \"### $1\" in docs/clients.md"
        return 1
    fi
    mkdir -p "$dir" && ln -s "$ROOT/proto" "$dir/proto"
    [[ ! -d "$ROOT/examples/node/node_modules" ]] || ln -s "$ROOT/examples/node/node_modules" "$dir/node_modules"
    if (cd "$dir" && bash -euo pipefail -c "$cmd") >"$dir.log" 2>&1; then
        return 0
    fi
    bad "$1: the docs' command failed: $(tail -n 3 "$dir.log" | tr '\n' ' ')"
    return 1
}

have() { local t; for t in "$@"; do command -v "$t" >/dev/null || return 1; done; }

# --- status.proto is Google's ------------------------------------------------------------------
upstream="$("$VENV/python3" -c 'import google.rpc, os; print(os.path.join(list(google.rpc.__path__)[0], "status.proto"))' 2>/dev/null)"
if [[ -f "$upstream" ]] && cmp -s "$ROOT/proto/google/rpc/status.proto" "$upstream"; then
    ok "proto/google/rpc/status.proto is byte for byte googleapis-common-protos' ($upstream)"
else
    bad "proto/google/rpc/status.proto differs from googleapis-common-protos' (${upstream:-not installed})"
fi

# --- Go ----------------------------------------------------------------------------------------
if ! have protoc protoc-gen-go protoc-gen-go-grpc; then
    skip "Go: protoc, protoc-gen-go or protoc-gen-go-grpc not installed"
elif run Go; then
    g="$WORK/Go/gen/go/vaultgate/v1"
    files=("$g"/{encryption,secret,database,identity}.pb.go "$g"/{encryption,secret,database,identity}_grpc.pb.go)
    missing=() ; for f in "${files[@]}"; do [[ -f "$f" ]] || missing+=("${f#"$WORK"/Go/}"); done
    if ((${#missing[@]})); then
        bad "Go: missing ${missing[*]}"
    elif ! grep -q '^package vaultgatev1$' "$g/encryption.pb.go" ||
        ! grep -q '"google.golang.org/genproto/googleapis/rpc/status"' "$g/encryption.pb.go"; then
        bad "Go: encryption.pb.go is not package vaultgatev1 importing genproto's rpc/status"
    elif have gofmt && ! gofmt -l "${files[@]}" >"$WORK/gofmt.log" 2>&1; then
        bad "Go: gofmt cannot parse the generated code: $(head -n 3 "$WORK/gofmt.log" | tr '\n' ' ')"
    else
        ok "Go: ${#files[@]} files in package vaultgatev1 (go_package), google.rpc.Status from genproto, no M flags"
    fi
fi

# --- Java --------------------------------------------------------------------------------------
if ! have protoc || ! have protoc-gen-grpc-java && ! have grpc_java_plugin; then
    skip "Java: protoc or the grpc-java plugin not installed"
elif run Java; then
    j="$WORK/Java/gen/java/dev/vaultgate/v1"
    if [[ ! -f "$j/EncryptRequest.java" || ! -f "$j/EncryptionServiceGrpc.java" || ! -f "$j/IdentityKind.java" ]]; then
        bad "Java: dev/vaultgate/v1/EncryptRequest.java, EncryptionServiceGrpc.java or IdentityKind.java missing"
    else
        jars=(protobuf grpc-api grpc-stub grpc-protobuf grpc-protobuf-lite grpc-context guava geronimo-annotation-1.3-spec)
        cp="" missing=()
        for jar in "${jars[@]}"; do
            if [[ -f "/usr/share/java/$jar.jar" ]]; then cp+="/usr/share/java/$jar.jar:"; else missing+=("$jar"); fi
        done
        if ! have javac || ((${#missing[@]})); then
            ok "Java: $(find "$j" -name '*.java' | wc -l) classes in dev.vaultgate.v1 (not compiled: javac or jars ${missing[*]} missing)"
        else
            mkdir -p "$WORK/Java/status" "$WORK/Java/classes"
            protoc -I "$ROOT/proto" --java_out="$WORK/Java/status" "$ROOT/proto/google/rpc/status.proto"
            if javac -nowarn -d "$WORK/Java/classes" -cp "$cp" $(find "$WORK/Java/gen" "$WORK/Java/status" -name '*.java') \
                >"$WORK/javac.log" 2>&1; then
                ok "Java: $(find "$j" -name '*.java' | wc -l) classes in dev.vaultgate.v1 compile with javac (protobuf-java, grpc-java 1.41)"
            else
                bad "Java: javac: $(grep -m 3 error "$WORK/javac.log" | tr '\n' ' ')"
            fi
        fi
    fi
fi

# --- Python ------------------------------------------------------------------------------------
if ! "$VENV/python3" -c 'import grpc_tools.protoc, google.rpc.status_pb2' 2>/dev/null; then
    skip "Python: grpcio-tools or googleapis-common-protos not in .tools/venv (bash scripts/tools.sh)"
elif run Python; then
    if out="$(cd "$WORK/Python" && "$VENV/python3" - 2>&1 <<'EOF'
import sys
sys.path.append("gen/python")
from google.rpc import status_pb2                      # googleapis-common-protos
from vaultgate.v1 import encryption_pb2, encryption_pb2_grpc, identity_pb2, database_pb2_grpc, secret_pb2_grpc
r = encryption_pb2.EncryptBatchResult(error=status_pb2.Status(code=3, message="m"))
assert r.error.code == 3, "one google.rpc.Status type"
assert encryption_pb2.EncryptBatchItem(key_version=2).key_version == 2
assert encryption_pb2.DecryptBatchResult(key_version=2).key_version == 2
assert encryption_pb2.EncryptRequest(mount="transit-b").mount == "transit-b"
assert identity_pb2.IdentityKind.Name(3) == "IDENTITY_KIND_URI"
o = encryption_pb2.DESCRIPTOR.GetOptions()
assert (o.go_package, o.java_package, o.java_multiple_files, o.csharp_namespace) == (
    "github.com/vaultgate/vaultgate/gen/go/vaultgate/v1;vaultgatev1", "dev.vaultgate.v1", True, "Vaultgate.V1"), o
m = encryption_pb2.DESCRIPTOR.services_by_name["EncryptionService"].methods_by_name
assert m["Encrypt"].GetOptions().idempotency_level == 1 and m["Rotate"].GetOptions().idempotency_level == 0
print("ok")
EOF
)" && [[ "$out" == ok ]]; then
        ok "Python: stubs import beside googleapis-common-protos (one google.rpc.Status), options, enums, mount, key_version"
    else
        bad "Python: $(tr '\n' ' ' <<<"$out" | cut -c1-400)"
    fi
fi

# --- Node.js -----------------------------------------------------------------------------------
if [[ ! -x "$ROOT/examples/node/node_modules/.bin/proto-loader-gen-types" ]]; then
    skip "Node.js: examples/node/node_modules missing (cd examples/node && npm ci)"
elif run Node.js; then
    n="$WORK/Node.js/gen/node/vaultgate/v1"
    if [[ -f "$n/EncryptionService.ts" ]] && grep -q 'Encrypt' "$n/EncryptionService.ts" && [[ -f "$n/IdentityKind.ts" ]]; then
        ok "Node.js: proto-loader-gen-types wrote $(find "$WORK/Node.js/gen/node" -name '*.ts' | wc -l) TypeScript files"
    else
        bad "Node.js: vaultgate/v1/EncryptionService.ts or IdentityKind.ts not generated: $(ls "$n" 2>&1 | head -c 200)"
    fi
fi

echo "codegen: $passed passed, $failed failed, $skipped skipped"
echo "check-codegen: $((SECONDS - START)) s" >&2
((failed == 0))
