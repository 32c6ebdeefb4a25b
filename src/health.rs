//! The health watcher: polls Vault's unauthenticated `sys/health` (never a Transit operation)
//! and sets `grpc.health.v1` for the whole server (`""`) and each vaultgate service. SERVING while
//! Vault is reachable and unsealed; NOT_SERVING otherwise.

use crate::vault::{sys::NodeHealth, Client};
use std::time::Duration;
use tokio::time::Instant;
use tonic_health::{server::HealthReporter, ServingStatus};

/// The names reported: the server as a whole, then each service.
pub const SERVICES: [&str; 5] = [
    "",
    "vaultgate.v1.EncryptionService",
    "vaultgate.v1.SecretService",
    "vaultgate.v1.DatabaseService",
    "vaultgate.v1.IdentityService",
];

/// The health name a liveness probe asks: SERVING while the process runs, whatever Vault's state.
pub const LIVENESS: &str = "liveness";

/// Sets every service name that follows Vault to `status`.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Polls `sys/health` every `interval` until the task is dropped, reporting each change once.
pub async fn watch(vault: Client, reporter: HealthReporter, interval: Duration) {
    let mut last: Option<bool> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // A probe must end well before the next one is due, so a hung Vault is seen within ~2 intervals.
        let deadline = Instant::now() + interval.max(Duration::from_millis(200));
        let probe = vault.health(Some(deadline)).await;
        let serving = matches!(probe, Ok(NodeHealth::Ready));
        crate::metrics::get().vault_up.set(i64::from(serving));
        if last != Some(serving) {
            match &probe {
                Ok(NodeHealth::Ready) => tracing::info!(vault = %vault.address(), "vault ready: SERVING"),
                Ok(state) => tracing::warn!(vault = %vault.address(), ?state, "vault not ready: NOT_SERVING"),
                Err(e) => tracing::warn!(vault = %vault.address(), error = ?e, "vault unreachable: NOT_SERVING"),
            }
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            set_all(&reporter, status).await;
            last = Some(serving);
        }
    }
}
