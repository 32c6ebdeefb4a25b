//! `vaultgate.v1.DatabaseService` over the database engine: dynamic credentials, and renewal or
//! revocation of a lease by the caller that obtained it (see `leases.rs` for the lifetime rule).

mod watch;

use super::{rpc, validate, Described, Gateway};
use crate::rules::Resource;
use crate::{
    call::Rpc,
    error::{Error, Subject},
    leases::{Ownership, PARENT_SLACK},
    pb::vaultgate::v1::{database_service_server::DatabaseService, *},
    session::Actor,
    vault::VaultToken,
};
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// The database-engine-backed credentials service.
pub struct Database(pub Arc<Gateway>);

fn duration(secs: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 }
}

impl Gateway {
    /// Renews the token that parents a lease so it outlives the lease; returns how long the lease
    /// can really live (Vault may cap the token below the lease).
    async fn keep_parent(&self, actor: &Actor, parent: &VaultToken, lease_secs: u64, deadline: Option<Instant>) -> u64 {
        let want = lease_secs.saturating_add(PARENT_SLACK.as_secs());
        // Recorded first: a renewal of the token racing with this one must not shorten it.
        self.sessions.keep_alive(actor, parent, Duration::from_secs(want));
        match self.vault.renew_self(parent, want, deadline).await {
            Ok(token_secs) => lease_secs.min(token_secs),
            Err(e) => {
                tracing::warn!(error = ?e, "could not renew the token that parents a lease; the lease ends with it");
                lease_secs
            }
        }
    }

    /// Proves `actor` owns `lease_id`: by this replica's record, or else by the `lease_token` it
    /// sent (a tag any replica verifies with Transit). Refuses other callers and forged tags.
    async fn ownership(
        &self,
        actor: &Actor,
        lease_id: &str,
        lease_token: &str,
        deadline: Option<Instant>,
    ) -> Result<Proof, Error> {
        match self.leases.check(lease_id, &actor.caller) {
            Ownership::Owner(parent) => return Ok(Proof::Local(parent)),
            Ownership::Other => {
                return Err(Error::PermissionDenied(format!(
                    "lease {lease_id:?} was obtained by another caller; only its owner may use it"
                )))
            }
            Ownership::Unknown => {}
        }
        let Some(config) = self.config.leases.as_ref().filter(|_| !lease_token.is_empty()) else {
            return Err(Error::NotFound(format!(
                "lease {lease_id:?} is unknown to this gateway replica: it expired, was revoked, or was obtained elsewhere \
                 (send the lease_token GetDbCreds returned so any replica can verify ownership)"
            )));
        };
        let forged = || {
            Error::PermissionDenied(format!(
                "lease_token does not prove that this caller owns lease {lease_id:?}; only its owner may use it"
            ))
        };
        let tag = OwnerTag::parse(lease_token).ok_or_else(forged)?;
        let input = &tag_input(lease_id, &actor.caller, &tag.accessor);
        let (transit, key, hmac) = (&self.config.mounts.transit, &config.owner_key, &tag.hmac);
        let valid = self
            .sessions
            .with_service_token(&config.role, deadline, |token| async move {
                self.vault.transit_verify_hmac(&token, transit, key, input, hmac, deadline).await
            })
            .await?
            .map_err(|e| Error::from_vault(e, Subject::Key(&config.owner_key)))?;
        if valid {
            Ok(Proof::Tag { accessor: tag.accessor })
        } else {
            Err(forged())
        }
    }

