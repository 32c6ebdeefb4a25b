#!/usr/bin/env bash
# Builds examples/go/client.go offline against Debian's Go packages, then runs it:
#   bash examples/go/run.sh [--addr 127.0.0.1:50051] [--dir .dev]
#
# Stubs are generated from proto/ with protoc, protoc-gen-go (Debian's golang-google-protobuf-dev
# era, APIv2) and protoc-gen-go-grpc into a GOPATH under target/go (git-ignored), at the import
# path of the proto's go_package, github.com/vaultgate/vaultgate/gen/go/vaultgate/v1. GOPATH
# mode (GO111MODULE=off, GOPROXY=off): every import resolves in that
# GOPATH or /usr/share/gocode (golang-google-grpc-dev, golang-google-protobuf-dev,
# golang-google-genproto-dev), nothing is downloaded. grpc-go 1.33's codec goes through
# github.com/golang/protobuf: its Debian 1.3 package panics decoding the APIv2 messages that
# protoc-gen-go 1.28 generates, so golang-github-golang-protobuf-1-5-dev (the APIv2 shim) is
# installed instead. GRPC_GO_RETRY=on: grpc-go 1.33 applies a service config's retryPolicy only
# with it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ -d "$ROOT/.tools/bin" ]] && export PATH="$ROOT/.tools/bin:$PATH"
GOROOT_PATH="$ROOT/target/go"
PKG=github.com/vaultgate/vaultgate/gen/go/vaultgate/v1
GEN="$GOROOT_PATH/src/$PKG"
APP="$GOROOT_PATH/src/github.com/vaultgate/vaultgate/examples/go"
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null || { echo "go client: FAIL: $tool missing (bash scripts/tools.sh)" >&2; exit 2; }
done

# Rebuilt only when an input changed (the stamp is a hash of them and of the toolchain).
STAMP="$GOROOT_PATH/bin/.stamp"
want="$({ cat "$ROOT"/proto/vaultgate/v1/*.proto "$ROOT/examples/go/client.go" "${BASH_SOURCE[0]}"; go version; protoc --version
    dpkg-query -W golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev 2>/dev/null; } | sha256sum)"
if [[ ! -x "$GOROOT_PATH/bin/vaultgate-go-client" || "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
    rm -rf "$GEN" "$APP"
    mkdir -p "$GEN" "$APP" "$GOROOT_PATH/bin"
    # Until the protos carry go_package, the M options give it (same value); google.rpc.Status is
    # genproto's, not generated here.
    M="$PKG;vaultgatev1"
    maps=()
    for f in "$ROOT"/proto/vaultgate/v1/*.proto; do maps+=("M${f#"$ROOT/proto/"}=$M"); done
    maps+=("Mgoogle/rpc/status.proto=google.golang.org/genproto/googleapis/rpc/status")
    go_opts=() grpc_opts=()
    for m in "${maps[@]}"; do go_opts+=("--go_opt=$m"); grpc_opts+=("--go-grpc_opt=$m"); done
    protoc -I "$ROOT/proto" -I /usr/include \
        --go_out="$GEN" --go_opt=paths=source_relative "${go_opts[@]}" \
        --go-grpc_out="$GEN" --go-grpc_opt=paths=source_relative "${grpc_opts[@]}" \
        "$ROOT"/proto/vaultgate/v1/*.proto
    # paths=source_relative keeps vaultgate/v1/: flatten into the package directory.
    mv "$GEN"/vaultgate/v1/*.go "$GEN"/ && rm -rf "$GEN/vaultgate"
    cp "$ROOT/examples/go/client.go" "$APP/"

    export GOPATH="$GOROOT_PATH:/usr/share/gocode" GO111MODULE=off GOPROXY=off GOFLAGS='' GOCACHE="$ROOT/target/go/cache"
    (cd "$APP" && go build -o "$GOROOT_PATH/bin/vaultgate-go-client" .)
    printf '%s' "$want" >"$STAMP"
fi
cd "$ROOT"
GRPC_GO_RETRY=on exec "$GOROOT_PATH/bin/vaultgate-go-client" \
    --service-config "$ROOT/proto/vaultgate/v1/service_config.json" "$@"
