//! Contract additions of issue 16 against real Transit: a Transit request's `mount`, per-item key
//! versions in batches, and connections aged out by `[connections]` without failing a call.

use crate::support::{req, serve_gateway, Env};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use reqwest::Method;
use serde_json::json;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use std::time::{Duration, Instant};
use tonic::Code;
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient as Client, *};

/// A second Transit mount holding a key the default mount does not have (the qa policy covers
/// `transit-qa/…/qa-*`, support.rs).
async fn second_mount(env: &Env) {
    let (s, body) = env.vault(Method::POST, "sys/mounts/transit-qa", Some(json!({"type": "transit"}))).await;
    assert!(matches!(s, 200 | 204), "mount transit-qa: {s} {body}");
    let (s, body) = env.vault(Method::POST, "transit-qa/keys/qa-mnt", Some(json!({"type": "aes256-gcm96"}))).await;
    assert!(matches!(s, 200 | 204), "key transit-qa/qa-mnt: {s} {body}");
}

pub async fn transit_requests_name_their_mount(env: &'static Env) {
    second_mount(env).await;
    let mut c = Client::new(env.channel());
    let m = |key: &str| (key.to_string(), "transit-qa".to_string());
    let (key, mount) = m("qa-mnt");
    let ct = c
        .encrypt(req(
            EncryptRequest {
                key: key.clone(),
                mount: mount.clone(),
                plaintext: b"mounted".to_vec(),
                ..Default::default()
            },
            &env.qa,
        ))
        .await
        .expect("Encrypt in transit-qa")
        .into_inner()
        .ciphertext;
    // Vault's own API, in that mount, decrypts what the gateway encrypted there.
    let (s, body) = env.vault(Method::POST, "transit-qa/decrypt/qa-mnt", Some(json!({"ciphertext": ct}))).await;
    assert_eq!((s, body["data"]["plaintext"].as_str()), (200, Some(B64.encode("mounted").as_str())), "{body}");
    let pt = c
        .decrypt(req(
            DecryptRequest { key: key.clone(), mount: mount.clone(), ciphertext: ct.clone(), ..Default::default() },
            &env.qa,
        ))
        .await
        .expect("Decrypt in transit-qa")
        .into_inner();
    assert_eq!((pt.plaintext.as_slice(), pt.key_version), (&b"mounted"[..], 1));
    let rotated = c
        .rotate(req(RotateRequest { key: key.clone(), mount: mount.clone() }, &env.qa))
        .await
        .expect("Rotate in transit-qa")
        .into_inner();
    let info = c
        .get_key(req(GetKeyRequest { key: key.clone(), mount: mount.clone() }, &env.qa))
        .await
        .expect("GetKey")
        .into_inner();
    assert_eq!((rotated.latest_version, info.latest_version), (2, 2));
    let wrapped = c
        .rewrap(req(
            RewrapRequest { key: key.clone(), mount: mount.clone(), ciphertext: ct, ..Default::default() },
            &env.qa,
        ))
        .await
        .expect("Rewrap in transit-qa")
        .into_inner();
    assert_eq!(wrapped.key_version, 2);
    let dk = c
        .generate_data_key(req(
            GenerateDataKeyRequest { key: key.clone(), mount: mount.clone(), ..Default::default() },
            &env.qa,
        ))
        .await
        .expect("GenerateDataKey in transit-qa")
        .into_inner();
    assert_eq!((dk.plaintext.len(), dk.key_version), (32, 2));
    // The mount is honoured, not ignored: the default mount has no such key.
    let status = c
        .get_key(req(GetKeyRequest { key: key.clone(), ..Default::default() }, &env.qa))
        .await
        .expect_err("default mount");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    // A malformed mount is refused before Vault, naming the field.
    for bad in ["a/../b", "/", "a b"] {
        let status = c
            .encrypt(req(EncryptRequest { key: key.clone(), mount: bad.into(), ..Default::default() }, &env.qa))
            .await
            .expect_err("bad mount");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {}", status.message());
        let details = tonic_types::StatusExt::get_details_bad_request(&status).expect("BadRequest details");
        assert_eq!(details.field_violations[0].field, "mount", "{bad:?}");
    }
    // Attack: a role limited to keys qa-* by the gateway's rule reaches for the same key name in
    // another mount, which its transit_mounts (default: the configured one) does not list.
    let ruled = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n[roles.qa]\ntransit_keys = [\"qa-*\"]\n",
        env.vault_addr
    ))
    .await;
    let mut r = Client::new(ruled.channel.clone());
    let status = r
        .encrypt(req(EncryptRequest { key: key.clone(), mount: mount.clone(), ..Default::default() }, &env.qa))
        .await
        .expect_err("another mount, not in the rule");
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    assert!(status.message().contains("transit_mounts"), "{}", status.message());
    r.encrypt(req(EncryptRequest { key: "qa-aes".into(), ..Default::default() }, &env.qa))
        .await
        .expect("the rule still allows qa-* in the default mount");
}

