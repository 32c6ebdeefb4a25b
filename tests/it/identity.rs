//! Caller identity and the token lifecycle against real OpenBao: TLS and mTLS, certificate
//! callers on AppRole role tokens, Kubernetes service-account callers, gateway-side rules,
//! renewal and re-login under a trickle of calls, tokens revoked behind the gateway's back,
//! certificate reload, and WhoAmI.

use crate::support::{req, serve_gateway, Env, TestGateway};
use reqwest::Method;
use serde_json::{json, Value};
use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Identity as ClientIdentity},
    Code, Request,
};
use vaultgate::{
    dev::certs::{Ca, ClientNames, Pair},
    pb::vaultgate::v1::{
        encryption_service_client::EncryptionServiceClient, identity_service_client::IdentityServiceClient,
        secret_service_client::SecretServiceClient, *,
    },
};

const SPIFFE_BILLING: &str = "spiffe://prod.example/ns/billing/sa/api";
const DNS_REPORTS: &str = "reports.internal.example";

/// Files of one TLS test: CA, server pair, client pairs; all in `dir`.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    pub(crate) ca: Ca,
}

impl Pki {
    pub(crate) fn new(env: &Env, name: &str) -> Pki {
        let dir = env.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Pki { dir, ca: Ca::new(&format!("{name} test CA")).expect("CA") };
        let server = pki.ca.server().expect("server cert");
        pki.write("server.pem", &server.cert_pem);
        pki.write("server-key.pem", &server.key_pem);
        pki.write("clients-ca.pem", &pki.ca.cert_pem());
        pki
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, text).expect("write pki file");
        path
    }

    /// The `[tls]` table of a gateway using these files.
    pub(crate) fn tls_toml(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\nreload_interval_ms = 200\n",
            self.dir.join("server.pem"),
            self.dir.join("server-key.pem"),
            self.dir.join("clients-ca.pem")
        )
    }
}

