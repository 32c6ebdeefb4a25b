//! What one call is before its request is decoded: the description of its RPC (found from the
//! HTTP/2 path alone) and the per-call context that the layers (`layers.rs`) build from the
//! headers and the connection, put in the request's extensions, and read back when the answer
//! is ready. The handler side fills in who the caller is and what the call acted on.
//!
//! Invariants: nothing here comes from the request body. The RPC's name is a fixed label (from
//! the table, never from the path the caller sent); the request id is the caller's only when it
//! is short and plain; the audit target is a name that passed its kind's validation, else empty.

use crate::{
    audit::Target,
    pb::vaultgate::v1::*,
    service::{validate, Described},
};
use sha2::Digest;
use std::{
    fmt::Write,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};
use tokio::time::Instant;
use tonic::codegen::http::HeaderMap;

/// What an RPC acts on: the kind of name its audit target is, validated as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// A Transit key name.
    Key,
    /// A KV secret path (or folder).
    Secret,
    /// A database role name.
    DbRole,
    /// A lease id.
    Lease,
    /// A PKI role name.
    PkiRole,
    /// A certificate serial number (RevokeCertificate; "" when the certificate itself was sent).
    Serial,
    /// An engine mount ("" = the configured default).
    Mount,
    /// Several names (WhoAmI): the audit line records only how many.
    Names,
}

impl ResourceKind {
    /// `raw` when it is a valid name of this kind (and so bounded in length), else "".
    pub fn audit_name(self, raw: &str) -> &str {
        let valid = match self {
            ResourceKind::Key | ResourceKind::DbRole => validate::name("", raw).is_ok(),
            ResourceKind::Secret => validate::secret_path("", raw, true).is_ok(),
            ResourceKind::Lease => validate::lease_id("", raw).is_ok(),
            ResourceKind::PkiRole => validate::name("", raw).is_ok(),
            ResourceKind::Serial => validate::serial_number("", raw).is_ok(),
            ResourceKind::Mount => validate::mount(raw).is_ok(),
            ResourceKind::Names => false,
        };
        if valid {
            raw
        } else {
            ""
        }
    }
}

/// The description of one RPC: all the layers know of it.
#[derive(Debug)]
pub struct Rpc {
    /// The HTTP/2 path, `/vaultgate.v1.EncryptionService/Encrypt`.
    pub path: &'static str,
    /// The method name: the metric label and the audit line's `rpc`.
    pub name: &'static str,
    /// What it acts on.
    pub kind: ResourceKind,
    /// A server-streaming RPC (`stream.rs`): the layers see its answer's head when the stream
    /// opens, and its code when it ends.
    pub streaming: bool,
}

/// Every RPC of the vaultgate services (each described next to its handler by [`Described`]).
/// Calls to other paths (health, reflection, unknown) pass the layers untouched.
pub const RPCS: &[&Rpc] = &[
    EncryptRequest::RPC,
    DecryptRequest::RPC,
    EncryptBatchRequest::RPC,
    DecryptBatchRequest::RPC,
    RewrapRequest::RPC,
    RewrapBatchRequest::RPC,
    WatchKeyRequest::RPC,
    RotateRequest::RPC,
    GetKeyRequest::RPC,
    GenerateDataKeyRequest::RPC,
    GetSecretRequest::RPC,
    ListSecretsRequest::RPC,
    WatchSecretRequest::RPC,
    GetDbCredsRequest::RPC,
    RenewLeaseRequest::RPC,
    RevokeLeaseRequest::RPC,
    WatchDbCredsRequest::RPC,
    WhoAmIRequest::RPC,
    SignRequest::RPC,
    VerifyRequest::RPC,
    HmacRequest::RPC,
    VerifyHmacRequest::RPC,
    IssueCertificateRequest::RPC,
    SignCertificateRequest::RPC,
    RevokeCertificateRequest::RPC,
    GetCaChainRequest::RPC,
];

/// The RPC served at `path`, if it is one of ours.
pub fn describe(path: &str) -> Option<&'static Rpc> {
    RPCS.iter().copied().find(|rpc| rpc.path == path)
}

/// The per-call context: made by the outermost layer, read by every layer and by the handler.
#[derive(Debug)]
pub struct Call {
    /// Which RPC.
    pub rpc: &'static Rpc,
    /// The request id (the caller's when sane, else made here); on every log line and answer.
    pub request_id: String,
    /// The peer's address (TCP), for per-peer limits.
    pub peer: Option<SocketAddr>,
    /// The caller's deadline from `grpc-timeout`, slightly early.
    pub deadline: Option<Instant>,
    /// When the first layer saw the call.
    pub started: Instant,
    who: OnceLock<(Arc<str>, Arc<str>)>,
    target: OnceLock<Target>,
}

impl Call {
    /// The context of a call to `rpc` from `peer` with these headers.
    pub fn new(rpc: &'static Rpc, headers: &HeaderMap, peer: Option<SocketAddr>) -> Call {
        Call {
            rpc,
            request_id: request_id(headers),
            peer,
            deadline: grpc_deadline(headers),
            started: Instant::now(),
            who: OnceLock::new(),
            target: OnceLock::new(),
        }
    }

    /// Records the authenticated caller and its role (once; later calls are ignored).
    pub fn identified(&self, caller: Arc<str>, role: Arc<str>) {
        let _ = self.who.set((caller, role));
    }

