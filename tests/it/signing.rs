//! Transit signatures and HMACs through the gateway against real OpenBao: Sign/Verify with the
//! dev key `billing-signing` (ed25519), Hmac/VerifyHmac with `billing`; every value is Vault's own
//! `vault:vN:…` (checked by asking Vault directly); a changed input is `valid = false`, a
//! malformed value `INVALID_ARGUMENT`; `reports` gets none of it; and concurrent single Sign calls
//! are coalesced into far fewer Vault requests, each caller getting the signature of its own input.

use crate::support::{req, retried, serve_gateway, Env};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde_json::json;
use std::sync::atomic::Ordering;
use tonic::Code;
use tonic_types::StatusExt;
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient as Client, *};

const KEY: &str = "billing-signing";

/// Asks Vault itself (root token) whether `field` (`signature` or `hmac`) is valid for `input`.
async fn vault_says_valid(env: &Env, key: &str, input: &[u8], field: &str, value: &str, algorithm: &str) -> bool {
    let mut body = json!({"input": B64.encode(input), field: value});
    if !algorithm.is_empty() {
        body["hash_algorithm"] = json!(algorithm);
    }
    let (status, answer) = env.vault(reqwest::Method::POST, &format!("transit/verify/{key}"), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer["data"]["valid"] == json!(true)
}

fn bad_field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

pub async fn sign_and_verify_agree_with_vault(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let input = b"POST /webhook {\"amount\": 42}".to_vec();
    let signed = c
        .sign(req(SignRequest { key: KEY.into(), input: input.clone(), ..Default::default() }, &env.billing))
        .await
        .expect("sign")
        .into_inner();
    assert!(signed.signature.starts_with("vault:v1:"), "{}", signed.signature);
    assert_eq!(signed.key_version, 1);
    let verify =
        |input: Vec<u8>, signature: String| VerifyRequest { key: KEY.into(), input, signature, ..Default::default() };
    let mut changed = input.clone();
    changed[22] = b'9';
    let cases = [(input.clone(), true), (changed.clone(), false), (Vec::new(), false)];
    for (data, want) in cases {
        let got = c.verify(req(verify(data.clone(), signed.signature.clone()), &env.billing)).await.expect("verify");
        assert_eq!(got.into_inner().valid, want, "input {:?}", String::from_utf8_lossy(&data));
        assert_eq!(vault_says_valid(env, KEY, &data, "signature", &signed.signature, "").await, want, "Vault itself");
    }
    // A malformed signature is the caller's error naming the field; so is a version the key does not have (Vault says so).
    for bad in ["not-a-signature", "vault:v1:", "vault:v9:AAAA"] {
        let status = c.verify(req(verify(input.clone(), bad.into()), &env.billing)).await.expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        if bad != "vault:v9:AAAA" {
            assert_eq!(bad_field(&status), "signature", "{bad}");
        }
    }
    // The hash algorithm is checked against Vault's names before anything is sent.
    let odd = SignRequest { key: KEY.into(), hash_algorithm: "md5".into(), ..Default::default() };
    let status = c.sign(req(odd, &env.billing)).await.expect_err("md5");
    assert_eq!((status.code(), bad_field(&status).as_str()), (Code::InvalidArgument, "hash_algorithm"));
    // reports may neither sign nor verify with billing's key (Vault's policy).
    let status = c.sign(req(SignRequest { key: KEY.into(), input: input.clone(), ..Default::default() }, &env.reports));
    assert_eq!(status.await.expect_err("reports signs").code(), Code::PermissionDenied);
    let status = c.verify(req(verify(input.clone(), signed.signature.clone()), &env.reports)).await;
    assert_eq!(status.expect_err("reports verifies").code(), Code::PermissionDenied);
    // An AES key cannot sign: the caller's error, not the gateway's.
    let aes = SignRequest { key: "billing".into(), input, ..Default::default() };
    let status = c.sign(req(aes, &env.billing)).await.expect_err("aes key signs");
    assert_eq!(status.code(), Code::PermissionDenied, "billing's policy has no transit/sign/billing: {status:?}");
}

pub async fn hmac_and_verify_hmac_agree_with_vault(env: &'static Env) {
    let mut c = Client::new(env.channel());
    let input = b"order-7781".to_vec();
    for algorithm in ["", "sha2-512"] {
        let mac = c
            .hmac(req(
                HmacRequest {
                    key: "billing".into(),
                    input: input.clone(),
                    algorithm: algorithm.into(),
                    ..Default::default()
                },
                &env.billing,
            ))
            .await
            .expect("hmac")
            .into_inner();
        assert!(mac.hmac.starts_with("vault:v1:"), "{}", mac.hmac);
        assert_eq!(mac.key_version, 1);
        let verify = |input: &[u8], algorithm: &str| VerifyHmacRequest {
            key: "billing".into(),
            input: input.to_vec(),
            hmac: mac.hmac.clone(),
            algorithm: algorithm.into(),
            ..Default::default()
        };
        let ok = c.verify_hmac(req(verify(&input, algorithm), &env.billing)).await.expect("verify").into_inner();
        assert!(ok.valid, "{algorithm}");
        let changed = c.verify_hmac(req(verify(b"order-7782", algorithm), &env.billing)).await.expect("verify");
        assert!(!changed.into_inner().valid, "a changed input must not verify ({algorithm})");
        let other = if algorithm.is_empty() { "sha2-384" } else { "sha2-256" };
        let wrong_algorithm = c.verify_hmac(req(verify(&input, other), &env.billing)).await.expect("verify");
        assert!(!wrong_algorithm.into_inner().valid, "another algorithm must not verify");
        assert!(vault_says_valid(env, "billing", &input, "hmac", &mac.hmac, algorithm).await, "Vault itself");
        assert!(!vault_says_valid(env, "billing", b"order-7782", "hmac", &mac.hmac, algorithm).await);
    }
    let bad = VerifyHmacRequest {
        key: "billing".into(),
        input: input.clone(),
        hmac: "vault:1:abc".into(),
        ..Default::default()
    };
    let status = c.verify_hmac(req(bad, &env.billing)).await.expect_err("malformed hmac");
    assert_eq!((status.code(), bad_field(&status).as_str()), (Code::InvalidArgument, "hmac"));
    let sha1 =
        HmacRequest { key: "billing".into(), input: input.clone(), algorithm: "sha1".into(), ..Default::default() };
    let status = c.hmac(req(sha1, &env.billing)).await.expect_err("sha1 hmac");
    assert_eq!((status.code(), bad_field(&status).as_str()), (Code::InvalidArgument, "algorithm"));
    // reports gets none of billing's.
    let theirs = HmacRequest { key: "billing".into(), input, ..Default::default() };
    assert_eq!(c.hmac(req(theirs, &env.reports)).await.expect_err("reports").code(), Code::PermissionDenied);
}

pub async fn five_hundred_concurrent_signs_are_coalesced(env: &'static Env) {
    let own = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\n",
        env.vault_addr
    ))
    .await;
    const CALLS: usize = 500;
    // Each call made as a client would (`retried`): on a loaded machine a burst of 500 can find
    // Vault failing for a moment, and a call tried again is one item more.
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let (channel, jwt) = (own.channel.clone(), env.billing.clone());
            tokio::spawn(async move {
                let input = format!("message {i}").into_bytes();
                let sign = || {
                    let (mut c, jwt) = (Client::new(channel.clone()), jwt.clone());
                    let r = SignRequest { key: KEY.into(), input: input.clone(), ..Default::default() };
                    async move { c.sign(req(r, &jwt)).await }
                };
                let signature = retried(sign).await.expect("sign").into_inner().signature;
                (input, signature)
            })
        })
        .collect();
    let mut signed = Vec::new();
    for t in tasks {
        signed.push(t.await.expect("sign task"));
    }
    let stats = own.gateway.coalescer.as_ref().expect("batching on").stats();
    let (items, requests) = (stats.items.load(Ordering::Relaxed), stats.requests.load(Ordering::Relaxed));
    assert!(items >= CALLS as u64, "every call is one item ({items} for {CALLS} calls)");
    assert!(requests * 5 <= items, "{requests} Vault requests for {items} Sign calls: less than 5x coalescing");
    // Each caller got the signature of its own input: Vault verifies all of them in one batch
    // (ed25519 signatures are deterministic, so a swapped answer would fail here).
    // (200 items a request: OpenBao's JSON string limit.)
    for chunk in signed.chunks(200) {
        let batch: Vec<_> = chunk.iter().map(|(i, s)| json!({"input": B64.encode(i), "signature": s})).collect();
        let body = json!({ "batch_input": batch });
        let (status, answer) = env.vault(reqwest::Method::POST, &format!("transit/verify/{KEY}"), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        let results = answer["data"]["batch_results"].as_array().expect("batch_results");
        assert_eq!(results.len(), chunk.len());
        assert!(results.iter().all(|r| r["valid"] == json!(true)), "some caller got another's signature");
    }
    println!(
        "  signing: {CALLS} concurrent Sign calls in {requests} Vault requests ({:.1}x)",
        items as f64 / requests as f64
    );
}
