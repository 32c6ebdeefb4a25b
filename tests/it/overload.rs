//! Overload: 10,000 concurrent calls against the real `vaultgate serve` binary (its own process,
//! so its peak RSS is its own) whose Vault is the real OpenBao behind a loopback proxy that
//! delays every answer. Calls past `limits.max_concurrent_calls` are shed with RESOURCE_EXHAUSTED,
//! every accepted call gets its own right answer, and memory stays bounded.

use crate::support::{req, Env};
use std::{
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
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

/// A loopback TCP proxy to `upstream` that holds each chunk of the answer for `delay`.
async fn delay_proxy(upstream: String, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else { return };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                    let _ = server_tx.shutdown().await;
                });
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                    tokio::time::sleep(delay).await;
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = client_tx.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

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

fn plaintext(i: usize) -> Vec<u8> {
    format!("overload-{i:05}").into_bytes()
}

/// What one call of the flood came back with.
enum Answer {
    Encrypted(usize, String),
    Decrypted(usize, Vec<u8>),
    Shed,
}

pub async fn ten_thousand_calls_against_a_slow_vault_are_shed_or_answered_right(env: &'static Env) {
    let vault_host = env.vault_addr.trim_start_matches("http://").to_string();
    let proxy = delay_proxy(vault_host, VAULT_DELAY).await;
    let (gateway, addr) = start_gateway(env, &proxy).await;

    // Ciphertexts for the Decrypt calls, made by the in-process gateway (fast, no proxy).
    let items = (0..DECRYPTS).map(|i| EncryptBatchItem { plaintext: plaintext(i), ..Default::default() }).collect();
    let made = Client::new(env.channel())
        .encrypt_batch(req(EncryptBatchRequest { key: "billing".into(), items }, &env.billing))
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
    late.metadata_mut().insert("x-request-id", "overload-late".parse().expect("ascii"));
    let status = warm.encrypt(late).await.expect_err("Vault answers after the deadline");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    let audit = std::fs::read_to_string(&gateway.audit).expect("audit log");
    let line = audit.lines().find(|l| l.contains("\"overload-late\"")).expect("the late call's audit line");
    assert!(line.contains("\"code\":\"DeadlineExceeded\""), "{line}");

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
                        c.decrypt(req(r, &env.billing)).await.map(|r| Answer::Decrypted(i, r.into_inner().plaintext))
                    } else {
                        c.encrypt(req(enc(plaintext(i)), &env.billing))
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
                        Answer::Shed
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

    let (mut shed, mut decrypted, mut encrypted) = (0, 0, Vec::new());
    for answer in answers {
        match answer {
            Answer::Shed => shed += 1,
            Answer::Decrypted(i, p) => {
                assert_eq!(p, plaintext(i), "Decrypt {i} answered another call's plaintext");
                decrypted += 1;
            }
            Answer::Encrypted(i, ct) => encrypted.push((i, ct)),
        }
    }
    // Every accepted Encrypt decrypts (by the in-process gateway) to its own plaintext.
    let mut check = Client::new(env.channel());
    for chunk in encrypted.chunks(1000) {
        let items = chunk.iter().map(|(_, ct)| DecryptBatchItem { ciphertext: ct.clone(), ..Default::default() });
        let r = DecryptBatchRequest { key: "billing".into(), items: items.collect() };
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
    assert_eq!(accepted + shed, CALLS);
    assert!(shed > 0, "past {MAX_CONCURRENT} calls in flight some must be shed");
    assert!(accepted >= MAX_CONCURRENT, "only {accepted} accepted: the bound sheds too early");
    assert!(peak_kib < MAX_PEAK_RSS_KIB, "peak RSS {peak_kib} KiB: memory is not bounded");
    let log = std::fs::read_to_string(&gateway.log).unwrap_or_default();
    assert!(!log.contains(&env.billing) && !log.contains("overload-0"), "the gateway's log holds a JWT or plaintext");
}
