//! DatabaseService against the real database engine and PostgreSQL.

use crate::support::{req, Env};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;
use tonic::Code;
use vaultgate::pb::vaultgate::v1::{database_service_client::DatabaseServiceClient as Client, *};

fn creds(role: &str) -> GetDbCredsRequest {
    GetDbCredsRequest { role: role.into(), mount: String::new() }
}

pub async fn creds_log_in_renew_and_revoke(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let got = c.get_db_creds(req(creds("billing"), &env.billing)).await.expect("creds").into_inner();
    env.remember(&got.password);
    assert!(got.lease_id.starts_with("database/creds/billing/"), "{}", got.lease_id);
    assert!(got.renewable);
    assert_eq!(got.lease_duration.as_ref().map(|d| d.seconds), Some(3600));
    assert_eq!(env.pg_login(&got.username, &got.password).await.as_deref(), Ok(got.username.as_str()));
    let renewed = c
        .renew_lease(req(
            RenewLeaseRequest {
                lease_id: got.lease_id.clone(),
                increment: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
            },
            &env.billing,
        ))
        .await
        .expect("renew")
        .into_inner();
    assert_eq!(renewed.lease_duration.map(|d| d.seconds), Some(600));
    let (_, lookup) = env.vault(Method::PUT, "sys/leases/lookup", Some(json!({"lease_id": got.lease_id}))).await;
    let ttl = lookup["data"]["ttl"].as_i64().expect("lease ttl");
    assert!((590..=600).contains(&ttl), "ttl after renew {ttl}");
    c.revoke_lease(req(RevokeLeaseRequest { lease_id: got.lease_id.clone() }, &env.billing)).await.expect("revoke");
    assert!(env.pg_login(&got.username, &got.password).await.is_err(), "the user must be gone after revoke");
    let status = c
        .renew_lease(req(RenewLeaseRequest { lease_id: got.lease_id, increment: None }, &env.billing))
        .await
        .expect_err("renew revoked");
    assert_eq!(status.code(), Code::NotFound);
}

/// The `qashort` caller's Vault token lives 4 s; its 60 s lease must outlive it while the caller holds it.
pub async fn lease_outlives_caller_token(env: &'static Env) {
    let short: &'static str = Box::leak(env.jwt("qashort", 3600).into_boxed_str());
    let mut c = Client::new(env.channel());
    let got = c.get_db_creds(req(creds("qa"), short)).await.expect("creds").into_inner();
    env.remember(&got.password);
    assert_eq!(got.lease_duration.as_ref().map(|d| d.seconds), Some(60));
    // The caller keeps calling meanwhile, so its token is renewed on use: those renewals must not
    // shorten the token below what the lease needs.
    let mut enc = vaultgate::pb::vaultgate::v1::encryption_service_client::EncryptionServiceClient::new(env.channel());
    for _ in 0..14 {
        let call = EncryptRequest { key: "qa-aes".into(), plaintext: b"x".to_vec(), ..Default::default() };
        enc.encrypt(req(call, short)).await.expect("the caller's other calls keep working");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(env.pg_login(&got.username, &got.password).await.is_ok(), "credentials died with the caller's 4 s token");
    let (status, lookup) = env.vault(Method::PUT, "sys/leases/lookup", Some(json!({"lease_id": got.lease_id}))).await;
    assert_eq!(status, 200, "{lookup}");
    // The caller's token was re-issued meanwhile (4 s TTL); it still owns and can renew the lease.
    let renewed = c
        .renew_lease(req(
            RenewLeaseRequest {
                lease_id: got.lease_id.clone(),
                increment: Some(prost_types::Duration { seconds: 30, nanos: 0 }),
            },
            short,
        ))
        .await
        .expect("renew by owner after re-login")
        .into_inner();
    assert_eq!(renewed.lease_duration.map(|d| d.seconds), Some(30));
    c.revoke_lease(req(RevokeLeaseRequest { lease_id: got.lease_id }, short)).await.expect("revoke");
}

pub async fn error_table(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let cases: Vec<(&str, GetDbCredsRequest, &String, Code)> = vec![
        ("unknown role", creds("qa-missing"), &env.qa, Code::NotFound),
        ("role of another caller", creds("billing"), &env.qa, Code::PermissionDenied),
        ("no database rights", creds("billing"), &env.reports, Code::PermissionDenied),
        ("empty role", creds(""), &env.billing, Code::InvalidArgument),
        (
            "bad mount",
            GetDbCredsRequest { mount: "../x".into(), ..creds("billing") },
            &env.billing,
            Code::InvalidArgument,
        ),
    ];
    for (name, r, jwt, code) in cases {
        let status = c.get_db_creds(req(r, jwt)).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {}", status.message());
    }
    let lease_cases: &[(&str, &str, Code)] = &[
        ("unknown lease", "database/creds/billing/nope", Code::NotFound),
        ("empty lease", "", Code::InvalidArgument),
        ("lease with spaces", "a b", Code::InvalidArgument),
    ];
    for (name, lease, code) in lease_cases {
        let status = c
            .renew_lease(req(RenewLeaseRequest { lease_id: lease.to_string(), increment: None }, &env.billing))
            .await
            .expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {}", status.message());
        let status = c
            .revoke_lease(req(RevokeLeaseRequest { lease_id: lease.to_string() }, &env.billing))
            .await
            .expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {}", status.message());
    }
}
