//! Arbitrary bytes as each protobuf request message (as tonic decodes them), then the validation
//! its handler runs before anything reaches Vault (and the `grpc-timeout` header), and for batches the split into Vault requests
//! (`batch::plan`). Never a panic; every accepted field is one Vault can be sent safely.
//!
//! The handlers' checks live inside private async handlers, so they are restated here in the
//! same order with the same `service::validate` functions (see the report on `pub` items).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::OnceLock;
use vaultgate::{
    batch::{plan, Budget},
    config::Config,
    error::Error,
    pb::vaultgate::v1::*,
    service::validate,
    vault::transit::{b64, BatchItem},
};

/// The default limits, and tiny ones that small inputs can exceed.
fn configs() -> &'static [Config; 2] {
    static CONFIGS: OnceLock<[Config; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let base = "listen = \"127.0.0.1:0\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n";
        let tiny = format!(
            "{base}[batch]\nmax_items = 3\nmax_json_strings = 16\nmax_bytes = 4096\n\
             [limits]\nmax_item_bytes = 64\nmax_batch_items = 8\nmax_message_bytes = 1024\n"
        );
        [Config::parse(base).expect("default config"), Config::parse(&tiny).expect("tiny config")]
    })
}

/// The mount a request names: empty means the configured default, else it must be valid.
fn mount(m: &str) -> Result<(), Error> {
    if m.is_empty() {
        return Ok(());
    }
    validate::mount(m).map_err(|why| Error::bad_field("mount", why))
}

fn payloads(c: &Config, fields: &[(&str, &[u8])]) -> Result<(), Error> {
    fields.iter().try_for_each(|(f, v)| validate::payload(f, v, c.limits.max_item_bytes))
}

fn batch_len(c: &Config, len: usize) -> Result<(), Error> {
    if len == 0 || len > c.limits.max_batch_items {
        return Err(Error::bad_field("items", "count out of range"));
    }
    Ok(())
}

fn opt_b64(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| b64(bytes))
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

/// Every validation error is a caller error with a message, never a panic or another code.
fn expect_invalid(r: Result<(), Error>) {
    if let Err(e) = r {
        assert!(matches!(e, Error::BadField { .. } | Error::InvalidArgument(_)), "validation gave {e:?}");
        let status: tonic::Status = e.into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(!status.message().is_empty());
    }
}

