//! `vaultgate.v1.IdentityService`: tells a caller how the gateway sees it (identity, role, the
//! Vault token's policies and TTL) and what it may do on the paths it asks about, as Vault's
//! `sys/capabilities-self` and the gateway's own rules say. Never returns the token itself.

use super::{rpc, Described, Gateway};
use crate::{
    call::Rpc,
    error::{Error, Subject},
    pb::vaultgate::v1::{identity_service_server::IdentityService, *},
    rules::{self, Resource},
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The identity service.
pub struct Identity(pub Arc<Gateway>);

impl Described for WhoAmIRequest {
    const RPC: &'static Rpc = rpc!("IdentityService", "WhoAmI", Names);
    fn target(&self) -> (&str, usize) {
        ("", self.keys.len() + self.secret_paths.len() + self.db_roles.len())
    }
}

#[tonic::async_trait]
impl IdentityService for Identity {
    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let m = &gw.config.mounts;
            let mut asked: Vec<(&str, &str, Resource<'_>, Vec<String>)> = Vec::new();
            for key in &r.keys {
                let paths = ["encrypt", "decrypt", "rewrap", "datakey/plaintext", "datakey/wrapped", "keys"]
                    .iter()
                    .map(|op| format!("{}/{op}/{key}", m.transit))
                    .chain([format!("{}/keys/{key}/rotate", m.transit)])
                    .collect();
                asked.push(("key", key, Resource::Key(key), paths));
            }
            for path in &r.secret_paths {
                let paths = vec![format!("{}/data/{path}", m.kv), format!("{}/metadata/{path}", m.kv)];
                asked.push(("secret", path, Resource::Secret { mount: &m.kv, path }, paths));
            }
            for role in &r.db_roles {
                asked.push((
                    "db_role",
                    role,
                    Resource::DbRole { mount: &m.database, role },
                    vec![format!("{}/creds/{role}", m.database)],
                ));
            }
            let token =
                gw.vault.lookup_self(&actor.token, deadline).await.map_err(|e| Error::from_vault(e, Subject::Token))?;
            let all: Vec<String> = asked.iter().flat_map(|(_, _, _, p)| p.iter().cloned()).collect();
            let caps = if all.is_empty() {
                Default::default()
            } else {
                gw.vault
                    .capabilities_self(&actor.token, &all, deadline)
                    .await
                    .map_err(|e| Error::from_vault(e, Subject::Token))?
            };
            let role_rules = gw.config.roles.get(&*actor.role);
            let capabilities = asked
                .iter()
                .flat_map(|(kind, name, resource, paths)| {
                    let allowed = rules::allowed(role_rules, *resource);
                    paths.iter().map(move |path| (kind, name, allowed, path))
                })
                .map(|(kind, name, allowed, path)| PathCapabilities {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    path: path.clone(),
                    capabilities: caps.get(path).cloned().unwrap_or_default(),
                    allowed_by_gateway: allowed,
                })
                .collect();
            Ok(WhoAmIResponse {
                identity_kind: actor.kind.to_string(),
                identity: actor.name.to_string(),
                role: actor.role.to_string(),
                policies: token.policies,
                token_ttl: (token.ttl > 0)
                    .then(|| prost_types::Duration { seconds: i64::try_from(token.ttl).unwrap_or(i64::MAX), nanos: 0 }),
                token_shared: !matches!(actor.kind, "jwt" | "kubernetes"),
                capabilities,
            })
        })
        .await
    }
}
