//! Arbitrary bytes as each protobuf request message (as the gateway's codec decodes them), then
//! the very checks its handler runs before anything reaches Vault (`validate::Checked`, and per
//! batch item `validate::encrypt_item`/`decrypt_item`), the `grpc-timeout` header, and for batches
//! the split into Vault requests (`batch::plan`); and the same bytes as a request body walked as
//! it arrives (`frames::Frames`, in front of decoding): the same events however it is chunked,
//! and never more top-level fields than the message holds. Never a panic; every failure is a caller error.
//! The budget arithmetic restated here finds crashes, not a wrong budget: OpenBao's own limit is
//! the judge in `tests/it/oracles.rs`.

use crate::{
    batch::{plan, Budget},
    config::Config,
    error::Error,
    frames::{Event, Frames},
    pb::vaultgate::v1::*,
    service::validate::{self, Checked},
    vault::transit::{b64, BatchItem},
};
use std::sync::OnceLock;

/// The default limits, and tiny ones that small inputs can exceed.
fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let base = "listen = \"127.0.0.1:0\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n";
        let tiny = format!(
            "{base}[batch]\nmax_items = 3\nmax_json_strings = 16\nmax_bytes = 4096\n\
             [limits]\nmax_item_bytes = 64\nmax_batch_items = 8\nmax_message_bytes = 1024\n"
        );
        // Constant texts, parsed once; the config unit tests prove they are valid.
        [Config::parse(base).expect("default config"), Config::parse(&tiny).expect("tiny config")]
    })
}

fn opt_b64(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| b64(bytes))
}

/// Every validation error is a caller error with a message, never a panic or another code.
fn expect_invalid(r: Result<(), Error>) {
    if let Err(e) = r {
        assert!(matches!(e, Error::BadField { .. } | Error::InvalidArgument(_)), "validation gave {e:?}");
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(!status.message().is_empty());
    }
}

/// Decodes `bytes` as `R` (a decode failure is the codec's INVALID_ARGUMENT) and checks it as
/// its handler does; returns the request when it passed.
fn checked<R: prost::Message + Default + Checked>(c: &Config, bytes: &[u8]) -> Option<R> {
    let r = match R::decode(bytes) {
        Ok(r) => r,
        Err(e) => {
            expect_invalid(Err(Error::undecodable(&e)));
            return None;
        }
    };
    let result = r.check(&c.limits);
    let passed = result.is_ok();
    expect_invalid(result);
    passed.then_some(r)
}

/// `batch::plan` covers every item exactly once, in order, in requests that fit the budget and
/// share one context shape.
fn check_plan(c: &Config, items: &[BatchItem]) {
    let budget = Budget::from(&c.batch);
    let ranges = plan(items, budget);
    let mut next = 0;
    for r in &ranges {
        assert_eq!(r.start, next, "plan left a gap or overlap: {ranges:?}");
        assert!(r.start < r.end, "empty range in {ranges:?}");
        next = r.end;
        let chunk = &items[r.clone()];
        assert!(
            chunk.iter().all(|i| i.context.is_some() == chunk[0].context.is_some()),
            "mixed context shapes in one request"
        );
        if chunk.len() > 1 {
            let strings: usize = 1 + chunk.iter().map(BatchItem::json_strings).sum::<usize>();
            let bytes: usize = 32 + chunk.iter().map(BatchItem::json_bytes).sum::<usize>();
            assert!(chunk.len() <= budget.items, "{} items over {}", chunk.len(), budget.items);
            assert!(strings <= budget.strings, "{strings} strings over {}", budget.strings);
            assert!(bytes <= budget.bytes, "{bytes} bytes over {}", budget.bytes);
        }
    }
    assert_eq!(next, items.len(), "plan did not cover every item");
}

/// The body walker in front of decoding: `bytes` as a gRPC body gives the same events fed whole
/// and fed in chunks of every size from 1 to 7, and never counts more fields than bytes.
fn walk_body(bytes: &[u8]) {
    let events = |size: usize| {
        let (mut frames, mut seen) = (Frames::default(), Vec::new());
        for chunk in bytes.chunks(size) {
            let fed = frames.feed(chunk, |e| {
                seen.push(e);
                Ok::<(), ()>(())
            });
            assert!(fed.is_ok(), "the callback never refuses");
        }
        // Field counts summed per message (chunking splits them differently).
        let mut merged: Vec<Event> = Vec::new();
        for e in seen {
            match (merged.last_mut(), e) {
                (Some(Event::Fields(n)), Event::Fields(m)) => *n += m,
                _ => merged.push(e),
            }
        }
        merged
    };
    let whole = events(bytes.len().max(1));
    for size in 1..=7 {
        assert_eq!(events(size), whole, "chunks of {size}");
    }
    let fields: usize = whole.iter().map(|e| if let Event::Fields(n) = e { *n } else { 0 }).sum();
    assert!(fields <= bytes.len(), "{fields} fields in {} bytes", bytes.len());
}

