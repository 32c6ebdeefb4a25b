//! Attacks on authentication and on where tokens go (issue 10 §1, §4), against real OpenBao and
//! the real gateway: floods of forged JWTs with and without local verification (Vault logins
//! counted in OpenBao's own audit log), a JWKS `kid` flood, and a Vault node that redirects to a
//! foreign host. Each test prints its figures (`attack:` lines) for docs/attacks.md.

use crate::support::{req, serve_gateway, Env};
use reqwest::Method;
use serde_json::json;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::{transport::Channel, Code};
use vaultgate::{
    dev::{issuer, issuer::Issuer, provision},
    pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient, EncryptRequest},
    vault::{Client, ClientConfig, VaultError, VaultToken, FOREIGN_REDIRECT},
};

/// Forged JWTs per flood, and the callers sending them at once.
const FORGED: usize = 2000;
const CONCURRENCY: usize = 64;

fn encrypt() -> EncryptRequest {
    EncryptRequest { key: "qa-aes".into(), plaintext: b"attack".to_vec(), ..Default::default() }
}

/// A JWT auth mount of the test's own (trusting the demo issuer, role `qa`), so that OpenBao's
/// audit log tells exactly which logins the test caused.
async fn jwt_mount(env: &Env, mount: &str) {
    let steps = [
        (format!("sys/auth/{mount}"), json!({"type": "jwt"})),
        (
            format!("auth/{mount}/config"),
            json!({"jwt_validation_pubkeys": [env.issuer.public_pem], "bound_issuer": issuer::ISSUER}),
        ),
        (format!("auth/{mount}/role/qa"), provision::jwt_role("qa", "1h", "24h")),
    ];
    for (path, body) in steps {
        let (status, answer) = env.vault(Method::POST, &path, Some(body)).await;
        assert!(status == 200 || status == 204, "{path}: {status} {answer}");
    }
}

/// Login requests OpenBao's audit log recorded on `auth/<mount>/login`.
fn vault_logins(env: &Env, mount: &str) -> usize {
    let text = std::fs::read_to_string(env.dir.join("audit.log")).expect("OpenBao's audit log");
    let path = format!("\"path\":\"auth/{mount}/login\"");
    text.lines().filter(|l| l.contains("\"type\":\"request\"") && l.contains(&path)).count()
}

/// `[issuers.dev]`: the demo issuer's public key, as `vaultgate dev` writes it.
fn dev_issuer(env: &Env) -> String {
    format!(
        "[issuers.dev]\nissuer = \"{}\"\naudiences = [\"{}\"]\njwt_validation_pubkeys = ['''\n{}\n''']\n",
        issuer::ISSUER,
        issuer::AUDIENCE,
        env.issuer.public_pem.trim_end()
    )
}

/// What a flood of forged JWTs got, and how a real caller fared meanwhile.
struct Flood {
    codes: HashMap<Code, usize>,
    took: Duration,
    real_ms: Vec<f64>,
    real_failures: usize,
}

impl Flood {
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.real_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
    }
}

