//! Audit log and graceful shutdown, each on a gateway of its own.

use crate::support::{req, serve_gateway, Env};
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient as Client, *};

fn enc(plaintext: &[u8]) -> EncryptRequest {
    EncryptRequest { key: "billing".into(), plaintext: plaintext.to_vec(), ..Default::default() }
}

fn config(env: &Env, extra: &str) -> String {
    format!("[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\n{extra}", env.vault_addr)
}

pub async fn audit_log_has_one_line_per_call_and_fails_closed(env: &'static Env) {
    let path = env.dir.join("gateway-audit.log");
    let own = serve_gateway(&config(env, &format!("[audit]\npath = {:?}\n", path.to_string_lossy()))).await;
    let mut c = Client::new(own.channel.clone());
    c.encrypt(req(enc(env.remember_plaintext(b"audited plaintext")), &env.billing)).await.expect("encrypt");
    let batch = EncryptBatchRequest {
        key: "billing".into(),
        items: vec![EncryptBatchItem::default(); 3],
        ..Default::default()
    };
    c.encrypt_batch(req(batch, &env.billing)).await.expect("batch");
    c.encrypt(req(EncryptRequest { key: "reports".into(), ..enc(b"x") }, &env.billing)).await.expect_err("denied");
    c.encrypt(tonic::Request::new(enc(b"x"))).await.expect_err("no credentials");
    let text = std::fs::read_to_string(&path).expect("audit log");
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let summary: Vec<(&str, &str, &str, u64, &str)> = lines
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("?");
            (s("rpc"), s("role"), s("target"), l["items"].as_u64().unwrap_or(0), s("code"))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("Encrypt", "billing", "billing", 1, "Ok"),
            ("EncryptBatch", "billing", "billing", 3, "Ok"),
            ("Encrypt", "billing", "reports", 1, "PermissionDenied"),
            ("Encrypt", "", "billing", 1, "Unauthenticated"),
        ]
    );
    assert!(lines
        .iter()
        .all(|l| l["request_id"].as_str().is_some_and(|id| !id.is_empty()) && l["latency_ms"].is_number()));
    assert!(!text.contains("audited plaintext") && !text.contains("eyJ"), "the audit log holds no plaintext or JWT");
    drop(own);
    // A sink that cannot be written: the call is refused rather than served unaudited.
    let own = serve_gateway(&config(env, "[audit]\npath = \"/dev/full\"\n")).await;
    let status = Client::new(own.channel.clone()).encrypt(req(enc(b"x"), &env.billing)).await.expect_err("fail closed");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("audit"));
    // Counted for the audit-log alert.
    assert_eq!(own.gateway.metrics.audit_failures.get(), 1, "vaultgate_audit_write_failures_total");
}

pub async fn shutdown_goes_not_serving_first_and_finishes_calls_in_flight(env: &'static Env) {
    let grace = Duration::from_millis(3000);
    let own = serve_gateway(&config(
        env,
        &format!("[shutdown]\ngrace_ms = {}\ndrain_timeout_ms = 10000\n", grace.as_millis()),
    ))
    .await;
    let mut health = HealthClient::new(own.channel.clone());
    crate::health::wait_for(&mut health, "", ServingStatus::Serving, Duration::from_secs(10)).await;
    // 200 calls are sent, then shutdown starts at once: every one of them must be answered.
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut c = Client::new(own.channel.clone());
            tokio::spawn(async move {
                let plaintext = format!("in-flight-{i}");
                let ct = c.encrypt(req(enc(plaintext.as_bytes()), &env.billing)).await?.into_inner().ciphertext;
                Ok::<_, tonic::Status>((plaintext, ct))
            })
        })
        .collect();
    let t0 = std::time::Instant::now();
    own.shutdown();
    // During the grace period health says NOT_SERVING while calls are still answered. Polled
    // for as long as the grace lasts (after it no new stream is accepted), however slow the machine.
    let mut saw_not_serving = None;
    while saw_not_serving.is_none() && t0.elapsed() < grace {
        match health.check(HealthCheckRequest { service: "vaultgate.v1.EncryptionService".into() }).await {
            Ok(r) if r.get_ref().status == ServingStatus::NotServing as i32 => saw_not_serving = Some(t0.elapsed()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let Some(not_serving) = saw_not_serving else { panic!("health never said NOT_SERVING during the {grace:?} grace") };
    println!("  shutdown: health NOT_SERVING {:.0} ms after shutdown started", not_serving.as_secs_f64() * 1e3);
    let mut answered = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.expect("task");
        answered.push(
            result.unwrap_or_else(|e| panic!("call {i} in flight at shutdown failed after {:?}: {e:?}", t0.elapsed())),
        );
    }
    // The answers are right: the main gateway decrypts each to its own plaintext.
    let mut c = Client::new(env.channel());
    for (plaintext, ciphertext) in answered {
        let r = DecryptRequest { key: "billing".into(), ciphertext, ..Default::default() };
        assert_eq!(
            c.decrypt(req(r, &env.billing)).await.expect("decrypt").into_inner().plaintext,
            plaintext.as_bytes()
        );
    }
    assert!(own.stopped().await, "the server stops after draining");
}

/// Latencies of `n` sequential Encrypt calls of the quiet `reports` caller; each must succeed.
async fn quiet_latencies(env: &'static Env, channel: &tonic::transport::Channel, n: usize) -> Vec<Duration> {
    let mut c = Client::new(channel.clone());
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let r = EncryptRequest { key: "reports".into(), plaintext: format!("{i}").into_bytes(), ..Default::default() };
        let t0 = std::time::Instant::now();
        c.encrypt(req(r, &env.reports)).await.expect("the quiet caller is not throttled");
        took.push(t0.elapsed());
    }
    took.sort();
    took
}

