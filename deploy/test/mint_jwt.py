#!/usr/bin/env python3
"""Mints an RS256 JWT for deploy tests, signed by `openssl dgst` (RS256 signatures are the raw
PKCS#1 v1.5 bytes openssl prints, so no DER conversion is needed, unlike ES256).

usage: mint_jwt.py KEY.pem ISSUER SUBJECT AUDIENCE [TTL_SECONDS]
"""
import base64
import json
import subprocess
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    key, iss, sub, aud = sys.argv[1:5]
    ttl = int(sys.argv[5]) if len(sys.argv) > 5 else 300
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {"iss": iss, "sub": sub, "aud": [aud], "iat": now, "nbf": now - 30, "exp": now + ttl}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(), capture_output=True, check=True
    ).stdout
    print(f"{signing_input}.{b64url(signature)}")


if __name__ == "__main__":
    main()
