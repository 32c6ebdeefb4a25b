//! Overload: 10,000 concurrent calls against the real `vaultgate serve` binary (its own process,
//! so its peak RSS is its own) whose Vault is the real OpenBao behind a loopback proxy that
//! delays every answer. Calls past `limits.max_concurrent_calls` are shed with RESOURCE_EXHAUSTED,
//! every accepted call gets its own right answer, and memory stays bounded.

use crate::support::{audit_lines, req, Env, Proxy};
use std::{
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;
use tonic::{transport::Channel, Code};
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient as Client, *};

/// Delay the proxy adds to every chunk Vault answers with.
const VAULT_DELAY: Duration = Duration::from_millis(200);
/// Calls fired at once, and how many of them are Decrypt.
const CALLS: usize = 10_000;
const DECRYPTS: usize = 1_000;
/// HTTP/2 connections they share.
const CONNECTIONS: usize = 16;
/// The gateway's `limits.max_concurrent_calls` (also its `max_streams_per_connection`: all
/// 10,000 calls reach it at once).
const MAX_CONCURRENT: usize = 2_000;
/// Peak RSS that would reveal unbounded growth (the benchmark's 10,000 in flight: 111 MiB).
const MAX_PEAK_RSS_KIB: u64 = 300 << 10;

/// The gateway binary as a child process, killed when dropped.
struct Process {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    audit: std::path::PathBuf,
}

impl Process {
    fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("the gateway is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

async fn start_gateway(env: &Env, vault: &str) -> (Process, String) {
    let port = vaultgate::dev::process::free_port().expect("a free port");
    let config = env.dir.join("overload.toml");
    let log = env.dir.join("overload-gateway.log");
    let audit = env.dir.join("overload-audit.log");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n[vault]\naddress = \"{vault}\"\ntimeout_ms = 30000\n\
             [[callers]]\nrole = \"billing\"\nequals = \"billing\"\n\
             [limits]\nmax_concurrent_calls = {MAX_CONCURRENT}\nmax_streams_per_connection = {MAX_CONCURRENT}\n\
             [audit]\npath = {audit:?}\n"
        ),
    )
    .expect("write the config");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "vaultgate=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start vaultgate serve");
    let addr = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (Process { child, log, audit }, addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("vaultgate serve did not listen within 10 s; see {}", log.display());
}

fn enc(plaintext: Vec<u8>) -> EncryptRequest {
    EncryptRequest { key: "billing".into(), plaintext, ..Default::default() }
}

/// A request as the billing caller with request id `ovl-<i>`, so its audit line can be found.
fn with_id<T>(message: T, jwt: &str, i: usize) -> tonic::Request<T> {
    let mut r = req(message, jwt);
    r.metadata_mut().insert("x-request-id", format!("ovl-{i}").parse().expect("ascii"));
    r
}

fn plaintext(i: usize) -> Vec<u8> {
    format!("overload-{i:05}").into_bytes()
}

/// What one call of the flood came back with.
enum Answer {
    Encrypted(usize, String),
    Decrypted(usize, Vec<u8>),
    Shed(usize),
}

