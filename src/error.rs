//! The gateway's error type and the single place that turns any failure into a `tonic::Status`.
//!
//! Invariant: only this file picks a gRPC code. Messages say what to fix and never carry a
//! plaintext, secret value, password, Vault token or JWT: Vault's own error strings are passed
//! through only after [`vault_message`] trims them, and Vault never echoes request bodies.

use crate::vault::VaultError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What an operation was doing when Vault failed, so the mapping can name the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A Transit key by name.
    Key(&'a str),
    /// A KV v2 secret path (or folder).
    Secret(&'a str),
    /// A database role.
    DbRole(&'a str),
    /// A PKI role.
    PkiRole(&'a str),
    /// A PKI mount (CA chain, revocation).
    PkiMount(&'a str),
    /// A lease id.
    Lease(&'a str),
    /// A login to Vault with the caller's credentials.
    Login(&'a str),
    /// The Vault token acting for the caller (lookup-self, capabilities-self).
    Token,
}

/// Every failure a request can meet; each variant is one row of the contract's error table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Missing, malformed, expired or refused caller credentials.
    Unauthenticated(String),
    /// A gateway rule forbids this caller the operation.
    PermissionDenied(String),
    /// Vault answered 403: its policy forbids it, or the token is gone (the gateway checks which).
    VaultDenied(String),
    /// The request itself is wrong: empty names, malformed ciphertext, wrong context, too large.
    InvalidArgument(String),
    /// One named request field is wrong; carries a `google.rpc.BadRequest` field violation.
    BadField {
        /// The field's path, e.g. `items[3].plaintext`.
        field: String,
        /// What is wrong and what a valid value looks like.
        why: String,
    },
    /// The key, secret, version, role or lease does not exist.
    NotFound(String),
    /// Queue full, rate limit, or Vault's rate limit.
    ResourceExhausted(String),
    /// Vault is unreachable, sealed or failing.
    Unavailable(String),
    /// The caller's deadline passed before an answer.
    DeadlineExceeded(String),
    /// A bug or an answer from Vault the gateway does not understand; details go to the log only.
    Internal(String),
}

impl Error {
    /// Vault unreachable, sealed, too slow or rate-limiting: worth another try later (what the
    /// gateway's own background work, the watch streams, tries again; not a caller's mistake).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::ResourceExhausted(_) | Error::DeadlineExceeded(_))
    }

    /// A wrong request field.
    pub fn bad_field(field: impl Into<String>, why: impl Into<String>) -> Error {
        Error::BadField { field: field.into(), why: why.into() }
    }

    /// The same error for a field of item `index` of a batch request (`items[3].plaintext`); built
    /// only on failure, so valid items cost no allocation.
    pub fn in_item(self, index: Option<usize>) -> Error {
        match (self, index) {
            (Error::BadField { field, why }, Some(i)) => Error::BadField { field: format!("items[{i}].{field}"), why },
            (other, _) => other,
        }
    }

    /// A request message that does not decode as protobuf: the caller's encoding is wrong.
    /// prost's error names the message and field (`EncryptRequest.key: invalid string value`)
    /// and never holds the bytes themselves.
    pub fn undecodable(err: &prost::DecodeError) -> Error {
        let detail = err.to_string();
        let detail = detail.strip_prefix("failed to decode Protobuf message: ").unwrap_or(&detail);
        Error::InvalidArgument(format!(
            "the request is not a valid protobuf message for this RPC ({detail}); fix the client's encoding"
        ))
    }

    /// Turns a Vault failure into the caller-facing error, naming what was being accessed.
    pub fn from_vault(err: VaultError, subject: Subject<'_>) -> Error {
        match err {
            VaultError::Transport(detail) | VaultError::Connect(detail) => {
                tracing::warn!(%detail, "vault unreachable");
                Error::Unavailable("Vault is unreachable; retry with backoff".into())
            }
            VaultError::AllNodesFailing(message) => Error::Unavailable(message),
            VaultError::Timeout => Error::Unavailable("Vault did not answer in time; retry with backoff".into()),
            VaultError::Decode(detail) => {
                tracing::error!(%detail, "unexpected answer from vault");
                Error::Internal("unexpected answer from Vault (see the gateway log)".into())
            }
            VaultError::Api { status, errors } => from_vault_status(status, &vault_message(&errors), subject),
        }
    }

    /// Turns a failure of a PKI call into the caller-facing error. Vault refuses names its PKI role
    /// does not allow with 400 and a sentence naming the kind of name [V: OpenBao 2.7.2]; those
    /// become `INVALID_ARGUMENT` naming the request field. A private key that does not match the
    /// certificate to revoke is a failed proof of possession (`PERMISSION_DENIED`), whatever the
    /// status (OpenBao answers it with 500 [V]).
    pub fn from_pki(err: VaultError, subject: Subject<'_>) -> Error {
        let VaultError::Api { status: status @ (400 | 500), errors } = &err else {
            return Error::from_vault(err, subject);
        };
        let msg = vault_message(errors);
        let what = describe(subject);
        if msg.contains("does not match certificate") {
            return Error::PermissionDenied(
                "the private_key does not belong to this certificate: proof of possession failed, nothing was revoked"
                    .into(),
            );
        }
        if *status == 500 {
            return Error::from_vault(err, subject);
        }
        let lower = msg.to_ascii_lowercase();
        let field = if lower.contains("common name") || lower.contains("common_name") {
            Some("common_name")
        } else if lower.contains("ip subject alternative name")
            || lower.contains("ip address")
            || lower.contains("ip san")
        {
            Some("ip_sans")
        } else if lower.contains("subject alternate name") || lower.contains("alt_names") {
            Some("alt_names")
        } else if lower.contains("\"ttl\"") || lower.contains("ttl ") {
            Some("ttl")
        } else if lower.contains("csr") || lower.contains("certificate request") {
            Some("csr")
        } else if lower.contains("private_key") || lower.contains("private key") {
            Some("private_key")
        } else {
            None
        };
        if lower.contains("certificate with serial") && lower.contains("not found") {
            return Error::NotFound(format!("no certificate with this serial_number in {what}"));
        }
        match field {
            Some(field) => Error::bad_field(field, format!("{what} refused it: {msg}")),
            None => from_vault_status(400, &msg, subject),
        }
    }

    /// Maps one failed Transit batch item's error string (Vault answers per item, not per request).
    pub fn from_transit_item(message: &str, key: &str) -> Error {
        from_vault_status(400, &vault_message(&[message.to_string()]), Subject::Key(key))
    }
}

fn from_vault_status(status: u16, msg: &str, subject: Subject<'_>) -> Error {
    let what = describe(subject);
    if let Subject::Login(role) = subject {
        return match status {
            400 | 401 | 403 => {
                Error::Unauthenticated(format!("Vault refused the caller's credentials for role {role:?}: {msg}"))
            }
            _ => from_vault_status(status, msg, Subject::Key(role)),
        };
    }
    match status {
        403 => Error::VaultDenied(format!("Vault's policy denies this caller access to {what}")),
        404 => Error::NotFound(format!("{what} does not exist")),
        429 => Error::ResourceExhausted(format!("Vault is rate limiting requests: {msg}")),
        413 => Error::InvalidArgument(format!("request too large for Vault: {msg}")),
        503 if msg.contains("sealed") => Error::Unavailable("Vault is sealed; an operator must unseal it".into()),
        500..=599 => Error::Unavailable(format!("Vault failed ({status}): {msg}")),
        400 => classify_bad_request(msg, &what),
        _ => Error::Internal(format!("Vault answered HTTP {status} for {what}: {msg}")),
    }
}

/// Vault answers most user errors with HTTP 400; the message tells which row of the table it is.
fn classify_bad_request(msg: &str, what: &str) -> Error {
    let not_found = ["encryption key not found", "key not found", "unknown role", "lease not found", "invalid lease"];
    if not_found.iter().any(|s| msg.contains(s)) {
        return Error::NotFound(format!("{what} does not exist ({msg})"));
    }
    if msg.contains("message authentication failed") {
        return Error::InvalidArgument(format!(
            "decryption of {what} failed: wrong context or associated_data, or the ciphertext was altered"
        ));
    }
    if msg.contains("non-AEAD cipher suite") {
        return Error::InvalidArgument(format!(
            "{what} is not an AEAD key type, so it takes no associated_data (a caller rule with bind_identity \
             sends it on every encryption: use an aes128-gcm96, aes256-gcm96, chacha20-poly1305 or \
             xchacha20-poly1305 key): {msg}"
        ));
    }
    if msg.contains("permission denied") {
        return Error::PermissionDenied(format!("Vault's policy denies this caller access to {what}"));
    }
    Error::InvalidArgument(format!("Vault rejected the request for {what}: {msg}"))
}

fn describe(subject: Subject<'_>) -> String {
    match subject {
        Subject::Key(k) => format!("Transit key {k:?}"),
        Subject::Secret(p) => format!("secret {p:?}"),
        Subject::DbRole(r) => format!("database role {r:?}"),
        Subject::PkiRole(r) => format!("PKI role {r:?}"),
        Subject::PkiMount(m) => format!("PKI mount {m:?}"),
        Subject::Lease(l) => format!("lease {l:?}"),
        Subject::Login(r) => format!("login role {r:?}"),
        Subject::Token => "the Vault token acting for the caller".into(),
    }
}

/// Longest Vault message passed to a caller; Vault's messages are short, this bounds surprises.
const MAX_VAULT_MESSAGE: usize = 300;

/// Joins Vault's error strings into one line, bounded in length.
pub fn vault_message(errors: &[String]) -> String {
    let joined = errors
        .iter()
        .map(|e| e.replace("1 error occurred:", "").replace(['\n', '\t', '*'], " "))
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut out: String = joined.chars().take(MAX_VAULT_MESSAGE).collect();
    if out.is_empty() {
        out.push_str("no detail given");
    }
    out
}

/// How long a caller should wait before retrying a transient failure (`google.rpc.RetryInfo`).
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A transient failure: `google.rpc.RetryInfo` for clients that read it, and the same delay as
/// `grpc-retry-pushback-ms` (gRFC A6), which the built-in retry policy of gRPC clients honours
/// (`proto/vaultgate/v1/service_config.json` retries these two codes).
fn retry_later(code: Code, message: String) -> Status {
    let mut status = Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(RETRY_AFTER)));
    let pushback = tonic::metadata::MetadataValue::from(RETRY_AFTER.as_millis() as u64);
    status.metadata_mut().insert(RETRY_PUSHBACK, pushback);
    status
}

/// Trailer of gRPC's retry pushback (gRFC A6): milliseconds a client's retry policy waits.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let (code, msg) = match err {
            Error::BadField { field, why } => {
                let msg = format!("{field}: {why}");
                return Status::with_error_details(
                    Code::InvalidArgument,
                    msg,
                    ErrorDetails::with_bad_request_violation(field, why),
                );
            }
            Error::ResourceExhausted(m) => return retry_later(Code::ResourceExhausted, m),
            Error::Unavailable(m) => return retry_later(Code::Unavailable, m),
            Error::Unauthenticated(m) => (Code::Unauthenticated, m),
            Error::PermissionDenied(m) | Error::VaultDenied(m) => (Code::PermissionDenied, m),
            Error::InvalidArgument(m) => (Code::InvalidArgument, m),
            Error::NotFound(m) => (Code::NotFound, m),
            Error::DeadlineExceeded(m) => (Code::DeadlineExceeded, m),
            Error::Internal(m) => {
                tracing::error!(detail = %m, "internal error");
                (Code::Internal, "internal error in the gateway; see its log".to_string())
            }
        };
        Status::new(code, msg)
    }
}

