//! The real `grpcurl` (1.8, reflection v1alpha) against the gateway, as the README shows it.

use crate::support::Env;

async fn grpcurl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl on PATH (make test installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "grpcurl {args:?} failed: {text}");
    text
}

pub async fn grpcurl_lists_and_encrypts(env: &'static Env) {
    let addr = env.addr.to_string();
    let services = grpcurl(&["-plaintext", &addr, "list"]).await;
    for s in [
        "vaultgate.v1.EncryptionService",
        "vaultgate.v1.SecretService",
        "vaultgate.v1.DatabaseService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(s), "{s} missing from: {services}");
    }
    let methods = grpcurl(&["-plaintext", &addr, "describe", "vaultgate.v1.EncryptionService"]).await;
    assert!(methods.contains("rpc GenerateDataKey"), "{methods}");
    let auth = format!("authorization: Bearer {}", env.billing);
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"key":"billing","plaintext":"aGVsbG8="}"#,
        &addr,
        "vaultgate.v1.EncryptionService/Encrypt",
    ])
    .await;
    assert!(out.contains("\"ciphertext\": \"vault:v1:"), "{out}");
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"path":"billing/api-keys"}"#,
        &addr,
        "vaultgate.v1.SecretService/GetSecret",
    ])
    .await;
    assert!(out.contains("sk_test_demo"), "{out}");
}

pub async fn metrics_endpoint_serves_prometheus_text(env: &'static Env) {
    use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient, EncryptRequest};
    let mut c = EncryptionServiceClient::new(env.channel());
    let r = EncryptRequest { key: "billing".into(), plaintext: b"m".to_vec(), ..Default::default() };
    c.encrypt(crate::support::req(r, &env.billing)).await.expect("encrypt");
    let text = env.http_get(&format!("http://{}/metrics", env.metrics_addr)).await;
    for want in [
        "vaultgate_grpc_calls_total{rpc=\"Encrypt\",code=\"Ok\"}",
        "vaultgate_role_calls_total{name=\"billing\"}",
        "vaultgate_vault_requests_total{endpoint=\"transit/encrypt\",status=\"200\"}",
        "vaultgate_batch_size_items_count",
        "vaultgate_vault_up 1",
        "vaultgate_build_info",
    ] {
        assert!(text.contains(want), "{want} missing from /metrics");
    }
    assert!(!text.contains("eyJ") && !text.contains("sk_test_demo"), "/metrics must carry no secret");
}

pub async fn request_ids_are_returned(env: &'static Env) {
    use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient, EncryptRequest};
    let mut c = EncryptionServiceClient::new(env.channel());
    let r = || EncryptRequest { key: "billing".into(), plaintext: b"r".to_vec(), ..Default::default() };
    let ok = c.encrypt(crate::support::req(r(), &env.billing)).await.expect("encrypt");
    let made = ok.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert!(made.as_deref().is_some_and(|id| !id.is_empty()), "a success carries a request id");
    let mut given = crate::support::req(r(), &env.billing);
    given.metadata_mut().insert("x-request-id", "trace-abc-123".parse().expect("ascii"));
    let echoed = c.encrypt(given).await.expect("encrypt");
    assert_eq!(echoed.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-abc-123"));
    let err = c.encrypt(tonic::Request::new(r())).await.expect_err("no credentials");
    let id = err.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert!(id.is_some_and(|id| Some(&id) != made.as_ref()), "an error carries its own request id");
}
