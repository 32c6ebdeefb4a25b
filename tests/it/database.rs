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
                lease_token: String::new(),
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
    c.revoke_lease(req(
        RevokeLeaseRequest { lease_id: got.lease_id.clone(), lease_token: String::new() },
        &env.billing,
    ))
    .await
    .expect("revoke");
    assert!(env.pg_login(&got.username, &got.password).await.is_err(), "the user must be gone after revoke");
    let status = c
        .renew_lease(req(
            RenewLeaseRequest { lease_id: got.lease_id, increment: None, lease_token: String::new() },
            &env.billing,
        ))
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
                lease_token: String::new(),
            },
            short,
        ))
        .await
        .expect("renew by owner after re-login")
        .into_inner();
    assert_eq!(renewed.lease_duration.map(|d| d.seconds), Some(30));
    c.revoke_lease(req(RevokeLeaseRequest { lease_id: got.lease_id, lease_token: String::new() }, short))
        .await
        .expect("revoke");
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
            .renew_lease(req(
                RenewLeaseRequest { lease_id: lease.to_string(), increment: None, lease_token: String::new() },
                &env.billing,
            ))
            .await
            .expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {}", status.message());
        let status = c
            .revoke_lease(req(
                RevokeLeaseRequest { lease_id: lease.to_string(), lease_token: String::new() },
                &env.billing,
            ))
            .await
            .expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {}", status.message());
    }
}

