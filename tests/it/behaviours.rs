//! Behaviours the documentation promises, each attacked on a gateway of its own against the real
//! OpenBao and PostgreSQL, with a loopback [`Proxy`] in front of Vault where a fault is needed:
//! graceful shutdown's drain, writes sent once when a connection drops, a slow Vault answered
//! `UNAVAILABLE` within `vault.timeout_ms`, `tls.require_client_cert`, `vault.namespace`,
//! `audit.fail_closed = false`, invalid `x-request-id`s replaced, deleted and destroyed KV
//! versions. Each prints what it measured.

use crate::{
    identity::{tls_channel, vault_base, Pki},
    support::{req, serve_gateway, Env, Proxy, TestGateway},
};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
use vaultgate::pb::vaultgate::v1::{
    database_service_client::DatabaseServiceClient, encryption_service_client::EncryptionServiceClient as Client,
    secret_service_client::SecretServiceClient, *,
};

fn enc(key: &str, plaintext: &[u8]) -> EncryptRequest {
    EncryptRequest { key: key.into(), plaintext: plaintext.to_vec(), ..Default::default() }
}

/// A gateway for the `qa` caller whose Vault is `vault` (a proxy's URL or OpenBao's), plus `extra`
/// TOML. Its node is never judged silent (`vault.silent_after_ms` at its maximum): these tests
/// hold Vault's answers on purpose, and on a loaded machine a slow answer is not a dead node.
async fn qa_gateway(vault: &str, extra: &str) -> TestGateway {
    serve_gateway(&format!(
        "[vault]\naddress = \"{vault}\"\nsilent_after_ms = 60000\n{extra}\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n"
    ))
    .await
}

/// Requests OpenBao's own audit device logged for `path` (the dev server's file device).
fn vault_requests_for(env: &Env, path: &str) -> usize {
    let text = std::fs::read_to_string(env.dir.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["type"] == "request" && l["request"]["path"] == path)
        .count()
}

