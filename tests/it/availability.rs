//! Availability beyond Vault's own (issue 11), each against real OpenBao and a gateway of its
//! own: a frozen Vault (SIGSTOP) is detected, fails fast and serves cached reads stale, and
//! recovers after SIGCONT; a black-holed node of a Raft cluster costs no caller more than the
//! detection bound and reads hedge around it; 500 concurrent reads make a handful of KV reads
//! (OpenBao's own audit log counts them) and a change is seen within `cache.ttl`; the cache never
//! crosses callers; an idle caller's token is renewed in the background. Each prints its figures.

use crate::{
    ha::{encrypt, Cluster, POLICY},
    health::wait_for,
    support::{req, retried, serve_gateway, Env, TestGateway},
};
use serde_json::json;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
use vaultgate::{
    dev::issuer,
    pb::vaultgate::v1::{
        encryption_service_client::EncryptionServiceClient, secret_service_client::SecretServiceClient, *,
    },
};

/// The `ha` caller's policy plus KV reads under `avail/`.
fn policy() -> String {
    format!(
        "{POLICY}\npath \"secret/data/avail/*\" {{ capabilities = [\"read\"] }}\npath \"secret/metadata/avail/*\" {{ capabilities = [\"list\"] }}\n"
    )
}

/// Mounts KV v2 at `secret/`, writes `avail/one` and lets the `ha` caller read it.
async fn provision_kv(cluster: &Cluster) {
    cluster.expect_ok(0, "POST", "sys/mounts/secret", json!({"type": "kv", "options": {"version": "2"}})).await;
    cluster.expect_ok(0, "POST", "sys/policies/acl/ha", json!({"policy": policy()})).await;
    // A fresh KV v2 mount upgrades itself for a moment before it accepts writes.
    let start = Instant::now();
    loop {
        let (status, _) = cluster.call(0, "POST", "secret/data/avail/one", json!({"data": {"v": "one"}})).await;
        if status == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "KV mount not writable: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Standbys serve reads themselves once their copy of the mount is upgraded too.
    for i in 1..cluster.nodes.len() {
        while cluster.call(i, "GET", "secret/data/avail/one", serde_json::Value::Null).await.0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(60), "node {i} cannot read the KV mount");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A gateway serving the caller `ha` with `vault_table` (the `[vault]` keys) and `extra` tables.
async fn gateway(vault_table: &str, extra: &str) -> TestGateway {
    serve_gateway(&format!(
        "[vault]\n{vault_table}\n{extra}\n[[callers]]\nrole = \"ha\"\nequals = \"ha\"\nissuer = \"{}\"\n",
        issuer::ISSUER
    ))
    .await
}

fn get_secret(jwt: &str, path: &str, timeout: Duration) -> tonic::Request<GetSecretRequest> {
    let mut r = req(GetSecretRequest { path: path.into(), ..Default::default() }, jwt);
    r.set_timeout(timeout);
    r
}

fn value_of(resp: &GetSecretResponse) -> Option<String> {
    match resp.data.as_ref()?.fields.get("v")?.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn secs(d: &Option<prost_types::Duration>) -> f64 {
    d.as_ref().map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

/// Sends `signal` (`STOP`, `CONT`) to a node's process.
async fn signal(cluster: &Cluster, node: usize, signal: &str) {
    let pid = cluster.nodes[node].child.as_ref().and_then(|c| c.id()).expect("the node runs");
    let out = tokio::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).output().await;
    assert!(out.is_ok_and(|o| o.status.success()), "kill -{signal} {pid}");
}

async fn serving(health: &mut HealthClient<Channel>) -> Option<i32> {
    health.check(HealthCheckRequest { service: String::new() }).await.ok().map(|r| r.into_inner().status)
}

pub async fn frozen_vault_fails_fast_serves_stale_and_recovers(env: &'static Env) {
    let mut cluster = Cluster::start(env, &env.dir.join("avail-frozen"), 1).await;
    provision_kv(&cluster).await;
    // Default health interval, silence bound and timeouts: the figures are the defaults'.
    let ttl = Duration::from_millis(500);
    let own =
        gateway(&format!("address = {:?}", cluster.nodes[0].addr), &format!("[cache]\nttl_ms = {}\n", ttl.as_millis()))
            .await;
    let mut health = HealthClient::new(own.channel.clone());
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let jwt = env.jwt("ha", 3600);
    let mut enc = EncryptionServiceClient::new(own.channel.clone());
    let mut sec = SecretServiceClient::new(own.channel.clone());
    enc.encrypt(encrypt(&jwt, b"before")).await.expect("encrypt before the freeze");
    let read = sec.get_secret(get_secret(&jwt, "avail/one", Duration::from_secs(5))).await.expect("read").into_inner();
    assert_eq!((value_of(&read).as_deref(), read.stale), (Some("one"), false));
    let read_at = Instant::now();

    signal(&cluster, 0, "STOP").await;
    let frozen = Instant::now();
    // A caller already waiting when Vault froze (10 s deadline) is cut loose by the detection.
    let in_flight = {
        let (mut enc, jwt) = (enc.clone(), jwt.clone());
        tokio::spawn(async move {
            let mut r = encrypt(&jwt, b"in flight");
            r.set_timeout(Duration::from_secs(10));
            let start = Instant::now();
            let result = enc.encrypt(r).await;
            (result.map(|_| ()).map_err(|s| (s.code(), s.message().to_string())), start.elapsed())
        })
    };
    let not_serving = loop {
        if serving(&mut health).await == Some(ServingStatus::NotServing as i32) {
            break frozen.elapsed();
        }
        assert!(frozen.elapsed() < Duration::from_secs(10), "health still SERVING 10 s after the freeze");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (waited, waited_for) = in_flight.await.expect("in-flight caller");
    let mut slowest = Duration::ZERO;
    let mut message = String::new();
    for i in 0..50 {
        let start = Instant::now();
        let status = enc.encrypt(encrypt(&jwt, format!("frozen {i}").as_bytes())).await.expect_err("Vault is frozen");
        slowest = slowest.max(start.elapsed());
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        message = status.message().to_string();
    }
    // Past the TTL, so that the answer cannot be a fresh cache hit.
    tokio::time::sleep_until(read_at + ttl + Duration::from_millis(100)).await;
    let stale = sec
        .get_secret(get_secret(&jwt, "avail/one", Duration::from_secs(5)))
        .await
        .expect("a recently read secret is served while Vault is frozen")
        .into_inner();
    let stale_age = secs(&stale.age);
    let stale_read_at = Instant::now();

    signal(&cluster, 0, "CONT").await;
    let thawed = Instant::now();
    let encrypt_back = loop {
        let mut r = encrypt(&jwt, b"thawed");
        r.set_timeout(Duration::from_secs(2));
        if enc.encrypt(r).await.is_ok() {
            break thawed.elapsed();
        }
        assert!(thawed.elapsed() < Duration::from_secs(10), "no Encrypt success within 10 s of SIGCONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fresh_back = loop {
        let r = sec.get_secret(get_secret(&jwt, "avail/one", Duration::from_secs(2))).await;
        if r.is_ok_and(|r| !r.get_ref().stale) {
            break thawed.elapsed();
        }
        assert!(thawed.elapsed() < Duration::from_secs(10), "GetSecret still stale 10 s after SIGCONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let serving_back = wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(5)).await;
    println!(
        "  frozen: NOT_SERVING {:.2} s after SIGSTOP; a caller in flight (10 s deadline) answered {:?} after {:.2} s; \
         then 50 Encrypt UNAVAILABLE, slowest {:.1} ms: {message:?}; GetSecret served stale={} age {:.2} s \
         (read {:.2} s before it); after SIGCONT Encrypt OK in {:.2} s, GetSecret stale=false in {:.2} s, SERVING in {:.2} s",
        not_serving.as_secs_f64(),
        waited.as_ref().map(|_| "OK".to_string()).unwrap_or_else(|(c, _)| format!("{c:?}")),
        waited_for.as_secs_f64(),
        slowest.as_secs_f64() * 1e3,
        stale.stale,
        stale_age,
        stale_read_at.duration_since(read_at).as_secs_f64(),
        encrypt_back.as_secs_f64(),
        fresh_back.as_secs_f64(),
        thawed.elapsed().as_secs_f64() - serving_back.as_secs_f64() + serving_back.as_secs_f64(),
    );
    cluster.nodes[0].kill().await;
    assert!(not_serving < Duration::from_secs(3), "NOT_SERVING after {not_serving:?}");
    assert!(waited_for < Duration::from_secs(3), "the in-flight caller waited {waited_for:?}");
    assert!(message.contains("not answering"), "the message names the silence: {message}");
    assert!(slowest < Duration::from_millis(100), "an Encrypt took {slowest:?} while Vault was known frozen");
    assert!(stale.stale && value_of(&stale).as_deref() == Some("one"), "stale answer: {stale:?}");
    assert!(stale_age >= not_serving.as_secs_f64(), "age {stale_age} counts from the last confirmation");
    assert!(encrypt_back < Duration::from_secs(2), "Encrypt back after {encrypt_back:?}");
    assert!(fresh_back < Duration::from_secs(2), "GetSecret fresh after {fresh_back:?}");
}

/// A loopback TCP proxy to `upstream` that forwards until `hole` is set, then holds every byte
/// in both directions, on old connections and new ones alike (accepts, never answers).
async fn black_hole_proxy(upstream: String, hole: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, hole) = (upstream.clone(), hole.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else { return };
                let (client_rx, client_tx) = client.into_split();
                let (server_rx, server_tx) = server.into_split();
                tokio::spawn(pump(client_rx, server_tx, hole.clone()));
                pump(server_rx, client_tx, hole).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        while hole.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    while hole.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = to.shutdown().await;
}

/// Latencies and failures one load worker saw, by RPC.
#[derive(Default)]
struct Seen {
    reads: Vec<Duration>,
    encrypts: Vec<Duration>,
    failures: Vec<String>,
}

async fn read_and_encrypt(channel: Channel, jwt: String, stop: Arc<AtomicBool>, after: Arc<AtomicBool>) -> Seen {
    let mut sec = SecretServiceClient::new(channel.clone());
    let mut enc = EncryptionServiceClient::new(channel);
    let mut seen = Seen::default();
    // A call is counted when it ends after the hole opened (it may have started before).
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match sec.get_secret(get_secret(&jwt, "avail/one", Duration::from_secs(10))).await {
            Ok(r) if value_of(r.get_ref()).as_deref() == Some("one") => {}
            Ok(_) => seen.failures.push("GetSecret: wrong value".into()),
            Err(s) => seen.failures.push(format!("GetSecret {:?}: {}", s.code(), s.message())),
        }
        if after.load(Ordering::Relaxed) {
            seen.reads.push(start.elapsed());
        }
        let start = Instant::now();
        let mut r = encrypt(&jwt, b"black hole");
        r.set_timeout(Duration::from_secs(10));
        if let Err(s) = enc.encrypt(r).await {
            seen.failures.push(format!("Encrypt {:?}: {}", s.code(), s.message()));
        }
        if after.load(Ordering::Relaxed) {
            seen.encrypts.push(start.elapsed());
        }
    }
    seen
}

pub async fn black_holed_node_costs_no_more_than_detection_and_reads_hedge(env: &'static Env) {
    let cluster = Cluster::start(env, &env.dir.join("avail-hole"), 3).await;
    provision_kv(&cluster).await;
    let hole = Arc::new(AtomicBool::new(false));
    // The active node (the one every request prefers) is reached through the proxy; the two
    // standbys directly.
    let active = cluster.active().await.expect("an active node");
    let proxy =
        black_hole_proxy(cluster.nodes[active].addr.trim_start_matches("http://").to_string(), hole.clone()).await;
    let others: Vec<String> = (0..3).filter(|i| *i != active).map(|i| format!("{:?}", cluster.nodes[i].addr)).collect();
    let addresses = format!("addresses = [{proxy:?}, {}]", others.join(", "));
    // No cache: every read goes to Vault, so the hedging is what is measured.
    let own = gateway(&addresses, "[cache]\nttl_ms = 0\n").await;
    let mut health = HealthClient::new(own.channel.clone());
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let (stop, after) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let workers: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(read_and_encrypt(own.channel.clone(), env.jwt("ha", 3600 + i), stop.clone(), after.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hedges = own.gateway.metrics.vault_hedges.get();
    after.store(true, Ordering::Relaxed);
    hole.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Seen::default();
    for w in workers {
        let s = w.await.expect("worker");
        seen.reads.extend(s.reads);
        seen.encrypts.extend(s.encrypts);
        seen.failures.extend(s.failures);
    }
    let hedged = own.gateway.metrics.vault_hedges.get() - hedges;
    hole.store(false, Ordering::Relaxed);
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let (slowest_read, slowest_encrypt) = (max(&seen.reads), max(&seen.encrypts));
    let over = |v: &[Duration], ms: u64| v.iter().filter(|d| **d > Duration::from_millis(ms)).count();
    println!(
        "  black hole: the active node black-holed for 5 s under 8 callers: {} GetSecret (slowest {:.0} ms, {} over 250 ms), \
         {} Encrypt (slowest {:.0} ms, {} over 250 ms); {hedged} reads hedged; failures {:?}",
        seen.reads.len(),
        slowest_read.as_secs_f64() * 1e3,
        over(&seen.reads, 250),
        seen.encrypts.len(),
        slowest_encrypt.as_secs_f64() * 1e3,
        over(&seen.encrypts, 250),
        seen.failures.iter().take(3).collect::<Vec<_>>(),
    );
    assert!(seen.failures.is_empty(), "{} calls failed: {:?}", seen.failures.len(), seen.failures.first());
    assert!(seen.reads.len() > 20 && seen.encrypts.len() > 20, "too little load to mean anything");
    // Detection bound: health interval 1 s + silent_after 0.75 s; generous margin for a busy machine.
    assert!(slowest_encrypt < Duration::from_secs(3), "an Encrypt waited {slowest_encrypt:?}");
    assert!(slowest_read < Duration::from_secs(3), "a GetSecret waited {slowest_read:?}");
    assert!(hedged > 0, "no read was hedged to another node");
}

pub async fn concurrent_reads_coalesce_and_changes_show_within_the_ttl(env: &'static Env) {
    let dir = env.dir.join("avail-cache");
    let cluster = Cluster::start(env, &dir, 1).await;
    provision_kv(&cluster).await;
    // OpenBao enables audit devices only from its configuration (declarative), on SIGHUP.
    let audit = dir.join("bao-audit.log");
    let config = dir.join("n1.hcl");
    let stanza =
        format!("audit \"file\" \"file\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n", audit.to_string_lossy());
    let text = std::fs::read_to_string(&config).expect("node config");
    std::fs::write(&config, text + &stanza).expect("node config");
    signal(&cluster, 0, "HUP").await;
    let start = Instant::now();
    while !audit.exists() || std::fs::read_to_string(&audit).unwrap_or_default().is_empty() {
        // Any request is audited once the device exists.
        cluster.call(0, "GET", "sys/mounts", serde_json::Value::Null).await;
        assert!(start.elapsed() < Duration::from_secs(20), "the audit device did not appear");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ttl = Duration::from_millis(2000);
    let own =
        gateway(&format!("address = {:?}", cluster.nodes[0].addr), &format!("[cache]\nttl_ms = {}\n", ttl.as_millis()))
            .await;
    let mut health = HealthClient::new(own.channel.clone());
    wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    let jwt = env.jwt("ha", 3600);
    // Logged in first (by an Encrypt), so that only the reads are counted.
    EncryptionServiceClient::new(own.channel.clone()).encrypt(encrypt(&jwt, b"login")).await.expect("login");
    let started = Instant::now();
    let calls: Vec<_> = (0..500)
        .map(|_| {
            let (mut c, jwt) = (SecretServiceClient::new(own.channel.clone()), jwt.clone());
            tokio::spawn(async move { c.get_secret(get_secret(&jwt, "avail/one", Duration::from_secs(20))).await })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        let r = call.await.expect("task").expect("GetSecret");
        assert_eq!(value_of(r.get_ref()).as_deref(), Some("one"));
        ok += 1;
    }
    let took = started.elapsed();
    let kv_reads = || {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["type"] == "request" && l["request"]["path"] == "secret/data/avail/one")
            .count()
    };
    let reads = kv_reads();
    // A secret written straight to Vault is seen through the gateway within the TTL.
    cluster.expect_ok(0, "POST", "secret/data/avail/one", json!({"data": {"v": "two"}})).await;
    let written = Instant::now();
    let mut sec = SecretServiceClient::new(own.channel.clone());
    let seen_after = loop {
        let r = sec.get_secret(get_secret(&jwt, "avail/one", Duration::from_secs(5))).await.expect("GetSecret");
        if value_of(r.get_ref()).as_deref() == Some("two") {
            break written.elapsed();
        }
        assert!(written.elapsed() < ttl * 3, "the new version not seen within {:?}", ttl * 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "  cache: {ok} concurrent GetSecret of one path by one caller in {:.2} s made {reads} KV read(s) in OpenBao's \
         audit log; a version written straight to Vault seen after {:.2} s (cache.ttl_ms = {})",
        took.as_secs_f64(),
        seen_after.as_secs_f64(),
        ttl.as_millis()
    );
    assert!((1..=5).contains(&reads), "{reads} KV reads for 500 concurrent identical calls");
    assert!(seen_after <= ttl + Duration::from_millis(500), "seen after {seen_after:?}, TTL {ttl:?}");
}

/// One read of version `version` of `qa/multi` (1: "one", 2 and latest: "two") by `jwt`:
/// `Ok(value)` or the code. Each version is its own cache entry, so each case starts cold
/// without writing secrets other tests could list.
async fn read_as(channel: &Channel, jwt: &str, version: u32) -> Result<Option<String>, Code> {
    let mut c = SecretServiceClient::new(channel.clone());
    let mut r = req(GetSecretRequest { path: "qa/multi".into(), version, ..Default::default() }, jwt);
    r.set_timeout(Duration::from_secs(10));
    c.get_secret(r).await.map(|r| value_of(r.get_ref())).map_err(|s| s.code())
}

pub async fn cached_answers_never_cross_callers(env: &'static Env) {
    // A long TTL, so that a leak would show; the allowed caller `qa` and the denied `billing`.
    let own = serve_gateway(&format!(
        "[vault]\naddress = {:?}\n[cache]\nttl_ms = 60000\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\nissuer = \"{1}\"\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\nissuer = \"{1}\"\n",
        env.vault_addr,
        issuer::ISSUER
    ))
    .await;
    let (qa, billing) = (env.qa.clone(), env.billing.clone());
    let ch = own.channel.clone();
    let one = Ok(Some("one".to_string()));
    let two = Ok(Some("two".to_string()));
    // Allowed caller first (the answer is cached), then the denied one.
    assert_eq!(read_as(&ch, &qa, 1).await, one);
    assert_eq!(read_as(&ch, &qa, 1).await, one, "a cache hit");
    assert_eq!(read_as(&ch, &billing, 1).await, Err(Code::PermissionDenied));
    // Denied caller first, then the allowed one, then the denied one again.
    assert_eq!(read_as(&ch, &billing, 2).await, Err(Code::PermissionDenied));
    assert_eq!(read_as(&ch, &qa, 2).await, two);
    assert_eq!(read_as(&ch, &billing, 2).await, Err(Code::PermissionDenied));
    // Both at once, interleaved, on a cold entry (the latest version).
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let (ch, jwt, allowed) =
                if i % 2 == 0 { (ch.clone(), qa.clone(), true) } else { (ch.clone(), billing.clone(), false) };
            tokio::spawn(async move { (allowed, read_as(&ch, &jwt, 0).await) })
        })
        .collect();
    let (mut served, mut denied) = (0, 0);
    for call in calls {
        let (allowed, got) = call.await.expect("task");
        if allowed {
            assert_eq!(got, Ok(Some("two".into())));
            served += 1;
        } else {
            assert_eq!(got, Err(Code::PermissionDenied), "the denied caller got a cached answer");
            denied += 1;
        }
    }
    // The same for GetKey: `qa-aes` is the qa caller's key only.
    let get_key = |jwt: String| {
        let ch = ch.clone();
        async move {
            EncryptionServiceClient::new(ch)
                .get_key(req(GetKeyRequest { key: "qa-aes".into(), ..Default::default() }, &jwt))
                .await
                .map(|r| r.into_inner().latest_version)
                .map_err(|s| s.code())
        }
    };
    assert!(get_key(qa.clone()).await.is_ok());
    assert!(get_key(qa.clone()).await.is_ok());
    assert_eq!(get_key(billing.clone()).await, Err(Code::PermissionDenied));
    let count = |read: &'static str, event: &'static str| {
        own.gateway.metrics.cache_events.get_or_create(&vaultgate::metrics::CacheLabels { read, event }).get()
    };
    let (hits, coalesced) = (count("secret", "hit"), count("secret", "coalesced"));
    println!(
        "  cache isolation: allowed then denied, denied then allowed, and {served} + {denied} concurrent calls: the \
         denied caller never got the allowed one's cached answer (GetSecret: {hits} hits, {coalesced} coalesced; \
         GetKey: {} hits)",
        count("key", "hit")
    );
    assert!(hits >= 1 && count("key", "hit") >= 1, "the allowed caller's answers were cached");
}

pub async fn idle_callers_are_served_without_a_new_login(env: &'static Env) {
    // `qashort` tokens live 4 s; the caller is idle for 7 s.
    let config = |keep_warm_ms: u64| {
        format!(
            "token_keep_warm_ms = {keep_warm_ms}\n[vault]\naddress = {:?}\n[[callers]]\nrole = \"qashort\"\nequals = \"qashort\"\nissuer = \"{}\"\n",
            env.vault_addr,
            issuer::ISSUER
        )
    };
    let (warm, cold) = (serve_gateway(&config(600_000)).await, serve_gateway(&config(0)).await);
    let jwt = env.jwt("qashort", 3600);
    let call = |gw: &TestGateway| {
        let (ch, jwt) = (gw.channel.clone(), jwt.clone());
        async move {
            EncryptionServiceClient::new(ch)
                .encrypt(req(
                    EncryptRequest { key: "qa-aes".into(), plaintext: b"idle".to_vec(), ..Default::default() },
                    &jwt,
                ))
                .await
                .map(|_| ())
        }
    };
    // Logins are counted from here: a first call the gateway failed fast (Vault silent for a
    // moment on a loaded machine) is tried again, and its login attempt counts too.
    retried(|| call(&warm)).await.expect("first call (login)");
    retried(|| call(&cold)).await.expect("first call (login)");
    let (w, c) = (&warm.gateway.sessions, &cold.gateway.sessions);
    let (warm_logins, cold_logins) = (w.logins(), c.logins());
    tokio::time::sleep(Duration::from_secs(7)).await;
    let started = Instant::now();
    retried(|| call(&warm)).await.expect("call after the quiet spell");
    let took = started.elapsed();
    retried(|| call(&cold)).await.expect("call after the quiet spell, no keep-warm");
    println!(
        "  idle caller: token TTL 4 s, idle 7 s: with keep-warm {} new login(s), {} background renewal(s), first call \
         after {:.1} ms; without it {} new login(s)",
        w.logins() - warm_logins,
        w.stats.renewals.load(Ordering::Relaxed),
        took.as_secs_f64() * 1e3,
        c.logins() - cold_logins
    );
    assert_eq!(w.logins(), warm_logins, "the idle caller paid a new login");
    assert!(w.stats.renewals.load(Ordering::Relaxed) >= 2, "the token was renewed in the background");
    assert!(c.logins() > cold_logins, "control: without keep-warm the idle caller logs in again");
}
