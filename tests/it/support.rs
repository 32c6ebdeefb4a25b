//! The shared test environment: a real OpenBao dev server and PostgreSQL provisioned as in
//! `vaultgate dev` plus a `qa` caller for the cases the demo callers cannot reach, and the
//! gateway serving in-process on `127.0.0.1:0`.

use serde_json::{json, Value};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};
use tonic::{transport::Channel, Request};
use vaultgate::{
    config::Config,
    dev::{self, issuer::Issuer, process::Bao, process::Postgres, provision},
    service::Gateway,
    vault::VaultToken,
};

/// Everything a test needs: addresses, callers' JWTs, admin access to Vault for checks.
pub struct Env {
    /// The gateway's address.
    pub addr: SocketAddr,
    /// The gateway's Prometheus endpoint.
    pub metrics_addr: SocketAddr,
    /// The gateway's shared state (counters).
    pub gateway: Arc<Gateway>,
    /// OpenBao's URL.
    pub vault_addr: String,
    /// Root token: for setup and for checking results in Vault directly, never given to the gateway.
    pub root_token: String,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// The password of PostgreSQL's `postgres` superuser (tests that give OpenBao a database).
    pub pg_password: String,
    /// The demo issuer (mints JWTs Vault trusts).
    pub issuer: Issuer,
    /// JWTs of the demo callers and the test caller.
    pub billing: String,
    /// The `reports` demo caller.
    pub reports: String,
    /// The `qa` caller: keys `qa-*`, KV `qa/`, database roles `qa*` (`qashort`: the same rights,
    /// with a Vault token that lives 4 s).
    pub qa: String,
    /// A directory for the test's files (logs of bao and postgres).
    pub dir: PathBuf,
    http: reqwest::Client,
    channel: Channel,
    secrets: Mutex<Vec<String>>,
    plaintexts: Mutex<Vec<(String, String)>>,
    processes: tokio::sync::Mutex<Option<(Bao, Option<Postgres>)>>,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// Policy of the `qa` caller.
const QA_POLICY: &str = r#"
path "transit/encrypt/qa-*" { capabilities = ["update"] }
path "transit/decrypt/qa-*" { capabilities = ["update"] }
path "transit/rewrap/qa-*" { capabilities = ["update"] }
path "transit/datakey/plaintext/qa-*" { capabilities = ["update"] }
path "transit/keys/qa-*" { capabilities = ["read", "update"] }
path "secret/data/qa/*" { capabilities = ["read"] }
path "secret/metadata/qa/*" { capabilities = ["read", "list"] }
path "database/creds/qa*" { capabilities = ["read"] }
path "sys/leases/revoke/database/creds/qa*" { capabilities = ["update"] }
path "transit-qa/encrypt/qa-*" { capabilities = ["update"] }
path "transit-qa/decrypt/qa-*" { capabilities = ["update"] }
path "transit-qa/rewrap/qa-*" { capabilities = ["update"] }
path "transit-qa/datakey/plaintext/qa-*" { capabilities = ["update"] }
path "transit-qa/keys/qa-*" { capabilities = ["read", "update"] }
"#;

impl Env {
    /// Starts and provisions the stack and the gateway; panics with the reason if it cannot.
    pub async fn start() -> Env {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it-stack");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test stack directory");
        let stack = dev::Stack::start(&dir).await.unwrap_or_else(|e| panic!("starting OpenBao/PostgreSQL: {e}"));
        let pg = stack.postgres.as_ref().expect("PostgreSQL must be installed for the tests (make test installs it)");
        let (pg_port, pg_password) = (pg.port, pg.password.clone());
        let client = stack.admin_client().expect("vault client");
        let admin = provision::Admin { vault: &client, root: VaultToken::new(stack.root_token.as_str()) };
        provision_qa(&admin, pg_port, &pg_password).await;
        provision_kubernetes(&admin).await;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the gateway");
        let addr = listener.local_addr().expect("gateway address");
        let metrics_addr: SocketAddr =
            format!("127.0.0.1:{}", dev::process::free_port().expect("port")).parse().expect("addr");
        let audit = dir.join("main-gateway-audit.log");
        let mut toml = stack.config_toml(addr, &audit, Some(metrics_addr));
        toml.push_str(&format!(
            "[[callers]]\nrole = \"qa\"\nclaim = \"sub\"\nequals = \"qa\"\nverify_with = \"{0}\"\n\n[[callers]]\nrole = \"qa2\"\nequals = \"qa2\"\nverify_with = \"{0}\"\n\n[[callers]]\nrole = \"qashort\"\nequals = \"qashort\"\nverify_with = \"{0}\"\n\n[limits]\nmax_item_bytes = 65536\nmax_batch_items = 2000\n[key_versions]\npoll_ms = 1000\nidle_ms = 5000\n",
            dev::DEV_ISSUER
        ));
        let config = Arc::new(Config::parse(&toml).expect("gateway config"));
        let gateway = Gateway::new(config, Default::default()).expect("gateway");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = gateway.clone();
        tokio::spawn(async move {
            if let Err(e) = vaultgate::server::serve(listener, served, async {
                let _ = rx.await;
            })
            .await
            {
                eprintln!("gateway stopped: {e}");
            }
        });

