//! Local verification of callers' JWTs, before any Vault login: the signature against the keys of
//! the caller rule's issuer (`[issuers.<name>]`: PEM public keys, a JWKS file, or a JWKS URL fetched
//! and cached), then `iss`, `aud` (when configured), `exp` (required) and `nbf`, with a small leeway.
//! The checks themselves are the `jsonwebtoken` crate's; this module chooses the keys and the
//! algorithms and keeps a JWKS fresh.
//!
//! Invariants: a JWT refused here never reaches Vault. Only asymmetric keys are ever loaded (an
//! HMAC `oct` key in a JWKS is skipped), and a key verifies only the algorithms of its own type,
//! so neither `alg: none` nor HS256-signed-with-the-public-key can pass. A JWKS URL is fetched with
//! a timeout, at most once per [`MIN_REFETCH`] (a JWT naming an unknown `kid` cannot make the
//! gateway hammer the issuer), and the last good key set is kept when a refresh fails.

use crate::error::Error;
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
    Algorithm, DecodingKey, Validation,
};
use serde_json::{Map, Value};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};
use tokio::time::Instant;

/// Shortest time between two fetches of one JWKS URL, whatever JWTs arrive.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Most keys taken from one PEM list or JWKS (a JWT without `kid` is tried against each).
pub const MAX_KEYS: usize = 32;
/// Largest JWKS document read from a file or URL.
pub const MAX_JWKS_BYTES: usize = 256 << 10;

/// One public key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A public key is not secret; its bytes are still of no use in a log.
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

/// Where an issuer's keys come from (`[issuers.<name>]`, exactly one of the three).
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `jwt_validation_pubkeys` (PEM) or `jwks_file`: read once at start-up.
    Static(Vec<VerifyKey>),
    /// `jwks_url`: fetched on first use, then again every `refresh` or on an unknown `kid`.
    Url {
        /// The JWKS document's URL (http or https).
        url: reqwest::Url,
        /// `jwks_ca_cert`: the only CA trusted for the URL's certificate (else the system's web roots).
        ca_pem: Option<Vec<u8>>,
        /// `jwks_bearer_token_file`: a file whose content is sent as `Authorization: Bearer`
        /// (Kubernetes' `/openid/v1/jwks` wants the pod's service-account token), re-read per fetch.
        bearer_file: Option<PathBuf>,
        /// `jwks_refresh_ms`: how old a fetched key set may get before it is fetched again.
        refresh: Duration,
        /// `jwks_timeout_ms`: upper bound of one fetch.
        timeout: Duration,
    },
}

/// An issuer whose JWTs are verified locally (`[issuers.<name>]`).
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// `issuer`: the `iss` its JWTs must carry.
    pub issuer: String,
    /// `audiences`: the JWT's `aud` must contain one of them; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// `leeway_ms`: clock skew allowed on `exp` and `nbf` (rounded down to seconds).
    pub leeway: Duration,
    /// The keys.
    pub keys: KeySource,
}

/// The algorithms a key of this JWK's type may verify (none for HMAC or encryption keys).
fn jwk_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Vec::new();
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
        // `oct` keys are HMAC secrets: never a way to verify a caller.
        _ => Vec::new(),
    };
    match jwk.common.key_algorithm.and_then(algorithm_of) {
        Some(alg) => by_type.into_iter().filter(|a| *a == alg).collect(),
        None if jwk.common.key_algorithm.is_some() => Vec::new(),
        None => by_type,
    }
}

const RSA: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

