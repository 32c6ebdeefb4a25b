//! Vault answers into the client's types: `vault::decode::<T>` for every response type the client
//! decodes, under each HTTP status it meets, plus `vault::api_error`, then what the gateway does
//! next with the result (error mapping, base64, ciphertext versions, KV timestamps, redaction).
//! Never a panic; failures are `VaultError::Api` exactly when the status is not a success. The
//! types decoded are the client's own (never copies that could drift from them).

use crate::{
    error::{vault_message, Error, Subject},
    service::validate,
    vault::{
        api_error,
        auth::AuthInfo,
        database::{Credentials, LeaseInfo},
        decode,
        kv::{Keys, Secret},
        sys::HealthBody,
        transit::{self, BatchData},
        Envelope, VaultError,
    },
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

/// Statuses the client meets: success, Transit's 400-with-results and 207, policy, missing, rate
/// limit, failure, sealed/standby.
const STATUSES: [u16; 9] = [200, 204, 207, 400, 403, 404, 429, 500, 503];

const SUBJECTS: [Subject<'static>; 5] = [
    Subject::Key("billing"),
    Subject::Secret("team/db"),
    Subject::DbRole("readonly"),
    Subject::Lease("database/creds/readonly/abc"),
    Subject::Login("billing"),
];

/// What every caller-facing error must satisfy: a failure code, as a call status and as a
/// batch item's status. Login answers have their own mapping: always checked.
fn check_error(err: VaultError, subject: Subject<'_>) {
    for subject in [subject, Subject::Login("billing")] {
        let e = Error::from_vault(err.clone(), subject);
        let item: crate::pb::google::rpc::Status = (&e).into();
        assert_ne!(item.code, 0, "a failure mapped to OK: {err:?}");
        let status: tonic::Status = e.into();
        assert_ne!(status.code(), tonic::Code::Ok);
    }
}

/// `decode::<T>` under one status, and the invariants shared by every type.
fn decode_as<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Option<Envelope<T>> {
    match decode::<T>(status, body) {
        Ok(env) => {
            assert!(status.is_success(), "HTTP {status} decoded as a success");
            Some(env)
        }
        Err(err) => {
            match &err {
                VaultError::Api { status: s, .. } => {
                    assert!(!status.is_success(), "HTTP {status} became an API error");
                    assert_eq!(*s, status.as_u16());
                    assert_eq!(err, api_error(status, body), "decode and api_error disagree");
                }
                VaultError::Decode(m) => assert!(status.is_success() && !m.is_empty()),
                other => panic!("decode produced {other:?}"),
            }
            check_error(err, SUBJECTS[body.len() % SUBJECTS.len()]);
            None
        }
    }
}

/// Tokens and passwords never reach a `Debug` rendering (the logs' only path): changing the
/// secret does not change the rendering.
fn check_auth(env: &Envelope<serde_json::Value>) {
    if let Some(auth) = &env.auth {
        let other = AuthInfo { client_token: format!("{}x", auth.client_token), ..auth.clone() };
        assert_eq!(format!("{auth:?}"), format!("{other:?}"), "client_token visible in Debug");
    }
}

fn check_credentials(c: &Credentials) {
    let other = Credentials { password: format!("{}x", c.password), ..c.clone() };
    assert_eq!(format!("{c:?}"), format!("{other:?}"), "password visible in Debug");
}

fn kv_timestamp(rfc3339: &str) {
    // `service::secret::to_timestamp` (private): the same steps.
    if let Ok(t) = humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z')) {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            let _ = (i64::try_from(d.as_secs()), i32::try_from(d.subsec_nanos()));
        }
    }
}

fn batch_result(r: &transit::BatchResult) {
    if let Some(msg) = &r.error {
        let e = Error::from_transit_item(msg, "billing");
        let item: crate::pb::google::rpc::Status = (&e).into();
        assert_ne!(item.code, 0);
    }
    if let Some(ct) = &r.ciphertext {
        let _ = validate::ciphertext_version(ct);
    }
    if let Some(pt) = &r.plaintext {
        let _ = transit::unb64(pt);
    }
}

