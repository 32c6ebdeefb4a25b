#!/bin/sh
# Saves a Raft snapshot of OpenBao into $SNAPSHOT_DIR and keeps the newest $SNAPSHOT_KEEP.
# Run by the openbao-snapshot CronJob (snapshot-cronjob.yaml) with the OpenBao image's `bao` CLI;
# scripts/check-deploy.sh runs this very file against a real Raft node.
#   BAO_ADDR (required), BAO_CACERT   any OpenBao server
#   JWT_FILE        the job's projected service-account token (audience "openbao")
#   SNAPSHOT_ROLE   JWT role to log in as (setup.sh writes openbao-snapshot); JWT_MOUNT: "jwt"
#   SNAPSHOT_DIR    where snapshots go (the job's volume); SNAPSHOT_KEEP: how many to keep
set -eu
: "${BAO_ADDR:?BAO_ADDR must be set}"
jwt_file="${JWT_FILE:-/var/run/secrets/openbao/token}"
role="${SNAPSHOT_ROLE:-openbao-snapshot}"
mount="${JWT_MOUNT:-jwt}"
dir="${SNAPSHOT_DIR:-/snapshots}"
keep="${SNAPSHOT_KEEP:-28}"

# A short-lived token whose policy may only read sys/storage/raft/snapshot; revoked on exit.
BAO_TOKEN="$(bao write -field=token "auth/$mount/login" role="$role" jwt=@"$jwt_file")"
export BAO_TOKEN
trap 'bao token revoke -self >/dev/null 2>&1 || true' EXIT

# The snapshot is taken on the active node: ask any node which one that is.
leader="$(bao read -field=leader_address sys/leader)"
name="openbao-$(date -u +%Y%m%dT%H%M%SZ).snap"
# Written under a temporary name first, so a failed save never looks like a snapshot.
BAO_ADDR="$leader" bao operator raft snapshot save "$dir/$name.partial"
mv "$dir/$name.partial" "$dir/$name"
echo "snapshot: saved $dir/$name ($(wc -c <"$dir/$name") bytes) from $leader"

# Names sort by time (UTC timestamps), so the glob lists the oldest first.
set -- "$dir"/openbao-*.snap
while [ "$#" -gt "$keep" ]; do
    rm -f "$1"
    echo "snapshot: removed $1 (keeping the newest $keep)"
    shift
done