/// Graceful shutdown, both halves of `[shutdown]`: calls that Vault (behind a delaying proxy)
/// holds past `grace_ms` are still answered, within `drain_timeout_ms`; a new connection after the
/// grace is refused; calls still running after the drain timeout are dropped and the server
/// stops. A caller's token that parents a live database lease is not revoked at shutdown: its
/// credentials still log in to PostgreSQL after the gateway is gone.
pub async fn shutdown_drains_held_calls_drops_late_ones_and_keeps_leases(env: &'static Env) {
    let proxy = Proxy::start(&env.vault_addr).await;
    let (grace, drain) = (Duration::from_millis(500), Duration::from_millis(8000));
    let held = Duration::from_millis(2500);
    let own = qa_gateway(
        &proxy.url,
        &format!(
            "timeout_ms = 20000\n[shutdown]\ngrace_ms = {}\ndrain_timeout_ms = {}\n",
            grace.as_millis(),
            drain.as_millis()
        ),
    )
    .await;
    let mut c = Client::new(own.channel.clone());
    c.encrypt(req(enc("qa-aes", b"warm-up"), &env.qa)).await.expect("warm-up (login)");
    let creds = DatabaseServiceClient::new(own.channel.clone())
        .get_db_creds(req(GetDbCredsRequest { role: "qa".into(), mount: String::new() }, &env.qa))
        .await
        .expect("database credentials")
        .into_inner();
    env.remember(&creds.password);

    proxy.hold_only("/v1/transit/encrypt/");
    proxy.set_delay(held);
    // One call per key: each its own coalescer lane, so Vault gets (and the proxy holds) all at once.
    let keys = ["qa-aes", "qa-drain1", "qa-drain2"];
    let calls: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let plaintext = format!("held past the grace, {key}");
                let r = c.encrypt(req(enc(key, env.remember_plaintext(plaintext.as_bytes())), &env.qa)).await;
                (key, plaintext, r.map(|r| r.into_inner().ciphertext), Instant::now())
            })
        })
        .collect();
    // Once Vault answered them all (the proxy holds the answers), shut down.
    proxy.holding(keys.len()).await;
    let t0 = Instant::now();
    own.shutdown();
    tokio::time::sleep(grace + Duration::from_millis(300)).await;
    // Past the grace no new connection is served.
    let fresh =
        tonic::transport::Endpoint::from_shared(format!("http://{}", own.addr)).expect("endpoint").connect_lazy();
    let mut late = req(enc("qa-aes", b"after the grace"), &env.qa);
    late.set_timeout(Duration::from_secs(5));
    let refused = Client::new(fresh).encrypt(late).await.expect_err("a call on a new connection after the grace");
    let mut finished = Vec::new();
    for call in calls {
        let (key, plaintext, result, at) = call.await.expect("task");
        let ciphertext = result.unwrap_or_else(|s| panic!("a call in flight at shutdown failed: {s:?}"));
        let (_, answer) =
            env.vault(Method::POST, &format!("transit/decrypt/{key}"), Some(json!({"ciphertext": ciphertext}))).await;
        use base64::Engine;
        let got =
            answer["data"]["plaintext"].as_str().and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok());
        assert_eq!(got.as_deref(), Some(plaintext.as_bytes()), "a drained call's answer is its own");
        finished.push(at.duration_since(t0));
    }
    proxy.set_delay(Duration::ZERO);
    assert!(own.stopped().await, "the server stops after draining");
    let stopped = t0.elapsed();
    let (first, last) =
        (finished.iter().min().copied().unwrap_or_default(), finished.iter().max().copied().unwrap_or_default());
    println!(
        "  drain: 3 calls held {} ms by Vault answered {:.2}-{:.2} s after shutdown began (grace {} ms, drain {} ms); \
         a new connection after the grace: {:?}; server stopped after {:.2} s",
        held.as_millis(),
        first.as_secs_f64(),
        last.as_secs_f64(),
        grace.as_millis(),
        drain.as_millis(),
        refused.code(),
        stopped.as_secs_f64()
    );
    assert!(first > grace, "the calls were answered within the grace: nothing was drained");
    assert!(last < grace + drain, "a call answered after grace + drain ({last:?})");
    // The lease's parent token was not revoked at shutdown: the credentials still log in.
    let login = env.pg_login(&creds.username, &creds.password).await;
    assert_eq!(login.as_deref(), Ok(creds.username.as_str()), "the lease died with the gateway");
    let (status, _) = env.vault(Method::PUT, "sys/leases/lookup", Some(json!({"lease_id": creds.lease_id}))).await;
    assert_eq!(status, 200, "the lease is still in Vault");
    env.vault(Method::PUT, "sys/leases/revoke", Some(json!({"lease_id": creds.lease_id}))).await;

    // Calls that outlive grace + drain are dropped, and the process exits 0 without them: the
    // real `vaultgate serve` on SIGTERM (in-process, tonic's connection tasks would outlive the
    // server future; the process exit is what drops them).
    let (grace, drain) = (Duration::from_millis(300), Duration::from_millis(1000));
    let dir = env.dir.join("drain");
    std::fs::create_dir_all(&dir).expect("dir");
    let toml = format!(
        "[vault]\naddress = \"{}\"\ntimeout_ms = 20000\nsilent_after_ms = 60000\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n\
         [shutdown]\ngrace_ms = {}\ndrain_timeout_ms = {}\n",
        proxy.url,
        grace.as_millis(),
        drain.as_millis()
    );
    let (mut child, channel) = crate::database::spawn_gateway(&dir, "drain", &toml).await;
    let mut c = Client::new(channel);
    c.encrypt(req(enc("qa-aes", b"warm-up"), &env.qa)).await.expect("warm-up (login)");
    let held = Duration::from_secs(8);
    proxy.hold_only("/v1/transit/encrypt/");
    proxy.set_delay(held);
    let call = tokio::spawn(async move {
        let r = c.encrypt(req(enc("qa-aes", b"held past the drain"), &env.qa)).await;
        (r, Instant::now())
    });
    // Once the call's answer is held in the proxy, later answers (the token revocation at
    // shutdown) pass at once: the drop is then the drain timeout's doing.
    proxy.holding(1).await;
    proxy.set_delay(Duration::ZERO);
    let t0 = Instant::now();
    let pid = child.id().expect("the gateway runs").to_string();
    let term = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(term.success(), "SIGTERM sent");
    let (result, at) = call.await.expect("task");
    let exited = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").expect("status");
    let exit_after = t0.elapsed();
    let dropped = result.expect_err("a call past grace + drain is dropped");
    let after = at.duration_since(t0);
    println!(
        "  drain: a call held {} s by Vault was dropped {:.2} s after SIGTERM (grace {} ms, drain {} ms): {:?} {:?}; \
         exit {:?} after {:.2} s",
        held.as_secs(),
        after.as_secs_f64(),
        grace.as_millis(),
        drain.as_millis(),
        dropped.code(),
        dropped.message(),
        exited.code(),
        exit_after.as_secs_f64()
    );
    assert!(exited.success(), "vaultgate serve exits 0 after SIGTERM: {exited:?}");
    assert!(after < held - Duration::from_secs(2), "the call was not dropped at the drain timeout: {after:?}");
}

