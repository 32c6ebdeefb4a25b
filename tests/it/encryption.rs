//! EncryptionService against real Transit: results checked with Vault's own API.

use crate::support::{req, Env};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::Ordering;
use tonic::Code;
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient as Client, *};

/// A round-trip case: key, plaintext, context, associated data.
type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8]);
/// What a call returned, with its response dropped.
type Outcome = Result<tonic::Response<()>, tonic::Status>;

fn enc(key: &str, plaintext: &[u8]) -> EncryptRequest {
    EncryptRequest { key: key.into(), plaintext: plaintext.to_vec(), ..Default::default() }
}

fn dec(key: &str, ciphertext: &str) -> DecryptRequest {
    DecryptRequest { key: key.into(), ciphertext: ciphertext.into(), ..Default::default() }
}

pub async fn round_trip_matches_vault(env: &'static Env) {
    let mut c = Client::new(env.channel());
    // (key, plaintext, context, associated data)
    let cases: &[Case] = &[
        ("billing", b"4111 1111 1111 1111", b"", b""),
        ("billing", b"", b"", b""),
        ("qa-aes", b"with aad", b"", b"order-17"),
        ("qa-derived", b"for a derived key", b"tenant-a", b""),
        ("qa-aes", &[0u8, 255, 1, 254], b"", b""),
    ];
    for (key, plaintext, context, aad) in cases {
        env.remember_plaintext(plaintext);
        let jwt = if *key == "billing" { &env.billing } else { &env.qa };
        let request = EncryptRequest {
            key: key.to_string(),
            plaintext: plaintext.to_vec(),
            context: context.to_vec(),
            associated_data: aad.to_vec(),
            key_version: 0,
        };
        let out = c.encrypt(req(request, jwt)).await.expect("encrypt").into_inner();
        assert!(out.ciphertext.starts_with("vault:v1:"), "{}", out.ciphertext);
        assert_eq!(out.key_version, 1);
        // Vault's own API decrypts the gateway's ciphertext.
        let mut body = json!({"ciphertext": out.ciphertext});
        if !context.is_empty() {
            body["context"] = json!(B64.encode(context));
        }
        if !aad.is_empty() {
            body["associated_data"] = json!(B64.encode(aad));
        }
        let (status, answer) = env.vault(Method::POST, &format!("transit/decrypt/{key}"), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(B64.decode(answer["data"]["plaintext"].as_str().unwrap_or("!")).ok().as_deref(), Some(*plaintext));
        // And the gateway decrypts what Vault's own API encrypted.
        let mut body = json!({"plaintext": B64.encode(plaintext)});
        if !context.is_empty() {
            body["context"] = json!(B64.encode(context));
        }
        if !aad.is_empty() {
            body["associated_data"] = json!(B64.encode(aad));
        }
        let (_, answer) = env.vault(Method::POST, &format!("transit/encrypt/{key}"), Some(body)).await;
        let vault_ct = answer["data"]["ciphertext"].as_str().expect("vault ciphertext").to_string();
        let request = DecryptRequest {
            key: key.to_string(),
            ciphertext: vault_ct,
            context: context.to_vec(),
            associated_data: aad.to_vec(),
        };
        let out = c.decrypt(req(request, jwt)).await.expect("decrypt").into_inner();
        assert_eq!(out.plaintext, *plaintext);
        assert_eq!(out.key_version, 1);
    }
}

pub async fn batch_rpcs_answer_in_order(env: &'static Env) {
    let mut c = Client::new(env.channel());
    // 1200 items: more than OpenBao's 499-item limit per request, so the gateway must split.
    let plaintexts: Vec<Vec<u8>> = (0..1200).map(|i| format!("item-{i}").into_bytes()).collect();
    for p in plaintexts.iter().step_by(300) {
        env.remember_plaintext(p);
    }
    let items = plaintexts.iter().map(|p| EncryptBatchItem { plaintext: p.clone(), ..Default::default() }).collect();
    let out = c
        .encrypt_batch(req(EncryptBatchRequest { key: "billing".into(), items }, &env.billing))
        .await
        .expect("encrypt batch")
        .into_inner();
    assert_eq!(out.results.len(), plaintexts.len());
    assert!(out.results.iter().all(|r| r.error.is_none() && r.key_version == 1));
    let items = out
        .results
        .iter()
        .map(|r| DecryptBatchItem { ciphertext: r.ciphertext.clone(), ..Default::default() })
        .collect();
    let back = c
        .decrypt_batch(req(DecryptBatchRequest { key: "billing".into(), items }, &env.billing))
        .await
        .expect("decrypt batch")
        .into_inner();
    let got: Vec<Vec<u8>> = back.results.into_iter().map(|r| r.plaintext).collect();
    assert_eq!(got, plaintexts);
    // Spot-check with Vault directly.
    let (_, answer) = env
        .vault(Method::POST, "transit/decrypt/billing", Some(json!({"ciphertext": out.results[777].ciphertext})))
        .await;
    assert_eq!(answer["data"]["plaintext"], json!(B64.encode(b"item-777")));
}

pub async fn batch_item_failures_stay_alone(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let good = c.encrypt(req(enc("qa-aes", b"good"), &env.qa)).await.expect("encrypt").into_inner().ciphertext;
    let with_aad = c
        .encrypt(req(EncryptRequest { associated_data: b"aad".to_vec(), ..enc("qa-aes", b"aad-bound") }, &env.qa))
        .await
        .expect("encrypt")
        .into_inner()
        .ciphertext;
    let cases: Vec<(DecryptBatchItem, Result<&[u8], Code>)> = vec![
        (DecryptBatchItem { ciphertext: good.clone(), ..Default::default() }, Ok(b"good")),
        (DecryptBatchItem { ciphertext: "not-a-ciphertext".into(), ..Default::default() }, Err(Code::InvalidArgument)),
        (
            DecryptBatchItem { ciphertext: "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(), ..Default::default() },
            Err(Code::InvalidArgument),
        ),
        (DecryptBatchItem { ciphertext: with_aad.clone(), ..Default::default() }, Err(Code::InvalidArgument)),
        (
            DecryptBatchItem { ciphertext: with_aad, associated_data: b"aad".to_vec(), ..Default::default() },
            Ok(b"aad-bound"),
        ),
        (
            DecryptBatchItem { ciphertext: "vault:v99:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(), ..Default::default() },
            Err(Code::InvalidArgument),
        ),
        (DecryptBatchItem { ciphertext: good, ..Default::default() }, Ok(b"good")),
    ];
    let items = cases.iter().map(|(i, _)| i.clone()).collect();
    let out = c
        .decrypt_batch(req(DecryptBatchRequest { key: "qa-aes".into(), items }, &env.qa))
        .await
        .expect("a batch with bad items still succeeds")
        .into_inner();
    assert_eq!(out.results.len(), cases.len());
    for (i, ((_, want), got)) in cases.iter().zip(&out.results).enumerate() {
        match want {
            Ok(plain) => {
                assert!(got.error.is_none(), "item {i}: {:?}", got.error);
                assert_eq!(got.plaintext, *plain, "item {i}");
            }
            Err(code) => {
                let err = got.error.as_ref().unwrap_or_else(|| panic!("item {i} should fail"));
                assert_eq!(err.code, *code as i32, "item {i}: {}", err.message);
                assert!(!err.message.is_empty());
                assert!(got.plaintext.is_empty());
            }
        }
    }
    // Encrypt batch: an oversized item fails alone.
    let items = vec![
        EncryptBatchItem { plaintext: b"ok".to_vec(), ..Default::default() },
        EncryptBatchItem { plaintext: vec![7u8; 70_000], ..Default::default() },
        EncryptBatchItem { plaintext: b"ok too".to_vec(), ..Default::default() },
    ];
    let out = c
        .encrypt_batch(req(EncryptBatchRequest { key: "qa-aes".into(), items }, &env.qa))
        .await
        .expect("batch")
        .into_inner();
    assert!(out.results[0].error.is_none() && out.results[2].error.is_none());
    assert_eq!(out.results[1].error.as_ref().map(|e| e.code), Some(Code::InvalidArgument as i32));
    assert!(out.results[1].error.as_ref().is_some_and(|e| e.message.contains("items[1].plaintext")));
}

pub async fn key_lifecycle_rpcs(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let key = c.get_key(req(GetKeyRequest { key: "qa-rotate".into() }, &env.qa)).await.expect("get key").into_inner();
    assert_eq!(
        (key.r#type.as_str(), key.latest_version, key.min_decryption_version, key.derived),
        ("aes256-gcm96", 1, 1, false)
    );
    let old = c.encrypt(req(enc("qa-rotate", b"rotate me"), &env.qa)).await.expect("encrypt").into_inner();
    let rotated = c.rotate(req(RotateRequest { key: "qa-rotate".into() }, &env.qa)).await.expect("rotate").into_inner();
    assert_eq!(rotated.latest_version, 2);
    let (_, vault_key) = env.vault(Method::GET, "transit/keys/qa-rotate", None).await;
    assert_eq!(vault_key["data"]["latest_version"], 2);
    let rewrapped = c
        .rewrap(req(
            RewrapRequest { key: "qa-rotate".into(), ciphertext: old.ciphertext.clone(), context: vec![] },
            &env.qa,
        ))
        .await
        .expect("rewrap")
        .into_inner();
    assert!(rewrapped.ciphertext.starts_with("vault:v2:"));
    assert_eq!(rewrapped.key_version, 2);
    let back = c.decrypt(req(dec("qa-rotate", &rewrapped.ciphertext), &env.qa)).await.expect("decrypt").into_inner();
    assert_eq!((back.plaintext.as_slice(), back.key_version), (&b"rotate me"[..], 2));
    let derived =
        c.get_key(req(GetKeyRequest { key: "qa-derived".into() }, &env.qa)).await.expect("get key").into_inner();
    assert!(derived.derived);
    // A pinned older version encrypts with that version.
    let pinned = c
        .encrypt(req(EncryptRequest { key_version: 1, ..enc("qa-rotate", b"pinned") }, &env.qa))
        .await
        .expect("encrypt v1")
        .into_inner();
    assert_eq!(pinned.key_version, 1);
    assert!(pinned.ciphertext.starts_with("vault:v1:"));
}

pub async fn generate_data_key_unwraps_in_vault(env: &'static Env) {
    let mut c = Client::new(env.channel());
    for (bits, len) in [(0u32, 32usize), (128, 16), (512, 64)] {
        let dk = c
            .generate_data_key(req(
                GenerateDataKeyRequest { key: "billing".into(), context: vec![], bits },
                &env.billing,
            ))
            .await
            .expect("datakey")
            .into_inner();
        assert_eq!(dk.plaintext.len(), len);
        assert_eq!(dk.key_version, 1);
        let (_, answer) =
            env.vault(Method::POST, "transit/decrypt/billing", Some(json!({"ciphertext": dk.ciphertext}))).await;
        assert_eq!(answer["data"]["plaintext"], json!(B64.encode(&dk.plaintext)));
    }
}

pub async fn error_table(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let derived_ct = c
        .encrypt(req(EncryptRequest { context: b"tenant-a".to_vec(), ..enc("qa-derived", b"x") }, &env.qa))
        .await
        .expect("encrypt")
        .into_inner()
        .ciphertext;
    let cases: Vec<(&str, Outcome, Code, &str)> = vec![
        (
            "empty key",
            c.encrypt(req(enc("", b"x"), &env.qa)).await.map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "key",
        ),
        (
            "bad key name",
            c.encrypt(req(enc("a/b", b"x"), &env.qa)).await.map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "key",
        ),
        (
            "oversized plaintext",
            c.encrypt(req(enc("qa-aes", &[1u8; 70_000]), &env.qa)).await.map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "limit",
        ),
        (
            "malformed ciphertext",
            c.decrypt(req(dec("qa-aes", "garbage"), &env.qa)).await.map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "ciphertext",
        ),
        (
            "empty ciphertext",
            c.decrypt(req(dec("qa-aes", ""), &env.qa)).await.map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "ciphertext",
        ),
        (
            "wrong context",
            c.decrypt(req(DecryptRequest { context: b"tenant-b".to_vec(), ..dec("qa-derived", &derived_ct) }, &env.qa))
                .await
                .map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "context",
        ),
        (
            "missing context",
            c.encrypt(req(enc("qa-derived", b"x"), &env.qa)).await.map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "context",
        ),
        (
            "version too new",
            c.decrypt(req(dec("qa-aes", "vault:v9:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), &env.qa))
                .await
                .map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "version",
        ),
        (
            "missing key, decrypt",
            c.decrypt(req(dec("qa-missing", "vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), &env.qa))
                .await
                .map(|r| r.map(|_| ())),
            Code::NotFound,
            "qa-missing",
        ),
        (
            "missing key, get",
            c.get_key(req(GetKeyRequest { key: "qa-missing".into() }, &env.qa)).await.map(|r| r.map(|_| ())),
            Code::NotFound,
            "qa-missing",
        ),
        (
            "missing key, rotate",
            c.rotate(req(RotateRequest { key: "qa-missing".into() }, &env.qa)).await.map(|r| r.map(|_| ())),
            Code::NotFound,
            "qa-missing",
        ),
        (
            "another caller's key",
            c.encrypt(req(enc("billing", b"x"), &env.qa)).await.map(|r| r.map(|_| ())),
            Code::PermissionDenied,
            "billing",
        ),
        (
            "bad datakey bits",
            c.generate_data_key(req(
                GenerateDataKeyRequest { key: "qa-aes".into(), context: vec![], bits: 100 },
                &env.qa,
            ))
            .await
            .map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "bits",
        ),
        (
            "empty batch",
            c.encrypt_batch(req(EncryptBatchRequest { key: "qa-aes".into(), items: vec![] }, &env.qa))
                .await
                .map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "items",
        ),
        (
            "oversized batch",
            c.encrypt_batch(req(
                EncryptBatchRequest { key: "qa-aes".into(), items: vec![EncryptBatchItem::default(); 2001] },
                &env.qa,
            ))
            .await
            .map(|r| r.map(|_| ())),
            Code::InvalidArgument,
            "2001",
        ),
    ];
    for (name, got, code, mentions) in cases {
        let status = got.err().unwrap_or_else(|| panic!("{name}: should fail"));
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        assert!(status.message().contains(mentions), "{name}: {:?} should mention {mentions:?}", status.message());
    }
    // INVALID_ARGUMENT names the field in google.rpc.BadRequest details.
    let status = c.encrypt(req(enc("", b"x"), &env.qa)).await.expect_err("empty key");
    let bad = tonic_types::StatusExt::get_details_bad_request(&status).expect("BadRequest details");
    assert_eq!(bad.field_violations[0].field, "key");
    // A 1 ms deadline: an immediate DEADLINE_EXCEEDED, never a hang. (When the deadline passes
    // before the handler even runs, tonic's transport layer answers CANCELLED "Timeout expired";
    // gRPC clients that enforce deadlines themselves report DEADLINE_EXCEEDED either way.)
    // This test runs beside the others on 2 cores: the bound only tells an answer from a hang
    // (a hang would last until the 180 s test timeout); the slowest answer is printed.
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let mut r = req(enc("qa-aes", b"x"), &env.qa);
        r.set_timeout(std::time::Duration::from_millis(1));
        let started = std::time::Instant::now();
        let status = c.encrypt(r).await.expect_err("1 ms is too short");
        assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
        slowest = slowest.max(started.elapsed());
    }
    println!("  1 ms deadline: 20 calls refused, slowest answer {:.1} ms", slowest.as_secs_f64() * 1e3);
    assert!(slowest < std::time::Duration::from_secs(5), "a 1 ms deadline answered after {slowest:?}");
}

pub async fn concurrent_calls_are_coalesced_and_answered_correctly(env: &'static Env) {
    let stats = env.gateway.coalescer.as_ref().expect("batching is on by default").stats();
    let (items0, requests0) = (stats.items.load(Ordering::Relaxed), stats.requests.load(Ordering::Relaxed));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut c = Client::new(env.channel());
        tasks.push(tokio::spawn(async move {
            let plaintext = format!("secret-number-{i}");
            if i % 200 == 0 {
                env.remember_plaintext(plaintext.as_bytes());
            }
            let ct = c
                .encrypt(req(enc("billing", plaintext.as_bytes()), &env.billing))
                .await
                .expect("encrypt")
                .into_inner()
                .ciphertext;
            let back = c.decrypt(req(dec("billing", &ct), &env.billing)).await.expect("decrypt").into_inner().plaintext;
            assert_eq!(back, plaintext.as_bytes(), "call {i} got another caller's answer");
        }));
    }
    for t in tasks {
        t.await.expect("round trip");
    }
    let items = stats.items.load(Ordering::Relaxed) - items0;
    let requests = stats.requests.load(Ordering::Relaxed) - requests0;
    // Other tests run concurrently and add their own items, so only a lower bound is exact.
    assert!(items >= 2000, "{items} items");
    assert!(requests < items, "{requests} Vault requests for {items} items: nothing was coalesced");
    println!("  coalescing: {items} items in {requests} Vault requests");
}