/// An mTLS (or plain TLS when `client` is None) channel to `gw`, trusting `ca_pem`; connects now.
pub(crate) async fn tls_channel(
    gw: &TestGateway,
    ca_pem: &str,
    client: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some(pair) = client {
        tls = tls.identity(ClientIdentity::from_pem(&pair.cert_pem, &pair.key_pem));
    }
    tonic::transport::Endpoint::from_shared(format!("https://{}", gw.addr))
        .expect("endpoint")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Enables an AppRole mount and a role on it with `policies`; writes its role_id and secret_id
/// files into `dir` and returns the `[roles.<name>]` login lines.
async fn approle(
    env: &Env,
    mount: &str,
    role: &str,
    policies: &[&str],
    ttl: &str,
    max_ttl: &str,
    dir: &Path,
) -> String {
    let (status, body) = env.vault(Method::POST, &format!("sys/auth/{mount}"), Some(json!({"type": "approle"}))).await;
    assert!(status == 204 || status == 200, "enable {mount}: {status} {body}");
    let (status, body) = env
        .vault(
            Method::POST,
            &format!("auth/{mount}/role/{role}"),
            Some(json!({"token_policies": policies, "token_ttl": ttl, "token_max_ttl": max_ttl})),
        )
        .await;
    assert!(status == 204 || status == 200, "role {role}: {status} {body}");
    let (_, id) = env.vault(Method::GET, &format!("auth/{mount}/role/{role}/role-id"), None).await;
    let (_, secret) = env.vault(Method::POST, &format!("auth/{mount}/role/{role}/secret-id"), Some(json!({}))).await;
    let role_id = id["data"]["role_id"].as_str().expect("role_id").to_string();
    let secret_id = secret["data"]["secret_id"].as_str().expect("secret_id").to_string();
    env.remember(&secret_id);
    let role_id_file = dir.join(format!("{role}.role-id"));
    let secret_id_file = dir.join(format!("{role}.secret-id"));
    std::fs::write(&role_id_file, role_id).expect("role id file");
    std::fs::write(&secret_id_file, secret_id).expect("secret id file");
    format!("approle_mount = \"{mount}\"\nrole_id_file = {role_id_file:?}\nsecret_id_file = {secret_id_file:?}\n")
}

fn encrypt(key: &str) -> EncryptRequest {
    EncryptRequest { key: key.into(), plaintext: b"identity-test".to_vec(), ..Default::default() }
}

/// `[vault]` for a test's own gateway. Its node is never judged silent (`silent_after_ms` at its
/// maximum): on a loaded machine the shared OpenBao can take longer than the default 750 ms to
/// answer a probe, and these tests are about identity, not about failing fast (availability.rs).
pub(crate) fn vault_base(env: &Env) -> String {
    format!("[vault]\naddress = \"{}\"\nsilent_after_ms = 60000\n", env.vault_addr)
}

pub async fn certificate_callers_map_to_their_roles(env: &'static Env) {
    let pki = Pki::new(env, "pki-callers");
    let billing = approle(env, "approle-certs", "cert-billing", &["qa"], "1h", "24h", &pki.dir).await;
    let reports = approle(env, "approle-certs2", "cert-reports", &["reports"], "1h", "24h", &pki.dir).await;
    let toml = format!(
        "{}{}[roles.cert-billing]\n{billing}[roles.cert-reports]\n{reports}\
         [[cert_callers]]\nrole = \"cert-billing\"\nuri_prefix = \"spiffe://prod.example/ns/billing/\"\n\
         [[cert_callers]]\nrole = \"cert-reports\"\ndns = \"{DNS_REPORTS}\"\n\
         [[callers]]\nrole = \"qa\"\nequals = \"qa\"\n",
        vault_base(env),
        pki.tls_toml()
    );
    let gw = serve_gateway(&toml).await;
    let ca = pki.ca.cert_pem();
    let spiffe = pki.ca.client(&ClientNames { uri: Some(SPIFFE_BILLING), ..Default::default() }).expect("cert");
    let spiffe2 = pki
        .ca
        .client(&ClientNames { uri: Some("spiffe://prod.example/ns/billing/sa/worker"), ..Default::default() })
        .expect("cert");
    let dns = pki.ca.client(&ClientNames { dns: Some(DNS_REPORTS), ..Default::default() }).expect("cert");
    let stranger = pki.ca.client(&ClientNames { cn: Some("stranger"), ..Default::default() }).expect("cert");
    let foreign =
        Ca::new("foreign CA").expect("ca").client(&ClientNames { uri: Some(SPIFFE_BILLING), ..Default::default() });

    // SPIFFE caller → cert-billing (policy qa); DNS caller → cert-reports (policy reports).
    let ch = tls_channel(&gw, &ca, Some(&spiffe)).await.expect("mTLS connect");
    let mut enc = EncryptionServiceClient::new(ch.clone());
    let ct = enc.encrypt(Request::new(encrypt("qa-aes"))).await.expect("spiffe caller encrypts").into_inner();
    let pt = enc
        .decrypt(Request::new(DecryptRequest { key: "qa-aes".into(), ciphertext: ct.ciphertext, ..Default::default() }))
        .await
        .expect("spiffe caller decrypts")
        .into_inner();
    assert_eq!(pt.plaintext, b"identity-test");
    let denied = enc.encrypt(Request::new(encrypt("reports"))).await.expect_err("qa policy has no reports key");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let ch_dns = tls_channel(&gw, &ca, Some(&dns)).await.expect("mTLS connect");
    let mut enc_dns = EncryptionServiceClient::new(ch_dns.clone());
    enc_dns.encrypt(Request::new(encrypt("reports"))).await.expect("dns caller encrypts with reports");
    let denied = enc_dns.encrypt(Request::new(encrypt("qa-aes"))).await.expect_err("reports policy has no qa key");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // A second SPIFFE workload of the same role shares the role's token: no new login.
    let logins = gw.gateway.sessions.logins();
    let ch2 = tls_channel(&gw, &ca, Some(&spiffe2)).await.expect("mTLS connect");
    EncryptionServiceClient::new(ch2).encrypt(Request::new(encrypt("qa-aes"))).await.expect("same role");
    assert_eq!(gw.gateway.sessions.logins(), logins, "callers of one role share its token");
    assert_eq!(logins, 2, "one AppRole login per role");

    // A valid certificate that no rule maps: PERMISSION_DENIED naming it.
    let ch_s = tls_channel(&gw, &ca, Some(&stranger)).await.expect("handshake succeeds: the CA is trusted");
    let err = EncryptionServiceClient::new(ch_s).encrypt(Request::new(encrypt("qa-aes"))).await.expect_err("no rule");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("cn stranger") && err.message().contains("cert_callers"), "{}", err.message());

    // A certificate from an unknown CA is refused during the handshake.
    let foreign = foreign.expect("foreign cert");
    match tls_channel(&gw, &ca, Some(&foreign)).await {
        Err(_) => {}
        Ok(ch) => {
            // A TLS 1.3 client learns of the refusal only at its first call (a broken connection).
            let err =
                EncryptionServiceClient::new(ch).encrypt(Request::new(encrypt("qa-aes"))).await.expect_err("refused");
            // How the client reports a connection the server closed varies (transport error,
            // broken pipe, cancelled): never a handler's answer.
            assert!(matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "{err:?}");
            assert!(std::error::Error::source(&err).is_some(), "refused at the connection, not by a handler: {err:?}");
        }
    }

    // TLS without a client certificate: a JWT caller still works; no credentials at all is refused.
    let ch_plain = tls_channel(&gw, &ca, None).await.expect("TLS connect");
    let mut enc_jwt = EncryptionServiceClient::new(ch_plain.clone());
    enc_jwt.encrypt(req(encrypt("qa-aes"), &env.qa)).await.expect("JWT caller over TLS");
    let err = enc_jwt.encrypt(Request::new(encrypt("qa-aes"))).await.expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("client certificate"), "{}", err.message());

    // WhoAmI for each kind of caller.
    let who = |ch: Channel, r: Request<WhoAmIRequest>| async move {
        IdentityServiceClient::new(ch).who_am_i(r).await.expect("WhoAmI").into_inner()
    };
    let ask = || WhoAmIRequest { keys: vec!["qa-aes".into()], secret_paths: vec!["qa/multi".into()], db_roles: vec![] };
    let me = who(ch.clone(), Request::new(ask())).await;
    assert_eq!(
        (me.identity_kind(), me.identity.as_str(), me.role.as_str()),
        (IdentityKind::Uri, SPIFFE_BILLING, "cert-billing")
    );
    assert!(me.policies.contains(&"qa".to_string()) && me.token_shared, "{me:?}");
    assert!(me.token_ttl.is_some_and(|d| d.seconds > 3000), "{me:?}");
    let cap = |me: &WhoAmIResponse, path: &str| {
        me.capabilities.iter().find(|c| c.path == path).map(|c| c.capabilities.clone()).unwrap_or_default()
    };
    let kinds = me.capabilities.iter().map(|c| (c.kind(), c.name.as_str())).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [(ResourceKind::Key, "qa-aes"), (ResourceKind::Secret, "qa/multi")],
        "{me:?}"
    );
    assert_eq!(cap(&me, "transit/encrypt/qa-aes"), ["update"], "{me:?}");
    assert_eq!(cap(&me, "secret/data/qa/multi"), ["read"], "{me:?}");
    let me = who(ch_dns, Request::new(ask())).await;
    assert_eq!(
        (me.identity_kind(), me.identity.as_str(), me.role.as_str()),
        (IdentityKind::Dns, DNS_REPORTS, "cert-reports")
    );
    assert_eq!(cap(&me, "transit/encrypt/qa-aes"), ["deny"], "{me:?}");
    let me = who(ch_plain, req(ask(), &env.qa)).await;
    assert_eq!((me.identity_kind(), me.role.as_str()), (IdentityKind::Jwt, "qa"));
    assert!(me.identity.ends_with("#qa") && !me.token_shared, "{me:?}");
    assert!(!format!("{me:?}").contains("s."), "no token in the answer: {me:?}");
}

