#!/usr/bin/env bash
# `test && ok … || bad …` is an if-then-else here: ok always succeeds.
# shellcheck disable=SC2015
# The container image without a container engine (issue 16). No engine runs here and no registry
# is reachable (buildah/podman install from Debian, but cannot pull rust:1-bookworm or
# gcr.io/distroless/cc-debian12), so this builds what deploy/Dockerfile's final stage holds and
# runs it as the Deployment would: the filesystem laid out at the same paths, entered with
# chroot in a mount namespace of its own whose root is read-only, as uid/gid 65532 (no
# capabilities), started by the Dockerfile's own ENTRYPOINT.
#
#   check-image.sh layout BIN ROOTFS     lays out ROOTFS from deploy/Dockerfile with BIN as the
#                                        copied binary; prints pass/fail lines, exits 1 on a failure
#   check-image.sh exec ROOTFS CONFIG [DIR...]
#                                        becomes the container (exec, same pid): CONFIG mounted at
#                                        the ENTRYPOINT's --config path and each DIR at its own
#                                        path, all read-only, like the Deployment's volumes
#   check-image.sh inspect PID           pass/fail lines about the running container PID
#   check-image.sh image                 prints the image name (deploy/IMAGE, its one place)
#
# scripts/check-deploy.sh runs the gateway this way (its step 5, so `make test` does); it needs
# root (mount namespaces, chroot), as CI has.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/deploy/Dockerfile"
# What distroless cc-debian12 provides besides the binary: glibc, libgcc, CA certificates, the
# passwd/group entries of root, nobody and nonroot (65532), /tmp, /home/nonroot.
DISTROLESS_LIBS="ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1 libdl.so.2 libpthread.so.0 librt.so.1"

failed=0
ok() { echo "pass $*"; }
bad() { echo "fail $*"; failed=1; }

# The final stage of the Dockerfile: its FROM, the COPY of the binary, USER, ENTRYPOINT.
final_stage() { awk '/^FROM /{stage=""} {stage=stage $0 "\n"} END{printf "%s", stage}' "$DOCKERFILE"; }
entrypoint() { final_stage | sed -n 's/^ENTRYPOINT \(\[.*\]\)$/\1/p' | python3 -c 'import json,sys; print("\n".join(json.loads(sys.stdin.read())))'; }
binary_path() { final_stage | sed -n 's/^COPY --from=builder [^ ]* \(\/[^ ]*\)$/\1/p'; }
user_of() { final_stage | sed -n 's/^USER \([0-9]*:[0-9]*\)$/\1/p'; }