/// One input of the target (what `fuzz_target!` runs).
pub fn run(body: &[u8]) {
    // vault_message: one line, bounded, never empty.
    if let Ok(errors) = serde_json::from_slice::<Vec<String>>(body) {
        let m = vault_message(&errors);
        assert!(!m.is_empty() && m.chars().count() <= 300 && !m.contains('\n'), "vault_message {m:?}");
    }

    for code in STATUSES {
        // STATUSES is a constant list of codes in 100..=999, which from_u16 always accepts.
        let status = StatusCode::from_u16(code).unwrap();
        let err = api_error(status, body);
        assert!(matches!(&err, VaultError::Api { status: s, .. } if *s == code));
        if matches!(code, 200 | 207 | 400) {
            // transit_batch reads `batch_results` under these statuses itself (OpenBao answers a
            // batch with failed items with 400 and a full body), else it is an API error.
            match serde_json::from_slice::<Envelope<BatchData>>(body) {
                Ok(Envelope { data: Some(d), .. }) => d.batch_results.iter().for_each(batch_result),
                _ => check_error(err.clone(), Subject::Key("billing")),
            }
        }
        if !status.is_success() {
            // Every type decodes a failure the same way (decode_as checks it equals api_error).
            let _ = decode_as::<serde_json::Value>(status, body);
            continue;
        }

        // Transit single encrypt/decrypt.
        if let Some(Envelope { data: Some(r), .. }) = decode_as::<transit::BatchResult>(status, body) {
            batch_result(&r);
        }
        // Rewrap and datakey.
        if let Some(Envelope { data: Some(c), .. }) = decode_as::<transit::Ciphertext>(status, body) {
            let _ = validate::ciphertext_version(&c.ciphertext);
            if let Some(p) = &c.plaintext {
                let _ = transit::unb64(p);
            }
        }
        // Key read and rotate.
        let _ = decode_as::<transit::KeyInfo>(status, body);
        // KV v2 read: a version without data is "deleted or destroyed".
        if let Some(Envelope { data: Some(secret), .. }) = decode_as::<Secret>(status, body) {
            kv_timestamp(&secret.metadata.created_time);
        }
        // KV v2 list.
        let _ = decode_as::<Keys>(status, body);
        // Database credentials: the password is never in a Debug rendering.
        if let Some(Envelope { data: Some(c), .. }) = decode_as::<Credentials>(status, body) {
            check_credentials(&c);
        }
        // Logins, renew-self, lease renew: the auth block.
        if let Some(env) = decode_as::<serde_json::Value>(status, body) {
            check_auth(&env);
        }
        // Lease lookup.
        let _ = decode_as::<LeaseInfo>(status, body);
    }
    // sys/health reads the body under any status.
    let _ = serde_json::from_slice::<HealthBody>(body);
}

#[cfg(test)]
mod tests {
    //! An oracle from outside: answers of the real OpenBao 2.7 (`bao server -dev`, captured with
    //! curl into `fuzz/corpus/vault_json/openbao-*.json`, token values replaced) decode into the
    //! client's own types with the values OpenBao sent. A type that drifted from OpenBao's JSON
    //! fails here, where the fuzz target alone would only see "no panic".
    use super::*;

    fn answer(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("fuzz/corpus/vault_json/openbao-{name}.json"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn data<T: DeserializeOwned>(status: u16, name: &str) -> T {
        let status = StatusCode::from_u16(status).unwrap();
        decode::<T>(status, &answer(name)).unwrap_or_else(|e| panic!("{name}: {e:?}")).data.expect("data")
    }

    #[test]
    fn real_openbao_answers_decode_into_the_clients_types() {
        // A Transit batch with one failed item: OpenBao answers 400 with the full body.
        let batch: Envelope<BatchData> = serde_json::from_slice(&answer("batch400")).unwrap();
        let results = batch.data.expect("batch data").batch_results;
        assert_eq!(results.len(), 2);
        assert_eq!((results[0].plaintext.as_deref(), results[0].error.as_deref()), (Some("aGVsbG8="), None));
        assert_eq!(results[1].error.as_deref(), Some("invalid ciphertext length"));
        assert!(matches!(api_error(StatusCode::BAD_REQUEST, &answer("batch400")), VaultError::Api { status: 400, .. }));

        let secret: Secret = data(200, "kv-read");
        assert_eq!(secret.metadata.version, 1);
        assert!(secret.data.is_some_and(|d| d.contains_key("password")));
        assert!(humantime::parse_rfc3339_weak(secret.metadata.created_time.trim_end_matches('Z')).is_ok());

        let keys: Keys = data(200, "kv-list");
        assert_eq!(keys.keys, ["db"]);

        let health: HealthBody = serde_json::from_slice(&answer("health")).unwrap();
        assert!(health.initialized && !health.sealed && !health.standby);

        let key: transit::KeyInfo = data(200, "key-read");
        assert_eq!((key.key_type.as_str(), key.latest_version, key.min_decryption_version), ("aes256-gcm96", 1, 1));

        let datakey: transit::Ciphertext = data(200, "datakey");
        assert_eq!(validate::ciphertext_version(&datakey.ciphertext), Some(1));
        assert_eq!(datakey.plaintext.as_deref().and_then(|p| transit::unb64(p).ok()).map(|k| k.len()), Some(32));

        let login = decode::<serde_json::Value>(StatusCode::OK, &answer("login")).unwrap();
        let auth = login.auth.expect("auth block");
        assert!(auth.client_token.starts_with("s.") && auth.policies == ["default"]);
        check_auth(&decode::<serde_json::Value>(StatusCode::OK, &answer("login")).unwrap());
    }
}