pub async fn gateway_rules_refuse_before_vault(env: &'static Env) {
    let toml = format!(
        "{}[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n\
         [roles.qa]\ntransit_keys = [\"qa-aes\", \"qa-rot*\"]\nkv_prefixes = [\"qa/\"]\ndb_roles = [\"qa\"]\n",
        vault_base(env)
    );
    let gw = serve_gateway(&toml).await;
    let mut enc = EncryptionServiceClient::new(gw.channel.clone());
    enc.encrypt(req(encrypt("qa-aes"), &env.qa)).await.expect("allowed key");
    enc.encrypt(req(encrypt("qa-rotate"), &env.qa)).await.expect("allowed by prefix");
    // Vault's policy (qa-*) would allow these; the gateway's rule refuses them without asking Vault.
    let unique = format!("qa-rule-{}", std::process::id());
    let err = enc.encrypt(req(encrypt(&unique), &env.qa)).await.expect_err("refused by the gateway");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        format!(
            "role \"qa\" may not use Transit key \"{unique}\" in mount \"transit\" (gateway rule roles.qa.transit_keys, transit_mounts)"
        )
    );
    let mut kv = SecretServiceClient::new(gw.channel.clone());
    let err = kv
        .get_secret(req(GetSecretRequest { path: "billing/api-keys".into(), ..Default::default() }, &env.qa))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("roles.qa.kv_prefixes"), "{}", err.message());
    kv.get_secret(req(GetSecretRequest { path: "qa/multi".into(), ..Default::default() }, &env.qa))
        .await
        .expect("allowed");
    let mut db = vaultgate::pb::vaultgate::v1::database_service_client::DatabaseServiceClient::new(gw.channel.clone());
    let err = db
        .get_db_creds(req(GetDbCredsRequest { role: "qa-other".into(), mount: String::new() }, &env.qa))
        .await
        .expect_err("refused");
    assert!(err.message().contains("roles.qa.db_roles"), "{}", err.message());
    // OpenBao's audit log records every request it receives: none for the refused key.
    let audit = std::fs::read_to_string(env.dir.join("audit.log")).unwrap_or_default();
    assert!(audit.contains("transit/encrypt/qa-aes"), "the audit log is the right file");
    assert!(!audit.contains(&format!("transit/encrypt/{unique}")), "a refused call must not reach Vault");
}