        let dev::Stack { bao, postgres, issuer, root_token } = stack;
        let mint = |sub: &str| issuer.mint(sub, 3600).expect("mint a JWT");
        let env = Env {
            addr,
            metrics_addr,
            gateway,
            vault_addr: bao.addr.clone(),
            billing: mint("billing"),
            reports: mint("reports"),
            qa: mint("qa"),
            root_token,
            pg_port,
            pg_password: pg_password.clone(),
            issuer,
            dir,
            http: reqwest::Client::new(),
            channel: tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_lazy(),
            secrets: Mutex::new(Vec::new()),
            plaintexts: Mutex::new(Vec::new()),
            processes: tokio::sync::Mutex::new(Some((bao, postgres))),
            shutdown: Mutex::new(Some(tx)),
        };
        for s in [&env.billing, &env.reports, &env.qa, &env.root_token, &pg_password] {
            env.remember(s);
        }
        env.remember("sk_test_demo");
        env
    }

    /// Stops the gateway, PostgreSQL and OpenBao.
    pub async fn stop(&self) {
        if let Some(tx) = self.shutdown.lock().expect("lock").take() {
            let _ = tx.send(());
        }
        if let Some((bao, pg)) = self.processes.lock().await.take() {
            if let Some(pg) = pg {
                pg.stop().await;
            }
            bao.stop().await;
        }
    }

    /// Registers a value that must never appear in the gateway's log.
    pub fn remember(&self, secret: &str) {
        self.secrets.lock().expect("lock").push(secret.to_string());
    }

    /// Registers a plaintext a test sends: it must never appear in the gateway's log, neither as
    /// it is (when it is text of 6 bytes or more) nor as the base64 the gateway sends to Vault
    /// (without its `=` padding, so it is found inside longer text too). Returns `plaintext`.
    pub fn remember_plaintext<'a>(&self, plaintext: &'a [u8]) -> &'a [u8] {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext).trim_end_matches('=').to_string();
        let raw = std::str::from_utf8(plaintext).ok().filter(|t| t.len() >= 6).map(str::to_string);
        if let Some(raw) = &raw {
            self.remember(raw);
        }
        if b64.len() >= 8 {
            self.remember(&b64);
            self.plaintexts.lock().expect("lock").push((raw.unwrap_or_else(|| b64.clone()), b64));
        }
        plaintext
    }

    /// The plaintexts registered with [`Env::remember_plaintext`]: (raw text, base64).
    pub fn plaintexts(&self) -> Vec<(String, String)> {
        self.plaintexts.lock().expect("lock").clone()
    }

    /// Everything registered with [`Env::remember`].
    pub fn secrets(&self) -> Vec<String> {
        self.secrets.lock().expect("lock").clone()
    }

    /// The shared HTTP/2 channel to the gateway (one connection, as a real client would use).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A JWT for `subject` from the trusted demo issuer, valid for `ttl` seconds (negative: expired).
    pub fn jwt(&self, subject: &str, ttl: i64) -> String {
        let jwt = self.issuer.mint(subject, ttl).expect("mint a JWT");
        self.remember(&jwt);
        jwt
    }

    /// GETs a plain-HTTP URL and returns the body.
    pub async fn http_get(&self, url: &str) -> String {
        let resp = self.http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.text().await.expect("body")
    }

    /// Calls Vault directly with the root token (to check what the gateway did).
    pub async fn vault(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.vault_addr))
            .header("X-Vault-Token", &self.root_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("vault answers");
        let status = resp.status().as_u16();
        let value = resp.json().await.unwrap_or(Value::Null);
        (status, value)
    }

    /// Logs in to PostgreSQL with `user`/`password`; `Ok(current_user)` or the error text.
    pub async fn pg_login(&self, user: &str, password: &str) -> Result<String, String> {
        let out = tokio::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.pg_port.to_string(),
                "-U",
                user,
                "-d",
                "postgres",
                "-Atc",
                "select current_user",
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .await
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

/// A request carrying `jwt` as the caller's bearer token.
pub fn req<T>(message: T, jwt: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {jwt}").parse().expect("ascii metadata"));
    r
}

/// `call` made as a client should: an UNAVAILABLE answer is tried again after its
/// `grpc-retry-pushback-ms` (1 s without one), up to 5 times. With the whole suite running on 2
/// cores, OpenBao sometimes answers nothing for longer than the gateway's `silent_after`, and the
/// gateway then fails fast for a moment, as it should; tests about something else use this.
pub async fn retried<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(e) if e.code() == tonic::Code::Unavailable && tries < 5 => {
                tries += 1;
                let pushback = e
                    .metadata()
                    .get(vaultgate::error::RETRY_PUSHBACK)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1000u64);
                tokio::time::sleep(std::time::Duration::from_millis(pushback)).await;
            }
            answer => return answer,
        }
    }
}