fn validate_message(c: &Config, kind: u8, bytes: &[u8]) {
    // Kinds 0-13 keep the numbers the seeds were written with.
    match kind % 24 {
        0 => drop(checked::<EncryptRequest>(c, bytes)),
        1 => {
            if let Some(r) = checked::<DecryptRequest>(c, bytes) {
                assert!(validate::ciphertext_version(&r.ciphertext).is_some());
            }
        }
        2 => {
            let Some(r) = checked::<EncryptBatchRequest>(c, bytes) else { return };
            let mut valid = Vec::new();
            for (i, it) in r.items.iter().enumerate() {
                match validate::encrypt_item(&c.limits, &it.plaintext, &it.context, &it.associated_data) {
                    Ok(()) => valid.push(BatchItem {
                        plaintext: Some(b64(&it.plaintext)),
                        context: opt_b64(&it.context),
                        associated_data: opt_b64(&it.associated_data),
                        ..Default::default()
                    }),
                    Err(e) => expect_invalid(Err(e.in_item(Some(i)))),
                }
            }
            check_plan(c, &valid);
        }
        3 => {
            let Some(r) = checked::<DecryptBatchRequest>(c, bytes) else { return };
            let mut valid = Vec::new();
            for (i, it) in r.items.iter().enumerate() {
                match validate::decrypt_item(&c.limits, &it.ciphertext, &it.context, &it.associated_data) {
                    Ok(()) => valid.push(BatchItem {
                        ciphertext: Some(it.ciphertext.clone()),
                        context: opt_b64(&it.context),
                        associated_data: opt_b64(&it.associated_data),
                        ..Default::default()
                    }),
                    Err(e) => expect_invalid(Err(e.in_item(Some(i)))),
                }
            }
            check_plan(c, &valid);
        }
        4 => drop(checked::<RewrapRequest>(c, bytes)),
        5 => drop(checked::<RotateRequest>(c, bytes)),
        6 => drop(checked::<GetKeyRequest>(c, bytes)),
        7 => {
            if let Some(r) = checked::<GenerateDataKeyRequest>(c, bytes) {
                assert!(matches!(validate::data_key_bits(r.bits), Ok(128 | 256 | 512)));
            }
        }
        8 => drop(checked::<GetSecretRequest>(c, bytes)),
        9 => drop(checked::<ListSecretsRequest>(c, bytes)),
        10 => drop(checked::<GetDbCredsRequest>(c, bytes)),
        11 => {
            if let Some(r) = checked::<RenewLeaseRequest>(c, bytes) {
                // The handler sends the increment to Vault as whole seconds.
                // The invariant under test: a request that passed `check` has a valid increment; a
                // panic here is the fuzzer reporting a validation bug, which is the point.
                let increment = validate::lease_increment(r.increment.as_ref()).expect("checked");
                assert!(increment.is_none_or(|s| s > 0));
            }
        }
        12 => drop(checked::<RevokeLeaseRequest>(c, bytes)),
        14 => drop(checked::<SignRequest>(c, bytes)),
        15 => {
            if let Some(r) = checked::<VerifyRequest>(c, bytes) {
                assert!(validate::ciphertext_version(&r.signature).is_some());
            }
        }
        16 => drop(checked::<HmacRequest>(c, bytes)),
        17 => {
            if let Some(r) = checked::<VerifyHmacRequest>(c, bytes) {
                assert!(validate::ciphertext_version(&r.hmac).is_some());
            }
        }
        18 => drop(checked::<IssueCertificateRequest>(c, bytes)),
        19 => drop(checked::<SignCertificateRequest>(c, bytes)),
        20 => {
            if let Some(r) = checked::<RevokeCertificateRequest>(c, bytes) {
                assert!(r.certificate.is_empty() != r.serial_number.is_empty(), "exactly one names the certificate");
            }
        }
        21 => drop(checked::<GetCaChainRequest>(c, bytes)),
        22 => drop(checked::<RewrapBatchRequest>(c, bytes)),
        23 => walk_body(bytes),
        // The `grpc-timeout` header every call carries, read by `call::grpc_deadline`.
        _ => {
            let Ok(value) = tonic::codegen::http::HeaderValue::from_bytes(bytes) else { return };
            let mut headers = tonic::codegen::http::HeaderMap::new();
            headers.insert("grpc-timeout", value);
            let before = tokio::time::Instant::now();
            if let Some(deadline) = crate::call::grpc_deadline(&headers) {
                assert!(deadline >= before, "a deadline in the past");
            }
        }
    }
}

/// One input of the target: its first byte picks the message kind, the rest is the message.
pub fn run(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else { return };
    for c in configs() {
        validate_message(c, kind, bytes);
    }
}