/// Writes are sent once: a proxy forwards Rotate, GenerateDataKey and GetDbCreds to Vault, which
/// acts, then cuts the connection before the answer. The gateway must not send them again (a
/// second Rotate would add a second version, a second GetDbCreds a second database user): the
/// caller gets UNAVAILABLE and Vault acted exactly once. Encrypt, safe to repeat, is sent again
/// and answered. Pins the `idempotent()` flags of the real calls by what they do.
pub async fn writes_are_sent_once_when_the_connection_drops(env: &'static Env) {
    let proxy = Proxy::start(&env.vault_addr).await;
    let own = qa_gateway(&proxy.url, "timeout_ms = 5000\n").await;
    let mut c = Client::new(own.channel.clone());
    c.encrypt(req(enc("qa-aes", b"warm-up"), &env.qa)).await.expect("warm-up (login)");
    let latest = || async {
        let (_, key) = env.vault(Method::GET, "transit/keys/qa-once", None).await;
        key["data"]["latest_version"].as_u64().expect("latest_version")
    };
    let mut report = Vec::new();

    let before = latest().await;
    proxy.cut_after("/v1/transit/keys/qa-once/rotate");
    let err = c
        .rotate(req(RotateRequest { key: "qa-once".into(), ..Default::default() }, &env.qa))
        .await
        .expect_err("Rotate's answer was cut");
    let after = latest().await;
    report.push(format!("Rotate: {:?}, latest_version {before} -> {after}", err.code()));
    assert_eq!(proxy.cuts(), 1, "the proxy cut the Rotate");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(after, before + 1, "Rotate was sent {} times", after - before);

    let path = "transit/datakey/plaintext/qa-once";
    let before = vault_requests_for(env, path);
    proxy.cut_after(&format!("/v1/{path}"));
    let r = GenerateDataKeyRequest { key: "qa-once".into(), context: vec![], bits: 256, ..Default::default() };
    let err = c.generate_data_key(req(r, &env.qa)).await.expect_err("GenerateDataKey's answer was cut");
    let sent = vault_requests_for(env, path) - before;
    report.push(format!("GenerateDataKey: {:?}, {sent} request(s) in Vault's audit log", err.code()));
    assert_eq!(proxy.cuts(), 2, "the proxy cut the GenerateDataKey");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(sent, 1, "GenerateDataKey reached Vault {sent} times");

    let leases = || async {
        let (_, list) = env
            .vault(Method::from_bytes(b"LIST").expect("LIST"), "sys/leases/lookup/database/creds/qaonce/", None)
            .await;
        list["data"]["keys"].as_array().map_or(0, Vec::len)
    };
    let before = leases().await;
    proxy.cut_after("/v1/database/creds/qaonce");
    let mut db = DatabaseServiceClient::new(own.channel.clone());
    let err = db
        .get_db_creds(req(GetDbCredsRequest { role: "qaonce".into(), mount: String::new() }, &env.qa))
        .await
        .expect_err("GetDbCreds' answer was cut");
    let after = leases().await;
    report.push(format!("GetDbCreds: {:?}, leases {before} -> {after}", err.code()));
    assert_eq!(proxy.cuts(), 3, "the proxy cut the GetDbCreds");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(after, before + 1, "GetDbCreds made {} leases", after - before);
    env.vault(Method::PUT, "sys/leases/revoke-prefix/database/creds/qaonce", None).await;

    // The contrast: Encrypt is repeated after the cut, and answered.
    let path = "transit/encrypt/qa-once";
    let before = vault_requests_for(env, path);
    proxy.cut_after(&format!("/v1/{path}"));
    let plaintext = env.remember_plaintext(b"sent twice, answered once");
    let ct = c.encrypt(req(enc("qa-once", plaintext), &env.qa)).await.expect("Encrypt is retried").into_inner();
    let sent = vault_requests_for(env, path) - before;
    report.push(format!("Encrypt: OK after {sent} requests"));
    assert_eq!(proxy.cuts(), 4, "the proxy cut the Encrypt");
    assert!(ct.ciphertext.starts_with("vault:v"), "{}", ct.ciphertext);
    assert_eq!(sent, 2, "Encrypt reached Vault {sent} times");
    println!("  sent once, connection cut after Vault acted: {}", report.join("; "));
}