    /// The caller and role, once authenticated.
    pub fn who(&self) -> Option<(&str, &str)> {
        self.who.get().map(|(c, r)| (&**c, &**r))
    }

    /// The caller's role, once authenticated (shared, for a metric label).
    pub fn role(&self) -> Option<&Arc<str>> {
        self.who.get().map(|(_, role)| role)
    }

    /// Records what the call acts on: `name` only if it is a valid name of the RPC's kind.
    pub fn aimed_at(&self, name: &str, items: usize) {
        let _ = self.target.set(Target::new(self.rpc.kind.audit_name(name), items));
    }

    /// What the call acts on, once the handler read the request.
    pub fn target(&self) -> Option<&Target> {
        self.target.get()
    }
}

/// Metadata key of the request id: taken from the caller when it sends a sane one, else made
/// here; it is on every log line of the call and returned in the response (or error) metadata.
pub const REQUEST_ID: &str = "x-request-id";

fn request_id(headers: &HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: OnceLock<String> = OnceLock::new();
    if let Some(given) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        if (1..=64).contains(&given.len()) && given.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return given.to_string();
        }
    }
    let prefix = PREFIX.get_or_init(|| {
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        sha2::Sha256::digest(seed.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect()
    });
    // Sized once: `format!` would allocate and then grow.
    let mut id = String::with_capacity(prefix.len() + 1 + 16);
    let _ = write!(id, "{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed));
    id
}

/// The caller's deadline from the `grpc-timeout` header, slightly early so that the answer is
/// ours (DEADLINE_EXCEEDED) rather than the transport's cancellation.
pub fn grpc_deadline(headers: &HeaderMap) -> Option<Instant> {
    let raw = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    // The gRPC spec allows at most 8 digits; anything else is ignored (no deadline).
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let early = timeout.saturating_sub(timeout / 50 + Duration::from_millis(1));
    Instant::now().checked_add(early)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1S", Some(Duration::from_secs(1))),
            ("250m", Some(Duration::from_millis(250))),
            ("2M", Some(Duration::from_secs(120))),
            ("1m", Some(Duration::ZERO)),
            ("", None),
            ("10x", None),
            ("abcS", None),
            ("10000000000000000000S", None),
            ("9999999999999999H", None),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("+5S", None),
        ];
        for (raw, want) in cases {
            let mut headers = HeaderMap::new();
            if !raw.is_empty() {
                headers.insert("grpc-timeout", raw.parse().unwrap());
            }
            // The deadline is `now + timeout` less the 2 % + 1 ms answered early, for a `now`
            // read inside the call: between the instants read before and after it, however long
            // the machine took in between (no window to guess).
            let before = Instant::now();
            let got = grpc_deadline(&headers);
            let after = Instant::now();
            match (got, want) {
                (None, None) => {}
                (Some(d), Some(w)) => {
                    let early = w.saturating_sub(*w / 50 + Duration::from_millis(1));
                    assert!(d >= before + early && d <= after + early, "{raw}: {:?} after", d - before);
                }
                _ => panic!("{raw}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn request_ids_are_the_callers_only_when_plain() {
        let id = |given: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(g) = given {
                headers.insert(REQUEST_ID, g.parse().unwrap());
            }
            request_id(&headers)
        };
        assert_eq!(id(Some("trace-abc_123")), "trace-abc_123");
        for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
            let made = id(Some(bad));
            assert_ne!(made, bad);
            assert!(made.len() <= 26 && made.contains('-'), "{made}");
        }
        assert_ne!(id(None), id(None), "made ids are unique");
    }

    #[test]
    fn every_rpc_of_the_proto_is_described_once() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::server::FILE_DESCRIPTOR_SET).unwrap();
        let mut paths: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "vaultgate.v1")
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .flat_map(|(pkg, s)| s.method.iter().map(move |m| format!("/{pkg}.{}/{}", s.name(), m.name())))
            .collect();
        paths.sort();
        let mut described: Vec<String> = RPCS.iter().map(|r| r.path.to_string()).collect();
        described.sort();
        assert_eq!(paths, described, "every RPC needs a `Described` request (call::RPCS)");
        for rpc in RPCS {
            assert!(rpc.path.ends_with(&format!("/{}", rpc.name)), "{rpc:?}");
        }
    }

    #[test]
    fn audit_targets_are_valid_names_or_empty() {
        let long = "k".repeat(300);
        let cases: &[(ResourceKind, &str, &str)] = &[
            (ResourceKind::Key, "billing", "billing"),
            (ResourceKind::Key, &long, ""),
            (ResourceKind::Key, "a/b", ""),
            (ResourceKind::DbRole, "readonly", "readonly"),
            (ResourceKind::Secret, "billing/api-keys", "billing/api-keys"),
            (ResourceKind::Secret, "billing/", "billing/"),
            (ResourceKind::Secret, "../etc", ""),
            (ResourceKind::Lease, "database/creds/billing/abc", "database/creds/billing/abc"),
            (ResourceKind::Names, "anything", ""),
        ];
        for (kind, raw, want) in cases {
            assert_eq!(kind.audit_name(raw), *want, "{kind:?} {raw:?}");
        }
    }
}