pub async fn ten_thousand_calls_against_a_slow_vault_are_shed_or_answered_right(env: &'static Env) {
    let proxy = Proxy::start(&env.vault_addr).await;
    proxy.set_delay(VAULT_DELAY);
    let (gateway, addr) = start_gateway(env, &proxy.url).await;

    // Ciphertexts for the Decrypt calls, made by the in-process gateway (fast, no proxy).
    let items = (0..DECRYPTS).map(|i| EncryptBatchItem { plaintext: plaintext(i), ..Default::default() }).collect();
    let made = Client::new(env.channel())
        .encrypt_batch(req(EncryptBatchRequest { key: "billing".into(), items, ..Default::default() }, &env.billing))
        .await
        .expect("encrypt the Decrypt calls' ciphertexts")
        .into_inner()
        .results;
    let ciphertexts: Vec<String> = made.into_iter().map(|r| r.ciphertext).collect();

    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let endpoint = Channel::from_shared(addr.clone()).expect("endpoint");
        channels.push(endpoint.connect().await.expect("connect to the gateway"));
    }
    // Warm up (caller login through the slow Vault), and the deadline row of the bad-input
    // table that needs a slow Vault: a deadline passing while Vault is asked is DEADLINE_EXCEEDED.
    let mut warm = Client::new(channels[0].clone());
    warm.encrypt(req(enc(b"warm-up".to_vec()), &env.billing)).await.expect("warm-up call");
    // The gateway answers DEADLINE_EXCEEDED a little before the deadline (its audit line says
    // so); tonic's client enforces the same deadline and may report its own CANCELLED first.
    let mut late = req(enc(b"late".to_vec()), &env.billing);
    late.set_timeout(Duration::from_millis(180));
    late.metadata_mut().insert("x-request-id", "late-call".parse().expect("ascii"));
    let status = warm.encrypt(late).await.expect_err("Vault answers after the deadline");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    // tonic's client may give up (CANCELLED) before the gateway wrote the line: wait for it.
    let is_late = |l: &serde_json::Value| l["request_id"] == "late-call";
    let lines = audit_lines(&gateway.audit, Duration::from_secs(10), |ls| ls.iter().any(is_late)).await;
    let line = lines.iter().find(|l| is_late(l)).expect("the late call's audit line");
    assert_eq!(line["code"], "DeadlineExceeded", "{line}");

    let ciphertexts = Arc::new(ciphertexts);
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let mut c = Client::new(channels[i % CONNECTIONS].clone());
            let ciphertexts = ciphertexts.clone();
            tokio::spawn(async move {
                let call = async {
                    if i < DECRYPTS {
                        let r = DecryptRequest {
                            key: "billing".into(),
                            ciphertext: ciphertexts[i].clone(),
                            ..Default::default()
                        };
                        c.decrypt(with_id(r, &env.billing, i))
                            .await
                            .map(|r| Answer::Decrypted(i, r.into_inner().plaintext))
                    } else {
                        c.encrypt(with_id(enc(plaintext(i)), &env.billing, i))
                            .await
                            .map(|r| Answer::Encrypted(i, r.into_inner().ciphertext))
                    }
                };
                match tokio::time::timeout(Duration::from_secs(60), call).await {
                    Err(_) => panic!("call {i} hung for 60 s"),
                    Ok(Ok(answer)) => answer,
                    Ok(Err(s)) => {
                        assert_eq!(s.code(), Code::ResourceExhausted, "call {i}: {}", s.message());
                        assert!(s.message().contains("max_concurrent_calls"), "call {i}: {}", s.message());
                        assert!(tonic_types::StatusExt::get_details_retry_info(&s).is_some(), "RetryInfo");
                        Answer::Shed(i)
                    }
                }
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(CALLS);
    for call in calls {
        answers.push(call.await.expect("a call panicked"));
    }
    let wall = started.elapsed();
    let peak_kib = gateway.peak_rss_kib();

    // What each call's client saw, by call: "Ok" or "ResourceExhausted" (as the audit log names codes).
    let mut seen = vec![""; CALLS];
    let (mut shed, mut decrypted, mut encrypted) = (0, 0, Vec::new());
    for answer in answers {
        match answer {
            Answer::Shed(i) => {
                shed += 1;
                seen[i] = "ResourceExhausted";
            }
            Answer::Decrypted(i, p) => {
                assert_eq!(p, plaintext(i), "Decrypt {i} answered another call's plaintext");
                decrypted += 1;
                seen[i] = "Ok";
            }
            Answer::Encrypted(i, ct) => {
                encrypted.push((i, ct));
                seen[i] = "Ok";
            }
        }
    }
    // Every accepted Encrypt decrypts (by the in-process gateway) to its own plaintext.
    let mut check = Client::new(env.channel());
    for chunk in encrypted.chunks(1000) {
        let items = chunk.iter().map(|(_, ct)| DecryptBatchItem { ciphertext: ct.clone(), ..Default::default() });
        let r = DecryptBatchRequest { key: "billing".into(), items: items.collect(), ..Default::default() };
        let results = check.decrypt_batch(req(r, &env.billing)).await.expect("decrypt batch").into_inner().results;
        for ((i, _), result) in chunk.iter().zip(results) {
            assert!(result.error.is_none(), "Encrypt {i}'s ciphertext does not decrypt: {:?}", result.error);
            assert_eq!(result.plaintext, plaintext(*i), "Encrypt {i} answered another call's ciphertext");
        }
    }
    let accepted = decrypted + encrypted.len();
    println!(
        "overload: {CALLS} calls ({DECRYPTS} Decrypt) over {CONNECTIONS} connections, Vault delayed {} ms: \
         {accepted} accepted and right ({decrypted} Decrypt), {shed} shed; peak RSS {:.1} MiB; {:.1} s",
        VAULT_DELAY.as_millis(),
        peak_kib as f64 / 1024.0,
        wall.as_secs_f64()
    );
    // The audit log, an account kept by the gateway itself: exactly one line per call of the
    // flood, with the code its client got (shed ones ResourceExhausted, accepted ones Ok).
    let flood = |l: &serde_json::Value| l["request_id"].as_str().is_some_and(|id| id.starts_with("ovl-"));
    let lines =
        audit_lines(&gateway.audit, Duration::from_secs(10), |ls| ls.iter().filter(|l| flood(l)).count() >= CALLS)
            .await;
    let mut audited = vec![0usize; CALLS];
    let mut disagree = Vec::new();
    for line in lines.iter().filter(|l| flood(l)) {
        let id = line["request_id"].as_str().unwrap_or_default();
        let Some(i) = id.strip_prefix("ovl-").and_then(|n| n.parse::<usize>().ok()).filter(|i| *i < CALLS) else {
            panic!("an audit line with an id no call sent: {line}");
        };
        audited[i] += 1;
        if line["code"] != seen[i] {
            disagree.push(format!("call {i}: client saw {:?}, audit says {}", seen[i], line["code"]));
        }
    }
    let missing = audited.iter().filter(|n| **n == 0).count();
    let doubled = audited.iter().filter(|n| **n > 1).count();
    println!("  overload audit: {} lines for the {CALLS} calls; {missing} calls without a line, {doubled} with more than one, {} disagreeing", lines.iter().filter(|l| flood(l)).count(), disagree.len());
    assert_eq!((missing, doubled), (0, 0), "one audit line per call");
    assert!(disagree.is_empty(), "audit codes differ from what callers got: {:?}", &disagree[..disagree.len().min(5)]);
    assert!(shed > 0, "past {MAX_CONCURRENT} calls in flight some must be shed");
    assert!(accepted >= MAX_CONCURRENT, "only {accepted} accepted: the bound sheds too early");
    assert!(peak_kib < MAX_PEAK_RSS_KIB, "peak RSS {peak_kib} KiB: memory is not bounded");
    // The child's log, at debug level, holds no JWT and no plaintext (raw or as the base64 sent to
    // Vault: every plaintext starts with "overload-", whose 9 bytes encode to "b3ZlcmxvYWQt").
    let log = std::fs::read_to_string(&gateway.log)
        .unwrap_or_else(|e| panic!("the gateway's log {} cannot be read: {e}", gateway.log.display()));
    assert!(
        log.contains("DEBUG"),
        "the gateway's log has no debug line ({} bytes): the scan would see nothing",
        log.len()
    );
    for secret in ["overload-", "b3ZlcmxvYWQt", "eyJ", env.billing.as_str()] {
        assert!(!log.contains(secret), "the gateway's log holds {:?}…", &secret[..4]);
    }
}
