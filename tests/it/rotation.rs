//! Rotation against real OpenBao: Decrypt says when a ciphertext's key version is behind (from
//! the key-version poller, not a Vault read per call), RewrapBatch moves many ciphertexts to the
//! latest version in few Vault requests, single Rewraps coalesce. Vault requests are counted in
//! OpenBao's own audit log. Each test has keys of its own (created here), so counts are exact.

use crate::support::{req, Env};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient as Client, *};

/// Requests for exactly `path` (e.g. `transit/keys/qa-rot1`) in OpenBao's audit log.
pub fn audited(env: &Env, path: &str) -> usize {
    let text = std::fs::read_to_string(env.dir.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "request" && v["request"]["path"] == path)
        .count()
}

/// Creates Transit key `key` (as the root token; the `qa` caller may use `qa-*`).
async fn new_key(env: &Env, key: &str) {
    let (status, body) = env.vault(Method::POST, &format!("transit/keys/{key}"), Some(json!({}))).await;
    assert!(status < 300, "creating {key}: {status} {body}");
}

/// Rotates `key` in Vault directly, behind the gateway's back.
async fn rotate_in_vault(env: &Env, key: &str) {
    let (status, body) = env.vault(Method::POST, &format!("transit/keys/{key}/rotate"), None).await;
    assert!(status < 300, "rotating {key}: {status} {body}");
}

/// `n` plaintexts encrypted with `key` as the `qa` caller, in one EncryptBatch call.
async fn encrypt_many(env: &'static Env, key: &str, n: usize) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut c = Client::new(env.channel());
    let plaintexts: Vec<Vec<u8>> = (0..n).map(|i| format!("rotation-{key}-{i}").into_bytes()).collect();
    env.remember_plaintext(&plaintexts[0]);
    let items = plaintexts.iter().map(|p| EncryptBatchItem { plaintext: p.clone(), ..Default::default() }).collect();
    let out = c
        .encrypt_batch(req(EncryptBatchRequest { key: key.into(), items, ..Default::default() }, &env.qa))
        .await
        .expect("encrypt batch")
        .into_inner();
    let ciphertexts: Vec<String> = out
        .results
        .into_iter()
        .map(|r| {
            assert!(r.error.is_none(), "{:?}", r.error);
            r.ciphertext
        })
        .collect();
    (plaintexts, ciphertexts)
}

