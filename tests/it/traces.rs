//! OpenTelemetry traces (issue 15): `vaultgate serve` with `[traces]` exports to an OTLP receiver
//! served here (OpenTelemetry's own TraceService, from the `opentelemetry-proto` crate, on tonic).
//! Checked: the parent/child structure of a traced Encrypt (call → coalescer wait → batch → Vault
//! request, the wait linked to the batch), the caller's trace id kept, sampling (ratio 0: only the
//! callers' sampled traces are recorded), the `traceparent` OpenBao received (its audit log records
//! that header once `sys/config/auditing/request-headers/traceparent` asks it to), and that no span
//! holds the JWT, the plaintext, the ciphertext or the key name.

use crate::support::{audit_lines, Env};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::{any_value::Value as Any, KeyValue},
    trace::v1::{span::SpanKind, Span},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tonic::{metadata::MetadataValue, Request, Response, Status};
use vaultgate::pb::vaultgate::v1::{encryption_service_client::EncryptionServiceClient, EncryptRequest, GetKeyRequest};

/// What the receiver got: `service.name` of each span's resource, and the span.
#[derive(Default, Clone)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut got = self.0.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs.resource.map(|r| attr(&r.attributes, "service.name")).unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push((service.clone(), span));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> String {
    match attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn b64_of(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn traced<T>(message: T, jwt: &str, traceparent: Option<&str>) -> Request<T> {
    let mut r = crate::support::req(message, jwt);
    if let Some(tp) = traceparent {
        r.metadata_mut().insert("traceparent", MetadataValue::try_from(tp).expect("ascii"));
    }
    r
}

pub async fn encrypt_is_traced_from_the_callers_traceparent_to_vault(env: &'static Env) {
    // OpenBao's audit log records a request header only when told to (not HMAC'd: it is no secret).
    let (status, body) = env
        .vault(
            reqwest::Method::POST,
            "sys/config/auditing/request-headers/traceparent",
            Some(serde_json::json!({"hmac": false})),
        )
        .await;
    assert!(status < 300, "audit request headers: {status} {body}");

    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
    let otlp = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let dir = env.dir.join("traces");
    std::fs::create_dir_all(&dir).expect("dir");
    // Ratio 0: the gateway starts no recorded trace of its own; callers' sampled ones are followed.
    // A linger, so that every Transit call waits in its lane (an idle lane's call is otherwise sent
    // from its own task, with no wait or batch span) and concurrent ones share a batch.
    let toml = format!(
        "[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"qa\"\nequals = \"qa\"\n\
         [shutdown]\ngrace_ms = 0\ndrain_timeout_ms = 2000\n\
         [batch]\nlinger_us = 50000\n\
         [traces]\nendpoint = \"http://{otlp}\"\nsample_ratio = 0.0\nservice_name = \"vaultgate-it\"\n",
        env.vault_addr
    );
    let (child, channel) = crate::database::spawn_gateway(&dir, "traced", &toml).await;
    let mut c = EncryptionServiceClient::new(channel);

    let (t1, p1) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let (t2, p2) = ("5c0a3f6e8d2b4c1a9e7f6d5c4b3a2910", "1a2b3c4d5e6f7081");
    let t3 = "6d1b4a7f9e3c5d2b8f1a0e9d8c7b6a51";
    let plaintext = env.remember_plaintext(b"traced secret plaintext");
    let enc = || EncryptRequest { key: "qa-aes".into(), plaintext: plaintext.to_vec(), ..Default::default() };
    // One call at a time: each batch carries one caller's item.
    let sampled = format!("00-{t1}-{p1}-01");
    let ciphertext =
        c.encrypt(traced(enc(), &env.qa, Some(&sampled))).await.expect("traced encrypt").into_inner().ciphertext;
    let key = GetKeyRequest { key: "qa-aes".into(), ..Default::default() };
    c.get_key(traced(key, &env.qa, Some(&format!("00-{t2}-{p2}-01")))).await.expect("traced get_key");
    c.encrypt(traced(enc(), &env.qa, None)).await.expect("encrypt without a traceparent");
    // Four callers at once, each in a trace of its own: one batch (or a few), linked from every wait.
    let shared: Vec<String> = (0..4).map(|i| format!("7{i}0000000000000000000000000000aa")).collect();
    let calls: Vec<_> = shared
        .iter()
        .map(|t| {
            let mut c = c.clone();
            let request = traced(enc(), &env.qa, Some(&format!("00-{t}-{p1}-01")));
            tokio::spawn(async move { c.encrypt(request).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("concurrent traced encrypt");
    }
    c.encrypt(traced(enc(), &env.qa, Some(&format!("00-{t3}-{p1}-00")))).await.expect("encrypt, caller not sampling");

    // SIGTERM: the exporter sends what it still holds before the process exits.
    let pid = child.id().expect("running");
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    let mut child = child;
    let exited = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    assert!(exited.is_ok_and(|s| s.is_ok_and(|s| s.success())), "the gateway did not exit 0 within 15 s of SIGTERM");
    server.abort();
    let log = std::fs::read_to_string(dir.join("traced.log")).expect("the gateway's log");
    for secret in env.secrets().iter().chain([&b64_of(plaintext)]) {
        assert!(!log.contains(secret.as_str()), "the traced gateway's log holds a secret");
    }

    let spans = received.0.lock().expect("lock").clone();
    let named = |trace: &str, name: &str| -> Vec<&Span> {
        spans.iter().map(|(_, s)| s).filter(|s| hex(&s.trace_id) == trace && s.name == name).collect()
    };
    let shape: Vec<String> = spans
        .iter()
        .map(|(_, s)| format!("{} {} {}", &hex(&s.trace_id)[..8], s.name, hex(&s.parent_span_id)))
        .collect();
    println!("  traces: {} spans exported: {shape:?}", spans.len());
    assert!(spans.iter().all(|(service, _)| service == "vaultgate-it"), "service.name");

    // The Encrypt: the caller's trace id kept, call → wait → batch → Vault request, wait linked to batch.
    let call = named(t1, "vaultgate.v1.EncryptionService/Encrypt");
    assert_eq!(call.len(), 1, "one call span in the caller's trace: {shape:?}");
    let call = call[0];
    assert_eq!(hex(&call.parent_span_id), p1, "the call span is a child of the caller's span");
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(attr(&call.attributes, "rpc.method"), "Encrypt");
    assert_eq!(attr(&call.attributes, "rpc.grpc.status_code"), "0");
    assert_eq!(attr(&call.attributes, "vaultgate.role"), "qa");
    let wait = named(t1, "coalescer.wait");
    assert_eq!(wait.len(), 1, "{shape:?}");
    assert_eq!(wait[0].parent_span_id, call.span_id, "the coalescer wait is a child of the call");
    let batch = named(t1, "transit.batch");
    assert_eq!(batch.len(), 1, "the lone item's batch is in the caller's trace: {shape:?}");
    assert_eq!(batch[0].parent_span_id, wait[0].span_id, "the batch is a child of its first sampled waiter");
    assert_eq!(attr(&batch[0].attributes, "vaultgate.batch.items"), "1");
    assert!(
        wait[0].links.iter().any(|l| l.span_id == batch[0].span_id && l.trace_id == batch[0].trace_id),
        "the wait links to its batch's span"
    );
    let vault = named(t1, "transit/encrypt");
    assert_eq!(vault.len(), 1, "{shape:?}");
    assert_eq!(vault[0].parent_span_id, batch[0].span_id, "the Vault request is a child of the batch");
    assert_eq!(vault[0].kind, SpanKind::Client as i32);
    assert_eq!(attr(&vault[0].attributes, "http.response.status_code"), "200");

    // GetKey (not batched): its Vault request is a child of the call.
    let get_key = named(t2, "vaultgate.v1.EncryptionService/GetKey");
    assert_eq!(get_key.len(), 1, "{shape:?}");
    let under_get_key: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id == get_key[0].span_id && s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(under_get_key.len(), 1, "GetKey's Vault request: {shape:?}");

    // Concurrent callers: each wait links to a transit.batch span that was exported, whose parent
    // is one of the waits; a batch that carried several items is linked from other traces too.
    let batches: Vec<&Span> = spans.iter().map(|(_, s)| s).filter(|s| s.name == "transit.batch").collect();
    let mut shared_batches = 0;
    for t in &shared {
        let wait = named(t, "coalescer.wait");
        assert_eq!(wait.len(), 1, "{t}: {shape:?}");
        assert_eq!(wait[0].links.len(), 1, "{t}: one link");
        let target = batches.iter().find(|b| b.span_id == wait[0].links[0].span_id);
        let target = target.unwrap_or_else(|| panic!("{t}: its link names no exported batch: {shape:?}"));
        assert!(spans.iter().any(|(_, s)| s.name == "coalescer.wait" && s.span_id == target.parent_span_id));
        if target.trace_id != wait[0].trace_id {
            shared_batches += 1;
        }
    }
    let items: Vec<String> = batches.iter().map(|b| attr(&b.attributes, "vaultgate.batch.items")).collect();
    println!("  traces: 4 concurrent traced Encrypts: batches of {items:?}; {shared_batches} waits linked to a batch in another trace");
    assert!(shared_batches >= 1, "4 concurrent calls in a 50 ms linger shared no batch: {items:?}");

    // Sampling: only the traces callers sampled were recorded (ratio 0 for the others).
    let traces: std::collections::BTreeSet<String> = spans.iter().map(|(_, s)| hex(&s.trace_id)).collect();
    let sampled: std::collections::BTreeSet<String> =
        [t1.to_string(), t2.to_string()].into_iter().chain(shared.iter().cloned()).collect();
    assert_eq!(traces, sampled, "{shape:?}");

    // Nothing secret: no JWT, plaintext (as sent or base64), ciphertext or key name in any span.
    let text = format!("{:?}", spans);
    let b64 = b64_of(plaintext);
    for (what, secret) in [("JWT", env.qa.as_str()), ("ciphertext", ciphertext.as_str()), ("plaintext", &b64)] {
        assert!(!text.contains(secret), "a span holds the {what}");
    }
    assert!(!text.contains("traced secret") && !text.contains("qa-aes"), "a span holds the plaintext or key name");

    // OpenBao received the traceparent of the exported Vault-request span; and, for the caller
    // that did not sample, the caller's trace id with the flag 00 (context propagates anyway).
    let want = format!("00-{t1}-{}-01", hex(&vault[0].span_id));
    let header = |line: &serde_json::Value| line["request"]["headers"]["traceparent"][0].as_str().map(str::to_string);
    let lines = audit_lines(&env.dir.join("audit.log"), Duration::from_secs(5), |lines| {
        lines.iter().any(|l| header(l).as_deref() == Some(&want))
            && lines
                .iter()
                .any(|l| header(l).is_some_and(|h| h.starts_with(&format!("00-{t3}-")) && h.ends_with("-00")))
    })
    .await;
    let sent: Vec<String> = lines.iter().filter_map(header).collect();
    assert!(sent.contains(&want), "OpenBao's audit log has no traceparent {want}: {sent:?}");
    let t2_seen = lines
        .iter()
        .filter(|l| header(l).is_some_and(|h| h.starts_with(&format!("00-{t2}-"))))
        .filter_map(|l| l["request"]["path"].as_str())
        .collect::<Vec<_>>();
    assert!(!t2_seen.is_empty(), "GetKey's Vault request carried the caller's trace id: {sent:?}");
    assert!(
        sent.iter().any(|h| h.starts_with(&format!("00-{t3}-")) && h.ends_with("-00")),
        "an unsampled caller's trace id reached OpenBao, flag 00: {sent:?}"
    );
    println!(
        "  traces: OpenBao's audit log: {} requests with a traceparent; encrypt's = {want}; GetKey's paths {t2_seen:?}",
        sent.len()
    );
}
