# OpenBao server config shared by every topology: listener, audit device, telemetry. The storage
# and seal of a topology are in storage.hcl next to it (this directory: 3-node Raft with Transit
# auto-unseal; overlays/evaluation: one node, Shamir), which the StatefulSet loads after this file
# (`bao server -config=openbao.hcl -config=storage.hcl`). What differs per pod comes from its
# environment: BAO_API_ADDR, BAO_CLUSTER_ADDR and BAO_RAFT_NODE_ID.
# scripts/check-deploy.sh boots these very files (paths and addresses rewritten to a temp dir).

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
