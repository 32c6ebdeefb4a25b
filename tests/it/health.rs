//! grpc.health.v1 follows Vault: a gateway and an OpenBao of their own, stopped and restarted.

use crate::support::{serve_gateway, Env};
use std::time::Duration;
use tokio::time::Instant;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
use vaultgate::dev::process;

/// Polls `service`'s health until it is `want`; panics after `within`. Returns the time it took.
pub async fn wait_for(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = client.check(HealthCheckRequest { service: service.into() }).await.map(|r| r.into_inner().status);
        if got.as_ref().ok() == Some(&(want as i32)) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "service {service:?} not {want:?} within {within:?} (last: {got:?})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn follows_vault_down_and_up(env: &'static Env) {
    let dir = env.dir.join("health");
    std::fs::create_dir_all(&dir).expect("dir");
    let bao_bin = process::find_bao().expect("bao");
    let port = process::free_port().expect("port");
    let bao = process::Bao::start_at(&bao_bin, &dir, "health-root", port).await.expect("start bao");
    let own =
        serve_gateway(&format!("[vault]\naddress = \"{}\"\nhealth_interval_ms = 500\ntimeout_ms = 2000\n", bao.addr))
            .await;
    let mut client = HealthClient::new(own.channel.clone());
    let limit = Duration::from_secs(5);
    for service in ["", "vaultgate.v1.EncryptionService", "vaultgate.v1.SecretService", "vaultgate.v1.DatabaseService"]
    {
        wait_for(&mut client, service, ServingStatus::Serving, limit).await;
    }
    bao.stop().await;
    let down = wait_for(&mut client, "vaultgate.v1.EncryptionService", ServingStatus::NotServing, limit).await;
    wait_for(&mut client, "", ServingStatus::NotServing, limit).await;
    // Liveness does not follow Vault: an outage must not restart the gateway.
    wait_for(&mut client, "liveness", ServingStatus::Serving, Duration::ZERO).await;
    let bao = process::Bao::start_at(&bao_bin, &dir, "health-root", port).await.expect("restart bao");
    let up = wait_for(&mut client, "vaultgate.v1.EncryptionService", ServingStatus::Serving, limit).await;
    println!(
        "  health: NOT_SERVING {:.1} s after Vault stopped, SERVING {:.1} s after it returned",
        down.as_secs_f64(),
        up.as_secs_f64()
    );
    bao.stop().await;
}