fn validate_message(c: &Config, kind: u8, bytes: &[u8]) {
    let max = c.limits.max_item_bytes;
    match kind % 14 {
        0 => {
            let Ok(r) = EncryptRequest::decode(bytes) else { return };
            expect_invalid(validate::name("key", &r.key).and_then(|()| {
                payloads(
                    c,
                    &[("plaintext", &r.plaintext), ("context", &r.context), ("associated_data", &r.associated_data)],
                )
            }));
        }
        1 => {
            let Ok(r) = DecryptRequest::decode(bytes) else { return };
            let res = validate::name("key", &r.key)
                .and_then(|()| validate::ciphertext("ciphertext", &r.ciphertext, max))
                .and_then(|()| payloads(c, &[("context", &r.context), ("associated_data", &r.associated_data)]));
            if res.is_ok() {
                assert!(validate::ciphertext_version(&r.ciphertext).is_some());
            }
            expect_invalid(res);
        }
        2 => {
            let Ok(r) = EncryptBatchRequest::decode(bytes) else { return };
            let whole = validate::name("key", &r.key).and_then(|()| batch_len(c, r.items.len()));
            if whole.is_err() {
                return expect_invalid(whole);
            }
            let mut valid = Vec::new();
            for (i, it) in r.items.iter().enumerate() {
                let field = |f: &str| format!("items[{i}].{f}");
                let res = payloads(
                    c,
                    &[
                        (&field("plaintext"), &it.plaintext),
                        (&field("context"), &it.context),
                        (&field("associated_data"), &it.associated_data),
                    ],
                );
                match res {
                    Ok(()) => valid.push(BatchItem {
                        plaintext: Some(b64(&it.plaintext)),
                        context: opt_b64(&it.context),
                        associated_data: opt_b64(&it.associated_data),
                        ..Default::default()
                    }),
                    Err(e) => expect_invalid(Err(e)),
                }
            }
            check_plan(c, &valid);
        }
        3 => {
            let Ok(r) = DecryptBatchRequest::decode(bytes) else { return };
            let whole = validate::name("key", &r.key).and_then(|()| batch_len(c, r.items.len()));
            if whole.is_err() {
                return expect_invalid(whole);
            }
            let mut valid = Vec::new();
            for (i, it) in r.items.iter().enumerate() {
                let field = |f: &str| format!("items[{i}].{f}");
                let res = validate::ciphertext(&field("ciphertext"), &it.ciphertext, max).and_then(|()| {
                    payloads(c, &[(&field("context"), &it.context), (&field("associated_data"), &it.associated_data)])
                });
                match res {
                    Ok(()) => valid.push(BatchItem {
                        ciphertext: Some(it.ciphertext.clone()),
                        context: opt_b64(&it.context),
                        associated_data: opt_b64(&it.associated_data),
                        ..Default::default()
                    }),
                    Err(e) => expect_invalid(Err(e)),
                }
            }
            check_plan(c, &valid);
        }
        4 => {
            let Ok(r) = RewrapRequest::decode(bytes) else { return };
            expect_invalid(
                validate::name("key", &r.key)
                    .and_then(|()| validate::ciphertext("ciphertext", &r.ciphertext, max))
                    .and_then(|()| payloads(c, &[("context", &r.context)])),
            );
        }
        5 => {
            let Ok(r) = RotateRequest::decode(bytes) else { return };
            expect_invalid(validate::name("key", &r.key));
        }
        6 => {
            let Ok(r) = GetKeyRequest::decode(bytes) else { return };
            expect_invalid(validate::name("key", &r.key));
        }
        7 => {
            let Ok(r) = GenerateDataKeyRequest::decode(bytes) else { return };
            let res =
                validate::name("key", &r.key).and_then(|()| payloads(c, &[("context", &r.context)])).and_then(|()| {
                    match r.bits {
                        0 | 128 | 256 | 512 => Ok(()),
                        b => Err(Error::bad_field("bits", format!("{b} is not 128, 256 or 512"))),
                    }
                });
            expect_invalid(res);
        }
        8 => {
            let Ok(r) = GetSecretRequest::decode(bytes) else { return };
            expect_invalid(validate::secret_path("path", &r.path, false).and_then(|()| mount(&r.mount)));
        }
        9 => {
            let Ok(r) = ListSecretsRequest::decode(bytes) else { return };
            expect_invalid(validate::secret_path("path", &r.path, true).and_then(|()| mount(&r.mount)));
        }
        10 => {
            let Ok(r) = GetDbCredsRequest::decode(bytes) else { return };
            expect_invalid(validate::name("role", &r.role).and_then(|()| mount(&r.mount)));
        }
        11 => {
            let Ok(r) = RenewLeaseRequest::decode(bytes) else { return };
            let res = validate::lease_id("lease_id", &r.lease_id).and_then(|()| match &r.increment {
                None => Ok(()),
                Some(d) if d.seconds > 0 && d.nanos >= 0 => {
                    // The handler sends `seconds as u64` to Vault.
                    assert!(u64::try_from(d.seconds).is_ok());
                    Ok(())
                }
                Some(_) => Err(Error::bad_field("increment", "must be at least one second")),
            });
            expect_invalid(res);
        }
        12 => {
            let Ok(r) = RevokeLeaseRequest::decode(bytes) else { return };
            expect_invalid(validate::lease_id("lease_id", &r.lease_id));
        }
        // The `grpc-timeout` header every call carries, read by `service::grpc_deadline`.
        _ => {
            let Ok(value) = tonic::metadata::MetadataValue::try_from(bytes) else { return };
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("grpc-timeout", value);
            let before = tokio::time::Instant::now();
            if let Some(deadline) = vaultgate::service::grpc_deadline(&md) {
                assert!(deadline >= before, "a deadline in the past");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    for c in configs() {
        validate_message(c, kind, bytes);
    }
});