    /// Signs the ownership tag of a new lease; empty when not configured. A failure is logged and
    /// gives an empty tag (the credentials are never lost over it; this replica still knows).
    async fn sign_lease(&self, actor: &Actor, lease_id: &str, deadline: Option<Instant>) -> String {
        let Some(config) = &self.config.leases else { return String::new() };
        let signed = async {
            let input = &tag_input(lease_id, &actor.caller, &actor.accessor);
            let (transit, key) = (&self.config.mounts.transit, &config.owner_key);
            self.sessions
                .with_service_token(&config.role, deadline, |token| async move {
                    self.vault.transit_hmac(&token, transit, key, input, deadline).await
                })
                .await?
                .map_err(|e| Error::from_vault(e, Subject::Key(&config.owner_key)))
        };
        match signed.await {
            Ok(hmac) => OwnerTag { accessor: actor.accessor.to_string(), hmac }.encode(),
            Err(e) => {
                tracing::warn!(error = ?e, lease_id, "could not sign the lease's ownership tag; only this replica can verify its owner");
                String::new()
            }
        }
    }
}

impl Gateway {
    /// New credentials for `actor` from `role` of `mount`: the lease recorded as the caller's, its
    /// parent token kept alive as long, its ownership tag signed (GetDbCreds, WatchDbCreds).
    async fn issue_creds(
        &self,
        actor: &Actor,
        mount: &str,
        role: &str,
        deadline: Option<Instant>,
    ) -> Result<GetDbCredsResponse, Error> {
        let lease = self
            .vault
            .db_creds(&actor.token, mount, role, deadline)
            .await
            .map_err(|e| Error::from_vault(e, Subject::DbRole(role)))?;
        let secs = self.keep_parent(actor, &actor.token, lease.lease_duration, deadline).await;
        self.leases.insert(&lease.lease_id, &actor.caller, actor.token.clone(), Duration::from_secs(secs));
        let lease_token = self.sign_lease(actor, &lease.lease_id, deadline).await;
        tracing::info!(caller = %actor.caller, role, lease_id = %lease.lease_id, ttl = secs, "database credentials issued");
        Ok(GetDbCredsResponse {
            username: lease.credentials.username,
            password: lease.credentials.password,
            lease_id: lease.lease_id,
            lease_duration: Some(duration(secs)),
            renewable: lease.renewable,
            lease_token,
        })
    }
}

/// How a caller proved it owns a lease.
enum Proof {
    /// This replica issued the lease; here is the token that parents it.
    Local(VaultToken),
    /// A verified tag; the parent token is known by its accessor, renewed with the gateway's token.
    Tag { accessor: String },
}

/// The content of a `lease_token`: the parent token's accessor and the Transit HMAC binding lease,
/// owner and accessor together.
#[derive(serde::Serialize, serde::Deserialize)]
struct OwnerTag {
    #[serde(rename = "a")]
    accessor: String,
    #[serde(rename = "h")]
    hmac: String,
}

/// Longest `lease_token` accepted (real ones are ~150 bytes).
const MAX_LEASE_TOKEN: usize = 2048;

impl OwnerTag {
    fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("vg1.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    }

    fn parse(token: &str) -> Option<OwnerTag> {
        use base64::Engine;
        if token.len() > MAX_LEASE_TOKEN {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.strip_prefix("vg1.")?).ok()?;
        let tag: OwnerTag = serde_json::from_slice(&json).ok()?;
        (!tag.accessor.is_empty() && tag.hmac.starts_with("vault:")).then_some(tag)
    }
}

/// What the HMAC covers: the lease, its owner and the accessor of its parent token.
fn tag_input(lease_id: &str, owner: &str, accessor: &str) -> Vec<u8> {
    format!("vaultgate-lease-owner/v1\n{lease_id}\n{owner}\n{accessor}").into_bytes()
}

impl Described for GetDbCredsRequest {
    const RPC: &'static Rpc = rpc!("DatabaseService", "GetDbCreds", DbRole);
    fn target(&self) -> (&str, usize) {
        (&self.role, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::DbRole { mount: &self.mount, role: &self.role })
    }
}

impl Described for WatchDbCredsRequest {
    const RPC: &'static Rpc = rpc!("DatabaseService", "WatchDbCreds", DbRole, stream);
    fn target(&self) -> (&str, usize) {
        (&self.role, 1)
    }
    fn resource(&self) -> Option<Resource<'_>> {
        Some(Resource::DbRole { mount: &self.mount, role: &self.role })
    }
}