fn algorithm_of(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Parses PEM public keys (EC P-256/P-384, RSA, Ed25519), as Vault's `jwt_validation_pubkeys`.
pub fn keys_from_pem(pems: &[String]) -> Result<Vec<VerifyKey>, String> {
    if pems.is_empty() || pems.len() > MAX_KEYS {
        return Err(format!("list 1 to {MAX_KEYS} PEM public keys"));
    }
    pems.iter()
        .enumerate()
        .map(|(i, pem)| {
            let pem = pem.as_bytes();
            let (key, algorithms) = if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                // The PEM does not say the curve here: the signature check fails on the wrong one.
                (k, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (k, RSA.to_vec())
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
                (k, vec![Algorithm::EdDSA])
            } else {
                return Err(format!("[{i}] is not a PEM public key (EC, RSA or Ed25519)"));
            };
            Ok(VerifyKey { kid: None, algorithms, key })
        })
        .collect()
}

/// Parses a JWKS document; keys that cannot verify signatures (HMAC, encryption, unknown
/// curves) are skipped, and a set left with no key is an error.
pub fn keys_from_jwks(text: &[u8]) -> Result<Vec<VerifyKey>, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let keys: Vec<VerifyKey> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let algorithms = jwk_algorithms(jwk);
            let key = DecodingKey::from_jwk(jwk).ok().filter(|_| !algorithms.is_empty())?;
            Some(VerifyKey { kid: jwk.common.key_id.clone(), algorithms, key })
        })
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        return Err("the JWKS has no signature-verification key (EC P-256/P-384, RSA or Ed25519)".into());
    }
    Ok(keys)
}

