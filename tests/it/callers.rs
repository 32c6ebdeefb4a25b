//! Callers and identity: credential errors, isolation between callers, concurrency, login coalescing.

use crate::support::{req, serve_gateway, Env};
use tonic::{Code, Request};
use vaultgate::{
    dev::issuer::Issuer,
    pb::vaultgate::v1::{
        database_service_client::DatabaseServiceClient, encryption_service_client::EncryptionServiceClient,
        secret_service_client::SecretServiceClient, *,
    },
};

fn enc(key: &str, plaintext: &[u8]) -> EncryptRequest {
    EncryptRequest { key: key.into(), plaintext: plaintext.to_vec(), ..Default::default() }
}

fn with_auth(value: &str) -> Request<EncryptRequest> {
    let mut r = Request::new(enc("billing", b"x"));
    r.metadata_mut().insert("authorization", value.parse().expect("ascii"));
    r
}

pub async fn credentials_error_table(env: &'static Env) {
    let mut c = EncryptionServiceClient::new(env.channel());
    let rogue = Issuer::generate().expect("rogue issuer").mint("billing", 3600).expect("rogue jwt");
    let expired = env.jwt("billing", -120);
    let unmapped = env.jwt("nobody", 3600);
    env.remember(&rogue);
    let cases: Vec<(&str, Request<EncryptRequest>, Code)> = vec![
        ("no credentials", Request::new(enc("billing", b"x")), Code::Unauthenticated),
        ("not bearer", with_auth("Basic dXNlcjpwYXNz"), Code::Unauthenticated),
        ("not a JWT", with_auth("Bearer not-a-jwt"), Code::Unauthenticated),
        ("signed by an unknown key", req(enc("billing", b"x"), &rogue), Code::Unauthenticated),
        ("expired", req(enc("billing", b"x"), &expired), Code::Unauthenticated),
        ("no caller rule", req(enc("billing", b"x"), &unmapped), Code::PermissionDenied),
    ];
    for (name, r, code) in cases {
        let status = c.encrypt(r).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        assert!(!status.message().contains("eyJ"), "{name}: the message must not echo a JWT");
    }
    // Health and reflection need no credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(env.channel());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health without auth");
}

pub async fn callers_cannot_use_each_others_resources(env: &'static Env) {
    let mut e = EncryptionServiceClient::new(env.channel());
    let mut s = SecretServiceClient::new(env.channel());
    let mut d = DatabaseServiceClient::new(env.channel());
    let billing_ct = e.encrypt(req(enc("billing", b"b"), &env.billing)).await.expect("encrypt").into_inner().ciphertext;
    let reports_ct = e.encrypt(req(enc("reports", b"r"), &env.reports)).await.expect("encrypt").into_inner().ciphertext;
    // Each pair: (caller, other's key, other's ciphertext, other's secret).
    for (jwt, key, ct, secret) in [
        (&env.reports, "billing", &billing_ct, "billing/api-keys"),
        (&env.billing, "reports", &reports_ct, "reports/config"),
    ] {
        let denied = [
            e.encrypt(req(enc(key, b"x"), jwt)).await.err(),
            e.decrypt(req(DecryptRequest { key: key.into(), ciphertext: ct.clone(), ..Default::default() }, jwt))
                .await
                .err(),
            e.get_key(req(GetKeyRequest { key: key.into() }, jwt)).await.err(),
            e.rotate(req(RotateRequest { key: key.into() }, jwt)).await.err(),
            s.get_secret(req(GetSecretRequest { path: secret.into(), ..Default::default() }, jwt)).await.err(),
        ];
        for (i, status) in denied.into_iter().enumerate() {
            let status = status.unwrap_or_else(|| panic!("call {i} for key {key} should be denied"));
            assert_eq!(status.code(), Code::PermissionDenied, "call {i}: {}", status.message());
        }
    }
    // reports has no database role; billing's lease cannot be renewed or revoked by reports.
    let lease = d
        .get_db_creds(req(GetDbCredsRequest { role: "billing".into(), mount: String::new() }, &env.billing))
        .await
        .expect("creds")
        .into_inner();
    env.remember(&lease.password);
    let status = d
        .renew_lease(req(
            RenewLeaseRequest { lease_id: lease.lease_id.clone(), increment: None, lease_token: String::new() },
            &env.reports,
        ))
        .await
        .expect_err("renew");
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    let status = d
        .revoke_lease(req(
            RevokeLeaseRequest { lease_id: lease.lease_id.clone(), lease_token: String::new() },
            &env.reports,
        ))
        .await
        .expect_err("revoke");
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    assert!(env.pg_login(&lease.username, &lease.password).await.is_ok(), "a refused revoke must not revoke");
    d.revoke_lease(req(RevokeLeaseRequest { lease_id: lease.lease_id, lease_token: String::new() }, &env.billing))
        .await
        .expect("owner revokes");
}

pub async fn five_hundred_mixed_round_trips(env: &'static Env) {
    let callers: [(&'static str, &'static String); 3] =
        [("billing", &env.billing), ("reports", &env.reports), ("qa-aes", &env.qa)];
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (key, jwt) = callers[i % 3];
        let mut c = EncryptionServiceClient::new(env.channel());
        tasks.push(tokio::spawn(async move {
            let plaintext = format!("{key}-payload-{i}");
            if i % 100 == 0 {
                env.remember_plaintext(plaintext.as_bytes());
            }
            let ct =
                c.encrypt(req(enc(key, plaintext.as_bytes()), jwt)).await.expect("encrypt").into_inner().ciphertext;
            let r = DecryptRequest { key: key.into(), ciphertext: ct, ..Default::default() };
            let back = c.decrypt(req(r, jwt)).await.expect("decrypt").into_inner().plaintext;
            assert_eq!(back, plaintext.into_bytes(), "round trip {i} came back to the wrong caller");
        }));
    }
    for t in tasks {
        t.await.expect("round trip");
    }
}

/// A gateway of its own (so its login counter is exact) receives 50 concurrent first calls of one caller.
pub async fn one_login_for_fifty_first_calls(env: &'static Env) {
    let own = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\n",
        env.vault_addr
    ))
    .await;
    let channel = own.channel.clone();
    let jwt: &'static str = Box::leak(env.jwt("billing", 3600).into_boxed_str());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut c = EncryptionServiceClient::new(channel.clone());
            tokio::spawn(
                async move { c.encrypt(req(enc("billing", format!("{i}").as_bytes()), jwt)).await.map(|_| ()) },
            )
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("encrypt");
    }
    assert_eq!(own.gateway.sessions.logins(), 1, "50 concurrent first calls must share one login");
}