pub async fn decrypt_after_rotation_recommends_rewrap_without_a_key_read_per_call(env: &'static Env) {
    let key = "qa-rot1";
    new_key(env, key).await;
    let (plaintexts, ciphertexts) = encrypt_many(env, key, 1).await;
    let mut c = Client::new(env.channel());
    let decrypt =
        |ct: &str| req(DecryptRequest { key: key.into(), ciphertext: ct.into(), ..Default::default() }, &env.qa);
    // Before the rotation: up to date.
    let out = c.decrypt(decrypt(&ciphertexts[0])).await.expect("decrypt").into_inner();
    assert_eq!(out.plaintext, plaintexts[0]);
    assert_eq!((out.key_version, out.rewrap_recommended, out.latest_version), (1, false, 1));
    // Rotated behind the gateway's back: the poller (key_versions.poll_ms = 1000 in the tests)
    // must notice within a few seconds, with no help from the caller's traffic.
    rotate_in_vault(env, key).await;
    let rotated = Instant::now();
    let seen = loop {
        let out = c.decrypt(decrypt(&ciphertexts[0])).await.expect("decrypt").into_inner();
        if out.rewrap_recommended {
            break out;
        }
        assert!(rotated.elapsed() < Duration::from_secs(5), "no rewrap_recommended 5 s after the rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let noticed = rotated.elapsed();
    assert_eq!((seen.key_version, seen.latest_version), (1, 2));
    assert_eq!(seen.plaintext, plaintexts[0]);
    // Many more decryptions cost no key read each: only the poller reads (one per poll_ms).
    let reads_before = audited(env, &format!("transit/keys/{key}"));
    let started = Instant::now();
    let calls = 200;
    let tasks: Vec<_> = (0..calls)
        .map(|_| {
            let (mut c, ct) = (c.clone(), ciphertexts[0].clone());
            tokio::spawn(async move {
                let r = DecryptRequest { key: key.into(), ciphertext: ct, ..Default::default() };
                c.decrypt(req(r, &env.qa)).await.expect("decrypt").into_inner()
            })
        })
        .collect();
    for t in tasks {
        let out = t.await.expect("decrypt task");
        assert_eq!((out.rewrap_recommended, out.latest_version), (true, 2));
    }
    // A v2 ciphertext is up to date.
    let fresh = encrypt_many(env, key, 1).await.1;
    let out = c.decrypt(decrypt(&fresh[0])).await.expect("decrypt").into_inner();
    assert_eq!((out.key_version, out.rewrap_recommended, out.latest_version), (2, false, 2));
    let took = started.elapsed();
    let reads = audited(env, &format!("transit/keys/{key}")) - reads_before;
    let allowed = took.as_millis() as usize / 1000 + 2;
    assert!(reads <= allowed, "{reads} key reads for {calls} decryptions in {took:?}: more than the poller's");
    println!(
        "  rotation: rotation noticed by the poller in {:.1} s; {calls} decryptions in {:.1} s cost {reads} key reads",
        noticed.as_secs_f64(),
        took.as_secs_f64()
    );
}

pub async fn rewrap_batch_of_a_thousand_takes_few_vault_requests(env: &'static Env) {
    let key = "qa-rot2";
    new_key(env, key).await;
    let n = 1000;
    let (plaintexts, ciphertexts) = encrypt_many(env, key, n).await;
    rotate_in_vault(env, key).await;
    let mut c = Client::new(env.channel());
    let rewraps = audited(env, &format!("transit/rewrap/{key}"));
    let mut items: Vec<RewrapBatchItem> =
        ciphertexts.iter().map(|ct| RewrapBatchItem { ciphertext: ct.clone(), ..Default::default() }).collect();
    // One item that is not a ciphertext fails alone, naming its position.
    items.push(RewrapBatchItem { ciphertext: "vault:v1:".into(), ..Default::default() });
    let out = c
        .rewrap_batch(req(RewrapBatchRequest { key: key.into(), items, ..Default::default() }, &env.qa))
        .await
        .expect("rewrap batch")
        .into_inner();
    let requests = audited(env, &format!("transit/rewrap/{key}")) - rewraps;
    assert_eq!(out.results.len(), n + 1);
    let bad = out.results[n].error.as_ref().expect("the malformed item failed");
    assert_eq!(bad.code, tonic::Code::InvalidArgument as i32);
    assert!(bad.message.contains("items[1000].ciphertext"), "{}", bad.message);
    let rewrapped: Vec<String> = out.results[..n]
        .iter()
        .map(|r| {
            assert!(r.error.is_none(), "{:?}", r.error);
            assert!(r.ciphertext.starts_with("vault:v2:") && r.key_version == 2, "{r:?}");
            r.ciphertext.clone()
        })
        .collect();
    assert!(requests <= 5, "RewrapBatch of {n} took {requests} Vault requests");
    // The new ciphertexts decrypt to the same plaintexts, and are up to date; the old ones are behind.
    for (cts, behind) in [(&rewrapped, false), (&ciphertexts, true)] {
        let items = cts.iter().map(|ct| DecryptBatchItem { ciphertext: ct.clone(), ..Default::default() }).collect();
        let out = c
            .decrypt_batch(req(DecryptBatchRequest { key: key.into(), items, ..Default::default() }, &env.qa))
            .await
            .expect("decrypt batch")
            .into_inner();
        for (i, r) in out.results.iter().enumerate() {
            assert!(r.error.is_none(), "{:?}", r.error);
            assert_eq!(r.plaintext, plaintexts[i], "item {i}");
            assert_eq!((r.rewrap_recommended, r.latest_version), (behind, 2), "item {i}");
        }
    }
    // Single Rewrap calls made at once coalesce into batch requests too.
    let before = audited(env, &format!("transit/rewrap/{key}"));
    let singles = 200;
    let tasks: Vec<_> = ciphertexts[..singles]
        .iter()
        .map(|ct| {
            let (mut c, ct) = (c.clone(), ct.clone());
            tokio::spawn(async move {
                let r = RewrapRequest { key: key.into(), ciphertext: ct, ..Default::default() };
                c.rewrap(req(r, &env.qa)).await.expect("rewrap").into_inner()
            })
        })
        .collect();
    for t in tasks {
        let out = t.await.expect("rewrap task");
        assert!(out.ciphertext.starts_with("vault:v2:") && out.key_version == 2, "{out:?}");
    }
    let single_requests = audited(env, &format!("transit/rewrap/{key}")) - before;
    assert!(single_requests < singles / 2, "{singles} concurrent Rewrap calls took {single_requests} Vault requests");
    println!(
        "  rotation: RewrapBatch of {n} v1 ciphertexts (+1 malformed) in {requests} Vault requests; \
         {singles} concurrent Rewrap calls in {single_requests}"
    );
}

/// The associated data docs/security.md documents for a caller with `bind_identity`, written
/// here from the documentation (not with the gateway's code): `"vaultgate.bind"`, version byte
/// 1, then the caller id and the caller's own associated data, each after its length as 4 bytes
/// big-endian.
fn documented_aad(caller_id: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = b"vaultgate.bind\x01".to_vec();
    out.extend_from_slice(&(caller_id.len() as u32).to_be_bytes());
    out.extend_from_slice(caller_id.as_bytes());
    out.extend_from_slice(&(aad.len() as u32).to_be_bytes());
    out.extend_from_slice(aad);
    out
}

pub async fn bound_ciphertexts_decrypt_only_for_their_caller(env: &'static Env) {
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    use tonic::Code;
    let (key, rsa) = ("qa-bind", "qa-bind-rsa");
    new_key(env, key).await;
    let (status, body) =
        env.vault(Method::POST, &format!("transit/keys/{rsa}"), Some(json!({"type": "rsa-2048"}))).await;
    assert!(status < 300, "{status} {body}");
    // Both callers have the same Vault role (policy `qa`) and may use the same key; both bind.
    let own = crate::support::serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\nbind_identity = true\n\
         [[callers]]\nrole = \"qa2\"\nequals = \"qa2\"\nbind_identity = true\n",
        env.vault_addr
    ))
    .await;
    let qa2 = env.jwt("qa2", 3600);
    let callers = [("qa", env.qa.as_str()), ("qa2", qa2.as_str())];
    let id = |sub: &str| format!("jwt:{}#{sub}", vaultgate::dev::issuer::ISSUER);
    let mut c = Client::new(own.channel.clone());
    let (aad_qa, aad_qa2): (&[u8], &[u8]) = (b"order-1", b"");
    let mut made = Vec::new();
    for ((sub, jwt), aad) in callers.iter().zip([aad_qa, aad_qa2]) {
        let plaintext = format!("bound to {sub}").into_bytes();
        env.remember_plaintext(&plaintext);
        let r = EncryptRequest {
            key: key.into(),
            plaintext: plaintext.clone(),
            associated_data: aad.to_vec(),
            ..Default::default()
        };
        let ct = c.encrypt(req(r, jwt)).await.expect("encrypt").into_inner().ciphertext;
        // Its own caller decrypts it.
        let r = DecryptRequest {
            key: key.into(),
            ciphertext: ct.clone(),
            associated_data: aad.to_vec(),
            ..Default::default()
        };
        assert_eq!(c.decrypt(req(r, jwt)).await.expect("own decrypt").into_inner().plaintext, plaintext);
        // An operator decrypts it directly in Vault with the documented associated data.
        let body = json!({"ciphertext": ct, "associated_data": B64.encode(documented_aad(&id(sub), aad))});
        let (status, answer) = env.vault(Method::POST, &format!("transit/decrypt/{key}"), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(B64.decode(answer["data"]["plaintext"].as_str().unwrap_or("!")).ok(), Some(plaintext.clone()));
        made.push((ct, plaintext));
    }
    let (ct_qa, ct_qa2) = (made[0].0.clone(), made[1].0.clone());
    let decrypt = |ct: &str, aad: &[u8]| DecryptRequest {
        key: key.into(),
        ciphertext: ct.into(),
        associated_data: aad.to_vec(),
        ..Default::default()
    };
    let mut unbound = Client::new(env.channel());
    // (attack, the call, expected code); each must fail.
    type Outcome = Result<tonic::Response<DecryptResponse>, tonic::Status>;
    let attacks: Vec<(&str, Outcome, Code)> = vec![
        (
            "qa2 decrypts qa's ciphertext with qa's AAD",
            c.decrypt(req(decrypt(&ct_qa, aad_qa), &qa2)).await,
            Code::InvalidArgument,
        ),
        (
            "qa decrypts qa2's ciphertext",
            c.decrypt(req(decrypt(&ct_qa2, aad_qa2), &env.qa)).await,
            Code::InvalidArgument,
        ),
        (
            "qa decrypts its own ciphertext with another AAD",
            c.decrypt(req(decrypt(&ct_qa, b"order-2"), &env.qa)).await,
            Code::InvalidArgument,
        ),
        (
            "an unbound caller of the same role sends qa2's bound AAD encoding as its own",
            unbound.decrypt(req(decrypt(&ct_qa2, &documented_aad(&id("qa2"), aad_qa2)), &env.qa)).await,
            Code::InvalidArgument,
        ),
        (
            "an unbound caller of the same role decrypts qa's ciphertext with qa's AAD",
            unbound.decrypt(req(decrypt(&ct_qa, aad_qa), &env.qa)).await,
            Code::InvalidArgument,
        ),
    ];
    for (attack, outcome, code) in attacks {
        match outcome {
            Ok(_) => panic!("{attack}: succeeded"),
            Err(s) => {
                assert_eq!(s.code(), code, "{attack}: {s:?}");
                println!("  bind_identity attack: {attack} -> {:?} ({})", s.code(), s.message());
            }
        }
    }
    // In a batch, the other caller's item fails alone.
    let items = vec![
        DecryptBatchItem { ciphertext: ct_qa.clone(), associated_data: aad_qa.to_vec(), ..Default::default() },
        DecryptBatchItem { ciphertext: ct_qa2.clone(), ..Default::default() },
    ];
    let out = c
        .decrypt_batch(req(DecryptBatchRequest { key: key.into(), items, ..Default::default() }, &env.qa))
        .await
        .expect("decrypt batch")
        .into_inner();
    assert_eq!(out.results[0].plaintext, made[0].1);
    assert_eq!(out.results[1].error.as_ref().map(|e| e.code), Some(Code::InvalidArgument as i32));
    // A data key is bound like an Encrypt: its caller unwraps it, the other cannot.
    let dk = c
        .generate_data_key(req(GenerateDataKeyRequest { key: key.into(), ..Default::default() }, &env.qa))
        .await
        .expect("data key")
        .into_inner();
    let back = c.decrypt(req(decrypt(&dk.ciphertext, b""), &env.qa)).await.expect("unwrap").into_inner();
    assert_eq!(back.plaintext, dk.plaintext);
    let other = c.decrypt(req(decrypt(&dk.ciphertext, b""), &qa2)).await.expect_err("other caller unwraps");
    assert_eq!(other.code(), Code::InvalidArgument);
    // No silent downgrade: a key type without associated data is refused, naming the reason;
    // Transit's rewrap cannot take associated data, so a bound caller's Rewrap is refused too.
    let r = EncryptRequest { key: rsa.into(), plaintext: b"x".to_vec(), ..Default::default() };
    let refused = c.encrypt(req(r, &env.qa)).await.expect_err("rsa key with bind_identity");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("not an AEAD key type"), "{}", refused.message());
    let r = RewrapRequest { key: key.into(), ciphertext: ct_qa.clone(), ..Default::default() };
    let refused = c.rewrap(req(r, &env.qa)).await.expect_err("rewrap of a bound ciphertext");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("bind_identity"), "{}", refused.message());
}