/// A PostgreSQL role of the test database whose users live `ttl`, renewable up to `max_ttl`.
fn db_role(ttl: &str, max_ttl: &str) -> Value {
    json!({
        "db_name": "postgres",
        "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
        "default_ttl": ttl,
        "max_ttl": max_ttl,
    })
}

async fn provision_qa(admin: &provision::Admin<'_>, pg_port: u16, pg_password: &str) {
    let steps = [
        ("sys/policies/acl/qa", json!({"policy": QA_POLICY})),
        ("auth/jwt/role/qa", provision::jwt_role("qa", "1h", "24h")),
        (
            "auth/jwt/role/qashort",
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "qashort", "bound_audiences": [dev::issuer::AUDIENCE], "token_policies": ["qa"], "token_ttl": "4s", "token_max_ttl": "1h"}),
        ),
        (
            "auth/jwt/role/qa2",
            json!({"role_type": "jwt", "user_claim": "sub", "bound_subject": "qa2", "bound_audiences": [dev::issuer::AUDIENCE], "token_policies": ["qa"], "token_ttl": "1h"}),
        ),
        ("transit/keys/qa-b1", json!({"type": "aes256-gcm96"})),
        ("transit/keys/qa-b2", json!({"type": "aes256-gcm96"})),
        // The shutdown-drain test's own keys: the batching test counts every request to qa-b1/qa-b2.
        ("transit/keys/qa-drain1", json!({"type": "aes256-gcm96"})),
        ("transit/keys/qa-drain2", json!({"type": "aes256-gcm96"})),
        ("transit/keys/qa-aes", json!({"type": "aes256-gcm96"})),
        ("transit/keys/qa-derived", json!({"type": "aes256-gcm96", "derived": true})),
        ("transit/keys/qa-rotate", json!({"type": "aes256-gcm96"})),
        ("secret/data/qa/multi", json!({"data": {"v": "one"}})),
        ("secret/data/qa/multi", json!({"data": {"v": "two"}})),
        (
            "database/config/postgres",
            json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{pg_port}/postgres?sslmode=disable"),
                "username": "postgres",
                "password": pg_password,
                "allowed_roles": ["billing", "qa", "qaonce", "qawatch", "qawatch2", "qawatch3", "qawatch4"],
            }),
        ),
        (
            "database/roles/qa",
            json!({
                "db_name": "postgres",
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                "default_ttl": "60s",
                "max_ttl": "1h",
            }),
        ),
        // Used by one test only (behaviours.rs counts its leases).
        (
            "database/roles/qaonce",
            json!({
                "db_name": "postgres",
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                "default_ttl": "60s",
                "max_ttl": "1h",
            }),
        ),
        ("transit/keys/qa-once", json!({"type": "aes256-gcm96"})),
        // WatchDbCreds (streams.rs): a 6 s lease with a 15 s max TTL (renewed, then rotated), and
        // one role per test that counts the leases left behind.
        ("database/roles/qawatch", db_role("6s", "15s")),
        ("database/roles/qawatch2", db_role("60s", "1h")),
        ("database/roles/qawatch3", db_role("60s", "1h")),
        ("database/roles/qawatch4", db_role("10s", "15s")),
    ];
    for (path, body) in steps {
        admin.post(path, body).await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A gateway of a test's own (exact counters, or a Vault of its own), stopped when dropped.
pub struct TestGateway {
    /// Its address.
    pub addr: SocketAddr,
    /// Its shared state.
    pub gateway: Arc<Gateway>,
    /// A channel to it.
    pub channel: Channel,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    served: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl TestGateway {
    /// Starts its graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        if let Some(tx) = self.stop.lock().expect("lock").take() {
            let _ = tx.send(());
        }
    }

    /// Waits (up to 30 s) for the server to stop after [`TestGateway::shutdown`]; true if it did.
    pub async fn stopped(mut self) -> bool {
        let Some(served) = self.served.take() else { return false };
        tokio::time::timeout(std::time::Duration::from_secs(30), served).await.is_ok_and(|r| r.is_ok_and(|r| r.is_ok()))
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a gateway on `127.0.0.1:0` with `config_after_listen` (TOML without `listen`).
pub async fn serve_gateway(config_after_listen: &str) -> TestGateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let toml = format!("listen = \"{addr}\"\n{config_after_listen}");
    let gateway = Gateway::new(Arc::new(Config::parse(&toml).expect("config")), Default::default()).expect("gateway");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(vaultgate::server::serve(listener, gateway.clone(), async {
        let _ = rx.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy();
    TestGateway { addr, gateway, channel, stop: Mutex::new(Some(tx)), served: Some(served) }
}

/// Kubernetes auth at `kubernetes/`, checking service-account tokens with a TokenReview endpoint
/// served here on loopback (no cluster needed), and a role `k8s-billing` for service account
/// `api` in namespace `billing` with the `qa` policy.
async fn provision_kubernetes(admin: &provision::Admin<'_>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the TokenReview endpoint");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(token_review(stream));
        }
    });
    let any_ca = vaultgate::dev::certs::Ca::new("kubernetes test CA").expect("ca").cert_pem();
    let steps = [
        ("sys/auth/kubernetes", json!({"type": "kubernetes"})),
        (
            "auth/kubernetes/config",
            json!({"kubernetes_host": format!("http://{addr}"), "token_reviewer_jwt": "reviewer",
                   "disable_local_ca_jwt": true, "kubernetes_ca_cert": any_ca}),
        ),
        (
            "auth/kubernetes/role/k8s-billing",
            json!({"bound_service_account_names": ["api"], "bound_service_account_namespaces": ["billing"],
                   "token_policies": ["qa"], "token_ttl": "1h"}),
        ),
    ];
    for (path, body) in steps {
        admin.post(path, body).await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A minimal TokenReview endpoint: authenticates any token, as the service account its claims name.
async fn token_review(mut stream: tokio::net::TcpStream) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break buf[end + 4..end + 4 + len].to_vec();
            }
        }
    };
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let claims: Value = token
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let ns = claims["kubernetes.io/serviceaccount/namespace"].as_str().unwrap_or_default();
    let sa = claims["kubernetes.io/serviceaccount/service-account.name"].as_str().unwrap_or_default();
    let uid = claims["kubernetes.io/serviceaccount/service-account.uid"].as_str().unwrap_or_default();
    let answer = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "status": {"authenticated": true, "user": {"username": format!("system:serviceaccount:{ns}:{sa}"), "uid": uid}}})
    .to_string();
    let response = format!(
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// The audit log at `path` as JSON lines, re-read until `done` holds of them or `within` passes
/// (a line is written before its answer is sent, but a caller that gave up first, e.g. on its own
/// deadline, may look before the gateway wrote it). Panics on a line that is not JSON.
pub async fn audit_lines(
    path: &std::path::Path,
    within: std::time::Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let until = tokio::time::Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?} is not JSON: {e}")))
            .collect();
        if done(&lines) || tokio::time::Instant::now() >= until {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A loopback TCP proxy in front of Vault for fault injection: holds each chunk of Vault's
/// answers for a delay that can be changed while it runs, and can cut a connection once right
/// after forwarding a request whose bytes contain a given text (Vault got the request and acted;
/// its answer is thrown away and the gateway sees the connection close).
pub struct Proxy {
    /// `http://127.0.0.1:<port>`, the address to give the gateway as `vault.address`.
    pub url: String,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    cut: Arc<Mutex<Option<String>>>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
    holding: Arc<std::sync::atomic::AtomicUsize>,
    /// When set, only answers to requests whose first bytes contain this text are held (the
    /// gateway's own health probes and token renewals pass, and never count as held).
    hold_only: Arc<Mutex<Option<String>>>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`http://host:port`), with no delay and nothing to cut.
    pub async fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let proxy = Proxy {
            url,
            delay_ms: Arc::default(),
            cut: Arc::default(),
            cuts: Arc::default(),
            holding: Arc::default(),
            hold_only: Arc::default(),
        };
        let (delay_ms, cut, cuts, holding, hold_only) = (
            proxy.delay_ms.clone(),
            proxy.cut.clone(),
            proxy.cuts.clone(),
            proxy.holding.clone(),
            proxy.hold_only.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, delay_ms, cut, cuts, holding, hold_only) =
                    (upstream.clone(), delay_ms.clone(), cut.clone(), cuts.clone(), holding.clone(), hold_only.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let cut_here = Arc::new(AtomicBool::new(false));
                    let armed = cut_here.clone();
                    // Whether the request now on this (HTTP/1.1, one at a time) connection may be held.
                    let may_hold = Arc::new(AtomicBool::new(true));
                    let marked = may_hold.clone();
                    let upward = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                            {
                                let text = String::from_utf8_lossy(&buf[..n]);
                                let starts_request = ["GET ", "PUT ", "POST ", "DELETE ", "LIST ", "HEAD "]
                                    .iter()
                                    .any(|m| text.starts_with(m));
                                if starts_request {
                                    let only = hold_only.lock().expect("lock");
                                    marked.store(
                                        only.as_ref().is_none_or(|needle| text.contains(needle.as_str())),
                                        Ordering::SeqCst,
                                    );
                                }
                                let mut cut = cut.lock().expect("lock");
                                if cut.as_ref().is_some_and(|needle| text.contains(needle.as_str())) {
                                    *cut = None;
                                    armed.store(true, Ordering::SeqCst);
                                }
                            }
                            if server_tx.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_tx.shutdown().await;
                    });
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                        if cut_here.load(Ordering::SeqCst) {
                            // Vault answered the marked request: drop its answer and both sockets.
                            cuts.fetch_add(1, Ordering::SeqCst);
                            upward.abort();
                            return;
                        }
                        let delay = delay_ms.load(Ordering::SeqCst);
                        if delay > 0 && may_hold.load(Ordering::SeqCst) {
                            holding.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                            holding.fetch_sub(1, Ordering::SeqCst);
                        }
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_tx.shutdown().await;
                });
            }
        });
        proxy
    }

    /// Holds every chunk of Vault's answers read from now on for `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds only the answers to requests whose first bytes contain `needle` (e.g. a path),
    /// so that what [`Proxy::holding`] counts is the test's own calls.
    pub fn hold_only(&self, needle: &str) {
        *self.hold_only.lock().expect("lock") = Some(needle.to_string());
    }

    /// Cuts, once, the connection of the next request whose bytes contain `needle`, after Vault answered it.
    pub fn cut_after(&self, needle: &str) {
        *self.cut.lock().expect("lock") = Some(needle.to_string());
    }

    /// Waits until the proxy holds `n` answers (each for the delay read when it came), so a
    /// test knows its calls reached Vault; panics after 30 s.
    pub async fn holding(&self, n: usize) {
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.holding.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(tokio::time::Instant::now() < until, "the proxy never held {n} answers");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}
