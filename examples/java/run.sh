#!/usr/bin/env bash
# Builds examples/java with javac against Debian's grpc-java and protobuf-java jars
# (/usr/share/java), then runs it:
#   bash examples/java/run.sh [--addr 127.0.0.1:50051] [--dir .dev]
#
# Stubs come from protoc --java_out plus grpc_java_plugin (protobuf-compiler-grpc-java-plugin),
# generated from proto/ and from grpc-proto's grpc/health/v1/health.proto into target/java
# (git-ignored). Nothing is downloaded: no Maven, no Gradle.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ -d "$ROOT/.tools/bin" ]] && export PATH="$ROOT/.tools/bin:$PATH"
OUT="$ROOT/target/java"
JARS=/usr/share/java
for tool in javac java protoc grpc_java_plugin; do
    command -v "$tool" >/dev/null || { echo "java client: FAIL: $tool missing (bash scripts/tools.sh)" >&2; exit 2; }
done
# grpc-java 1.41 and what it needs at run time (gson: its service-config JSON parser);
# geronimo-annotation for the generated @javax.annotation.Generated (not in the JDK since 11).
CP=""
# (Debian's netty-all.jar is an empty aggregate: the modules are listed one by one.)
for jar in grpc-api grpc-core grpc-context grpc-stub grpc-protobuf grpc-protobuf-lite grpc-netty \
    netty-common netty-buffer netty-transport netty-resolver netty-codec netty-codec-http netty-codec-http2 \
    netty-handler netty-handler-proxy netty-codec-socks protobuf guava perfmark-api gson geronimo-annotation-1.3-spec; do
    [[ -f "$JARS/$jar.jar" ]] || { echo "java client: FAIL: $JARS/$jar.jar missing (bash scripts/tools.sh)" >&2; exit 2; }
    CP+="$JARS/$jar.jar:"
done

# Rebuilt only when an input changed (the stamp is a hash of them and of the toolchain).
STAMP="$OUT/classes/.stamp"
want="$({ cat "$ROOT"/proto/vaultgate/v1/*.proto "$ROOT"/examples/java/src/dev/vaultgate/example/*.java "${BASH_SOURCE[0]}"
    javac -version 2>&1; protoc --version; dpkg-query -W libgrpc-java libprotobuf-java 2>/dev/null; } | sha256sum)"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
    rm -rf "$OUT/gen" "$OUT/proto" "$OUT/classes"
    mkdir -p "$OUT/gen" "$OUT/proto" "$OUT/classes"
    # The protos' Java options (java_package dev.vaultgate.v1, one file per message), added to a copy
    # when a file does not carry them yet.
    cp -r "$ROOT/proto/." "$OUT/proto/"
    for f in "$OUT"/proto/vaultgate/v1/*.proto; do
        grep -q 'option java_package' "$f" ||
            sed -i 's/^package vaultgate\.v1;$/package vaultgate.v1;\noption java_package = "dev.vaultgate.v1";\noption java_multiple_files = true;/' "$f"
    done
    protoc -I "$OUT/proto" -I /usr/share/grpc-proto -I /usr/include \
        --java_out="$OUT/gen" --plugin=protoc-gen-grpc-java="$(command -v grpc_java_plugin)" --grpc-java_out="$OUT/gen" \
        "$OUT"/proto/vaultgate/v1/*.proto "$OUT"/proto/google/rpc/status.proto grpc/health/v1/health.proto
    find "$OUT/gen" "$ROOT/examples/java/src" -name '*.java' >"$OUT/sources.txt"
    javac -nowarn -encoding UTF-8 -d "$OUT/classes" -cp "$CP" @"$OUT/sources.txt"
    printf '%s' "$want" >"$STAMP"
fi
cd "$ROOT"
exec java -cp "$OUT/classes:$CP" dev.vaultgate.example.Client \
    --service-config "$ROOT/proto/vaultgate/v1/service_config.json" "$@"
