#!/usr/bin/env python3
"""Prints what deploy/openbao/setup.sh configured, as stable JSON, so two runs can be compared:
mounts and auth methods (with accessors: a remount would change them), policies, JWT config and
roles, Transit keys (a rotation would add a version), database config and roles.

usage: bao_state.py ADDR TOKEN [CACERT] PATH...   (paths under /v1, e.g. sys/policies/acl/billing)
"""
import json
import ssl
import sys
import urllib.error
import urllib.request

# Fields that change on every write without changing meaning.
VOLATILE = {"request_id", "modified", "version", "lease_id", "lease_duration", "renewable", "warnings"}


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def main() -> None:
    addr, token, *rest = sys.argv[1:]
    context = None
    if rest and rest[0].endswith((".crt", ".pem")):
        context = ssl.create_default_context(cafile=rest.pop(0))
    state = {}
    for path in rest:
        req = urllib.request.Request(f"{addr}/v1/{path}", headers={"X-Vault-Token": token})
        try:
            with urllib.request.urlopen(req, context=context, timeout=10) as resp:
                state[path] = strip(json.load(resp).get("data"))
        except urllib.error.HTTPError as e:
            state[path] = f"HTTP {e.code}"
    print(json.dumps(state, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