pub async fn batch_items_carry_key_versions(env: &'static Env) {
    let (s, body) = env.vault(Method::POST, "transit/keys/qa-versions", Some(json!({"type": "aes256-gcm96"}))).await;
    assert!(matches!(s, 200 | 204), "{s} {body}");
    let (s, body) = env.vault(Method::POST, "transit/keys/qa-versions/rotate", None).await;
    assert!(matches!(s, 200 | 204), "{s} {body}");
    let mut c = Client::new(env.channel());
    let item = |pt: &[u8], key_version| EncryptBatchItem { plaintext: pt.to_vec(), key_version, ..Default::default() };
    let items = vec![item(b"one", 1), item(b"latest", 0), item(b"two", 2), item(b"nine", 9)];
    let results = c
        .encrypt_batch(req(EncryptBatchRequest { key: "qa-versions".into(), items, mount: String::new() }, &env.qa))
        .await
        .expect("EncryptBatch")
        .into_inner()
        .results;
    let got: Vec<(u32, bool, bool)> = results
        .iter()
        .map(|r| (r.key_version, r.ciphertext.starts_with(&format!("vault:v{}:", r.key_version)), r.error.is_some()))
        .collect();
    // The version asked for, per item; an impossible one fails that item alone.
    assert_eq!(got, [(1, true, false), (2, true, false), (2, true, false), (0, false, true)], "{results:?}");
    let items = results[..3]
        .iter()
        .map(|r| DecryptBatchItem { ciphertext: r.ciphertext.clone(), ..Default::default() })
        .chain([DecryptBatchItem { ciphertext: "vault:v1:AAAA".into(), ..Default::default() }])
        .collect();
    let results = c
        .decrypt_batch(req(DecryptBatchRequest { key: "qa-versions".into(), items, mount: String::new() }, &env.qa))
        .await
        .expect("DecryptBatch")
        .into_inner()
        .results;
    let got: Vec<(&[u8], u32, bool)> =
        results.iter().map(|r| (r.plaintext.as_slice(), r.key_version, r.error.is_some())).collect();
    assert_eq!(
        got,
        [(&b"one"[..], 1, false), (&b"latest"[..], 2, false), (&b"two"[..], 2, false), (&b""[..], 0, true)],
        "the key version that encrypted each item; a failed item carries none: {results:?}"
    );
}

pub async fn old_connections_are_closed_without_failing_calls(env: &'static Env) {
    let own = serve_gateway(&format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\n[connections]\nmax_age_ms = 1000\nmax_age_grace_ms = 2000\n",
        env.vault_addr
    ))
    .await;
    // The client connects through a counting TCP relay: each connection the server closes shows
    // up as a new one here.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let relay_addr = relay.local_addr().expect("relay addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let upstream = own.addr;
    let relay_task = tokio::spawn(async move {
        while let Ok((mut client, _)) = relay.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{relay_addr}")).expect("endpoint").connect_lazy();
    let mut c = Client::new(channel);
    let started = Instant::now();
    let (mut calls, mut refused) = (0, Vec::new());
    // At least 3.5 s of calls, and on a loaded machine (slow calls) on until the first connection
    // has been closed, up to 20 s.
    let enough = |calls_window: Duration, n: usize| calls_window >= Duration::from_millis(3500) && n >= 2;
    while !enough(started.elapsed(), connections.load(Ordering::SeqCst)) && started.elapsed() < Duration::from_secs(20)
    {
        let request = || EncryptRequest { key: "billing".into(), plaintext: b"aged".to_vec(), ..Default::default() };
        // A call sent as the server closes an idle connection can meet the closed socket (tonic:
        // UNKNOWN "transport error", broken pipe), the GOAWAY (UNAVAILABLE), or be queued on the
        // closing connection (hyper's CANCELLED "connection closed", never written): it never
        // reached a handler, and gRPC clients retry such calls transparently. A retry sent before
        // the client has seen the close can meet the same connection, so up to two retries; such
        // refusals stay at most one per closed connection (asserted below).
        let unsent = |status: &tonic::Status| {
            status.code() == Code::Unavailable
                || (status.code() == Code::Unknown && status.message() == "transport error")
                || (status.code() == Code::Cancelled && format!("{status:?}").contains("connection closed"))
        };
        let mut attempts = 0;
        while let Err(status) = c.encrypt(req(request(), &env.billing)).await {
            assert!(unsent(&status), "{status:?}");
            refused.push(status.message().to_string());
            attempts += 1;
            assert!(attempts <= 2, "the retries on a new connection fail: {refused:?}");
        }
        calls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = connections.load(Ordering::SeqCst);
    println!(
        "connections.max_age_ms = 1000: {calls} calls in {:.1} s over {n} connections; {} refused while a connection closed, then answered on retry {refused:?}",
        started.elapsed().as_secs_f64(),
        refused.len()
    );
    assert!(refused.len() <= n, "more refusals ({}) than connection closes ({n})", refused.len());
    assert!(n >= 2, "the server never closed the first connection ({n} connection(s) for {calls} calls)");
    relay_task.abort();
}