/// Tokens with a 5 s TTL and a 15 s max TTL, one per JWT caller and one per certificate role,
/// under a steady trickle of calls for 40 s: no call may fail.
pub async fn tokens_renew_and_relogin_under_trickle(env: &'static Env) {
    let pki = Pki::new(env, "pki-trickle");
    let (status, body) = env
        .vault(
            Method::POST,
            "auth/jwt/role/qatrickle",
            Some(json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "qatrickle",
                "bound_audiences": [vaultgate::dev::issuer::AUDIENCE], "token_policies": ["qa"],
                "token_ttl": "5s", "token_max_ttl": "15s"})),
        )
        .await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let login = approle(env, "approle-trickle", "cert-trickle", &["qa"], "5s", "15s", &pki.dir).await;
    let toml = format!(
        "{}{}[roles.cert-trickle]\n{login}[[cert_callers]]\nrole = \"cert-trickle\"\ncn = \"trickle\"\n\
         [[callers]]\nrole = \"qatrickle\"\nequals = \"qatrickle\"\n",
        vault_base(env),
        pki.tls_toml()
    );
    let gw = serve_gateway(&toml).await;
    let cert = pki.ca.client(&ClientNames { cn: Some("trickle"), ..Default::default() }).expect("cert");
    let ch_cert = tls_channel(&gw, &pki.ca.cert_pem(), Some(&cert)).await.expect("mTLS");
    let ch_jwt = tls_channel(&gw, &pki.ca.cert_pem(), None).await.expect("TLS");
    let jwt = env.jwt("qatrickle", 3600);
    let started = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let (mut by_cert, mut by_jwt) = (EncryptionServiceClient::new(ch_cert), EncryptionServiceClient::new(ch_jwt));
    while started.elapsed() < Duration::from_secs(40) {
        ticker.tick().await;
        let a = by_cert.encrypt(Request::new(encrypt("qa-aes")));
        let b = by_jwt.encrypt(req(encrypt("qa-aes"), &jwt));
        let (a, b) = tokio::join!(a, b);
        for (who, r) in [("cert", a), ("jwt", b)] {
            match r {
                Ok(_) => ok += 1,
                Err(e) => failed.push(format!(
                    "{:.1}s {who}: {:?} {}",
                    started.elapsed().as_secs_f64(),
                    e.code(),
                    e.message()
                )),
            }
        }
    }
    let stats = &gw.gateway.sessions.stats;
    let (logins, renewals) = (stats.logins.load(Ordering::Relaxed), stats.renewals.load(Ordering::Relaxed));
    println!("    trickle 40 s: {ok} calls ok, {} failed; {logins} logins, {renewals} renewals (2 tokens, TTL 5 s, max TTL 15 s)", failed.len());
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    // Each token: login, renewals at ~3.3 s, capped near 15 s, then a fresh login: over 40 s at
    // least 3 logins and 4 renewals per token.
    assert!(logins >= 6, "re-logins when the max TTL nears: {logins}");
    assert!(renewals >= 8, "renewals at two thirds of the TTL: {renewals}");
}

