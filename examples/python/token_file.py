"""A caller's credential from a projected service-account token file, re-read as it rotates.

In Kubernetes the kubelet rewrites a projected token (`serviceAccountToken` volume source,
audience `vaultgate`) at 80 % of its lifetime; a caller that read it once would send an expired
JWT an hour later. `TokenFile` re-reads the file when its copy is older than `refresh` seconds
(default 60, far inside the kubelet's margin), so every call carries a valid token:

    token = TokenFile("/var/run/secrets/vaultgate/token")
    stub.Encrypt(request, metadata=token.metadata(), timeout=10)
    # or, on a TLS channel, for every call of the channel:
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(ca_pem), grpc.metadata_call_credentials(token))

Run as a script against `vaultgate dev` it checks itself: a call as the token file's caller, the
file replaced by another caller's JWT, and the next call (after `refresh`) made as that caller.

    .tools/venv/bin/python3 examples/python/token_file.py --addr 127.0.0.1:50051 --dir .dev
"""

import os
import threading
import time

import grpc


class TokenFile(grpc.AuthMetadataPlugin):
    """`authorization: Bearer <JWT>` from a file, re-read when the copy is `refresh` seconds old."""

    def __init__(self, path, refresh=60.0):
        self._path, self._refresh = path, refresh
        self._lock = threading.Lock()
        self._jwt, self._read_at = None, float("-inf")

    def jwt(self):
        with self._lock:
            if time.monotonic() - self._read_at >= self._refresh:
                with open(self._path, encoding="ascii") as f:
                    self._jwt = f.read().strip()
                self._read_at = time.monotonic()
            return self._jwt

    def metadata(self):
        return (("authorization", f"Bearer {self.jwt()}"),)

    def __call__(self, context, callback):  # grpc.AuthMetadataPlugin, for TLS channels
        try:
            callback(self.metadata(), None)
        except OSError as e:
            callback((), e)


def _self_check(addr, dev_dir):
    import importlib
    import pathlib
    import sys
    import tempfile

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import client  # the example client's stub generation

    with tempfile.TemporaryDirectory() as tmp:
        client.generate_stubs(tmp)
        ident = importlib.import_module("vaultgate.v1.identity_pb2")
        ident_grpc = importlib.import_module("vaultgate.v1.identity_pb2_grpc")
        token_path = pathlib.Path(tmp) / "token"
        token_path.write_text((dev_dir / "callers" / "billing.jwt").read_text())
        token = TokenFile(str(token_path), refresh=0.5)
        with grpc.insecure_channel(addr) as channel:
            who = ident_grpc.IdentityServiceStub(channel)
            me = who.WhoAmI(ident.WhoAmIRequest(), metadata=token.metadata(), timeout=10)
            client.check(me.role == "billing", f"WhoAmI as the token file's caller is billing: got {me.role!r}")
            # The kubelet's rotation: a new file in place of the old one.
            rotated = pathlib.Path(tmp) / "token.new"
            rotated.write_text((dev_dir / "callers" / "reports.jwt").read_text())
            os.replace(rotated, token_path)
            time.sleep(0.6)
            me = who.WhoAmI(ident.WhoAmIRequest(), metadata=token.metadata(), timeout=10)
            client.check(me.role == "reports", f"after rotation the file's new token is sent: got {me.role!r}")


if __name__ == "__main__":
    import argparse
    import pathlib
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=os.environ.get("VAULTGATE_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--dir", default=os.environ.get("VAULTGATE_DEV_DIR", ".dev"))
    args = ap.parse_args()
    try:
        _self_check(args.addr, pathlib.Path(args.dir))
    except Exception as e:  # a check that failed, or the gateway's error: one line, non-zero exit
        print(f"FAIL {e}", file=sys.stderr)
        sys.exit(1)
    print("token_file: ok")