/// The next message of a WatchKey stream that is not a heartbeat, within `within`.
async fn next_key(stream: &mut tonic::Streaming<WatchKeyResponse>, within: Duration) -> WatchKeyResponse {
    let until = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(until, stream.message()).await;
        match next.expect("a WatchKey message in time").expect("the stream goes on") {
            Some(m) if m.heartbeat => continue,
            Some(m) => return m,
            None => panic!("the WatchKey stream ended"),
        }
    }
}

pub async fn watch_key_sees_rotations_made_anywhere(env: &'static Env) {
    let key = "qa-rot3";
    new_key(env, key).await;
    let mut c = Client::new(env.channel());
    let r = WatchKeyRequest { key: key.into(), ..Default::default() };
    let mut stream = c.watch_key(req(r, &env.qa)).await.expect("watch key").into_inner();
    let first = next_key(&mut stream, Duration::from_secs(5)).await;
    assert_eq!((first.r#type.as_str(), first.latest_version, first.min_decryption_version), ("aes256-gcm96", 1, 1));
    // Rotated behind the gateway's back: the poller sees it (poll_ms = 1000 in the tests).
    rotate_in_vault(env, key).await;
    let started = Instant::now();
    let rotated = next_key(&mut stream, Duration::from_secs(5)).await;
    let behind_the_back = started.elapsed();
    assert_eq!(rotated.latest_version, 2, "{rotated:?}");
    // Rotated through the gateway: the poller reads at once.
    let started = Instant::now();
    let r = RotateRequest { key: key.into(), ..Default::default() };
    assert_eq!(c.rotate(req(r, &env.qa)).await.expect("rotate").into_inner().latest_version, 3);
    let through = next_key(&mut stream, Duration::from_secs(5)).await;
    let through_gateway = started.elapsed();
    assert_eq!(through.latest_version, 3, "{through:?}");
    // A change of min versions is a change too.
    let body = json!({"min_decryption_version": 2});
    let (status, answer) = env.vault(Method::POST, &format!("transit/keys/{key}/config"), Some(body)).await;
    assert!(status < 300, "{status} {answer}");
    let config = next_key(&mut stream, Duration::from_secs(5)).await;
    assert_eq!((config.latest_version, config.min_decryption_version), (3, 2), "{config:?}");
    // A key the caller may not read ends the stream with the caller's error.
    let r = WatchKeyRequest { key: "billing".into(), ..Default::default() };
    let denied = match c.watch_key(req(r, &env.qa)).await {
        Err(s) => s,
        Ok(s) => s.into_inner().message().await.expect_err("a key qa may not read"),
    };
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    println!(
        "  rotation: WatchKey saw a rotation made in Vault after {:.1} s, one through the gateway after {:.2} s",
        behind_the_back.as_secs_f64(),
        through_gateway.as_secs_f64()
    );
}
