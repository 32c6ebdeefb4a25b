#!/usr/bin/env python3
"""vaultgate example client in Python (grpcio + grpcio-tools + grpcio-health-checking).

Generates the stubs from the repository's proto/ at run time (into a temporary directory,
removed at exit), then exercises a running `vaultgate dev` as its demo callers and checks
every answer. Exits 0 when all checks pass, 1 on the first wrong answer (with a message
saying what was expected), 2 on a usage error.

    python3 examples/python/client.py [--addr 127.0.0.1:50051] [--dir .dev]

--addr defaults to $VAULTGATE_ADDR or 127.0.0.1:50051; --dir (the dev directory holding
callers/*.jwt) to $VAULTGATE_DEV_DIR or .dev.
"""

import argparse
import base64
import importlib
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc
from google.protobuf import json_format

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
# The recommended gRPC service config (retries of UNAVAILABLE and RESOURCE_EXHAUSTED on the
# idempotent RPCs, honouring the gateway's retry pushback; per-method timeouts).
SERVICE_CONFIG = (PROTO_ROOT / "vaultgate" / "v1" / "service_config.json").read_text()
TIMEOUT = 10.0  # seconds: the deadline of every call


class CheckFailed(Exception):
    pass


def check(cond, what):
    """Fails with `what` (a claim, then ": got ..." detail) unless cond; prints the claim when it holds."""
    if not cond:
        raise CheckFailed(what)
    print(f"  ok  {what.split(': got ')[0].split(': expected ')[0]}")


def generate_stubs(out_dir):
    """Runs protoc (from grpcio-tools) on proto/; the well-known types come with grpcio-tools."""
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    # Only vaultgate's files: google.rpc.Status comes from the googleapis-common-protos package
    # (proto/google/rpc/status.proto is Google's file unmodified, so the two never clash).
    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "vaultgate").rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise CheckFailed(f"protoc failed on {files}")
    sys.path.insert(0, str(out_dir))


def pg_login(dev_dir, user, password):
    """Logs in to dev mode's PostgreSQL with psql as user/password: (True, current_user) or (False, error)."""
    addr = (dev_dir / "postgres-addr").read_text().strip()
    psql = shutil.which("psql")
    if not addr or not psql:
        raise CheckFailed(f"cannot check the database user: postgres-addr {addr!r}, psql on PATH: {psql}")
    host, port = addr.rsplit(":", 1)
    r = subprocess.run([psql, "-h", host, "-p", port, "-U", user, "-d", "postgres", "-Atc", "select current_user"],
                       env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
                       capture_output=True, text=True, timeout=30)
    return (r.returncode == 0, (r.stdout if r.returncode == 0 else r.stderr).strip())