/// The `p`-th percentile of sorted latencies.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

pub async fn a_noisy_caller_is_throttled_alone(env: &'static Env) {
    let audit = env.dir.join("throttle-audit.log");
    let own = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\n[[callers]]\nrole = \"reports\"\nequals = \"reports\"\n[rate_limits]\nbilling = {{ per_second = 5.0, burst = 10.0 }}\n[audit]\npath = {:?}\n",
        env.vault_addr,
        audit.to_string_lossy()
    ))
    .await;
    // The quiet caller alone (its first call logs in: not measured).
    quiet_latencies(env, &own.channel, 1).await;
    let alone = quiet_latencies(env, &own.channel, 100).await;

    let noisy: Vec<_> = (0..100)
        .map(|i| {
            let mut c = Client::new(own.channel.clone());
            tokio::spawn(async move { c.encrypt(req(enc(format!("{i}").as_bytes()), &env.billing)).await.map(|_| ()) })
        })
        .collect();
    let (mut ok, mut throttled) = (0, 0);
    for call in noisy {
        match call.await.expect("task") {
            Ok(()) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                assert!(tonic_types::StatusExt::get_details_retry_info(&s).is_some(), "RetryInfo tells when to retry");
                throttled += 1;
            }
        }
    }
    assert!((10..=20).contains(&ok), "{ok} of 100 calls passed a burst of 10 at 5/s");
    // Throttled calls are audited too: one line each, coded ResourceExhausted, as the callers saw.
    let noisy_line = |l: &serde_json::Value| l["role"] == "billing";
    let lines = crate::support::audit_lines(&audit, Duration::from_secs(10), |ls| {
        ls.iter().filter(|l| noisy_line(l)).count() >= 100
    })
    .await;
    let codes = |code: &str| lines.iter().filter(|l| noisy_line(l) && l["code"] == code).count();
    assert_eq!(
        (codes("Ok"), codes("ResourceExhausted"), lines.iter().filter(|l| noisy_line(l)).count()),
        (ok, throttled, 100),
        "audit lines of the noisy caller: (Ok, ResourceExhausted, all)"
    );
    // And counted, by role (the rate-limit alert's numerator); the quiet role's counter exists at 0.
    let metrics = own.gateway.metrics.render();
    let limited = format!("vaultgate_rate_limited_calls_total{{name=\"billing\"}} {throttled}\n");
    assert!(metrics.contains(&limited), "{limited:?} missing from the gateway's metrics");
    assert!(metrics.contains("vaultgate_rate_limited_calls_total{name=\"reports\"} 0\n"));

    // The noisy caller floods (4 callers' worth of back-to-back calls) while the quiet one is
    // measured again: its latency must not suffer from the other's throttled calls.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let (mut c, stop) = (Client::new(own.channel.clone()), stop.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(s) = c.encrypt(req(enc(b"flood"), &env.billing)).await {
                        assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let noisy = quiet_latencies(env, &own.channel, 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood_calls = 0;
    for f in flood {
        flood_calls += f.await.expect("flood task");
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50a, p99a, p50n, p99n) =
        (percentile(&alone, 50), percentile(&alone, 99), percentile(&noisy, 50), percentile(&noisy, 99));
    println!(
        "fairness: quiet caller alone p50 {:.2} ms p99 {:.2} ms; during {flood_calls} noisy calls p50 {:.2} ms p99 {:.2} ms",
        ms(p50a),
        ms(p99a),
        ms(p50n),
        ms(p99n)
    );
    assert!(flood_calls >= 100, "the flood sent only {flood_calls} calls: it did not overlap the measurement");
    let bound = (p99a * 5).max(p99a + Duration::from_millis(200));
    assert!(
        p99n < bound,
        "the quiet caller's p99 went from {p99a:?} to {p99n:?} under the noisy one (bound {bound:?})"
    );
}
