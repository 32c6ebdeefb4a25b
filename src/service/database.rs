//! `vaultgate.v1.DatabaseService` over the database engine: dynamic credentials, and renewal or
//! revocation of a lease by the caller that obtained it (see `leases.rs` for the lifetime rule).

use super::{
    validate::{self, Checked},
    Gateway,
};
use crate::audit::Target;
use crate::{
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
    async fn keep_parent(&self, parent: &VaultToken, lease_secs: u64, deadline: Option<Instant>) -> u64 {
        match self.vault.renew_self(parent, lease_secs.saturating_add(PARENT_SLACK.as_secs()), deadline).await {
            Ok(token_secs) => lease_secs.min(token_secs),
            Err(e) => {
                tracing::warn!(error = ?e, "could not renew the token that parents a lease; the lease ends with it");
                lease_secs
            }
        }
    }

    fn owned_parent(&self, actor: &Actor, lease_id: &str) -> Result<VaultToken, Error> {
        match self.leases.check(lease_id, &actor.caller) {
            Ownership::Owner(parent) => Ok(parent),
            Ownership::Other => Err(Error::PermissionDenied(format!(
                "lease {lease_id:?} was obtained by another caller; only its owner may use it"
            ))),
            Ownership::Unknown => Err(Error::NotFound(format!(
                "lease {lease_id:?} does not exist: it expired, was revoked, or was not obtained through this gateway"
            ))),
        }
    }
}

#[tonic::async_trait]
impl DatabaseService for Database {
    async fn get_db_creds(&self, req: Request<GetDbCredsRequest>) -> Result<Response<GetDbCredsResponse>, Status> {
        let gw = &self.0;
        gw.handle("GetDbCreds", req, |r| Target::new(&r.role, 1), |actor, deadline, r| async move {
            r.check(&gw.config.limits)?;
            let mount = if r.mount.is_empty() { gw.config.mounts.database.as_str() } else { r.mount.as_str() };
            let lease = gw
                .vault
                .db_creds(&actor.token, mount, &r.role, deadline)
                .await
                .map_err(|e| Error::from_vault(e, Subject::DbRole(&r.role)))?;
            let secs = gw.keep_parent(&actor.token, lease.lease_duration, deadline).await;
            gw.leases.insert(&lease.lease_id, &actor.caller, actor.token.clone(), Duration::from_secs(secs));
            tracing::info!(caller = %actor.caller, role = %r.role, lease_id = %lease.lease_id, ttl = secs, "database credentials issued");
            Ok(GetDbCredsResponse {
                username: lease.credentials.username,
                password: lease.credentials.password,
                lease_id: lease.lease_id,
                lease_duration: Some(duration(secs)),
                renewable: lease.renewable,
            })
        })
        .await
    }

    async fn renew_lease(&self, req: Request<RenewLeaseRequest>) -> Result<Response<RenewLeaseResponse>, Status> {
        let gw = &self.0;
        gw.handle(
            "RenewLease",
            req,
            |r| Target::new(&r.lease_id, 1),
            |actor, deadline, r| async move {
                r.check(&gw.config.limits)?;
                let increment = validate::lease_increment(r.increment.as_ref())?;
                let parent = gw.owned_parent(&actor, &r.lease_id)?;
                let secs = gw
                    .vault
                    .lease_renew(&actor.token, &r.lease_id, increment, deadline)
                    .await
                    .map_err(|e| Error::from_vault(e, Subject::Lease(&r.lease_id)))?;
                let secs = gw.keep_parent(&parent, secs, deadline).await;
                gw.leases.extend(&r.lease_id, Duration::from_secs(secs));
                Ok(RenewLeaseResponse { lease_duration: Some(duration(secs)) })
            },
        )
        .await
    }

    async fn revoke_lease(&self, req: Request<RevokeLeaseRequest>) -> Result<Response<RevokeLeaseResponse>, Status> {
        let gw = &self.0;
        gw.handle(
            "RevokeLease",
            req,
            |r| Target::new(&r.lease_id, 1),
            |actor, deadline, r| async move {
                r.check(&gw.config.limits)?;
                gw.owned_parent(&actor, &r.lease_id)?;
                gw.vault
                    .lease_revoke(&actor.token, &r.lease_id, deadline)
                    .await
                    .map_err(|e| Error::from_vault(e, Subject::Lease(&r.lease_id)))?;
                gw.leases.remove(&r.lease_id);
                tracing::info!(caller = %actor.caller, lease_id = %r.lease_id, "lease revoked");
                Ok(RevokeLeaseResponse {})
            },
        )
        .await
    }
}