layout() {
    local bin="$1" rootfs="$2" dest user from lib path missing=()
    from="$(final_stage | sed -n 's/^FROM \([^ ]*\).*/\1/p')"
    dest="$(binary_path)" user="$(user_of)"
    [[ "$from" == gcr.io/distroless/cc-debian12:nonroot ]] && ok "image: final stage FROM $from (glibc, libgcc, no shell)" ||
        bad "image: final stage FROM '$from', expected distroless cc-debian12:nonroot (this layout mimics that)"
    [[ -n "$dest" && "$user" == 65532:65532 && -n "$(entrypoint 2>/dev/null)" ]] &&
        ok "image: Dockerfile final stage read: binary at $dest, USER $user, ENTRYPOINT $(entrypoint | tr '\n' ' ')" ||
        bad "image: Dockerfile final stage: binary '$dest', USER '$user', ENTRYPOINT '$(entrypoint 2>&1 | tr '\n' ' ')'"
    [[ -n "$dest" ]] || return
    rm -rf "$rootfs"
    mkdir -p "$rootfs"/{etc/ssl/certs,tmp,home/nonroot,lib/x86_64-linux-gnu,lib64}
    chmod 1777 "$rootfs/tmp"
    chown 65532:65532 "$rootfs/home/nonroot"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    install -D -m 0755 "$bin" "$rootfs$dest"
    # The libraries the binary needs must be ones distroless cc ships, or the image would not start.
    while read -r lib path; do
        [[ -n "$path" ]] || continue
        if [[ " $DISTROLESS_LIBS " == *" $lib "* ]]; then
            mkdir -p "$rootfs$(dirname "$path")"
            cp -L "$path" "$rootfs$path"
        else
            missing+=("$lib")
        fi
    done < <(ldd "$bin" | awk '/=> \//{print $1, $3} /^[[:space:]]*\/lib/{n=split($1,p,"/"); print p[n], $1}')
    ((${#missing[@]} == 0)) && ok "image: every library $(basename "$bin") links is in distroless cc ($(cd "$rootfs" && find lib lib64 -type f | wc -l) copied)" ||
        bad "image: $(basename "$bin") links ${missing[*]}, which distroless cc does not ship"
    for sh in /bin/sh /bin/bash /usr/bin/env; do [[ ! -e "$rootfs$sh" ]] || bad "image: $sh in the layout"; done
}

# Becomes the container: a private mount namespace, ROOTFS bound read-only onto itself, CONFIG
# and the DIRs bound read-only into it, then chroot as 65532 and exec the ENTRYPOINT.
run() {
    local rootfs="$1" config="$2" user config_path script
    shift 2
    user="$(user_of)"
    mapfile -t argv < <(entrypoint)
    config_path="$(printf '%s\n' "${argv[@]}" | sed -n '/^--config$/{n;p}')"
    [[ -n "$config_path" && -n "$user" ]] || { echo "check-image: no --config in the ENTRYPOINT or no USER" >&2; exit 2; }
    mkdir -p "$rootfs$(dirname "$config_path")" && : >"$rootfs$config_path"
    # shellcheck disable=SC2016 # expanded by the inner sh, from its arguments
    script='set -e; r="$1"; c="$2"; p="$3"; u="$4"; shift 4
mount --make-rprivate /
mount --bind "$r" "$r"
while [ "$1" != -- ]; do mkdir -p "$r$1"; mount --bind "$1" "$r$1"; mount -o remount,bind,ro "$r$1"; shift; done; shift
mount --bind "$c" "$r$p"; mount -o remount,bind,ro "$r$p"
mount -o remount,bind,ro "$r"
exec chroot --userspec="$u" "$r" "$@"'
    exec unshare --mount -- sh -c "$script" sh "$rootfs" "$config" "$config_path" "$user" "$@" -- "${argv[@]}"
}

inspect() {
    local pid="$1" uid gid caps root_opts
    [[ -r "/proc/$pid/status" && -e "/proc/$pid/root/etc/passwd" ]] || { bad "image: the container (pid $pid) is not running"; return; }
    uid="$(awk '/^Uid:/{print $2, $3, $4, $5}' "/proc/$pid/status")"
    gid="$(awk '/^Gid:/{print $2, $3, $4, $5}' "/proc/$pid/status")"
    caps="$(awk '/^CapEff:/{print $2}' "/proc/$pid/status")"
    [[ "$uid" == "65532 65532 65532 65532" && "$gid" == "65532 65532 65532 65532" && "$caps" == 0000000000000000 ]] &&
        ok "image: the gateway runs as uid/gid 65532 (real, effective, saved, fs) with no capabilities" ||
        bad "image: uid '$uid', gid '$gid', CapEff $caps"
    # Its root, as the process sees it (mountinfo field 5 is the mount point, 6 its options).
    root_opts="$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | tail -n1)"
    [[ "$(readlink "/proc/$pid/root")" != / && ",$root_opts," == *,ro,* ]] &&
        ok "image: its root is the image layout, mounted read-only ($root_opts)" ||
        bad "image: root $(readlink "/proc/$pid/root") mounted '$root_opts'"
    [[ ! -e "/proc/$pid/root/bin/sh" && -x "/proc/$pid/root$(binary_path)" ]] &&
        ok "image: inside, the binary at $(binary_path) and no shell (/bin/sh absent)" || bad "image: /bin/sh inside, or no binary"
}

case "${1:-}" in
    layout) layout "$2" "$3" ;;
    exec) shift && run "$@" ;;
    inspect) inspect "$2" ;;
    image) tr -d '[:space:]' <"$ROOT/deploy/IMAGE" && echo ;;
    *) sed -n '2,20p' "$0" >&2 && exit 2 ;;
esac
((failed == 0))