/// Sends every JWT of `forged` once (CONCURRENCY at a time) while a real caller on a connection of
/// its own keeps calling with `real`.
async fn flood(channel: Channel, real_channel: Channel, forged: Vec<String>, real: &str) -> Flood {
    let forged = Arc::new(forged);
    let next = Arc::new(AtomicUsize::new(0));
    let codes = Arc::new(Mutex::new(HashMap::<Code, usize>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let real = real.to_string();
    let done_r = done.clone();
    let real_caller = tokio::spawn(async move {
        let mut client = EncryptionServiceClient::new(real_channel);
        let (mut ms, mut failures) = (Vec::new(), 0usize);
        while !done_r.load(Ordering::Relaxed) {
            let started = Instant::now();
            match client.encrypt(req(encrypt(), &real)).await {
                Ok(_) => ms.push(started.elapsed().as_secs_f64() * 1e3),
                Err(e) => {
                    failures += 1;
                    eprintln!("real caller failed during the flood: {e:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (ms, failures)
    });
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (channel, forged, next, codes) = (channel.clone(), forged.clone(), next.clone(), codes.clone());
            tokio::spawn(async move {
                let mut client = EncryptionServiceClient::new(channel);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(jwt) = forged.get(i) else { break };
                    let code = match client.encrypt(req(encrypt(), jwt)).await {
                        Ok(_) => Code::Ok,
                        Err(status) => {
                            assert!(!status.message().contains("eyJ"), "a refusal echoes a JWT: {status:?}");
                            status.code()
                        }
                    };
                    *codes.lock().expect("lock").entry(code).or_default() += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("flood worker");
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (real_ms, real_failures) = real_caller.await.expect("real caller");
    let codes = codes.lock().expect("lock").clone();
    Flood { codes, took, real_ms, real_failures }
}

/// `n` JWTs with a real caller's claims (`sub` qa, the trusted `iss` and `aud`, valid times),
/// each signed by a key the issuer never had.
fn forged_jwts(n: usize) -> Vec<String> {
    let rogue = Issuer::generate().expect("rogue key");
    (0..n).map(|i| rogue.mint("qa", 3600 + i as i64).expect("forged JWT")).collect()
}

/// 2,000 forged JWTs at concurrency 64 against a gateway that verifies JWTs locally: every one
/// UNAUTHENTICATED, not one Vault login (OpenBao's audit log), a real caller served throughout.
pub async fn forged_jwts_cost_vault_nothing(env: &'static Env) {
    let mount = "jwt-attack-verified";
    jwt_mount(env, mount).await;
    // A decoy rule of the same role first: the login must use the mount of the rule that matched.
    let toml = format!(
        "[vault]\naddress = \"{}\"\n{}[[callers]]\nrole = \"qa\"\nequals = \"decoy\"\nverify_with = \"dev\"\nauth_mount = \"no-such-mount\"\n\
         [[callers]]\nrole = \"qa\"\nequals = \"qa\"\nverify_with = \"dev\"\nauth_mount = \"{mount}\"\n",
        env.vault_addr,
        dev_issuer(env)
    );
    let gw = serve_gateway(&toml).await;
    let real_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr)).expect("uri").connect_lazy();
    EncryptionServiceClient::new(real_channel.clone()).encrypt(req(encrypt(), &env.qa)).await.expect("the real caller");
    let before = vault_logins(env, mount);
    assert_eq!(before, 1, "the real caller's one login is in OpenBao's audit log");
    let result = flood(gw.channel.clone(), real_channel, forged_jwts(FORGED), &env.qa).await;
    let after = vault_logins(env, mount);
    println!(
        "attack: {FORGED} forged JWTs (valid caller's claims, foreign signature) at concurrency {CONCURRENCY}, \
         local verification on: {:?} in {:.1} s; Vault logins caused: {}; real caller {} calls, {} failed, p50 {:.1} ms, p99 {:.1} ms",
        result.codes,
        result.took.as_secs_f64(),
        after - before,
        result.real_ms.len(),
        result.real_failures,
        result.percentile(0.5),
        result.percentile(0.99)
    );
    assert_eq!(result.codes.get(&Code::Unauthenticated).copied(), Some(FORGED), "{:?}", result.codes);
    assert_eq!(after, before, "a forged JWT reached Vault");
    assert_eq!(gw.gateway.sessions.logins(), 1);
    // vaultgate_vault_logins_total counts real logins: the real caller's, nothing of the flood.
    let metrics = gw.gateway.metrics.render();
    assert!(metrics.contains("vaultgate_vault_logins_total{name=\"ok\"} 1\n"), "{metrics}");
    assert!(!metrics.contains("vaultgate_vault_logins_total{name=\"refused\"}"), "{metrics}");
    assert_eq!(result.real_failures, 0, "the real caller was refused during the flood");
    assert!(!result.real_ms.is_empty());
}

/// The same flood where the caller rule relies on Vault alone (no `verify_with`): what reaches
/// Vault is bounded by `[unverified_logins]` (burst + rate per peer, a cap in flight); the rest is
/// RESOURCE_EXHAUSTED; the real caller, already logged in, is served throughout.
pub async fn forged_jwts_without_local_verification_are_capped(env: &'static Env) {
    let mount = "jwt-attack-unverified";
    jwt_mount(env, mount).await;
    let (burst, rate, in_flight) = (10.0, 5.0, 4);
    // A cache of two callers: a forged JWT that took a place in it would push the real caller out.
    let toml = format!(
        "token_cache_size = 2\n[vault]\naddress = \"{}\"\n[unverified_logins]\nmax_in_flight = {in_flight}\nper_peer_per_second = {rate:.1}\nper_peer_burst = {burst:.1}\n\
         [[callers]]\nrole = \"qa\"\nequals = \"qa\"\nissuer = \"{}\"\nauth_mount = \"{mount}\"\n",
        env.vault_addr,
        issuer::ISSUER
    );
    let gw = serve_gateway(&toml).await;
    let real_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr)).expect("uri").connect_lazy();
    EncryptionServiceClient::new(real_channel.clone()).encrypt(req(encrypt(), &env.qa)).await.expect("the real caller");
    let before = vault_logins(env, mount);
    let started = Instant::now();
    let result = flood(gw.channel.clone(), real_channel, forged_jwts(FORGED), &env.qa).await;
    let elapsed = started.elapsed().as_secs_f64();
    let reached = vault_logins(env, mount) - before;
    // The real caller's login took one token of the burst; the rest refills at `rate`.
    let cap = (burst + rate * elapsed).floor() as usize;
    println!(
        "attack: {FORGED} forged JWTs at concurrency {CONCURRENCY}, local verification off \
         (unverified_logins: burst {burst}, {rate}/s per peer, {in_flight} in flight): {:?} in {elapsed:.1} s; \
         Vault logins caused: {reached} (cap {cap}); real caller {} calls, {} failed, p50 {:.1} ms, p99 {:.1} ms",
        result.codes,
        result.real_ms.len(),
        result.real_failures,
        result.percentile(0.5),
        result.percentile(0.99)
    );
    let refused = result.codes.get(&Code::Unauthenticated).copied().unwrap_or(0);
    let shed = result.codes.get(&Code::ResourceExhausted).copied().unwrap_or(0);
    assert_eq!(refused + shed, FORGED, "only UNAUTHENTICATED or RESOURCE_EXHAUSTED: {:?}", result.codes);
    assert!(reached <= cap, "{reached} logins reached Vault, over the cap of {cap}");
    assert_eq!(refused, reached, "every forged JWT that reached Vault was refused by it");
    assert!(shed > 0, "the flood was never shed");
    // The real caller kept its cached token throughout: no login of its own since the first.
    EncryptionServiceClient::new(gw.channel.clone()).encrypt(req(encrypt(), &env.qa)).await.expect("the real caller");
    assert_eq!(gw.gateway.sessions.logins() as usize, 1 + reached, "the real caller's token was evicted");
    let metrics = gw.gateway.metrics.render();
    assert!(metrics.contains(&format!("vaultgate_vault_logins_total{{name=\"refused\"}} {reached}\n")), "{metrics}");
    assert_eq!(result.real_failures, 0, "the real caller was refused during the flood");
}

/// Serves a JWKS over plain HTTP on loopback, counting the fetches (an issuer's discovery
/// endpoint, not Vault).
async fn jwks_server(jwks: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the JWKS server");
    let addr = listener.local_addr().expect("addr");
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (jwks, counted) = (jwks.clone(), counted.clone());
            tokio::spawn(async move {
                let _ = read_head(&mut stream).await;
                counted.fetch_add(1, Ordering::Relaxed);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/openid/v1/jwks"), fetches)
}

/// Reads an HTTP request head (and no more); returns it.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The demo issuer's public key as a JWK (P-256: x and y are the last 64 bytes of the SPKI).
fn jwk_of(public_pem: &str, kid: &str) -> serde_json::Value {
    use base64::Engine;
    let b64: String = public_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).expect("PEM body");
    let point = &der[der.len() - 64..];
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256", "x": enc(&point[..32]), "y": enc(&point[32..])})
}

/// Keys from a JWKS URL: a real caller verifies against the fetched set, and a flood of JWTs
/// naming unknown key ids refetches the JWKS at most once per 10 s (no amplification towards the
/// issuer), every one UNAUTHENTICATED.
pub async fn unknown_kid_flood_refetches_the_jwks_at_most_once_per_ten_seconds(env: &'static Env) {
    let jwks = json!({"keys": [jwk_of(&env.issuer.public_pem, "dev-1")]}).to_string();
    let (url, fetches) = jwks_server(jwks).await;
    let toml = format!(
        "[vault]\naddress = \"{}\"\n[issuers.jwks]\nissuer = \"{}\"\naudiences = [\"{}\"]\njwks_url = \"{url}\"\n\
         [[callers]]\nrole = \"qa\"\nequals = \"qa\"\nverify_with = \"jwks\"\n",
        env.vault_addr,
        issuer::ISSUER,
        issuer::AUDIENCE
    );
    let gw = serve_gateway(&toml).await;
    let mut client = EncryptionServiceClient::new(gw.channel.clone());
    client.encrypt(req(encrypt(), &env.qa)).await.expect("a real caller, verified with the fetched JWKS");
    assert_eq!(fetches.load(Ordering::Relaxed), 1);
    let rogue = rcgen::KeyPair::generate().expect("key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(rogue.serialize_pem().as_bytes()).expect("rogue key");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let started = Instant::now();
    let n = 300;
    for i in 0..n {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(format!("rotated-{i}"));
        let claims = json!({"iss": issuer::ISSUER, "sub": "qa", "aud": issuer::AUDIENCE, "exp": now + 600});
        let jwt = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
        let err = client.encrypt(req(encrypt(), &jwt)).await.expect_err("unknown kid");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetched = fetches.load(Ordering::Relaxed);
    println!("attack: {n} JWTs naming unknown key ids against a JWKS-URL issuer: all UNAUTHENTICATED in {elapsed:.1} s; JWKS fetches: {fetched} (1 before)");
    assert!(fetched <= 2 + (elapsed / 10.0) as usize, "{fetched} JWKS fetches in {elapsed:.1} s");
    client.encrypt(req(encrypt(), &env.qa)).await.expect("the real caller still verifies");
    assert_eq!(gw.gateway.sessions.logins(), 1, "no unknown-kid JWT reached Vault");
}

/// A Vault node that answers every request with a 307 to `target` (what a compromised or
/// misconfigured node could do); counts the requests it saw.
async fn redirecting_node(target: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (target, counted) = (target.clone(), counted.clone());
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                counted.fetch_add(1, Ordering::Relaxed);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target}{path}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// A Vault node answering 307 to a host outside `vault.addresses`: neither a caller's JWT (login
/// body) nor a token (`X-Vault-Token`) is ever sent there; a 307 to a configured node is followed.
pub async fn vault_redirect_to_a_foreign_host_is_not_followed(env: &'static Env) {
    // The foreign host: counts every connection. A control request shows that it would notice.
    let foreign = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let foreign_addr = foreign.local_addr().expect("addr");
    let contacted = Arc::new(AtomicUsize::new(0));
    let counted = contacted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = foreign.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let _ = read_head(&mut stream).await;
        }
    });
    let _ = reqwest::Client::new()
        .get(format!("http://{foreign_addr}/control"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert_eq!(contacted.load(Ordering::Relaxed), 1, "the foreign listener counts connections");
    let (hostile, seen) = redirecting_node(format!("http://{foreign_addr}")).await;

    // Through the gateway: the login (which carries the caller's JWT) meets the redirect.
    let toml = format!(
        "[vault]\naddress = \"{hostile}\"\nretry_max_attempts = 1\n{}[[callers]]\nrole = \"qa\"\nequals = \"qa\"\nverify_with = \"dev\"\n",
        dev_issuer(env)
    );
    let gw = serve_gateway(&toml).await;
    let err = EncryptionServiceClient::new(gw.channel.clone())
        .encrypt(req(encrypt(), &env.qa))
        .await
        .expect_err("the redirect is not followed");
    // (Or refused before sending, if the health watcher has given up on the node meanwhile.)
    assert!(matches!(err.code(), Code::Internal | Code::Unavailable), "{err:?}");
    // Directly: a token lookup (X-Vault-Token) meets the same redirect.
    let client = Client::new(&ClientConfig::single(hostile.parse().expect("url")), Default::default()).expect("client");
    let token = VaultToken::new("s.attack-token-never-sent-abroad");
    let deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
    assert_eq!(
        client.lookup_self(&token, deadline).await.expect_err("not followed"),
        VaultError::Api { status: 307, errors: vec![FOREIGN_REDIRECT.to_string()] }
    );
    assert!(seen.load(Ordering::Relaxed) >= 2, "the hostile node was asked");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let foreign_requests = contacted.load(Ordering::Relaxed) - 1;
    println!(
        "attack: Vault node answering 307 to a foreign host: {} requests to the node, {foreign_requests} reached the foreign host",
        seen.load(Ordering::Relaxed)
    );
    assert_eq!(foreign_requests, 0, "a request carrying a JWT or token reached a foreign host");

    // Control: a 307 to a configured node (the real OpenBao, listed second) is followed.
    let (to_vault, _) = redirecting_node(env.vault_addr.clone()).await;
    let mut config = ClientConfig::single(to_vault.parse().expect("url"));
    config.addresses.push(env.vault_addr.parse().expect("url"));
    let client = Client::new(&config, Default::default()).expect("client");
    let root = VaultToken::new(env.root_token.as_str());
    client.lookup_self(&root, deadline).await.expect("a redirect to a configured node is followed");
}

/// The gateway's own `[leases]` token revoked behind its back (an operator, a Vault incident):
/// the next call that needs it finds it gone (403, then `lookup-self`), logs in again at once and
/// succeeds, instead of failing callers until the next scheduled refresh.
pub async fn the_gateways_own_token_is_replaced_at_once_when_vault_refuses_it(env: &'static Env) {
    use vaultgate::pb::vaultgate::v1::{database_service_client::DatabaseServiceClient, *};
    let mount = "jwt-own";
    let dir = env.dir.join("own-token");
    std::fs::create_dir_all(&dir).expect("dir");
    let policy = r#"
path "transit/hmac/vaultgate-leases-own" { capabilities = ["update"] }
path "transit/verify/vaultgate-leases-own" { capabilities = ["update"] }
path "auth/token/renew-accessor" { capabilities = ["update"] }
"#;
    let steps = [
        (format!("sys/auth/{mount}"), json!({"type": "jwt"})),
        (
            format!("auth/{mount}/config"),
            json!({"jwt_validation_pubkeys": [env.issuer.public_pem], "bound_issuer": issuer::ISSUER}),
        ),
        ("transit/keys/vaultgate-leases-own".to_string(), json!({"type": "aes256-gcm96"})),
        ("sys/policies/acl/gw-own".to_string(), json!({"policy": policy})),
        (
            format!("auth/{mount}/role/gw-own"),
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "gw-own",
                   "bound_audiences": [issuer::AUDIENCE], "token_policies": ["gw-own"], "token_ttl": "1h"}),
        ),
    ];
    for (path, body) in steps {
        let (status, answer) = env.vault(Method::POST, &path, Some(body)).await;
        assert!(status == 200 || status == 204, "{path}: {status} {answer}");
    }
    std::fs::write(dir.join("gateway.jwt"), env.jwt("gw-own", 3600)).expect("write");
    let toml = format!(
        "[vault]\naddress = \"{}\"\n{}[[callers]]\nrole = \"qa\"\nequals = \"qa\"\nverify_with = \"dev\"\n\
         [roles.gw-own]\njwt_file = {:?}\njwt_mount = \"{mount}\"\n\
         [leases]\nowner_key = \"vaultgate-leases-own\"\nrole = \"gw-own\"\n",
        env.vault_addr,
        dev_issuer(env),
        dir.join("gateway.jwt")
    );
    // Two replicas: the lease is issued by one and renewed through the other, which must verify its
    // tag with the gateway's own token.
    let (one, two) = (serve_gateway(&toml).await, serve_gateway(&toml).await);
    let (mut c1, mut c2) =
        (DatabaseServiceClient::new(one.channel.clone()), DatabaseServiceClient::new(two.channel.clone()));
    let got = c1
        .get_db_creds(req(GetDbCredsRequest { role: "qa".into(), mount: String::new() }, &env.qa))
        .await
        .expect("credentials")
        .into_inner();
    env.remember(&got.password);
    assert!(got.lease_token.starts_with("vg1."), "{got:?}");
    let renew = || RenewLeaseRequest {
        lease_id: got.lease_id.clone(),
        increment: Some(prost_types::Duration { seconds: 300, nanos: 0 }),
        lease_token: got.lease_token.clone(),
    };
    c2.renew_lease(req(renew(), &env.qa)).await.expect("renewed through replica two");
    let logins = two.gateway.sessions.logins();
    let dead = two.gateway.sessions.stats.dead.load(Ordering::Relaxed);
    // Every token of the gateways' own identity is revoked behind their backs.
    let (status, body) = env
        .vault(Method::PUT, &format!("sys/leases/revoke-prefix/auth/{mount}/login"), Some(json!({"sync": true})))
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let started = Instant::now();
    c2.renew_lease(req(renew(), &env.qa)).await.expect("renewed at once with a fresh own token");
    let took = started.elapsed();
    assert_eq!(two.gateway.sessions.stats.dead.load(Ordering::Relaxed), dead + 1, "the own token was found gone");
    assert_eq!(two.gateway.sessions.logins(), logins + 1, "one fresh login of the gateway's own identity");
    // Replica one signs new tags with a fresh token too.
    let again = c1
        .get_db_creds(req(GetDbCredsRequest { role: "qa".into(), mount: String::new() }, &env.qa))
        .await
        .expect("credentials")
        .into_inner();
    env.remember(&again.password);
    assert!(again.lease_token.starts_with("vg1."), "a tag signed with the replaced token: {again:?}");
    println!(
        "attack: the gateway's own [leases] token revoked behind its back: the next RenewLease found it gone, logged in again and succeeded in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
}

/// A TLS front for OpenBao with a certificate of `ca`: forwards each connection whose handshake
/// completes to `upstream`, counting them.
async fn tls_front(ca: &vaultgate::dev::certs::Ca, upstream: String) -> (String, Arc<AtomicUsize>) {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    };
    let pair = ca.server().expect("server certificate");
    let certs = vec![CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).expect("cert PEM")];
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).expect("key PEM");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shaken = Arc::new(AtomicUsize::new(0));
    let counted = shaken.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream, counted) = (acceptor.clone(), upstream.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(mut vault) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut vault).await;
            });
        }
    });
    (format!("https://localhost:{}", addr.port()), shaken)
}