/// Two gateways on one config (separate memory, as two replicas): a lease obtained through one is
/// renewed and revoked through the other by its owner, with the `lease_token` it got, and refused
/// to another caller through either. The tag is a Transit HMAC made with the gateway's own token.
pub async fn lease_ownership_holds_across_replicas(env: &'static Env) {
    let dir = env.dir.join("replicas");
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = r#"
path "transit/hmac/vaultgate-leases" { capabilities = ["update"] }
path "transit/verify/vaultgate-leases" { capabilities = ["update"] }
path "auth/token/renew-accessor" { capabilities = ["update"] }
"#;
    for (path, body) in [
        ("transit/keys/vaultgate-leases", json!({"type": "aes256-gcm96"})),
        ("sys/policies/acl/vaultgate-gateway", json!({"policy": policy})),
        (
            // The gateway's own identity: its JWT (in Kubernetes, the pod's projected token) read
            // from a file at each login.
            "auth/jwt/role/vaultgate-gateway",
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "vaultgate-gateway",
                   "bound_audiences": [vaultgate::dev::issuer::AUDIENCE], "token_policies": ["vaultgate-gateway"],
                   "token_ttl": "1h"}),
        ),
    ] {
        let (status, answer) = env.vault(Method::POST, path, Some(body)).await;
        assert!(status == 200 || status == 204, "{path}: {status} {answer}");
    }
    std::fs::write(dir.join("gateway.jwt"), env.jwt("vaultgate-gateway", 3600)).expect("write");
    let toml = format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n[[callers]]\nrole = \"qa2\"\nequals = \"qa2\"\n\
         [roles.vaultgate-gateway]\njwt_file = {:?}\n\
         [leases]\nowner_key = \"vaultgate-leases\"\nrole = \"vaultgate-gateway\"\n",
        env.vault_addr,
        dir.join("gateway.jwt")
    );
    // Two `vaultgate serve` processes: the same config but for the listen address.
    let (_one, ch1) = spawn_gateway(&dir, "one", &toml).await;
    let (_two, ch2) = spawn_gateway(&dir, "two", &toml).await;
    let (mut c1, mut c2) = (Client::new(ch1), Client::new(ch2));
    let qa2 = env.jwt("qa2", 3600);

    let got = c1.get_db_creds(req(creds("qa"), &env.qa)).await.expect("creds via replica one").into_inner();
    env.remember(&got.password);
    assert!(got.lease_token.starts_with("vg1."), "a lease_token is returned: {:?}", got.lease_token);
    let renew = |token: &str, secs: i64| RenewLeaseRequest {
        lease_id: got.lease_id.clone(),
        increment: Some(prost_types::Duration { seconds: secs, nanos: 0 }),
        lease_token: token.to_string(),
    };
    let revoke = |token: &str| RevokeLeaseRequest { lease_id: got.lease_id.clone(), lease_token: token.to_string() };

    // Replica two never saw the lease: without the tag it cannot know the owner.
    let err = c2.renew_lease(req(renew("", 120), &env.qa)).await.expect_err("unknown to replica two");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("lease_token"), "{}", err.message());
    // Another caller holding the owner's lease id and tag is refused through either replica.
    for c in [&mut c1, &mut c2] {
        let err = c.renew_lease(req(renew(&got.lease_token, 120), &qa2)).await.expect_err("not the owner");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let err = c.revoke_lease(req(revoke(&got.lease_token), &qa2)).await.expect_err("not the owner");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // A tag altered to name another parent token does not verify; garbage is refused too.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut tag: serde_json::Value =
        serde_json::from_slice(&b64.decode(got.lease_token.trim_start_matches("vg1.")).expect("b64")).expect("json");
    let accessor = tag["a"].as_str().expect("accessor").to_string();
    tag["a"] = json!(format!("{accessor}x"));
    let forged = format!("vg1.{}", b64.encode(tag.to_string()));
    for bad in [forged.as_str(), "vg1.garbage", "not-a-tag"] {
        let err = c2.renew_lease(req(renew(bad, 120), &env.qa)).await.expect_err("forged tag");
        assert_eq!(err.code(), Code::PermissionDenied, "{bad}: {err:?}");
    }

    // The owner renews through replica two; its parent token is renewed by accessor to outlive it.
    let renewed =
        c2.renew_lease(req(renew(&got.lease_token, 900), &env.qa)).await.expect("owner renews via two").into_inner();
    assert_eq!(renewed.lease_duration.map(|d| d.seconds), Some(900));
    let (_, lookup) = env.vault(Method::PUT, "sys/leases/lookup", Some(json!({"lease_id": got.lease_id}))).await;
    let ttl = lookup["data"]["ttl"].as_i64().expect("lease ttl");
    assert!((890..=900).contains(&ttl), "lease ttl after renewal via replica two: {ttl}");
    let (_, parent) = env.vault(Method::POST, "auth/token/lookup-accessor", Some(json!({"accessor": accessor}))).await;
    let parent_ttl = parent["data"]["ttl"].as_i64().expect("parent ttl");
    assert!(parent_ttl >= 900, "the parent token outlives the lease: {parent_ttl} s");

    c2.revoke_lease(req(revoke(&got.lease_token), &env.qa)).await.expect("owner revokes via two");
    assert!(env.pg_login(&got.username, &got.password).await.is_err(), "the user is gone after revoke via two");
    // The replicas' own debug logs hold no secret either.
    // Each log must be readable and at debug level: an empty or missing log would pass the scan.
    for name in ["one", "two"] {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("replica {name}'s log cannot be read: {e}"));
        assert!(log.contains("DEBUG"), "replica {name}'s log has no debug line: {} bytes", log.len());
        assert!(log.contains("database credentials issued") || name == "two", "{name}'s log is the gateway's log");
        for secret in env.secrets().iter().chain([&got.lease_token, &got.password]) {
            assert!(!log.contains(secret.as_str()), "replica {name}'s log holds a secret");
        }
    }
}

/// Runs `vaultgate serve` as a child process (killed when dropped) with `toml` after its listen
/// address; returns it and a channel once it accepts connections.
pub(crate) async fn spawn_gateway(
    dir: &std::path::Path,
    name: &str,
    toml: &str,
) -> (tokio::process::Child, tonic::transport::Channel) {
    let port = vaultgate::dev::process::free_port().expect("a free port");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, format!("listen = \"127.0.0.1:{port}\"\n{toml}")).expect("write the config");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "vaultgate=debug")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start vaultgate serve");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("endpoint")
                .connect_lazy();
            return (child, channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("vaultgate serve ({name}) did not listen within 10 s");
}