/// A token revoked behind the gateway's back: the next call still succeeds (403 → lookup-self
/// shows the token gone → fresh login → the call is retried once).
pub async fn revoked_tokens_are_replaced(env: &'static Env) {
    let pki = Pki::new(env, "pki-revoke");
    let login = approle(env, "approle-rv", "cert-rv", &["qa"], "1h", "24h", &pki.dir).await;
    // A JWT mount of its own, so revoking its tokens touches no other test.
    let (_, cfg) = env.vault(Method::GET, "auth/jwt/config", None).await;
    let (status, body) = env.vault(Method::POST, "sys/auth/jwt-rv", Some(json!({"type": "jwt"}))).await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let keys: Value = cfg["data"]["jwt_validation_pubkeys"].clone();
    let (status, body) = env
        .vault(
            Method::POST,
            "auth/jwt-rv/config",
            Some(json!({"jwt_validation_pubkeys": keys, "bound_issuer": vaultgate::dev::issuer::ISSUER})),
        )
        .await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let (status, body) = env
        .vault(Method::POST, "auth/jwt-rv/role/qa", Some(vaultgate::dev::provision::jwt_role("qa", "1h", "24h")))
        .await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let toml = format!(
        "{}{}[roles.cert-rv]\n{login}[[cert_callers]]\nrole = \"cert-rv\"\ncn = \"revoked\"\n\
         [[callers]]\nrole = \"qa\"\nequals = \"qa\"\nauth_mount = \"jwt-rv\"\n",
        vault_base(env),
        pki.tls_toml()
    );
    let gw = serve_gateway(&toml).await;
    let cert = pki.ca.client(&ClientNames { cn: Some("revoked"), ..Default::default() }).expect("cert");
    let ch_cert = tls_channel(&gw, &pki.ca.cert_pem(), Some(&cert)).await.expect("mTLS");
    let ch_jwt = tls_channel(&gw, &pki.ca.cert_pem(), None).await.expect("TLS");
    let mut enc_cert = EncryptionServiceClient::new(ch_cert);
    let mut enc_jwt = EncryptionServiceClient::new(ch_jwt);
    enc_cert.encrypt(Request::new(encrypt("qa-aes"))).await.expect("before");
    enc_jwt.encrypt(req(encrypt("qa-aes"), &env.qa)).await.expect("before");
    let logins = gw.gateway.sessions.logins();
    for prefix in ["auth/approle-rv/login", "auth/jwt-rv/login"] {
        let (status, body) =
            env.vault(Method::PUT, &format!("sys/leases/revoke-prefix/{prefix}"), Some(json!({"sync": true}))).await;
        assert!(status == 204 || status == 200, "revoke {prefix}: {status} {body}");
    }
    enc_cert.encrypt(Request::new(encrypt("qa-aes"))).await.expect("after the role token was revoked");
    // An explicit batch too: refused whole by Vault, so it is retried whole with the fresh token.
    let items = (0..3).map(|i| EncryptBatchItem { plaintext: vec![i], ..Default::default() }).collect();
    let batch = enc_jwt
        .encrypt_batch(req(EncryptBatchRequest { key: "qa-aes".into(), items, ..Default::default() }, &env.qa))
        .await
        .expect("after the caller token was revoked")
        .into_inner();
    assert!(batch.results.iter().all(|r| r.error.is_none() && r.ciphertext.starts_with("vault:v")), "{batch:?}");
    let stats = &gw.gateway.sessions.stats;
    assert_eq!(stats.dead.load(Ordering::Relaxed), 2, "both revocations detected by lookup-self");
    assert_eq!(gw.gateway.sessions.logins(), logins + 2, "one fresh login each");
    // A real policy denial is not mistaken for a dead token: no login, PERMISSION_DENIED.
    let err = enc_jwt.encrypt(req(encrypt("reports"), &env.qa)).await.expect_err("policy denies");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(gw.gateway.sessions.logins(), logins + 2);
}

