//! Server streams against real OpenBao and PostgreSQL: WatchSecret (new versions reach watchers,
//! one poller per path and token, counted in OpenBao's audit log), WatchDbCreds (renew, rotate,
//! revoke after the grace, nothing left behind), graceful shutdown of open streams, and the
//! stream bounds attacked. Each test runs a gateway of its own (its own `[watch]` settings and
//! counters); they run concurrently with the rest.

use crate::support::{req, retried, serve_gateway, Env, Proxy, TestGateway};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::{Code, Status, Streaming};
use vaultgate::pb::vaultgate::v1::{
    database_service_client::DatabaseServiceClient, secret_service_client::SecretServiceClient, *,
};

/// A gateway for the `qa` and `qa2` callers with these extra settings.
async fn gateway(env: &Env, extra: &str) -> TestGateway {
    serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n[[callers]]\nrole = \"qa2\"\nequals = \"qa2\"\n{extra}",
        env.vault_addr
    ))
    .await
}

/// The next message that is not a heartbeat, within `within`; `Err` is how the stream ended
/// (`Ok(None)`: it ended without a status, which no stream of ours should do).
async fn next<T>(s: &mut Streaming<T>, within: Duration, heartbeat: fn(&T) -> bool) -> Result<Option<T>, Status> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, s.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("test: nothing arrived in time")),
            Ok(Ok(Some(m))) if heartbeat(&m) => continue,
            Ok(other) => return other,
        }
    }
}

fn secret_hb(m: &WatchSecretResponse) -> bool {
    m.heartbeat
}

fn creds_hb(m: &WatchDbCredsResponse) -> bool {
    m.heartbeat
}

async fn write_secret(env: &Env, path: &str, value: &str) -> u32 {
    env.remember(value);
    let (status, body) =
        env.vault(Method::POST, &format!("secret/data/{path}"), Some(json!({"data": {"v": value}}))).await;
    assert_eq!(status, 200, "write {path}: {body}");
    body["data"]["version"].as_u64().expect("version") as u32
}

fn value_of(m: &WatchSecretResponse) -> String {
    match m.data.as_ref().and_then(|d| d.fields.get("v")).and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::StringValue(s)) => s,
        other => panic!("no string v: {other:?}"),
    }
}

async fn watch(gw: &TestGateway, path: &str, jwt: &str) -> Streaming<WatchSecretResponse> {
    let c = SecretServiceClient::new(gw.channel.clone());
    opened(|| {
        let (mut c, r) = (c.clone(), req(WatchSecretRequest { path: path.into(), mount: String::new() }, jwt));
        async move { c.watch_secret(r).await }
    })
    .await
}

/// A WatchDbCreds stream of database role `role` for the `qa` caller, and its first message
/// (ISSUED, whose password the log scan is told of).
async fn watch_creds(
    env: &Env,
    gw: &TestGateway,
    role: &str,
) -> (Streaming<WatchDbCredsResponse>, WatchDbCredsResponse) {
    let c = DatabaseServiceClient::new(gw.channel.clone());
    let mut s = opened(|| {
        let (mut c, r) = (c.clone(), req(WatchDbCredsRequest { role: role.into(), mount: String::new() }, &env.qa));
        async move { c.watch_db_creds(r).await }
    })
    .await;
    let issued = next(&mut s, Duration::from_secs(10), creds_hb).await.expect("issued").expect("a message");
    env.remember(&issued.password);
    assert_eq!(issued.event(), WatchDbCredsEvent::Issued);
    (s, issued)
}

/// A stream opened as a client should ([`retried`]): these tests are about streams, not about
/// Vault being silent for a moment on a loaded machine.
async fn opened<T, F, Fut>(open: F) -> Streaming<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Streaming<T>>, Status>>,
{
    retried(open).await.unwrap_or_else(|e| panic!("stream opens: {e:?}")).into_inner()
}

