# Storage and seal of the 3-node Raft StatefulSet; loaded after openbao.hcl (listener, audit,
# telemetry), which every topology shares. The evaluation overlay replaces this file only.

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