/// Certificate files replaced under a running gateway: a connected client keeps working, new
/// connections get the new certificate.
pub async fn certificate_files_reload_without_dropping_connections(env: &'static Env) {
    let pki = Pki::new(env, "pki-reload");
    let toml = format!("{}{}[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n", vault_base(env), pki.tls_toml());
    let gw = serve_gateway(&toml).await;
    let old_ca = pki.ca.cert_pem();
    let connected = tls_channel(&gw, &old_ca, None).await.expect("TLS connect");
    let mut enc = EncryptionServiceClient::new(connected);
    enc.encrypt(req(encrypt("qa-aes"), &env.qa)).await.expect("before the reload");

    // cert-manager style rotation: a new CA and server certificate written in place.
    let new_ca = Ca::new("rotated CA").expect("ca");
    let server = new_ca.server().expect("server cert");
    pki.write("server-key.pem", &server.key_pem);
    pki.write("server.pem", &server.cert_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tls_channel(&gw, &new_ca.cert_pem(), None).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not picked up within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    enc.encrypt(req(encrypt("qa-aes"), &env.qa)).await.expect("the connected client keeps working");
    let fresh = tls_channel(&gw, &new_ca.cert_pem(), None).await.expect("new connections use the new certificate");
    EncryptionServiceClient::new(fresh).encrypt(req(encrypt("qa-aes"), &env.qa)).await.expect("call");
    let stale = match tls_channel(&gw, &old_ca, None).await {
        Err(_) => true,
        Ok(ch) => EncryptionServiceClient::new(ch).encrypt(req(encrypt("qa-aes"), &env.qa)).await.is_err(),
    };
    assert!(stale, "a client trusting only the old CA must fail against the new certificate");
}

/// A Kubernetes service-account caller: the gateway logs in to `auth/kubernetes` with the
/// caller's token, and OpenBao checks it with a TokenReview (served here on loopback).
pub async fn kubernetes_callers_log_in(env: &'static Env) {
    let toml = format!(
        "{}[[callers]]\nrole = \"k8s-billing\"\nclaim = \"sub\"\nequals = \"system:serviceaccount:billing:api\"\nmethod = \"kubernetes\"\n",
        vault_base(env)
    );
    let gw = serve_gateway(&toml).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let sa = |ns: &str| {
        env.issuer
            .sign(&json!({
                "iss": "kubernetes/serviceaccount",
                "sub": format!("system:serviceaccount:{ns}:api"),
                "iat": now - 60,
                "nbf": now - 60,
                "exp": now + 600,
                "kubernetes.io/serviceaccount/namespace": ns,
                "kubernetes.io/serviceaccount/service-account.name": "api",
                "kubernetes.io/serviceaccount/service-account.uid": "2b9c7a4e-0000-4000-8000-000000000001",
            }))
            .expect("sign")
    };
    let token = sa("billing");
    env.remember(&token);
    let mut enc = EncryptionServiceClient::new(gw.channel.clone());
    enc.encrypt(req(encrypt("qa-aes"), &token)).await.expect("service-account caller encrypts");
    let me = IdentityServiceClient::new(gw.channel.clone())
        .who_am_i(req(WhoAmIRequest::default(), &token))
        .await
        .expect("WhoAmI")
        .into_inner();
    assert_eq!((me.identity_kind(), me.role.as_str()), (IdentityKind::Kubernetes, "k8s-billing"), "{me:?}");
    assert_eq!(me.identity, "kubernetes/serviceaccount#system:serviceaccount:billing:api");
    assert!(me.policies.contains(&"qa".to_string()), "{me:?}");
    // Vault's role binds the namespace: a token of another namespace matching the same rule prefix
    // is refused by Vault at login.
    let toml = format!(
        "{}[[callers]]\nrole = \"k8s-billing\"\nprefix = \"system:serviceaccount:\"\nmethod = \"kubernetes\"\n",
        vault_base(env)
    );
    let gw2 = serve_gateway(&toml).await;
    let other = sa("other");
    env.remember(&other);
    let err = EncryptionServiceClient::new(gw2.channel.clone())
        .encrypt(req(encrypt("qa-aes"), &other))
        .await
        .expect_err("namespace not bound");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // The refusal is remembered briefly: the same token again does not reach Vault.
    let logins = gw2.gateway.sessions.logins();
    let again = EncryptionServiceClient::new(gw2.channel.clone()).encrypt(req(encrypt("qa-aes"), &other)).await;
    assert_eq!(again.expect_err("still refused").code(), Code::Unauthenticated);
    assert_eq!(gw2.gateway.sessions.logins(), logins, "negative cache: no second login attempt");
}

/// A role whose token an operator issues into a file: used as is, re-read when Vault says it is
/// gone, and never revoked by the gateway (other replicas may share it); the gateway's own
/// AppRole tokens are revoked at shutdown.
pub async fn token_file_roles_and_revocation_at_shutdown(env: &'static Env) {
    let pki = Pki::new(env, "pki-tokenfile");
    let login = approle(env, "approle-sd", "cert-sd", &["qa"], "1h", "24h", &pki.dir).await;
    let issue = || async {
        let (status, body) =
            env.vault(Method::POST, "auth/token/create", Some(json!({"policies": ["qa"], "ttl": "1h"}))).await;
        assert_eq!(status, 200, "{body}");
        let token = body["auth"]["client_token"].as_str().expect("token").to_string();
        env.remember(&token);
        token
    };
    let first = issue().await;
    let file = pki.write("operator.token", &first);
    let toml = format!(
        "{}{}[shutdown]\ngrace_ms = 100\ndrain_timeout_ms = 2000\n\
         [roles.file-role]\ntoken_file = {file:?}\n[roles.cert-sd]\n{login}\
         [[cert_callers]]\nrole = \"file-role\"\ncn = \"filetoken\"\n[[cert_callers]]\nrole = \"cert-sd\"\ncn = \"owned\"\n",
        vault_base(env),
        pki.tls_toml()
    );
    let gw = serve_gateway(&toml).await;
    let ca = pki.ca.cert_pem();
    let by_file = pki.ca.client(&ClientNames { cn: Some("filetoken"), ..Default::default() }).expect("cert");
    let by_approle = pki.ca.client(&ClientNames { cn: Some("owned"), ..Default::default() }).expect("cert");
    let mut enc_file = EncryptionServiceClient::new(tls_channel(&gw, &ca, Some(&by_file)).await.expect("mTLS"));
    let mut enc_own = EncryptionServiceClient::new(tls_channel(&gw, &ca, Some(&by_approle)).await.expect("mTLS"));
    enc_file.encrypt(Request::new(encrypt("qa-aes"))).await.expect("token-file role");
    enc_own.encrypt(Request::new(encrypt("qa-aes"))).await.expect("AppRole role");

    // The operator's token is revoked and a new one written: the next call re-reads the file.
    let (status, body) = env.vault(Method::POST, "auth/token/revoke", Some(json!({"token": first}))).await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let second = issue().await;
    pki.write("operator.token", &second);
    enc_file.encrypt(Request::new(encrypt("qa-aes"))).await.expect("after the operator replaced the token");

    let list = |prefix: &'static str| async move {
        env.vault(Method::from_bytes(b"LIST").expect("method"), &format!("sys/leases/lookup/{prefix}"), None).await
    };
    let (_, before) = list("auth/approle-sd/login/").await;
    assert_eq!(before["data"]["keys"].as_array().map(Vec::len), Some(1), "one AppRole token: {before}");
    gw.shutdown();
    assert!(gw.stopped().await, "the gateway stops");
    let (status, after) = list("auth/approle-sd/login/").await;
    assert!(
        status == 404 || after["data"]["keys"].as_array().is_some_and(Vec::is_empty),
        "revoked at shutdown: {after}"
    );
    let (status, body) = env.vault(Method::POST, "auth/token/lookup", Some(json!({"token": second}))).await;
    assert_eq!(status, 200, "the operator's token is left alone: {body}");
}
