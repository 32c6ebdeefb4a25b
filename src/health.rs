//! The health watcher: polls the unauthenticated `sys/health` of every configured Vault node
//! (never a Transit operation), tells the client which node is active and which are usable (a
//! ready node closes its circuit breaker, a sealed one opens it), and sets `grpc.health.v1` for
//! the whole server (`""`) and each vaultgate service: SERVING while some node is reachable,
//! unsealed and not given up on; NOT_SERVING otherwise.
//!
//! Each probe waits at most `vault.silent_after_ms`: a probe unanswered that long, while the node
//! answered nothing else, finds the node silent (its breaker opens at once, `vault/nodes.rs`),
//! so a hung node is detected within one interval plus that. While some node is not ready the
//! nodes are probed four times as often, so one that answers again is back within ~¼ interval;
//! only these probes close a silent node's breaker (no caller waits on a silent node).

use crate::vault::{nodes::Role, sys::NodeHealth, Client};
use std::time::Duration;
use tokio::time::Instant;
use tonic_health::{server::HealthReporter, ServingStatus};

/// The names reported: the server as a whole, then each service.
pub const SERVICES: [&str; 6] = [
    "",
    "vaultgate.v1.EncryptionService",
    "vaultgate.v1.SecretService",
    "vaultgate.v1.DatabaseService",
    "vaultgate.v1.IdentityService",
    "vaultgate.v1.PkiService",
];

/// The health name a liveness probe asks: SERVING while the process runs, whatever Vault's state.
pub const LIVENESS: &str = "liveness";

/// Sets every service name that follows Vault to `status`.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Polls every node's `sys/health` every `interval` until the task is dropped, reporting each
/// change of the overall status once.
pub async fn watch(vault: Client, reporter: HealthReporter, interval: Duration) {
    let mut last: Option<bool> = None;
    let mut roles: Vec<Option<Role>> = vec![None; vault.nodes().all().len()];
    let silent_after = vault.nodes().config().silent_after;
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let all_ready = roles.iter().all(|r| matches!(r, Some(Role::Active | Role::Standby)));
        next = sent + if all_ready { interval } else { interval / 4 };
        let deadline = sent + silent_after;
        let mut probes = tokio::task::JoinSet::new();
        for index in 0..roles.len() {
            let vault = vault.clone();
            probes.spawn(async move { (index, vault.probe(index, Some(deadline)).await) });
        }
        while let Some(Ok((index, probe))) = probes.join_next().await {
            let role = match &probe {
                Ok(NodeHealth::Ready) => Role::Active,
                Ok(NodeHealth::Standby) => Role::Standby,
                Ok(NodeHealth::Sealed | NodeHealth::Uninitialized) => Role::Sealed,
                Err(_) => Role::Down,
            };
            vault.nodes().observe(index, role, sent, Instant::now());
            if roles[index] != Some(role) {
                let node = vault.nodes().get(index).map_or("?", |n| n.label.as_str());
                match &probe {
                    Ok(state) => tracing::info!(vault = node, ?state, "vault node state"),
                    Err(e) => tracing::warn!(vault = node, error = ?e, "vault node unreachable"),
                }
                roles[index] = Some(role);
            }
        }
        let mut counts = [0i64; 4];
        for role in roles.iter().flatten() {
            let state = match role {
                Role::Active => 0,
                Role::Standby => 1,
                Role::Sealed => 2,
                Role::Down => 3,
                Role::Unknown => continue,
            };
            counts[state] += 1;
        }
        vault.metrics().nodes(counts);
        let serving = vault.nodes().any_usable(Instant::now());
        vault.metrics().vault_up.set(i64::from(serving));
        if last != Some(serving) {
            if serving {
                tracing::info!("vault ready: SERVING");
            } else {
                tracing::warn!("no vault node is usable: NOT_SERVING");
            }
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            set_all(&reporter, status).await;
            last = Some(serving);
        }
    }
}