/// KV metadata reads of `path` in OpenBao's audit log.
fn metadata_reads(env: &Env, path: &str) -> usize {
    let text = std::fs::read_to_string(env.dir.join("audit.log")).unwrap_or_default();
    let want = format!("secret/metadata/{path}");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "request" && v["request"]["path"] == want.as_str())
        .count()
}

/// Leases of database role `role` that OpenBao still holds.
async fn leases_of(env: &Env, role: &str) -> Vec<String> {
    let (status, body) = env
        .vault(Method::from_bytes(b"LIST").expect("verb"), &format!("sys/leases/lookup/database/creds/{role}/"), None)
        .await;
    match status {
        404 => vec![],
        200 => body["data"]["keys"]
            .as_array()
            .map(|k| k.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default(),
        _ => panic!("listing leases of {role}: {status} {body}"),
    }
}

/// Waits (up to `within`) until OpenBao holds no lease of `role`; how long it took, or what is left.
async fn no_lease_of(env: &Env, role: &str, within: Duration) -> Result<Duration, Vec<String>> {
    let started = Instant::now();
    loop {
        let left = leases_of(env, role).await;
        if left.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(left);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn lease_alive(env: &Env, lease_id: &str) -> bool {
    let (status, _) = env.vault(Method::PUT, "sys/leases/lookup", Some(json!({"lease_id": lease_id}))).await;
    status == 200
}

pub async fn watch_secret_new_versions_reach_two_watchers_and_deletion_ends_them(env: &'static Env) {
    let gw = gateway(env, "").await;
    let qa2 = env.jwt("qa2", 3600);
    let path = "qa/watch/two";
    let first = write_secret(env, path, "watch-two-first-0f1c").await;
    let mut a = watch(&gw, path, &env.qa).await;
    let mut b = watch(&gw, path, &qa2).await;
    for s in [&mut a, &mut b] {
        let m = next(s, Duration::from_secs(10), secret_hb).await.expect("current version").expect("a message");
        assert_eq!((m.version, value_of(&m).as_str()), (first, "watch-two-first-0f1c"), "the current version first");
        assert!(m.created_time.is_some());
    }
    assert_eq!(gw.gateway.watched.pollers(), 2, "two callers (two Vault tokens) never share a poller");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let written = Instant::now();
    let second = write_secret(env, path, "watch-two-second-8b2e").await;
    let mut took = vec![];
    for s in [&mut a, &mut b] {
        let m = next(s, Duration::from_secs(5), secret_hb).await.expect("new version within 5 s").expect("a message");
        assert_eq!((m.version, value_of(&m).as_str()), (second, "watch-two-second-8b2e"));
        took.push(written.elapsed());
    }
    // Soft-deleting the current version ends every watcher's stream NOT_FOUND.
    let (status, _) = env.vault(Method::DELETE, &format!("secret/data/{path}"), None).await;
    assert_eq!(status, 204);
    for s in [&mut a, &mut b] {
        let end = next(s, Duration::from_secs(6), secret_hb).await.expect_err("the stream ends");
        assert_eq!(end.code(), Code::NotFound, "{end:?}");
        assert!(end.message().contains("deleted"), "{}", end.message());
    }
    println!(
        "  watch secret: new version reached 2 watchers in {:.2} s and {:.2} s; deletion ended both NOT_FOUND",
        took[0].as_secs_f64(),
        took[1].as_secs_f64()
    );
}

pub async fn a_stream_ends_unauthenticated_when_its_callers_jwt_expires(env: &'static Env) {
    let gw = gateway(env, "").await;
    let path = "qa/watch/expiry";
    write_secret(env, path, "watch-expiry-first-3a7c").await;
    // Two streams of one caller: one opened with a JWT that expires in 4 s, one with an hour's.
    let short = env.jwt("qa", 4);
    let opened = Instant::now();
    let mut expiring = watch(&gw, path, &short).await;
    let mut lasting = watch(&gw, path, &env.qa).await;
    for s in [&mut expiring, &mut lasting] {
        let m = next(s, Duration::from_secs(10), secret_hb).await.expect("current version").expect("a message");
        assert_eq!(value_of(&m), "watch-expiry-first-3a7c");
    }
    let end = next(&mut expiring, Duration::from_secs(10), secret_hb).await.expect_err("the stream ends");
    let after = opened.elapsed();
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    assert!(end.message().contains("expired"), "{}", end.message());
    // `exp` is whole seconds: the end comes between 3 and 5 s after the JWT was minted.
    assert!(after >= Duration::from_secs(2) && after < Duration::from_secs(6), "ended after {after:?}");
    // The same caller's stream with a valid JWT goes on: a new version still reaches it.
    let second = write_secret(env, path, "watch-expiry-second-9d1e").await;
    let m = next(&mut lasting, Duration::from_secs(5), secret_hb).await.expect("still open").expect("a message");
    assert_eq!((m.version, value_of(&m).as_str()), (second, "watch-expiry-second-9d1e"));
    // And the expired JWT opens nothing any more.
    let mut c = SecretServiceClient::new(gw.channel.clone());
    let refused = c
        .watch_secret(req(WatchSecretRequest { path: path.into(), mount: String::new() }, &short))
        .await
        .expect_err("an expired JWT is refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    println!(
        "  watch secret: the stream of a JWT with exp 4 s ended UNAUTHENTICATED after {:.1} s; the caller's other stream went on",
        after.as_secs_f64()
    );
}

pub async fn two_hundred_watchers_of_one_path_cost_one_poller(env: &'static Env) {
    let gw = gateway(env, "[limits]\nmax_streams_per_connection = 1000\n[watch]\nmax_streams_per_caller = 250\n").await;
    let path = "qa/watch/many";
    let first = write_secret(env, path, "watch-many-first-5d0a").await;
    let before = metadata_reads(env, path);
    let opened = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..200 {
        streams.push(watch(&gw, path, &env.qa).await);
    }
    for s in &mut streams {
        let m = next(s, Duration::from_secs(10), secret_hb).await.expect("current version").expect("a message");
        assert_eq!(m.version, first);
    }
    assert_eq!(gw.gateway.watched.pollers(), 1, "one poller for 200 watchers of one path and token");
    assert_eq!(gw.gateway.metrics.open_streams.get(), 200, "vaultgate_open_streams counts every open stream");
    let written = Instant::now();
    let second = write_secret(env, path, "watch-many-second-77c3").await;
    let mut slowest = Duration::ZERO;
    let until = written + Duration::from_secs(5);
    for s in &mut streams {
        let m =
            next(s, until.saturating_duration_since(Instant::now()), secret_hb).await.expect("new version within 5 s");
        assert_eq!(m.map(|m| m.version), Some(second));
        slowest = slowest.max(written.elapsed());
    }
    let elapsed = opened.elapsed();
    drop(streams);
    // OpenBao's audit log is the judge: one poller reads the metadata at most once per
    // poll_min_ms (1 s) (+1 for the first look); 200 pollers would have read it 200 times at least.
    let mut reads = 0;
    for _ in 0..20 {
        reads = metadata_reads(env, path) - before;
        if reads > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bound = elapsed.as_secs() as usize + 2;
    assert!(reads >= 1 && reads <= bound, "{reads} metadata reads in {elapsed:?} (bound {bound})");
    let until = Instant::now() + Duration::from_secs(5);
    while gw.gateway.watched.pollers() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.gateway.watched.pollers(), 0, "the poller stops with its last watcher");
    let until = Instant::now() + Duration::from_secs(5);
    while gw.gateway.metrics.open_streams.get() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.gateway.metrics.open_streams.get(), 0, "streams whose callers left are no longer counted");
    println!(
        "  watch secret: 200 watchers, 1 poller, {reads} KV metadata reads in OpenBao's audit log over {:.1} s; new version reached all 200 in {:.2} s",
        elapsed.as_secs_f64(),
        slowest.as_secs_f64()
    );
}

pub async fn watch_db_creds_renews_rotates_and_revokes_after_the_grace(env: &'static Env) {
    let gw = gateway(env, "[watch]\nrotation_grace_ms = 1500\n").await;
    let started = Instant::now();
    let (mut s, issued) = watch_creds(env, &gw, "qawatch").await;
    assert_eq!(issued.lease_duration.as_ref().map(|d| d.seconds), Some(6));
    env.pg_login(&issued.username, &issued.password).await.expect("issued credentials log in");
    let mut renewals = 0;
    let rotated = loop {
        let m = next(&mut s, Duration::from_secs(10), creds_hb).await.expect("an event").expect("a message");
        env.remember(&m.password);
        match m.event() {
            WatchDbCredsEvent::Renewed => {
                assert_eq!(
                    (m.lease_id.as_str(), m.username.as_str()),
                    (issued.lease_id.as_str(), issued.username.as_str())
                );
                renewals += 1;
            }
            WatchDbCredsEvent::Rotated => break m,
            other => panic!("unexpected event {other:?}"),
        }
    };
    let rotated_at = started.elapsed();
    assert!(renewals >= 1, "renewed before rotating");
    assert_ne!(rotated.lease_id, issued.lease_id);
    assert_ne!(rotated.username, issued.username);
    assert!(rotated_at < Duration::from_secs(15), "rotated before the max TTL: {rotated_at:?}");
    env.pg_login(&rotated.username, &rotated.password).await.expect("rotated credentials log in");
    assert!(lease_alive(env, &issued.lease_id).await, "the old lease lives during the grace");
    let mut old_gone = None;
    for _ in 0..50 {
        if !lease_alive(env, &issued.lease_id).await {
            old_gone = Some(started.elapsed() - rotated_at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_gone = old_gone.expect("the old lease is revoked after the grace");
    assert!(old_gone >= Duration::from_millis(1400), "revoked before the grace: {old_gone:?}");
    assert!(env.pg_login(&issued.username, &issued.password).await.is_err(), "the old user is dropped");
    // Closing the stream revokes the last lease after the grace.
    drop(s);
    let closed = Instant::now();
    let mut last_gone = None;
    for _ in 0..80 {
        if !lease_alive(env, &rotated.lease_id).await {
            last_gone = Some(closed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_gone = last_gone.expect("the last lease is revoked after the stream closed");
    println!(
        "  watch db creds: {renewals} renewals, rotated at {:.1} s (6 s lease, 15 s max TTL); old lease revoked {:.1} s after rotation, last one {:.1} s after close (grace 1.5 s)",
        rotated_at.as_secs_f64(),
        old_gone.as_secs_f64(),
        last_gone.as_secs_f64()
    );
}

pub async fn a_failed_reissue_is_tried_again_while_the_held_lease_lasts(env: &'static Env) {
    // Through a proxy that cuts the connection of the rotation's issue once, after Vault acted on
    // it (the gateway sees a transport failure, as when Vault goes away mid-request).
    let proxy = Proxy::start(&env.vault_addr).await;
    let gw = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n[watch]\nrotation_grace_ms = 500\n",
        proxy.url
    ))
    .await;
    let started = Instant::now();
    let (mut s, issued) = watch_creds(env, &gw, "qawatch4").await;
    // 10 s leases, 15 s max TTL: the renewal at ~6.7 s is capped (8.3 s), so the gateway rotates
    // then, with at least 3 s of the held lease left for another try.
    proxy.cut_after("GET /v1/database/creds/qawatch4");
    let rotated = loop {
        let m = next(&mut s, Duration::from_secs(10), creds_hb).await.expect("the stream goes on").expect("a message");
        env.remember(&m.password);
        match m.event() {
            WatchDbCredsEvent::Renewed => continue,
            WatchDbCredsEvent::Rotated => break m,
            other => panic!("unexpected event {other:?}"),
        }
    };
    let rotated_at = started.elapsed();
    // The gateway tries again only while the held lease lasts (`reissue_at`, unit-tested): a
    // rotation after a cut shows it tried again in time.
    assert_eq!(proxy.cuts(), 1, "the first try of the new credentials was cut");
    assert_ne!(rotated.lease_id, issued.lease_id);
    env.pg_login(&rotated.username, &rotated.password).await.expect("the new credentials log in");
    drop(s);
    println!(
        "  watch db creds: the rotation's issue cut once by the proxy, tried again 1 s later: ROTATED at {:.1} s, within the held lease (max TTL 15 s; the stream ended at once before)",
        rotated_at.as_secs_f64()
    );
}

pub async fn callers_ending_watch_db_creds_early_leave_no_lease(env: &'static Env) {
    let gw = gateway(env, "[watch]\nrotation_grace_ms = 300\n").await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (channel, jwt) = (gw.channel.clone(), env.qa.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = DatabaseServiceClient::new(channel);
            let r = WatchDbCredsRequest { role: "qawatch2".into(), mount: String::new() };
            let opened = c.watch_db_creds(req(r, &jwt)).await.expect("opens");
            if i % 2 == 0 {
                // Gone while the credentials are being issued.
                tokio::time::sleep(Duration::from_millis(i * 5)).await;
                drop(opened);
                None
            } else {
                let mut s = opened.into_inner();
                let m = next(&mut s, Duration::from_secs(10), creds_hb).await.expect("issued").expect("a message");
                Some(m.password)
            }
        }));
    }
    for t in tasks {
        if let Some(password) = t.await.expect("caller") {
            env.remember(&password);
        }
    }
    let took = no_lease_of(env, "qawatch2", Duration::from_secs(10))
        .await
        .unwrap_or_else(|left| panic!("leases left behind: {left:?}"));
    assert_eq!(gw.gateway.streams.open_streams(), 0);
    // OpenBao's audit log says how many leases were issued: the callers gone before their
    // credentials arrived got theirs issued too (else this test would prove nothing of them).
    let text = std::fs::read_to_string(env.dir.join("audit.log")).unwrap_or_default();
    let issued = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "response" && v["request"]["path"] == "database/creds/qawatch2")
        .count();
    assert!(issued > 4, "only {issued} leases issued for 8 callers");
    println!(
        "  watch db creds: 8 callers ended early (4 before their credentials arrived), {issued} leases issued: none left {:.1} s later",
        took.as_secs_f64()
    );
}

pub async fn shutdown_ends_a_hundred_streams_unavailable_and_leaves_no_lease(env: &'static Env) {
    let gw = gateway(
        env,
        "[limits]\nmax_streams_per_connection = 1000\n[watch]\nmax_streams_per_caller = 200\n[shutdown]\ngrace_ms = 200\ndrain_timeout_ms = 10000\n",
    )
    .await;
    let path = "qa/watch/term";
    write_secret(env, path, "watch-term-value-3a9d").await;
    let mut secrets = Vec::new();
    for _ in 0..80 {
        let mut s = watch(&gw, path, &env.qa).await;
        next(&mut s, Duration::from_secs(10), secret_hb).await.expect("current").expect("a message");
        secrets.push(s);
    }
    let mut creds = Vec::new();
    for _ in 0..20 {
        creds.push(watch_creds(env, &gw, "qawatch3").await.0);
    }
    assert_eq!(gw.gateway.streams.open_streams(), 100);
    assert_eq!(leases_of(env, "qawatch3").await.len(), 20);
    let stopping = Instant::now();
    gw.shutdown();
    let mut ends = Vec::new();
    for s in &mut secrets {
        ends.push(next(s, Duration::from_secs(5), secret_hb).await.map(|_| ()));
    }
    for s in &mut creds {
        ends.push(next(s, Duration::from_secs(5), creds_hb).await.map(|_| ()));
    }
    let ended_in = stopping.elapsed();
    for end in &ends {
        let status = end.as_ref().expect_err("every stream ends with a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.metadata().get("grpc-retry-pushback-ms").is_some(), "pushback for the client's retry policy");
        use tonic_types::StatusExt;
        assert!(status.get_details_retry_info().is_some(), "RetryInfo in the details");
    }
    assert!(gw.stopped().await, "the gateway stops");
    let left = leases_of(env, "qawatch3").await;
    assert!(left.is_empty(), "leases left behind at shutdown: {left:?}");
    println!(
        "  shutdown: 100 open streams (80 WatchSecret, 20 WatchDbCreds) all ended UNAVAILABLE with RetryInfo in {:.2} s; 0 of 20 leases left",
        ended_in.as_secs_f64()
    );
}

pub async fn stream_bounds_attack_table(env: &'static Env) {
    let gw = gateway(
        env,
        "[limits]\nmax_streams_per_connection = 1000\n[watch]\nmax_streams_per_caller = 3\nmax_streams = 5\n",
    )
    .await;
    let qa2 = env.jwt("qa2", 3600);
    let path = "qa/watch/bounds";
    write_secret(env, path, "watch-bounds-value-c41e").await;
    // Opened as a client would (`retried`); no row of the table expects UNAVAILABLE.
    let open = |jwt: String, path: &'static str| {
        let channel = gw.channel.clone();
        retried(move || {
            let (mut c, jwt) = (SecretServiceClient::new(channel.clone()), jwt.clone());
            async move {
                c.watch_secret(req(WatchSecretRequest { path: path.into(), mount: String::new() }, &jwt))
                    .await
                    .map(|r| r.into_inner())
            }
        })
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open(env.qa.clone(), path).await.expect("within the per-caller bound"));
    }
    let mut rows = Vec::new();
    let refused = open(env.qa.clone(), path).await.expect_err("4th stream of one caller");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("watch.max_streams_per_caller"), "{}", refused.message());
    rows.push(("4th stream of one caller (bound 3)", refused.code()));
    // A fresh JWT of the same caller is still the same caller.
    let fresh = env.jwt("qa", 600);
    let refused = open(fresh, path).await.expect_err("same caller, new JWT");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    rows.push(("same caller with a fresh JWT", refused.code()));
    for _ in 0..2 {
        held.push(open(qa2.clone(), path).await.expect("another caller, within the total"));
    }
    let refused = open(qa2.clone(), path).await.expect_err("past the total");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("watch.max_streams"), "{}", refused.message());
    rows.push(("6th stream in total (bound 5)", refused.code()));
    let refused = open(String::from("not-a-jwt"), path).await.expect_err("no valid credentials");
    assert_eq!(refused.code(), Code::Unauthenticated);
    rows.push(("stream with a bad JWT", refused.code()));
    // Closing one gives its slot back.
    drop(held.remove(0));
    let until = Instant::now() + Duration::from_secs(5);
    let reopened = loop {
        match open(env.qa.clone(), path).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < until => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the slot never came back: {e:?}"),
        }
    };
    held.push(reopened);
    drop(held);
    // Gateway rules apply as for GetSecret, before any Vault call.
    let gw2 = gateway(env, "[roles.qa]\nkv_prefixes = [\"qa/allowed/\"]\n").await;
    let mut c = SecretServiceClient::new(gw2.channel.clone());
    let refused = c
        .watch_secret(req(WatchSecretRequest { path: path.into(), mount: String::new() }, &env.qa))
        .await
        .expect_err("outside the role's kv_prefixes");
    assert_eq!(refused.code(), Code::PermissionDenied);
    rows.push(("path outside the role's kv_prefixes", refused.code()));
    let refused = c
        .watch_secret(req(WatchSecretRequest { path: "../etc".into(), mount: String::new() }, &env.qa))
        .await
        .expect_err("bad path");
    assert_eq!(refused.code(), Code::InvalidArgument);
    rows.push(("path with ..", refused.code()));
    println!("  stream attacks (attack | answer):");
    for (attack, code) in rows {
        println!("    {attack} | {code:?}");
    }
}
