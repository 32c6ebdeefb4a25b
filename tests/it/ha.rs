//! Vault high availability and outages, each against real OpenBao servers of the test's own
//! (Raft storage on loopback, initialised and unsealed over the HTTP API) and a gateway of its own
//! that serves a non-root caller through JWT login: leader failover under load, Vault stopped and
//! started again, Vault sealed and unsealed, and a standby that answers 307 (PostgreSQL storage
//! without clustering). Each prints the figures it measured.

use crate::{
    health::wait_for,
    support::{req, serve_gateway, Env, TestGateway},
};
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{process::Child, time::Instant};
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
use vaultgate::{
    dev::{issuer, process, provision},
    pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient, *},
};

/// The caller's policy: its Transit key only (rotating it is a write, not retried).
pub(crate) const POLICY: &str = r#"
path "transit/encrypt/ha" { capabilities = ["update"] }
path "transit/decrypt/ha" { capabilities = ["update"] }
path "transit/keys/ha" { capabilities = ["read"] }
path "transit/keys/ha/rotate" { capabilities = ["update"] }
"#;

/// A free port below Linux's ephemeral range (32768 and up), so that no outgoing connection of
/// the busy test process can take it between this check and the server's bind.
fn quiet_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0u64..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    process::free_port().expect("port")
}

/// Where a node keeps its data.
enum Storage<'a> {
    /// Raft in the node's own directory (survives a restart).
    Raft,
    /// A PostgreSQL database shared by the nodes, HA through its lock, no clustering: a standby
    /// answers every request with a 307 to the active node's `api_addr`.
    Postgres(&'a str),
}

/// One OpenBao server.
pub(crate) struct Node {
    config: PathBuf,
    log: PathBuf,
    pub(crate) addr: String,
    pub(crate) child: Option<Child>,
}

