# OpenBao server config of the 3-node Raft StatefulSet (statefulset.yaml). What differs per pod
# comes from its environment: BAO_API_ADDR, BAO_CLUSTER_ADDR and BAO_RAFT_NODE_ID.
# scripts/check-deploy.sh boots this very file (paths and addresses rewritten to a temp dir).

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

# Integrated storage. Each pod tries to join the others until one of them is initialized
# (`bao operator init` on openbao-0); the rest join it on their own.
storage "raft" {
  path = "/openbao/data"

  retry_join {
    leader_api_addr     = "https://openbao-0.openbao-internal.openbao.svc:8200"
    leader_ca_cert_file = "/openbao/tls/ca.crt"
  }
  retry_join {
    leader_api_addr     = "https://openbao-1.openbao-internal.openbao.svc:8200"
    leader_ca_cert_file = "/openbao/tls/ca.crt"
  }
  retry_join {
    leader_api_addr     = "https://openbao-2.openbao-internal.openbao.svc:8200"
    leader_ca_cert_file = "/openbao/tls/ca.crt"
  }
}

# Auto-unseal with the Transit engine of ANOTHER OpenBao (the "unseal cluster", run and backed up
# separately). Its token comes from the environment (BAO_TOKEN, from Secret openbao-unseal-token),
# never from this file: an orphan periodic token whose policy allows only update on
# transit/encrypt/<key_name> and transit/decrypt/<key_name> (docs/deploy.md). Cloud KMS seals
# (awskms, gcpckms, azurekeyvault) are drop-in alternatives to this stanza.
seal "transit" {
  address     = "https://openbao-unseal.example.internal:8200"
  key_name    = "openbao-autounseal"
  mount_path  = "transit/"
  tls_ca_cert = "/openbao/unseal-ca/ca.crt"
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
