# OpenBao for the evaluation overlay: deploy/openbao/openbao.hcl for ONE node, without retry_join
# and without a seal stanza (Shamir: `bao operator init -key-shares=1 -key-threshold=1`, then
# `bao operator unseal` after every restart). scripts/check-deploy.sh validates it with the
# evaluation render; the 3-node file is the one it boots.

ui           = false
cluster_name = "openbao"
log_format   = "json"

# TLS on the API (8200) and the cluster port (8201, Raft and request forwarding). The certificate
# (Secret openbao-tls: tls.crt, tls.key, ca.crt) must name openbao.openbao.svc,
# *.openbao-internal.openbao.svc and 127.0.0.1 (for `bao` run inside a pod).
listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_cert_file   = "/openbao/tls/tls.crt"
  tls_key_file    = "/openbao/tls/tls.key"
  tls_min_version = "tls12"
}

# Integrated storage, one node.
storage "raft" {
  path = "/openbao/data"
}

# OpenBao 2.x creates audit devices from the config only (not through the API). Every request
# and response, secrets HMAC'd, one JSON line each, on its own volume. If the only audit device
# cannot write, OpenBao refuses requests: watch that volume's free space.
audit "file" "file" {
  description = "All requests, on the audit volume"
  options {
    file_path = "/openbao/audit/audit.log"
    mode      = "0600"
  }
}

# Prometheus metrics at /v1/sys/metrics?format=prometheus (needs a token with read on sys/metrics).
telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}