impl Node {
    fn new(dir: &Path, name: &str, storage: &Storage) -> Node {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("node dir");
        let (port, cluster) = (quiet_port(), quiet_port());
        let addr = format!("http://127.0.0.1:{port}");
        let hcl = match storage {
            // performance_multiplier = 1: the tightest Raft timings (leader loss seen in ~1 s).
            Storage::Raft => format!(
                "storage \"raft\" {{\n  path = {data:?}\n  node_id = {name:?}\n  performance_multiplier = 1\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"{addr}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\ndisable_mlock = true\n"
            ),
            Storage::Postgres(url) => format!(
                "storage \"postgresql\" {{\n  connection_url = {url:?}\n  ha_enabled = \"true\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"{addr}\"\ndisable_clustering = true\ndisable_mlock = true\n"
            ),
        };
        let config = dir.join(format!("{name}.hcl"));
        std::fs::write(&config, hcl).expect("node config");
        Node { config, log: dir.join(format!("{name}.log")), addr, child: None }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("node log");
        let err = log.try_clone().expect("node log");
        let child = tokio::process::Command::new(process::find_bao().expect("bao"))
            .arg("server")
            .arg(format!("-config={}", self.config.display()))
            .env("HOME", self.config.parent().expect("dir"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start bao");
        self.child = Some(child);
    }

    /// SIGKILL: the harshest way for a node to go.
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// A Raft cluster of the test's own, with its unseal key and root token (setup only).
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
    http: reqwest::Client,
    key: String,
    root: String,
}

impl Cluster {
    /// Starts `n` nodes, initialises the first, joins and unseals the others, waits until every
    /// node votes, and provisions Transit key `ha`, JWT auth and the caller role `ha`.
    pub(crate) async fn start(env: &Env, dir: &Path, n: usize) -> Cluster {
        Cluster::start_on(env, dir, n, Storage::Raft).await
    }

    async fn start_on(env: &Env, dir: &Path, n: usize, storage: Storage<'_>) -> Cluster {
        let raft = matches!(storage, Storage::Raft);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("cluster dir");
        let mut nodes: Vec<Node> = (0..n).map(|i| Node::new(dir, &format!("n{}", i + 1), &storage)).collect();
        for node in &mut nodes {
            node.start();
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http");
        let mut cluster = Cluster { nodes, http, key: String::new(), root: String::new() };
        for i in 0..n {
            cluster.wait_health(i, |code| code != 0).await;
        }
        let (_, init) = cluster.call(0, "PUT", "sys/init", json!({"secret_shares": 1, "secret_threshold": 1})).await;
        cluster.key = init["keys"][0].as_str().expect("unseal key").to_string();
        cluster.root = init["root_token"].as_str().expect("root token").to_string();
        env.remember(&cluster.key);
        env.remember(&cluster.root);
        cluster.unseal(0).await;
        cluster.wait_health(0, |code| code == 200).await;
        if n > 1 && raft {
            // Joined nodes vote after this stabilisation time (default 10 s).
            let body = json!({"server_stabilization_time": "1s", "cleanup_dead_servers": false});
            cluster.expect_ok(0, "POST", "sys/storage/raft/autopilot/configuration", body).await;
        }
        let leader = cluster.nodes[0].addr.clone();
        for i in 1..n {
            if raft {
                cluster.expect_ok(i, "PUT", "sys/storage/raft/join", json!({"leader_api_addr": leader})).await;
            }
            cluster.unseal(i).await;
        }
        for i in 1..n {
            cluster.wait_health(i, |code| code == 429).await;
        }
        if raft {
            cluster.wait_voters(n).await;
        }
        cluster.provision(env).await;
        cluster
    }

    async fn provision(&self, env: &Env) {
        let steps = [
            ("sys/mounts/transit", json!({"type": "transit"})),
            ("transit/keys/ha", json!({"type": "aes256-gcm96"})),
            ("sys/auth/jwt", json!({"type": "jwt"})),
            (
                "auth/jwt/config",
                json!({"jwt_validation_pubkeys": [env.issuer.public_pem], "bound_issuer": issuer::ISSUER}),
            ),
            ("sys/policies/acl/ha", json!({"policy": POLICY})),
            ("auth/jwt/role/ha", provision::jwt_role("ha", "1h", "24h")),
        ];
        for (path, body) in steps {
            self.expect_ok(0, "POST", path, body).await;
        }
    }

    /// The node's `sys/health` status code (0: no answer).
    async fn health(&self, i: usize) -> u16 {
        let url = format!("{}/v1/sys/health", self.nodes[i].addr);
        match self.http.get(url).timeout(Duration::from_secs(1)).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    async fn wait_health(&self, i: usize, ok: impl Fn(u16) -> bool) {
        let start = Instant::now();
        loop {
            let code = self.health(i).await;
            if ok(code) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "node {i}: sys/health still {code} (see its log)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The index of the node whose `sys/health` says active.
    pub(crate) async fn active(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() && self.health(i).await == 200 {
                return Some(i);
            }
        }
        None
    }

    async fn wait_voters(&self, n: usize) {
        let start = Instant::now();
        loop {
            let (_, conf) = self.call(0, "GET", "sys/storage/raft/configuration", Value::Null).await;
            let servers = conf["data"]["config"]["servers"].as_array().cloned().unwrap_or_default();
            let voters = servers.iter().filter(|s| s["voter"] == true).count();
            if voters == n {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "only {voters} of {n} nodes vote");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn unseal(&self, i: usize) {
        self.expect_ok(i, "PUT", "sys/unseal", json!({"key": self.key})).await;
    }

    pub(crate) async fn call(&self, i: usize, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(method, format!("{}/v1/{path}", self.nodes[i].addr));
        if !self.root.is_empty() {
            r = r.header("X-Vault-Token", &self.root);
        }
        if !body.is_null() {
            r = r.json(&body);
        }
        let resp = r.send().await.unwrap_or_else(|e| panic!("{path} on node {i}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn expect_ok(&self, i: usize, method: &str, path: &str, body: Value) -> Value {
        let (status, value) = self.call(i, method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path} on node {i}: {status} {value}");
        value
    }

    pub(crate) fn addresses(&self) -> String {
        self.nodes.iter().map(|n| format!("{:?}", n.addr)).collect::<Vec<_>>().join(", ")
    }
}

/// A gateway serving the caller `ha` against `vault_table` (the `[vault]` keys).
async fn gateway(env: &Env, vault_table: &str, extra: &str) -> TestGateway {
    serve_gateway(&format!(
        "[vault]\n{vault_table}\nhealth_interval_ms = 250\ntimeout_ms = 2000\n{extra}\n[[callers]]\nrole = \"ha\"\nequals = \"ha\"\nverify_with = \"dev\"\n\
         [issuers.dev]\nissuer = \"{}\"\naudiences = [\"{}\"]\njwt_validation_pubkeys = ['''\n{}\n''']\n",
        issuer::ISSUER,
        issuer::AUDIENCE,
        env.issuer.public_pem.trim_end()
    ))
    .await
}

pub(crate) fn encrypt(jwt: &str, plaintext: &[u8]) -> tonic::Request<EncryptRequest> {
    let mut r = req(EncryptRequest { key: "ha".into(), plaintext: plaintext.to_vec(), ..Default::default() }, jwt);
    r.set_timeout(Duration::from_secs(5));
    r
}

fn decrypt(jwt: &str, ciphertext: &str) -> tonic::Request<DecryptRequest> {
    let mut r = req(DecryptRequest { key: "ha".into(), ciphertext: ciphertext.into(), ..Default::default() }, jwt);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// What the load generators saw.
#[derive(Default)]
struct Tally {
    /// Instants of successful calls.
    successes: Vec<Instant>,
    /// Failed calls by code.
    failures: BTreeMap<String, usize>,
    /// A message of each failure code, for the report.
    messages: BTreeMap<String, String>,
    /// Decrypt answers that were not the plaintext encrypted.
    wrong: usize,
    /// Every (plaintext, ciphertext) the gateway returned.
    ciphertexts: Vec<(Vec<u8>, String)>,
}

impl Tally {
    fn fail(&mut self, status: &tonic::Status) {
        let code = format!("{:?}", status.code());
        *self.failures.entry(code.clone()).or_default() += 1;
        self.messages.entry(code).or_insert_with(|| status.message().to_string());
    }

    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times = self.successes.clone();
        times.sort();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for t in times.into_iter().chain([to]) {
            gap = gap.max(t.saturating_duration_since(last));
            last = last.max(t);
        }
        gap
    }
}

/// One caller encrypting and decrypting in a loop until `stop`.
async fn load(channel: tonic::transport::Channel, jwt: String, worker: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut c = EncryptionServiceClient::new(channel);
    let mut tally = Tally::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let plaintext = format!("worker {worker} message {n}").into_bytes();
        let ciphertext = match c.encrypt(encrypt(&jwt, &plaintext)).await {
            Ok(r) => {
                tally.successes.push(Instant::now());
                r.into_inner().ciphertext
            }
            Err(s) => {
                tally.fail(&s);
                continue;
            }
        };
        tally.ciphertexts.push((plaintext.clone(), ciphertext.clone()));
        match c.decrypt(decrypt(&jwt, &ciphertext)).await {
            Ok(r) if r.get_ref().plaintext == plaintext => tally.successes.push(Instant::now()),
            Ok(_) => tally.wrong += 1,
            Err(s) => tally.fail(&s),
        }
    }
    tally
}

/// Decrypts every ciphertext with the root token on `node`, 200 per request; returns the
/// number whose plaintext differs.
async fn mismatches(cluster: &Cluster, node: usize, pairs: &[(Vec<u8>, String)]) -> usize {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut wrong = 0;
    for chunk in pairs.chunks(200) {
        let items: Vec<Value> = chunk.iter().map(|(_, ct)| json!({"ciphertext": ct})).collect();
        let answer = cluster.expect_ok(node, "POST", "transit/decrypt/ha", json!({"batch_input": items})).await;
        let results = answer["data"]["batch_results"].as_array().cloned().unwrap_or_default();
        assert_eq!(results.len(), chunk.len(), "one result per ciphertext");
        for ((plaintext, _), result) in chunk.iter().zip(results) {
            let got = result["plaintext"].as_str().and_then(|p| b64.decode(p).ok());
            wrong += usize::from(got.as_deref() != Some(plaintext.as_slice()));
        }
    }
    wrong
}

pub async fn leader_failover_under_load_loses_no_answer(env: &'static Env) {
    let mut cluster = Cluster::start(env, &env.dir.join("ha-raft3"), 3).await;
    let own = gateway(env, &format!("addresses = [{}]", cluster.addresses()), "").await;
    let mut health = HealthClient::new(own.channel.clone());
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let workers = 32;
    let stop = Arc::new(AtomicBool::new(false));
    // Each worker is its own caller (its own JWT, its own Vault token and coalescer lane).
    let tasks: Vec<_> = (0..workers)
        .map(|i| tokio::spawn(load(own.channel.clone(), env.jwt("ha", 3600 + i as i64), i, stop.clone())))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = cluster.active().await.expect("an active node before the failover");
    cluster.nodes[old].kill().await;
    let killed = Instant::now();
    let elected = loop {
        if let Some(new) = cluster.active().await {
            break (new, killed.elapsed());
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "no new leader within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let ended = Instant::now();
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.expect("load task");
        total.successes.extend(t.successes);
        for (code, n) in t.failures {
            *total.failures.entry(code).or_default() += n;
        }
        total.messages.extend(t.messages);
        total.wrong += t.wrong;
        total.ciphertexts.extend(t.ciphertexts);
    }
    let failed: usize = total.failures.values().sum();
    let calls = total.successes.len() + failed + total.wrong;
    let share = failed as f64 / calls.max(1) as f64;
    let gap = total.longest_gap(started, ended);
    let undecryptable = mismatches(&cluster, elected.0, &total.ciphertexts).await;
    // A login is a write: a new caller's first call must reach the new active node.
    let newcomer = env.jwt("ha", 7200);
    let login = EncryptionServiceClient::new(own.channel.clone()).encrypt(encrypt(&newcomer, b"after")).await;
    assert!(login.is_ok(), "a new caller's login after the failover: {:?}", login.err());
    println!(
        "  failover: {calls} calls by {workers} callers in {:.1} s, node {} killed, node {} active {:.1} s later; \
         failed {failed} ({:.3} %) {:?}; wrong answers {}; longest gap without success {:.2} s; \
         {} ciphertexts re-checked in Vault, {undecryptable} wrong",
        ended.duration_since(started).as_secs_f64(),
        old + 1,
        elected.0 + 1,
        elected.1.as_secs_f64(),
        share * 100.0,
        total.failures,
        total.wrong,
        gap.as_secs_f64(),
        total.ciphertexts.len(),
    );
    for (code, message) in &total.messages {
        println!("  failover: a {code} said: {message}");
    }
    assert_eq!(total.wrong, 0, "a decrypt answered another plaintext");
    assert_eq!(undecryptable, 0, "a ciphertext the gateway returned does not decrypt to its plaintext");
    assert!(total.failures.keys().all(|c| c == "Unavailable"), "failures other than UNAVAILABLE: {:?}", total.failures);
    assert!(share < 0.01, "{:.3} % of calls failed", share * 100.0);
    assert!(gap < Duration::from_secs(5), "no success for {gap:?}");
    assert!(calls > 1000, "the load was too light to mean anything: {calls} calls");
}

/// Calls Encrypt once; the code (OK or not), the message and how long the answer took.
async fn probe_call(c: &mut EncryptionServiceClient<tonic::transport::Channel>, jwt: &str) -> (Code, String, Duration) {
    let start = Instant::now();
    match c.encrypt(encrypt(jwt, b"probe")).await {
        Ok(_) => (Code::Ok, String::new(), start.elapsed()),
        Err(s) => (s.code(), s.message().to_string(), start.elapsed()),
    }
}

pub async fn vault_stopped_then_started_fails_fast_and_recovers(env: &'static Env) {
    let mut cluster = Cluster::start(env, &env.dir.join("ha-restart"), 1).await;
    let own = gateway(env, &format!("address = {:?}", cluster.nodes[0].addr), "").await;
    let mut health = HealthClient::new(own.channel.clone());
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let jwt = env.jwt("ha", 3600);
    let mut c = EncryptionServiceClient::new(own.channel.clone());
    assert_eq!(probe_call(&mut c, &jwt).await.0, Code::Ok);
    cluster.nodes[0].kill().await;
    let stopped = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut slowest_after_first_second = Duration::ZERO;
    let mut calls = 0;
    let mut message = String::new();
    let mut not_serving = None;
    while stopped.elapsed() < Duration::from_secs(10) {
        let (code, msg, took) = probe_call(&mut c, &jwt).await;
        assert_eq!(code, Code::Unavailable, "while Vault is down: {msg}");
        calls += 1;
        slowest = slowest.max(took);
        if stopped.elapsed() > Duration::from_secs(1) {
            slowest_after_first_second = slowest_after_first_second.max(took);
        }
        message = msg;
        if not_serving.is_none() {
            let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
            if status.is_ok_and(|s| s.get_ref().status == ServingStatus::NotServing as i32) {
                not_serving = Some(stopped.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(message.contains("unreachable"), "the message says Vault is unreachable: {message}");
    let not_serving = not_serving.expect("health NOT_SERVING while Vault is down");
    cluster.nodes[0].start();
    cluster.wait_health(0, |code| code == 503).await;
    cluster.unseal(0).await;
    cluster.wait_health(0, |code| code == 200).await;
    let back = Instant::now();
    let recovered = loop {
        let (code, msg, _) = probe_call(&mut c, &jwt).await;
        if code == Code::Ok {
            break back.elapsed();
        }
        assert!(back.elapsed() < Duration::from_secs(10), "no recovery within 10 s: {code:?} {msg}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(5)).await;
    println!(
        "  restart: Vault down 10 s: {calls} calls all UNAVAILABLE, slowest answer {:.0} ms ({:.0} ms after the \
         first second), health NOT_SERVING after {:.1} s; first success {:.2} s after Vault was active again; \
         message: {message}",
        slowest.as_secs_f64() * 1e3,
        slowest_after_first_second.as_secs_f64() * 1e3,
        not_serving.as_secs_f64(),
        recovered.as_secs_f64(),
    );
    assert!(slowest < Duration::from_secs(1), "every call while Vault is down answered in under 1 s: {slowest:?}");
    assert!(slowest_after_first_second < Duration::from_millis(500), "failing fast: {slowest_after_first_second:?}");
    assert!(recovered < Duration::from_secs(2), "recovery took {recovered:?}");
}

pub async fn sealed_vault_is_unavailable_naming_the_seal(env: &'static Env) {
    let cluster = Cluster::start(env, &env.dir.join("ha-seal"), 1).await;
    let audit = env.dir.join("ha-seal").join("gateway-audit.log");
    let own = gateway(
        env,
        &format!("address = {:?}", cluster.nodes[0].addr),
        &format!("[audit]\npath = {:?}\n", audit.to_string_lossy()),
    )
    .await;
    let mut health = HealthClient::new(own.channel.clone());
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let jwt = env.jwt("ha", 3600);
    let mut c = EncryptionServiceClient::new(own.channel.clone());
    assert_eq!(probe_call(&mut c, &jwt).await.0, Code::Ok);
    cluster.expect_ok(0, "PUT", "sys/seal", Value::Null).await;
    let sealed = Instant::now();
    let (code, first_message, _) = probe_call(&mut c, &jwt).await;
    assert_eq!(code, Code::Unavailable, "{first_message}");
    assert!(first_message.contains("sealed"), "the message names the seal: {first_message}");
    wait_for(&mut health, "", ServingStatus::NotServing, Duration::from_secs(5)).await;
    let not_serving = sealed.elapsed();
    let (code, fast_message, took) = probe_call(&mut c, &jwt).await;
    assert_eq!(code, Code::Unavailable, "{fast_message}");
    assert!(fast_message.contains("sealed"), "the message names the seal: {fast_message}");
    cluster.unseal(0).await;
    cluster.wait_health(0, |code| code == 200).await;
    let up = wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(5)).await;
    let (code, message, _) = probe_call(&mut c, &jwt).await;
    assert_eq!(code, Code::Ok, "after unseal: {message}");
    println!(
        "  sealed: first call UNAVAILABLE {first_message:?}; NOT_SERVING {:.1} s after the seal; then UNAVAILABLE \
         in {:.1} ms {fast_message:?}; SERVING {:.1} s after the unseal",
        not_serving.as_secs_f64(),
        took.as_secs_f64() * 1e3,
        up.as_secs_f64()
    );
    // The audit line of a served call names the Vault request that carried it.
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let first: Value = serde_json::from_str(text.lines().next().expect("an audit line")).expect("JSON");
    let ids = first["vault_request_ids"].as_array().cloned().unwrap_or_default();
    assert!(!ids.is_empty() && ids.iter().all(|id| id.as_str().is_some_and(|s| s.len() == 36)), "{first}");
}

pub async fn standby_redirects_are_followed(env: &'static Env) {
    let dir = env.dir.join("ha-redirect");
    let database = "bao_redirect";
    let psql = tokio::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &env.pg_port.to_string(), "-U", "postgres", "-d", "postgres", "-qc"])
        .arg(format!("CREATE DATABASE {database}"))
        .env("PGPASSWORD", &env.pg_password)
        .output()
        .await
        .expect("psql");
    assert!(psql.status.success(), "create database: {}", String::from_utf8_lossy(&psql.stderr));
    let url = format!("postgres://postgres:{}@127.0.0.1:{}/{database}?sslmode=disable", env.pg_password, env.pg_port);
    let cluster = Cluster::start_on(env, &dir, 2, Storage::Postgres(&url)).await;
    // A gateway that knows only the standby: its 307 points at a node outside vault.addresses, so
    // it is not followed (a token goes to no host the operator did not list).
    let jwt = env.jwt("ha", 3600);
    let lone = gateway(env, &format!("address = {:?}", cluster.nodes[1].addr), "").await;
    wait_for(&mut HealthClient::new(lone.channel.clone()), "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let err = EncryptionServiceClient::new(lone.channel.clone())
        .encrypt(encrypt(&jwt, b"redirected"))
        .await
        .expect_err("a 307 to an unlisted node is not followed");
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(lone.gateway.metrics.vault_redirects.get(), 0);
    // Listing every node, the standby first: each request reaches the active node, directly or
    // through a followed 307 (tests/it/attacks_auth.rs shows a 307 to a listed node followed).
    let own =
        gateway(env, &format!("addresses = [{:?}, {:?}]", cluster.nodes[1].addr, cluster.nodes[0].addr), "").await;
    let mut health = HealthClient::new(own.channel.clone());
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let redirects = || own.gateway.metrics.vault_redirects.get();
    let before = redirects();
    let mut c = EncryptionServiceClient::new(own.channel.clone());
    let ciphertext = c.encrypt(encrypt(&jwt, b"redirected")).await.expect("login and encrypt via a 307").into_inner();
    let plaintext = c.decrypt(decrypt(&jwt, &ciphertext.ciphertext)).await.expect("decrypt via a 307").into_inner();
    assert_eq!(plaintext.plaintext, b"redirected");
    let mut rotate = req(RotateRequest { key: "ha".into(), ..Default::default() }, &jwt);
    rotate.set_timeout(Duration::from_secs(5));
    let rotated = c.rotate(rotate).await.expect("rotate (a write) via a 307").into_inner();
    assert_eq!(rotated.latest_version, 2);
    let followed = redirects() - before;
    println!("  redirect: login, Encrypt, Decrypt and Rotate with the standby listed first: {followed} redirects followed (to a listed node)");
}