pub async fn vault_certificates_from_other_cas_are_refused_when_ca_cert_is_set(env: &'static Env) {
    let vault_ca = vaultgate::dev::certs::Ca::new("the Vault's CA").expect("CA");
    let other_ca = vaultgate::dev::certs::Ca::new("a CA the gateway was not told of").expect("CA");
    let upstream = env.vault_addr.trim_start_matches("http://").to_string();
    let (front, handshakes) = tls_front(&vault_ca, upstream).await;
    let dir = env.dir.join("attack-ca-cert");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut answers = Vec::new();
    for (name, ca) in [("other", &other_ca), ("vault", &vault_ca)] {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, ca.cert_pem()).expect("CA file");
        let before = handshakes.load(Ordering::SeqCst);
        let own = serve_gateway(&format!(
            "[vault]\naddress = \"{front}\"\nca_cert = {path:?}\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\n"
        ))
        .await;
        let call = || {
            let r = EncryptRequest {
                key: "billing".into(),
                plaintext: b"to the right Vault".to_vec(),
                ..Default::default()
            };
            let mut call = req(r, &env.billing);
            call.set_timeout(Duration::from_secs(10));
            call
        };
        let mut client = EncryptionServiceClient::new(own.channel.clone());
        let mut answer = client.encrypt(call()).await;
        // With its own CA the node must come to serve: on a loaded machine the first health probe
        // through the TLS front can be slow enough for the node to count as silent, and the gateway
        // then fails fast with UNAVAILABLE (as designed) until a probe answers; a client retries.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while name == "vault"
            && answer.as_ref().is_err_and(|s| s.code() == Code::Unavailable)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            answer = client.encrypt(call()).await;
        }
        answers.push((name, answer.map(|a| a.into_inner().ciphertext), handshakes.load(Ordering::SeqCst) - before));
    }
    let [(_, refused, through_other), (_, served, through_vault)] = &answers[..] else { unreachable!() };
    println!(
        "  attacks: a Vault serving a certificate of a CA not in vault.ca_cert: the call {:?}, {through_other} TLS \
         handshake(s) completed (no request, no token sent); with its own CA in ca_cert: {} after {through_vault} \
         handshake(s)",
        refused.as_ref().map_err(|s| (s.code(), s.message().chars().take(120).collect::<String>())),
        if served.is_ok() { "served" } else { "FAILED" },
    );
    let status = refused.as_ref().expect_err("a certificate of another CA must be refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(*through_other, 0, "the gateway completed a TLS handshake with a Vault of another CA");
    assert!(served.as_ref().is_ok_and(|c| c.starts_with("vault:v")), "the configured CA is trusted: {served:?}");
    assert!(*through_vault > 0);
}