impl Described for RenewLeaseRequest {
    const RPC: &'static Rpc = rpc!("DatabaseService", "RenewLease", Lease);
    fn target(&self) -> (&str, usize) {
        (&self.lease_id, 1)
    }
}

impl Described for RevokeLeaseRequest {
    const RPC: &'static Rpc = rpc!("DatabaseService", "RevokeLease", Lease);
    fn target(&self) -> (&str, usize) {
        (&self.lease_id, 1)
    }
}

#[tonic::async_trait]
impl DatabaseService for Database {
    type WatchDbCredsStream = crate::stream::Outgoing<WatchDbCredsResponse>;

    async fn get_db_creds(&self, req: Request<GetDbCredsRequest>) -> Result<Response<GetDbCredsResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let mount = if r.mount.is_empty() { gw.config.mounts.database.as_str() } else { r.mount.as_str() };
            gw.issue_creds(&actor, mount, &r.role, deadline).await
        })
        .await
    }

    async fn watch_db_creds(
        &self,
        req: Request<WatchDbCredsRequest>,
    ) -> Result<Response<Self::WatchDbCredsStream>, Status> {
        let gw = &self.0;
        gw.serve_stream(req, |actor, r, out| {
            let mount = if r.mount.is_empty() { gw.config.mounts.database.clone() } else { r.mount.clone() };
            gw.clone().watch_db_creds(actor, mount, r.role.clone(), out)
        })
        .await
    }

    async fn renew_lease(&self, req: Request<RenewLeaseRequest>) -> Result<Response<RenewLeaseResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
                let increment = validate::lease_increment(r.increment.as_ref())?;
                let proof = gw.ownership(&actor, &r.lease_id, &r.lease_token, deadline).await?;
                let secs = gw
                    .vault
                    .lease_renew(&actor.token, &r.lease_id, increment, deadline)
                    .await
                    .map_err(|e| Error::from_vault(e, Subject::Lease(&r.lease_id)))?;
                let secs = match proof {
                    Proof::Local(parent) => gw.keep_parent(&actor, &parent, secs, deadline).await,
                    Proof::Tag { accessor } => {
                        let want = secs.saturating_add(PARENT_SLACK.as_secs());
                        let role = gw.config.leases.as_ref().map_or("", |l| l.role.as_str());
                        let accessor = &accessor;
                        let renewed = gw
                            .sessions
                            .with_service_token(role, deadline, |token| async move {
                                gw.vault.renew_accessor(&token, accessor, want, deadline).await
                            })
                            .await;
                        match renewed {
                            Ok(Ok(token_secs)) => secs.min(token_secs),
                            Ok(Err(e)) => {
                                tracing::warn!(error = ?e, "could not renew the lease's parent token by accessor; the lease ends with it");
                                secs
                            }
                            Err(e) => {
                                tracing::warn!(error = ?e, "could not renew the lease's parent token by accessor; the lease ends with it");
                                secs
                            }
                        }
                    }
                };
                gw.leases.extend(&r.lease_id, Duration::from_secs(secs));
                Ok(RenewLeaseResponse { lease_duration: Some(duration(secs)) })
            },
        )
        .await
    }

    async fn revoke_lease(&self, req: Request<RevokeLeaseRequest>) -> Result<Response<RevokeLeaseResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            gw.ownership(&actor, &r.lease_id, &r.lease_token, deadline).await?;
            gw.vault
                .lease_revoke(&actor.token, &r.lease_id, deadline)
                .await
                .map_err(|e| Error::from_vault(e, Subject::Lease(&r.lease_id)))?;
            gw.leases.remove(&r.lease_id);
            tracing::info!(caller = %actor.caller, lease_id = %r.lease_id, "lease revoked");
            Ok(RevokeLeaseResponse {})
        })
        .await
    }
}