/// Why a JWT was refused; each becomes `UNAUTHENTICATED` with a message naming the check
/// (never the JWT), except [`Refusal::KeysUnavailable`] (`UNAVAILABLE`: nothing to check it with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not three base64url parts, or a header that does not parse (including `alg: none`).
    Malformed,
    /// An algorithm none of the issuer's keys verifies (e.g. HS256).
    Algorithm,
    /// The header's `kid` names no key of the issuer.
    UnknownKey,
    /// No key of the issuer verifies the signature.
    Signature,
    /// `exp` is missing.
    NoExpiry,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iss` is not the issuer's.
    Issuer,
    /// `aud` holds none of the configured audiences.
    Audience,
    /// The issuer's JWKS could not be fetched and no earlier copy exists.
    KeysUnavailable(String),
}

impl Refusal {
    /// The caller's error.
    pub fn into_error(self, issuer: &str) -> Error {
        let why = match self {
            Refusal::Malformed => "is not a well-formed JWT with a supported algorithm".to_string(),
            Refusal::Algorithm => format!("uses an algorithm that no key of issuer {issuer:?} verifies"),
            Refusal::UnknownKey => format!("names a key id (kid) that issuer {issuer:?} does not publish"),
            Refusal::Signature => format!("has a signature that no key of issuer {issuer:?} verifies"),
            Refusal::NoExpiry => "has no exp claim".into(),
            Refusal::Expired => "has expired; get a fresh one".into(),
            Refusal::NotYetValid => "is not valid yet (nbf)".into(),
            Refusal::Issuer => format!("was not issued by {issuer:?} (iss)"),
            Refusal::Audience => "is not meant for this gateway (aud)".into(),
            Refusal::KeysUnavailable(why) => {
                return Error::Unavailable(format!(
                    "cannot verify the JWT: the keys of issuer {issuer:?} cannot be fetched ({why})"
                ))
            }
        };
        Error::Unauthenticated(format!("the JWT {why}"))
    }
}

/// Verifies `jwt` against `keys` and the issuer's claims rules; returns the verified claims.
/// `jsonwebtoken` checks `exp`/`nbf` against the system clock, with `leeway`.
pub fn verify(jwt: &str, issuer: &IssuerConfig, keys: &[VerifyKey]) -> Result<Map<String, Value>, Refusal> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| Refusal::Malformed)?;
    let usable = |k: &&VerifyKey| k.algorithms.contains(&header.alg);
    let candidates: Vec<&VerifyKey> = match &header.kid {
        Some(kid) if keys.iter().any(|k| k.kid.is_some()) => {
            let named: Vec<&VerifyKey> = keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if named.is_empty() {
                return Err(Refusal::UnknownKey);
            }
            named.into_iter().filter(usable).collect()
        }
        _ => keys.iter().filter(usable).collect(),
    };
    if candidates.is_empty() {
        return Err(Refusal::Algorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = issuer.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer.issuer.as_str()]);
    let mut required = vec!["exp", "iss"];
    if issuer.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&issuer.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    for key in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(jwt, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            // Another key of the issuer may have signed it.
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => continue,
            Err(e) => return Err(refusal_of(e.kind())),
        }
    }
    Err(Refusal::Signature)
}

fn refusal_of(kind: &jsonwebtoken::errors::ErrorKind) -> Refusal {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => Refusal::Expired,
        K::ImmatureSignature => Refusal::NotYetValid,
        K::InvalidIssuer => Refusal::Issuer,
        K::InvalidAudience => Refusal::Audience,
        K::MissingRequiredClaim(c) if c == "exp" => Refusal::NoExpiry,
        K::MissingRequiredClaim(c) if c == "aud" => Refusal::Audience,
        K::MissingRequiredClaim(_) => Refusal::Issuer,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => Refusal::Algorithm,
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => Refusal::Signature,
        _ => Refusal::Malformed,
    }
}

/// Whether a JWKS URL should be fetched now: never more than once per [`MIN_REFETCH`]; then when
/// nothing was fetched yet, when the key set is older than `refresh`, or when a JWT named a `kid`
/// the set does not hold.
pub fn should_fetch(
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    refresh: Duration,
    unknown_kid: bool,
    now: Instant,
) -> bool {
    if last_attempt.is_some_and(|t| now.saturating_duration_since(t) < MIN_REFETCH) {
        return false;
    }
    match fetched_at {
        None => true,
        Some(t) => unknown_kid || now.saturating_duration_since(t) >= refresh,
    }
}

#[derive(Default)]
struct Fetched {
    keys: Arc<Vec<VerifyKey>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// The keys of one issuer, with the JWKS cache of a URL source.
struct Issuer {
    config: IssuerConfig,
    http: Option<reqwest::Client>,
    fetched: RwLock<Fetched>,
    /// Held while fetching: concurrent callers wait for one fetch instead of each starting one.
    fetching: tokio::sync::Mutex<()>,
}

/// The locally verifying issuers, by config name.
pub struct Verifier {
    issuers: HashMap<String, Issuer>,
}

impl Verifier {
    /// The issuers of `[issuers]`; fails only when an HTTP client cannot be built (bad CA).
    pub fn new(configs: &HashMap<String, IssuerConfig>) -> Result<Verifier, String> {
        let mut issuers = HashMap::new();
        for (name, config) in configs {
            let http = match &config.keys {
                KeySource::Url { ca_pem, timeout, .. } => Some(jwks_client(ca_pem.as_deref(), *timeout)?),
                KeySource::Static(_) => None,
            };
            let fetched = match &config.keys {
                KeySource::Static(keys) => Fetched { keys: Arc::new(keys.clone()), ..Fetched::default() },
                KeySource::Url { .. } => Fetched::default(),
            };
            issuers.insert(
                name.clone(),
                Issuer {
                    config: config.clone(),
                    http,
                    fetched: RwLock::new(fetched),
                    fetching: tokio::sync::Mutex::new(()),
                },
            );
        }
        Ok(Verifier { issuers })
    }

    /// Verifies `jwt` with the keys of issuer `name`; returns its verified claims.
    pub async fn verify(&self, name: &str, jwt: &str, deadline: Option<Instant>) -> Result<Map<String, Value>, Error> {
        let issuer =
            self.issuers.get(name).ok_or_else(|| Error::Internal(format!("no [issuers.{name}] configured")))?;
        let refuse = |r: Refusal| r.into_error(&issuer.config.issuer);
        if let KeySource::Url { .. } = issuer.config.keys {
            issuer.refresh(false, deadline).await;
        }
        let keys = issuer.keys();
        if keys.is_empty() {
            let why = issuer.last_error().unwrap_or_else(|| "not fetched yet".into());
            return Err(refuse(Refusal::KeysUnavailable(why)));
        }
        match verify(jwt, &issuer.config, &keys) {
            Err(Refusal::UnknownKey) if matches!(issuer.config.keys, KeySource::Url { .. }) => {
                // The issuer may have rotated its keys: one more look, rate-limited.
                if issuer.refresh(true, deadline).await {
                    verify(jwt, &issuer.config, &issuer.keys()).map_err(refuse)
                } else {
                    Err(refuse(Refusal::UnknownKey))
                }
            }
            other => other.map_err(refuse),
        }
    }
}

impl Issuer {
    fn keys(&self) -> Arc<Vec<VerifyKey>> {
        self.fetched.read().unwrap_or_else(|p| p.into_inner()).keys.clone()
    }

    fn last_error(&self) -> Option<String> {
        self.fetched.read().unwrap_or_else(|p| p.into_inner()).last_error.clone()
    }

    /// Fetches the JWKS when [`should_fetch`] says so; true when a new key set was installed.
    async fn refresh(&self, unknown_kid: bool, deadline: Option<Instant>) -> bool {
        let KeySource::Url { url, bearer_file, refresh, timeout, .. } = &self.config.keys else { return false };
        let due = |f: &Fetched| should_fetch(f.fetched_at, f.last_attempt, *refresh, unknown_kid, Instant::now());
        if !due(&self.fetched.read().unwrap_or_else(|p| p.into_inner())) {
            return false;
        }
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if !due(&self.fetched.read().unwrap_or_else(|p| p.into_inner())) {
            return false;
        }
        self.fetched.write().unwrap_or_else(|p| p.into_inner()).last_attempt = Some(Instant::now());
        let limit = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(*timeout),
            None => *timeout,
        };
        let result = match &self.http {
            Some(http) => fetch(http, url, bearer_file.as_deref(), limit).await,
            None => Err("no HTTP client".into()),
        };
        let mut fetched = self.fetched.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(keys) => {
                tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "JWKS fetched");
                fetched.keys = Arc::new(keys);
                fetched.fetched_at = Some(Instant::now());
                fetched.last_error = None;
                true
            }
            Err(e) => {
                // The last good key set stays in use.
                tracing::warn!(issuer = %self.config.issuer, error = %e, "cannot fetch the issuer's JWKS");
                fetched.last_error = Some(e);
                false
            }
        }
    }
}

fn jwks_client(ca_pem: Option<&[u8]>, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca_pem {
        // The configured CA only: not the public web roots as well.
        builder = builder.tls_built_in_root_certs(false);
        for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("jwks_ca_cert: {e}"))? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))
}

async fn fetch(
    http: &reqwest::Client,
    url: &reqwest::Url,
    bearer_file: Option<&std::path::Path>,
    limit: Duration,
) -> Result<Vec<VerifyKey>, String> {
    if limit.is_zero() {
        return Err("no time left before the call's deadline".into());
    }
    let mut request = http.get(url.clone()).timeout(limit);
    if let Some(path) = bearer_file {
        // Re-read at each fetch (the kubelet rotates it); never logged.
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("jwks_bearer_token_file {}: {e}", path.display()))?;
        request = request.bearer_auth(token.trim());
    }
    let mut response = request.send().await.map_err(|e| format!("GET {url}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: {}", e.without_url()))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("GET {url}: the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    keys_from_jwks(&body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISS: &str = "https://issuer.test";

    struct Signer {
        encoding: EncodingKey,
        public_pem: String,
    }

    fn signer() -> Signer {
        let pair = rcgen::KeyPair::generate().unwrap();
        Signer {
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            public_pem: pair.public_key_pem(),
        }
    }

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn issuer(audiences: &[&str]) -> IssuerConfig {
        IssuerConfig {
            issuer: ISS.into(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            leeway: Duration::from_secs(30),
            keys: KeySource::Static(Vec::new()),
        }
    }

    fn sign(s: &Signer, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &s.encoding).unwrap()
    }

    fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.{signature}", part(header), part(claims))
    }

    #[test]
    fn verification_table() {
        let good = signer();
        let other = signer();
        let keys = keys_from_pem(std::slice::from_ref(&good.public_pem)).unwrap();
        let n = now();
        let claims = |patch: Value| {
            let mut c = json!({"iss": ISS, "sub": "billing", "aud": "vaultgate", "exp": n + 600, "nbf": n - 10});
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            c
        };
        let valid = sign(&good, &claims(json!({})));
        let (_, tail) = valid.split_at(valid.rfind('.').unwrap());
        // HS256 "signed" with the public key as the secret: the classic algorithm confusion.
        let hs256 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(json!({})),
            &EncodingKey::from_secret(good.public_pem.as_bytes()),
        )
        .unwrap();
        // (case, JWT, configured audiences, verdict)
        type Case<'a> = (&'a str, String, &'a [&'a str], Result<(), Refusal>);
        let cases: Vec<Case> = vec![
            ("valid", valid.clone(), &["vaultgate"], Ok(())),
            ("aud not configured", valid.clone(), &[], Ok(())),
            ("float exp", sign(&good, &claims(json!({"exp": n as f64 + 600.5}))), &["vaultgate"], Ok(())),
            ("aud in a list", sign(&good, &claims(json!({"aud": ["x", "vaultgate"]}))), &["vaultgate"], Ok(())),
            ("exp inside the leeway", sign(&good, &claims(json!({"exp": n - 5}))), &[], Ok(())),
            ("other key", sign(&other, &claims(json!({}))), &[], Err(Refusal::Signature)),
            (
                "claims swapped under a valid signature",
                format!("{}.{}{tail}", valid.split('.').next().unwrap(), {
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(json!({"sub": "admin"}))).unwrap())
                }),
                &[],
                Err(Refusal::Signature),
            ),
            ("wrong iss", sign(&good, &claims(json!({"iss": "https://evil"}))), &[], Err(Refusal::Issuer)),
            ("no iss", sign(&good, &claims(json!({"iss": null}))), &[], Err(Refusal::Issuer)),
            ("wrong aud", sign(&good, &claims(json!({"aud": "other"}))), &["vaultgate"], Err(Refusal::Audience)),
            ("no aud", sign(&good, &claims(json!({"aud": null}))), &["vaultgate"], Err(Refusal::Audience)),
            ("expired", sign(&good, &claims(json!({"exp": n - 120}))), &[], Err(Refusal::Expired)),
            ("float exp expired", sign(&good, &claims(json!({"exp": n as f64 - 120.5}))), &[], Err(Refusal::Expired)),
            ("no exp", sign(&good, &claims(json!({"exp": null}))), &[], Err(Refusal::NoExpiry)),
            ("exp not a number", sign(&good, &claims(json!({"exp": "soon"}))), &[], Err(Refusal::NoExpiry)),
            ("nbf in the future", sign(&good, &claims(json!({"nbf": n + 600}))), &[], Err(Refusal::NotYetValid)),
            ("HS256 with the public key", hs256, &[], Err(Refusal::Algorithm)),
            ("alg none", unsigned(&json!({"alg": "none"}), &claims(json!({})), ""), &[], Err(Refusal::Malformed)),
            (
                "alg none, signature kept",
                unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims(json!({})), &tail[1..]),
                &[],
                Err(Refusal::Malformed),
            ),
            (
                "RS256 header on an EC key",
                unsigned(&json!({"alg": "RS256"}), &claims(json!({})), "c2ln"),
                &[],
                Err(Refusal::Algorithm),
            ),
            ("not a JWT", "a.b".into(), &[], Err(Refusal::Malformed)),
            (
                "signature not base64",
                unsigned(&json!({"alg": "ES256"}), &claims(json!({})), "!!"),
                &[],
                Err(Refusal::Malformed),
            ),
            (
                "signature of zeros",
                unsigned(&json!({"alg": "ES256"}), &claims(json!({})), &"A".repeat(86)),
                &[],
                Err(Refusal::Signature),
            ),
        ];
        for (name, jwt, audiences, want) in cases {
            let got = verify(&jwt, &issuer(audiences), &keys).map(|_| ());
            assert_eq!(got, want, "{name}");
        }
        // The refusals are UNAUTHENTICATED and never carry the JWT.
        let err = verify(&sign(&other, &claims(json!({}))), &issuer(&[]), &keys).unwrap_err().into_error(ISS);
        assert!(matches!(&err, Error::Unauthenticated(m) if m.contains("signature") && !m.contains(&valid[..20])));
        assert!(matches!(Refusal::KeysUnavailable("x".into()).into_error(ISS), Error::Unavailable(_)));
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid_and_hmac_keys_are_never_loaded() {
        let a = signer();
        let b = signer();
        let jwk = |s: &Signer, kid: &str| {
            // The public point, from the SPKI DER: the last 64 bytes are x and y.
            let der = pem_body(&s.public_pem);
            let point = &der[der.len() - 64..];
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                   "x": URL_SAFE_NO_PAD.encode(&point[..32]), "y": URL_SAFE_NO_PAD.encode(&point[32..])})
        };
        let hmac = json!({"kty": "oct", "kid": "h", "k": URL_SAFE_NO_PAD.encode(b"secret"), "alg": "HS256"});
        let jwks = json!({"keys": [jwk(&a, "a"), jwk(&b, "b"), hmac]}).to_string();
        let keys = keys_from_jwks(jwks.as_bytes()).unwrap();
        assert_eq!(keys.iter().map(|k| k.kid.as_deref().unwrap()).collect::<Vec<_>>(), ["a", "b"]);
        let n = now();
        let claims = json!({"iss": ISS, "sub": "x", "exp": n + 60});
        let with_kid = |s: &Signer, kid: Option<&str>| {
            let mut h = Header::new(Algorithm::ES256);
            h.kid = kid.map(str::to_string);
            jsonwebtoken::encode(&h, &claims, &s.encoding).unwrap()
        };
        let iss = issuer(&[]);
        assert!(verify(&with_kid(&b, Some("b")), &iss, &keys).is_ok());
        assert!(verify(&with_kid(&b, None), &iss, &keys).is_ok(), "no kid: every key is tried");
        assert_eq!(verify(&with_kid(&b, Some("a")), &iss, &keys).unwrap_err(), Refusal::Signature);
        assert_eq!(verify(&with_kid(&b, Some("zz")), &iss, &keys).unwrap_err(), Refusal::UnknownKey);
        // HS256 under the kid of the skipped HMAC key.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("h".into());
        let forged = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"secret")).unwrap();
        assert_eq!(verify(&forged, &iss, &keys).unwrap_err(), Refusal::UnknownKey);
        for bad in [&b"{}"[..], b"not json", br#"{"keys":[]}"#] {
            assert!(keys_from_jwks(bad).is_err());
        }
        assert!(keys_from_pem(&["not a key".into()]).is_err());
        assert!(keys_from_pem(&[]).is_err());
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
    }

    #[test]
    fn jwks_fetches_are_rate_limited() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let refresh = s(300);
        // (fetched at, last attempt, unknown kid, now) -> fetch?
        type Case = (Option<u64>, Option<u64>, bool, u64, bool);
        let cases: &[Case] = &[
            (None, None, false, 0, true),
            (None, Some(0), false, 5, false),
            (None, Some(0), false, 10, true),
            (Some(0), Some(0), false, 100, false),
            (Some(0), Some(0), true, 5, false),
            (Some(0), Some(0), true, 11, true),
            (Some(0), Some(0), false, 300, true),
            (Some(0), Some(295), false, 300, false),
        ];
        for (fetched, attempt, kid, at, want) in cases {
            let got = should_fetch(fetched.map(|f| t0 + s(f)), attempt.map(|a| t0 + s(a)), refresh, *kid, t0 + s(*at));
            assert_eq!(got, *want, "{fetched:?} {attempt:?} {kid} {at}");
        }
    }
}