/// tonic refuses a request message over `limits.max_message_bytes` with `OUT_OF_RANGE` before
/// any handler runs; the contract makes a payload over a configured limit `INVALID_ARGUMENT`. The
/// server's outermost layer passes every answer through here; the gateway itself never answers
/// `OUT_OF_RANGE` (and its answers have no size limit), so only that refusal is rewritten.
pub fn transport_answer<B: Default>(answer: tonic::codegen::http::Response<B>) -> tonic::codegen::http::Response<B> {
    match Status::from_header_map(answer.headers()) {
        Some(status) if status.code() == Code::OutOfRange => Status::from(Error::InvalidArgument(format!(
            "the request message is over limits.max_message_bytes; send less per call ({})",
            status.message()
        )))
        .into_http(),
        _ => answer,
    }
}

impl From<&Error> for crate::pb::google::rpc::Status {
    /// The per-item status of a batch result, with the same details as a whole-call status.
    fn from(err: &Error) -> Self {
        let status = Status::from(err.clone());
        // A status with details carries them as an encoded google.rpc.Status.
        match <crate::pb::google::rpc::Status as prost::Message>::decode(status.details()) {
            Ok(decoded) if !status.details().is_empty() => decoded,
            _ => crate::pb::google::rpc::Status {
                code: status.code() as i32,
                message: status.message().to_string(),
                details: vec![],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, msg: &str) -> VaultError {
        VaultError::Api { status, errors: vec![msg.to_string()] }
    }

    #[test]
    fn vault_answers_map_to_contract_codes() {
        let cases: &[(VaultError, Subject, Code)] = &[
            (api(403, "1 error occurred:\n\t* permission denied\n\n"), Subject::Key("k"), Code::PermissionDenied),
            (api(404, ""), Subject::Secret("a/b"), Code::NotFound),
            (api(400, "encryption key not found"), Subject::Key("k"), Code::NotFound),
            (api(400, "unknown role: x"), Subject::DbRole("x"), Code::NotFound),
            (api(400, "lease not found"), Subject::Lease("l"), Code::NotFound),
            (api(400, "invalid ciphertext: no prefix"), Subject::Key("k"), Code::InvalidArgument),
            (api(400, "cipher: message authentication failed"), Subject::Key("k"), Code::InvalidArgument),
            // Verbatim OpenBao 2.7.2: associated data (bind_identity) sent for an rsa key.
            (
                api(400, "'associated_data' provided for non-AEAD cipher suite rsa-2048"),
                Subject::Key("k"),
                Code::InvalidArgument,
            ),
            (
                api(400, "error validating token: invalid audience (aud) claim"),
                Subject::Login("r"),
                Code::Unauthenticated,
            ),
            (api(403, "permission denied"), Subject::Login("r"), Code::Unauthenticated),
            (api(429, "rate limit quota exceeded"), Subject::Key("k"), Code::ResourceExhausted),
            (api(503, "Vault is sealed"), Subject::Key("k"), Code::Unavailable),
            (api(500, "internal error"), Subject::Key("k"), Code::Unavailable),
            (api(413, "http: request body too large"), Subject::Key("k"), Code::InvalidArgument),
            (VaultError::Timeout, Subject::Key("k"), Code::Unavailable),
            (VaultError::Transport("connection refused".into()), Subject::Key("k"), Code::Unavailable),
            (VaultError::Connect("connection refused".into()), Subject::Key("k"), Code::Unavailable),
            (
                VaultError::AllNodesFailing("Vault is sealed (all 1 node sealed)".into()),
                Subject::Key("k"),
                Code::Unavailable,
            ),
            (api(500, "local node not active but active cluster node not found"), Subject::Key("k"), Code::Unavailable),
            (VaultError::Decode("bad json".into()), Subject::Key("k"), Code::Internal),
        ];
        for (err, subject, code) in cases {
            let status = Status::from(Error::from_vault(err.clone(), *subject));
            assert_eq!(status.code(), *code, "{err:?} -> {status:?}");
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn pki_refusals_name_the_field() {
        let role = Subject::PkiRole("billing");
        let cases: &[(VaultError, Result<&str, Code>)] = &[
            // Verbatim OpenBao 2.7.2 answers.
            (api(400, "common name api.reports.svc.cluster.local not allowed by this role"), Ok("common_name")),
            (api(400, "subject alternate name x.reports.svc.cluster.local not allowed by this role"), Ok("alt_names")),
            (
                api(400, "IP Subject Alternative Names are not allowed in this role, but was provided via the API"),
                Ok("ip_sans"),
            ),
            (
                api(400, "the common_name field is required, or must be provided in a CSR with \"use_csr_common_name\" set to true, unless \"require_cn\" is set to false"),
                Ok("common_name"),
            ),
            (api(400, "the IP address \"10.0.0.1\" is not allowed in this role"), Ok("ip_sans")),
            (api(400, "csr contains no data"), Ok("csr")),
            (
                api(400, "Provided data for private_key was too short; perhaps a path was passed to the API rather than the contents of a PEM file?"),
                Ok("private_key"),
            ),
            (
                api(500, "1 error occurred:\n\t* provided private key does not match certificate's public key\n\n"),
                Err(Code::PermissionDenied),
            ),
            (api(400, "certificate with serial 00:11:22 not found."), Err(Code::NotFound)),
            (api(400, "unknown role: nope"), Err(Code::NotFound)),
            (api(403, "1 error occurred:\n\t* permission denied\n\n"), Err(Code::PermissionDenied)),
            (api(500, "internal error"), Err(Code::Unavailable)),
            (VaultError::Timeout, Err(Code::Unavailable)),
        ];
        for (err, want) in cases {
            let got = Error::from_pki(err.clone(), role);
            match want {
                Ok(field) => {
                    assert!(matches!(&got, Error::BadField { field: f, .. } if f == field), "{err:?} -> {got:?}")
                }
                Err(code) => assert_eq!(Status::from(got.clone()).code(), *code, "{err:?} -> {got:?}"),
            }
        }
    }

    #[test]
    fn vault_message_is_one_bounded_line() {
        let long = "x".repeat(10_000);
        assert_eq!(vault_message(&[long]).len(), MAX_VAULT_MESSAGE);
        assert_eq!(vault_message(&["1 error occurred:\n\t* permission denied\n\n".into()]), "permission denied");
        assert_eq!(vault_message(&[]), "no detail given");
    }

    #[test]
    fn rich_details_name_the_field_and_the_retry() {
        let status = Status::from(Error::bad_field("items[2].plaintext", "is too large"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "items[2].plaintext: is too large");
        let bad = status.get_details_bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, "items[2].plaintext");
        let status = Status::from(Error::Unavailable("Vault is sealed".into()));
        assert_eq!(status.get_details_retry_info().and_then(|r| r.retry_delay), Some(RETRY_AFTER));
        for status in [status, Status::from(Error::ResourceExhausted("rate limit".into()))] {
            let pushback = status.metadata().get(RETRY_PUSHBACK).and_then(|v| v.to_str().ok());
            assert_eq!(pushback, Some("1000"), "{:?}", status.code());
        }
        assert!(Status::from(Error::NotFound("gone".into())).metadata().get(RETRY_PUSHBACK).is_none());
        let item = crate::pb::google::rpc::Status::from(&Error::bad_field("items[0].ciphertext", "is empty"));
        assert_eq!((item.code, item.message.as_str(), item.details.len()), (3, "items[0].ciphertext: is empty", 1));
        let moved = Error::bad_field("plaintext", "is too large").in_item(Some(3));
        assert_eq!(moved, Error::bad_field("items[3].plaintext", "is too large"));
        assert_eq!(Error::bad_field("key", "x").in_item(None), Error::bad_field("key", "x"));
        let plain = crate::pb::google::rpc::Status::from(&Error::NotFound("gone".into()));
        assert_eq!((plain.code, plain.details.len()), (5, 0));
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let status = Status::from(Error::Internal("detail that callers must not see".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("detail"));
    }
}