/// A Vault slower than `vault.timeout_ms`: an idempotent call is tried `retry_max_attempts`
/// times and answered UNAVAILABLE within about attempts × timeout; a write, tried once, within
/// about one timeout.
pub async fn slow_vault_is_unavailable_within_the_timeout(env: &'static Env) {
    let (status, body) = env.vault(Method::POST, "transit/keys/qa-slow", Some(json!({"type": "aes256-gcm96"}))).await;
    assert!((200..300).contains(&status), "{status} {body}");
    let proxy = Proxy::start(&env.vault_addr).await;
    let timeout = Duration::from_millis(400);
    let own = qa_gateway(&proxy.url, &format!("timeout_ms = {}\nretry_max_attempts = 2\n", timeout.as_millis())).await;
    let mut c = Client::new(own.channel.clone());
    // The warm-up (login, first Encrypt) is not what is measured, and on a loaded machine a login
    // can take longer than this gateway's 400 ms: tried until it succeeds (run 10 failed here).
    let mut tries = 0;
    while let Err(s) = c.encrypt(req(enc("qa-aes", b"warm-up"), &env.qa)).await {
        tries += 1;
        assert!(tries < 20 && s.code() == Code::Unavailable, "warm-up (login), try {tries}: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.set_delay(Duration::from_secs(5));
    let started = Instant::now();
    let err = c.encrypt(req(enc("qa-aes", b"slow"), &env.qa)).await.expect_err("Vault is too slow");
    let encrypt = started.elapsed();
    let started = Instant::now();
    // A key of its own: Vault does rotate it, after the gateway stopped waiting.
    let write = c
        .rotate(req(RotateRequest { key: "qa-slow".into(), ..Default::default() }, &env.qa))
        .await
        .expect_err("Vault is too slow");
    let rotate = started.elapsed();
    proxy.set_delay(Duration::ZERO);
    println!(
        "  slow Vault (answers after 5 s, timeout_ms {}): Encrypt {:?} after {:.0} ms ({:?}); Rotate {:?} after {:.0} ms",
        timeout.as_millis(),
        err.code(),
        encrypt.as_secs_f64() * 1e3,
        err.message(),
        write.code(),
        rotate.as_secs_f64() * 1e3
    );
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(write.code(), Code::Unavailable, "{write:?}");
    // Lower bounds: the gateway did wait for Vault; upper bounds: the timeout, not Vault's 5 s,
    // ended the wait (with 2 s for a loaded machine and the backoff between attempts).
    assert!(encrypt >= timeout && encrypt < timeout * 2 + Duration::from_secs(2), "Encrypt took {encrypt:?}");
    assert!(rotate < timeout + Duration::from_secs(2), "Rotate took {rotate:?}");
}

/// `tls.require_client_cert = true`: a client without a certificate gets no service (the
/// handshake is refused), one with a certificate of the trusted CA does.
pub async fn required_client_certificate_refuses_clients_without_one(env: &'static Env) {
    let pki = Pki::new(env, "pki-required");
    let gw = serve_gateway(&format!("{}{}require_client_cert = true\n", vault_base(env), pki.tls_toml())).await;
    let ca = pki.ca.cert_pem();
    let check = |ch: tonic::transport::Channel| async move {
        let mut r = tonic::Request::new(HealthCheckRequest { service: String::new() });
        r.set_timeout(Duration::from_secs(5));
        HealthClient::new(ch).check(r).await
    };
    let without = match tls_channel(&gw, &ca, None).await {
        Err(e) => format!("connect failed: {e}"),
        Ok(ch) => match check(ch).await {
            Ok(_) => panic!("a client without a certificate was served"),
            Err(s) => format!("{:?} {}", s.code(), s.message()),
        },
    };
    let cert =
        pki.ca.client(&vaultgate::dev::certs::ClientNames { cn: Some("anyone"), ..Default::default() }).expect("cert");
    let with = tls_channel(&gw, &ca, Some(&cert)).await.expect("a client with a certificate connects");
    check(with).await.expect("a client with a certificate is served");
    println!("  require_client_cert: without a certificate: {without}; with one: served");
}

/// `vault.namespace`: every request goes to the namespace (its own JWT auth, policy and Transit
/// key; none of them exists at the root), and what the gateway encrypted decrypts there.
pub async fn vault_namespace_is_where_requests_go(env: &'static Env) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http");
    let ns = "vgns";
    let call = |method: &str, path: &str, body: Value| {
        let r = http
            .request(Method::from_bytes(method.as_bytes()).expect("method"), format!("{}/v1/{path}", env.vault_addr))
            .header("X-Vault-Token", &env.root_token)
            .header("X-Vault-Namespace", ns);
        let r = if body.is_null() { r } else { r.json(&body) };
        async move {
            let resp = r.send().await.expect("vault answers");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = env.vault(Method::POST, &format!("sys/namespaces/{ns}"), Some(json!({}))).await;
    assert!((200..300).contains(&status), "create namespace {ns}: {status} {body}");
    let policy = "path \"transit/encrypt/ns-key\" { capabilities = [\"update\"] }\n\
                  path \"transit/decrypt/ns-key\" { capabilities = [\"update\"] }\n";
    for (path, body) in [
        ("sys/mounts/transit", json!({"type": "transit"})),
        ("transit/keys/ns-key", json!({"type": "aes256-gcm96"})),
        ("sys/auth/jwt", json!({"type": "jwt"})),
        (
            "auth/jwt/config",
            json!({"jwt_validation_pubkeys": [env.issuer.public_pem], "bound_issuer": vaultgate::dev::issuer::ISSUER}),
        ),
        ("sys/policies/acl/qa", json!({"policy": policy})),
        ("auth/jwt/role/qa", vaultgate::dev::provision::jwt_role("qa", "1h", "24h")),
    ] {
        let (status, answer) = call("POST", path, body).await;
        assert!((200..300).contains(&status), "{ns}/{path}: {status} {answer}");
    }
    let (status, _) = env.vault(Method::GET, "transit/keys/ns-key", None).await;
    assert_eq!(status, 404, "ns-key must exist only in the namespace");

    let own = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\nnamespace = \"{ns}\"\nsilent_after_ms = 60000\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n",
        env.vault_addr
    ))
    .await;
    // The health watcher probes `sys/health`, a root-only endpoint (OpenBao answers 400 inside a
    // namespace): the namespaced gateway must still see its node up and serve.
    let mut health = HealthClient::new(own.channel.clone());
    let waited = std::time::Instant::now();
    let mut status = None;
    while waited.elapsed() < Duration::from_secs(10) {
        status = health.check(HealthCheckRequest { service: String::new() }).await.ok().map(|r| r.into_inner().status);
        if status == Some(ServingStatus::Serving as i32) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(ServingStatus::Serving as i32), "a gateway in namespace {ns} reports its Vault down");
    // Still serving after several probe intervals (a failing probe opens the breaker after a few).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner().status;
    assert_eq!(later, ServingStatus::Serving as i32, "the namespaced gateway's health fell after its first probes");
    println!("  namespace: health SERVING after {:.1} s and 3 s later", waited.elapsed().as_secs_f64() - 3.0);
    let plaintext = env.remember_plaintext(b"in the namespace");
    let out = Client::new(own.channel.clone())
        .encrypt(req(enc("ns-key", plaintext), &env.qa))
        .await
        .expect("encrypt with the namespace's key, as the namespace's role")
        .into_inner();
    let (status, answer) = call("POST", "transit/decrypt/ns-key", json!({"ciphertext": out.ciphertext})).await;
    use base64::Engine;
    let got =
        answer["data"]["plaintext"].as_str().and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok());
    assert_eq!((status, got.as_deref()), (200, Some(plaintext)), "{answer}");
    println!("  namespace: login, Encrypt in namespace {ns}; decrypted there by Vault");
}

/// `audit.fail_closed = false`: a line that cannot be written does not refuse the call.
pub async fn audit_fail_open_serves_when_the_sink_fails(env: &'static Env) {
    let own = qa_gateway(&env.vault_addr, "[audit]\npath = \"/dev/full\"\nfail_closed = false\n").await;
    let out = Client::new(own.channel.clone())
        .encrypt(req(enc("qa-aes", b"unaudited"), &env.qa))
        .await
        .expect("served although the audit line could not be written");
    assert!(out.get_ref().ciphertext.starts_with("vault:v"));
}

/// An `x-request-id` outside 1-64 of `A-Za-z0-9-_` is replaced by one the gateway makes (it
/// lands in every log line of the call), on answers and on errors alike.
pub async fn invalid_request_ids_are_replaced(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let valid = |id: &str| {
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let long = "a".repeat(65);
    for sent in ["has spaces", "semi;colon", "quote\"d", "slash/id", long.as_str()] {
        for authenticated in [true, false] {
            let mut r = if authenticated {
                req(enc("qa-aes", b"x"), &env.qa)
            } else {
                tonic::Request::new(enc("qa-aes", b"x"))
            };
            r.metadata_mut().insert("x-request-id", sent.parse().expect("visible ASCII"));
            let md = match c.encrypt(r).await {
                Ok(r) => r.metadata().clone(),
                Err(s) => s.metadata().clone(),
            };
            let got = md.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            assert!(got != sent && valid(&got), "sent {sent:?}, answered with request id {got:?}");
        }
    }
}

/// KV v2: a deleted or destroyed version, and a secret whose latest version is deleted, are
/// NOT_FOUND naming the version; the live version is still served. On a KV mount and caller of
/// the test's own (the `qa/` folder's listing is asserted elsewhere).
pub async fn deleted_and_destroyed_kv_versions_are_not_found(env: &'static Env) {
    let policy = "path \"kvver/data/*\" { capabilities = [\"read\"] }\n";
    for (path, body) in [
        ("sys/mounts/kvver", json!({"type": "kv", "options": {"version": "2"}})),
        ("sys/policies/acl/qakv", json!({"policy": policy})),
        ("auth/jwt/role/qakv", vaultgate::dev::provision::jwt_role("qakv", "1h", "24h")),
    ] {
        let (status, body) = env.vault(Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
    }
    // A new KV v2 mount may refuse writes for a moment while it sets itself up.
    let until = Instant::now() + Duration::from_secs(15);
    for v in ["one", "two", "three"] {
        loop {
            let (status, body) = env.vault(Method::POST, "kvver/data/versions", Some(json!({"data": {"v": v}}))).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < until, "write kvver/versions: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, body) = env.vault(Method::POST, "kvver/delete/versions", Some(json!({"versions": [2]}))).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = env.vault(Method::POST, "kvver/destroy/versions", Some(json!({"versions": [1]}))).await;
    assert_eq!(status, 204, "{body}");
    env.vault(Method::POST, "kvver/data/deleted-latest", Some(json!({"data": {"v": "gone"}}))).await;
    let (status, body) = env.vault(Method::DELETE, "kvver/data/deleted-latest", None).await;
    assert_eq!(status, 204, "{body}");

    let own = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qakv\"\nequals = \"qakv\"\n",
        env.vault_addr
    ))
    .await;
    let jwt = env.jwt("qakv", 3600);
    let mut c = SecretServiceClient::new(own.channel.clone());
    let get = |path: &str, version: u32| GetSecretRequest { path: path.into(), version, mount: "kvver".into() };
    let live = c.get_secret(req(get("versions", 3), &jwt)).await.expect("version 3 is live").into_inner();
    assert_eq!(live.data.map(|d| d.fields.contains_key("v")), Some(true));
    let mut said = Vec::new();
    for (what, r) in [
        ("deleted version 2", get("versions", 2)),
        ("destroyed version 1", get("versions", 1)),
        ("deleted latest version", get("deleted-latest", 0)),
    ] {
        let err = c.get_secret(req(r, &jwt)).await.expect_err(what);
        assert_eq!(err.code(), Code::NotFound, "{what}: {err:?}");
        said.push(format!("{what}: {:?}", err.message()));
    }
    println!("  kv: {}", said.join("; "));
}