def vault_write(dev_dir, path, body):
    """Writes to dev mode's Vault with its root token (dev only: what an operator would do)."""
    import urllib.request
    addr = (dev_dir / "vault-addr").read_text().strip()
    token = (dev_dir / "root-token").read_text().strip()
    req = urllib.request.Request(f"{addr}/v1/{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"X-Vault-Token": token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return json.loads(r.read() or b"{}")


def bearer(jwt):
    return (("authorization", f"Bearer {jwt}"),)


def expect_code(call, code, what):
    try:
        call()
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: expected {code.name}, got {e.code().name}: {e.details()}")
        return
    raise CheckFailed(f"{what}: expected {code.name}, but the call succeeded")


def check_service_config(modules):
    """The service config names every unary RPC of proto/ exactly once, and nothing else."""
    config = json.loads(SERVICE_CONFIG)
    named = [(n["service"], n["method"]) for m in config["methodConfig"] for n in m["name"]]
    unary = [(s.full_name, m.name) for mod in modules for s in mod.DESCRIPTOR.services_by_name.values()
             for m in s.methods if not m.client_streaming and not m.server_streaming]
    ours = [n for n in named if n[0].startswith("vaultgate.")]
    check(sorted(ours) == sorted(set(unary)) and len(ours) == len(set(ours)),
          f"service_config.json names each of the {len(unary)} unary RPCs once: got {sorted(set(ours) ^ set(unary))} "
          f"differing, {len(ours) - len(set(ours))} twice")


def run(addr, dev_dir):
    billing_jwt = (dev_dir / "callers" / "billing.jwt").read_text().strip()
    reports_jwt = (dev_dir / "callers" / "reports.jwt").read_text().strip()
    billing, reports = bearer(billing_jwt), bearer(reports_jwt)

    enc = importlib.import_module("vaultgate.v1.encryption_pb2")
    enc_grpc = importlib.import_module("vaultgate.v1.encryption_pb2_grpc")
    sec = importlib.import_module("vaultgate.v1.secret_pb2")
    sec_grpc = importlib.import_module("vaultgate.v1.secret_pb2_grpc")
    db = importlib.import_module("vaultgate.v1.database_pb2")
    db_grpc = importlib.import_module("vaultgate.v1.database_pb2_grpc")
    pki = importlib.import_module("vaultgate.v1.pki_pb2")
    pki_grpc = importlib.import_module("vaultgate.v1.pki_pb2_grpc")

    check_service_config([importlib.import_module(f"vaultgate.v1.{p.stem}_pb2")
                          for p in sorted((PROTO_ROOT / "vaultgate" / "v1").glob("*.proto"))])
    with grpc.insecure_channel(addr, options=[("grpc.service_config", SERVICE_CONFIG)]) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            raise CheckFailed(f"cannot connect to {addr} within {TIMEOUT:.0f}s (is `vaultgate dev` running?)")

        # Standard health-check client (grpc.health.v1), no credentials.
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "vaultgate.v1.EncryptionService", "vaultgate.v1.SecretService",
                        "vaultgate.v1.DatabaseService"]:
            r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            check(r.status == health_pb2.HealthCheckResponse.SERVING,
                  f"health {service or '(server)'} is SERVING: got {health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)}")

        # Encrypt / Decrypt round trip.
        crypto = enc_grpc.EncryptionServiceStub(channel)
        r = crypto.Encrypt(enc.EncryptRequest(key="billing", plaintext=b"hello"), metadata=billing, timeout=TIMEOUT)
        check(r.ciphertext.startswith("vault:v") and r.key_version >= 1,
              f"Encrypt returns a vault:vN: ciphertext: got {r.ciphertext!r}, key_version {r.key_version}")
        d = crypto.Decrypt(enc.DecryptRequest(key="billing", ciphertext=r.ciphertext), metadata=billing,
                           timeout=TIMEOUT)
        check(d.plaintext == b"hello" and d.key_version == r.key_version,
              f"Decrypt returns the plaintext: got {d.plaintext!r}, key_version {d.key_version}")

        # EncryptBatch, then DecryptBatch of its results.
        plaintexts = [b"alpha", b"", bytes(range(256))]
        b = crypto.EncryptBatch(
            enc.EncryptBatchRequest(key="billing", items=[enc.EncryptBatchItem(plaintext=p) for p in plaintexts]),
            metadata=billing, timeout=TIMEOUT)
        check(len(b.results) == len(plaintexts), f"EncryptBatch answers every item: got {len(b.results)} results")
        for i, res in enumerate(b.results):
            check(not res.HasField("error") and res.ciphertext.startswith("vault:v"),
                  f"EncryptBatch item {i} succeeded: got error {res.error.message!r}, ciphertext {res.ciphertext!r}")
        db_ = crypto.DecryptBatch(
            enc.DecryptBatchRequest(key="billing",
                                    items=[enc.DecryptBatchItem(ciphertext=res.ciphertext) for res in b.results]),
            metadata=billing, timeout=TIMEOUT)
        got = [res.plaintext for res in db_.results]
        errors = [res.error.message for res in db_.results if res.HasField("error")]
        check(not errors and got == plaintexts,
              f"DecryptBatch returns the plaintexts in order: got {got!r}, item errors {errors!r}")

        # GetSecret.
        secrets = sec_grpc.SecretServiceStub(channel)
        s = secrets.GetSecret(sec.GetSecretRequest(path="billing/api-keys"), metadata=billing, timeout=TIMEOUT)
        data = json_format.MessageToDict(s.data)
        check(data.get("stripe_key") == "sk_test_demo" and s.version >= 1,
              f"GetSecret billing/api-keys has stripe_key == sk_test_demo: got keys {sorted(data)}, version {s.version}")

        # GetDbCreds: the credentials log in to PostgreSQL; RenewLease and RevokeLease send the
        # lease_token back (empty unless the gateway has [leases]; with it any replica can verify
        # that this caller owns the lease); after RevokeLease the user is dropped.
        dbs = db_grpc.DatabaseServiceStub(channel)
        c = dbs.GetDbCreds(db.GetDbCredsRequest(role="billing"), metadata=billing, timeout=TIMEOUT)
        check(c.username and c.password and c.lease_id.startswith("database/creds/billing/")
              and c.lease_duration.seconds > 0,
              f"GetDbCreds billing returns credentials and a lease: got username {c.username!r}, "
              f"lease_id {c.lease_id!r}, lease_duration {c.lease_duration.seconds}s")
        ok, out = pg_login(dev_dir, c.username, c.password)
        check(ok and out == c.username, f"the credentials log in to PostgreSQL: got {out!r}")
        r = dbs.RenewLease(db.RenewLeaseRequest(lease_id=c.lease_id, lease_token=c.lease_token),
                           metadata=billing, timeout=TIMEOUT)
        check(r.lease_duration.seconds > 0, f"RenewLease with its lease_token: got lease_duration {r.lease_duration.seconds}s")
        dbs.RevokeLease(db.RevokeLeaseRequest(lease_id=c.lease_id, lease_token=c.lease_token),
                        metadata=billing, timeout=TIMEOUT)
        ok, out = pg_login(dev_dir, c.username, c.password)
        check(not ok, f"RevokeLease dropped the database user (its login is refused): got {out!r}")

        # WatchSecret: the current version first; each new version follows (here written straight
        # to Vault with dev mode's root token, as an operator would). Heartbeats carry nothing: skip.
        watch = secrets.WatchSecret(sec.WatchSecretRequest(path="billing/api-keys"), metadata=billing, timeout=30)
        versions = (m for m in watch if not m.heartbeat)
        first = next(versions)
        check(json_format.MessageToDict(first.data).get("stripe_key") == "sk_test_demo",
              f"WatchSecret sends the current version first: got version {first.version}")
        vault_write(dev_dir, "secret/data/billing/api-keys", {"data": {"stripe_key": "sk_test_demo"}})
        second = next(versions)
        check(second.version == first.version + 1, f"WatchSecret sends the new version: got {second.version}")
        watch.cancel()

        # WatchDbCreds: credentials at once (ISSUED), then RENEWED/ROTATED events while the stream
        # is open; the gateway revokes the lease after watch.rotation_grace_ms once it closes.
        creds = dbs.WatchDbCreds(db.WatchDbCredsRequest(role="billing"), metadata=billing, timeout=30)
        issued = next(m for m in creds if not m.heartbeat)
        check(issued.event == db.WATCH_DB_CREDS_EVENT_ISSUED and issued.lease_id.startswith("database/creds/billing/"),
              f"WatchDbCreds sends ISSUED credentials: got event {issued.event}, lease {issued.lease_id!r}")
        ok, out = pg_login(dev_dir, issued.username, issued.password)
        check(ok and out == issued.username, f"the watched credentials log in to PostgreSQL: got {out!r}")
        creds.cancel()

        # Sign / Verify with the ed25519 key billing-signing: a changed input does not verify.
        sig = crypto.Sign(enc.SignRequest(key="billing-signing", input=b"invoice 42"), metadata=billing,
                          timeout=TIMEOUT)
        check(sig.signature.startswith("vault:v") and sig.key_version >= 1,
              f"Sign returns a vault:vN: signature: got {sig.signature!r}")
        ok = crypto.Verify(enc.VerifyRequest(key="billing-signing", input=b"invoice 42", signature=sig.signature),
                           metadata=billing, timeout=TIMEOUT)
        check(ok.valid, "Verify of that signature is valid: got valid=False")
        bad = crypto.Verify(enc.VerifyRequest(key="billing-signing", input=b"invoice 43", signature=sig.signature),
                            metadata=billing, timeout=TIMEOUT)
        check(not bad.valid, "Verify of a changed input is valid=False: got valid=True")

        # IssueCertificate: a certificate and its private key, which ssl accepts as a pair.
        certs = pki_grpc.PkiServiceStub(channel)
        issued = certs.IssueCertificate(
            pki.IssueCertificateRequest(role="billing", common_name="api.billing.svc.cluster.local"),
            metadata=billing, timeout=TIMEOUT)
        check(issued.certificate.startswith("-----BEGIN CERTIFICATE-----") and issued.ca_chain
              and issued.serial_number and issued.expiration.seconds > 0,
              f"IssueCertificate returns a certificate, its CA chain, serial and expiry: got serial "
              f"{issued.serial_number!r}, {len(issued.ca_chain)} CA certificates")
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = pathlib.Path(tmp) / "cert.pem", pathlib.Path(tmp) / "key.pem"
            cert_file.write_text(issued.certificate)
            key_file.write_text(issued.private_key)
            key_file.chmod(0o600)
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
                pair = "ok"
            except ssl.SSLError as e:
                pair = str(e)
        check(pair == "ok", f"the private key belongs to the certificate (ssl loads them as a pair): got {pair}")
        expect_code(lambda: certs.IssueCertificate(
            pki.IssueCertificateRequest(role="billing", common_name="api.reports.svc.cluster.local"),
            metadata=billing, timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, "a name outside billing.svc.cluster.local refused")

        # Refusals.
        expect_code(lambda: crypto.Encrypt(enc.EncryptRequest(key="billing", plaintext=b"x"), metadata=reports,
                                           timeout=TIMEOUT),
                    grpc.StatusCode.PERMISSION_DENIED, "reports caller refused Transit key billing")
        expect_code(lambda: secrets.GetSecret(sec.GetSecretRequest(path="billing/api-keys"), metadata=reports,
                                              timeout=TIMEOUT),
                    grpc.StatusCode.PERMISSION_DENIED, "reports caller refused secret billing/api-keys")
        expect_code(lambda: crypto.Encrypt(enc.EncryptRequest(key="billing", plaintext=b"x"), timeout=TIMEOUT),
                    grpc.StatusCode.UNAUTHENTICATED, "call without credentials refused")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default=os.environ.get("VAULTGATE_ADDR", "127.0.0.1:50051"))
    p.add_argument("--dir", default=os.environ.get("VAULTGATE_DEV_DIR", ".dev"))
    a = p.parse_args()
    dev_dir = pathlib.Path(a.dir)
    if not (dev_dir / "callers" / "billing.jwt").is_file():
        print(f"python client: FAIL: {dev_dir}/callers/billing.jwt not found (--dir must be vaultgate dev's directory)",
              file=sys.stderr)
        return 2

    out = tempfile.mkdtemp(prefix="vaultgate-py-stubs-")
    try:
        print(f"python client: {a.addr}, grpcio {grpc.__version__}")
        generate_stubs(out)
        run(a.addr, dev_dir)
    except CheckFailed as e:
        print(f"python client: FAIL: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"python client: FAIL: unexpected {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print("python client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
