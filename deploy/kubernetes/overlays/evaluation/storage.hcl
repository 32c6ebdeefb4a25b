# Storage of the evaluation overlay's single OpenBao node, replacing deploy/openbao/storage.hcl:
# no retry_join and no seal stanza (Shamir: `bao operator init -key-shares=1 -key-threshold=1`,
# then `bao operator unseal` after every restart). Listener, audit device and telemetry are
# deploy/openbao/openbao.hcl's, unchanged.

storage "raft" {
  path = "/openbao/data"
}
