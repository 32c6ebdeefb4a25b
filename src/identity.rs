//! Who is calling: the bearer JWT in the `authorization` metadata (its claims) or the verified
//! client certificate of the connection (its URI/DNS names and CN), and the configured rule that
//! maps the caller to a Vault role.
//!
//! The claims are read here *without* verifying the signature, only to choose the rule. When the
//! rule names an issuer (`verify_with`), `jwt.rs` then verifies the JWT locally before any login
//! (a forged JWT costs Vault nothing); either way Vault verifies it again at login against the
//! role's bindings, and a token is used only after that login succeeded for these exact JWT bytes.
//!
//! Caller ids are injective: `jwt:<iss>#<sub>` with `%` and `#` of the issuer percent-encoded, so no
//! choice of `iss` and `sub` can name another caller (lease ownership relies on it).

use crate::{
    config::{CallerRule, CertField, CertRule},
    error::Error,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde_json::{Map, Value};
use tonic::metadata::MetadataMap;

/// Longest bearer token accepted; real JWTs are a few KiB.
pub const MAX_JWT_BYTES: usize = 16 << 10;

/// The caller's bearer token, as sent.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Error> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Error::Unauthenticated("no credentials: send metadata `authorization: Bearer <JWT>`".into()))?;
    let text = value
        .to_str()
        .map_err(|_| Error::Unauthenticated("the authorization metadata is not printable ASCII".into()))?;
    let jwt = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| Error::Unauthenticated("the authorization metadata must be `Bearer <JWT>`".into()))?
        .trim();
    if jwt.is_empty() || jwt.len() > MAX_JWT_BYTES {
        return Err(Error::Unauthenticated(format!("the bearer token must be a JWT of 1 to {MAX_JWT_BYTES} bytes")));
    }
    Ok(jwt)
}

/// The JWT's claims (payload), unverified; see the module comment for why that is safe here.
pub fn claims(jwt: &str) -> Result<Map<String, Value>, Error> {
    let bad = || Error::Unauthenticated("the bearer token is not a JWT (header.payload.signature)".into());
    let mut parts = jwt.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).map_err(|_| bad())?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad()),
    }
}

/// A claim as text (strings as they are, numbers and booleans printed).
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    match claims.get(name)? {
        Value::String(s) => Some(s.as_str().into()),
        Value::Number(n) => Some(n.to_string().into()),
        Value::Bool(b) => Some(b.to_string().into()),
        _ => None,
    }
}

/// The JWT's `exp` claim, in whole Unix seconds (RFC 7519 allows a fraction: it is dropped, so
/// the token is given up no later than the JWT's end).
pub fn expiry(claims: &Map<String, Value>) -> Option<u64> {
    let exp = claims.get("exp")?;
    exp.as_u64().or_else(|| exp.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f.floor() as u64))
}

/// The issuer as it appears in a caller id: `%` and `#` percent-encoded, so the first `#` of an
/// id always separates the issuer from the subject.
pub fn escape_issuer(iss: &str) -> std::borrow::Cow<'_, str> {
    if iss.contains(['%', '#']) {
        iss.replace('%', "%25").replace('#', "%23").into()
    } else {
        iss.into()
    }
}

/// A stable name of the caller for ownership and logs: issuer and subject (neither is secret).
/// Two different (iss, sub) pairs never give the same id.
pub fn caller_id(claims: &Map<String, Value>) -> String {
    let iss = claim(claims, "iss").unwrap_or_default();
    let sub = claim(claims, "sub").unwrap_or_default();
    format!("jwt:{}#{sub}", escape_issuer(&iss))
}

/// The subject, which every JWT caller must have (its identity and lease ownership rest on it).
pub fn subject(claims: &Map<String, Value>) -> Result<(), Error> {
    match claim(claims, "sub") {
        Some(sub) if !sub.is_empty() => Ok(()),
        _ => Err(Error::Unauthenticated("the JWT has no sub claim naming the caller".into())),
    }
}

/// The first rule that matches the claims.
pub fn rule_for<'a>(rules: &'a [CallerRule], claims: &Map<String, Value>) -> Result<&'a CallerRule, Error> {
    rules
        .iter()
        .find(|rule| {
            let issuer_ok = rule.issuer.as_deref().is_none_or(|iss| claim(claims, "iss").as_deref() == Some(iss));
            let value = claim(claims, &rule.claim);
            let value_ok = match (&rule.equals, &rule.prefix, value) {
                (Some(eq), _, Some(v)) => v == eq.as_str(),
                (_, Some(prefix), Some(v)) => v.starts_with(prefix.as_str()),
                _ => false,
            };
            issuer_ok && value_ok
        })
        .ok_or_else(|| {
            Error::PermissionDenied(format!(
                "no caller rule maps {} to a Vault role; add a [[callers]] rule",
                caller_id(claims)
            ))
        })
}

/// The names a verified client certificate carries, as rules match them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// URI subject alternative names (SPIFFE IDs).
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// The subject's common name.
    pub cn: Option<String>,
}

impl CertNames {
    /// The certificate's values of one field.
    fn values(&self, field: CertField) -> Vec<&str> {
        match field {
            CertField::Uri => self.uris.iter().map(String::as_str).collect(),
            CertField::Dns => self.dns.iter().map(String::as_str).collect(),
            CertField::Cn => self.cn.iter().map(String::as_str).collect(),
        }
    }

    /// A short description for error messages and logs (names are not secret).
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.uris.iter().map(|u| format!("uri {u}")).collect();
        parts.extend(self.dns.iter().map(|d| format!("dns {d}")));
        parts.extend(self.cn.iter().map(|c| format!("cn {c}")));
        if parts.is_empty() {
            "a certificate with no URI, DNS or CN name".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Reads the names of a client certificate that the TLS handshake has already verified.
pub fn cert_names(der: &[u8]) -> Result<CertNames, Error> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| Error::Unauthenticated("the client certificate cannot be parsed".into()))?;
    let mut names = CertNames::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => names.uris.push((*u).to_string()),
                GeneralName::DNSName(d) => names.dns.push((*d).to_string()),
                _ => {}
            }
        }
    }
    names.cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    Ok(names)
}

/// The first certificate rule that matches, with the matched value (the caller's identity).
pub fn cert_rule_for<'a>(rules: &'a [CertRule], names: &CertNames) -> Result<(&'a CertRule, String), Error> {
    for rule in rules {
        let hit = names.values(rule.field).into_iter().find(|v| {
            if rule.prefix {
                v.starts_with(rule.value.as_str())
            } else {
                *v == rule.value
            }
        });
        if let Some(value) = hit {
            return Ok((rule, value.to_string()));
        }
    }
    Err(Error::PermissionDenied(format!(
        "no cert_callers rule maps the client certificate ({}) to a role; add a [[cert_callers]] rule",
        names.describe()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!("eyJhbGciOiJFUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    fn rule(role: &str, claim: &str, equals: Option<&str>, prefix: Option<&str>, issuer: Option<&str>) -> CallerRule {
        CallerRule {
            role: role.into(),
            claim: claim.into(),
            equals: equals.map(Into::into),
            prefix: prefix.map(Into::into),
            issuer: issuer.map(Into::into),
            method: "jwt".into(),
            auth_mount: "jwt".into(),
            verify_with: None,
            bind_identity: false,
        }
    }

    #[test]
    fn certificate_names_and_rules() {
        let mut params = rcgen::CertificateParams::new(vec!["api.billing.svc".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("spiffe://prod.example/ns/billing/sa/api".try_into().unwrap()));
        params.distinguished_name.push(rcgen::DnType::CommonName, "billing-api");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let names = cert_names(cert.der()).unwrap();
        assert_eq!(names.uris, ["spiffe://prod.example/ns/billing/sa/api"]);
        assert_eq!(names.dns, ["api.billing.svc"]);
        assert_eq!(names.cn.as_deref(), Some("billing-api"));
        let rule = |field, value: &str, prefix| CertRule {
            role: value.into(),
            field,
            value: value.into(),
            prefix,
            bind_identity: false,
        };
        let cases: &[(Vec<CertRule>, Option<&str>)] = &[
            (
                vec![rule(CertField::Uri, "spiffe://prod.example/ns/billing/sa/api", false)],
                Some("spiffe://prod.example/ns/billing/sa/api"),
            ),
            (
                vec![rule(CertField::Uri, "spiffe://prod.example/ns/billing/", true)],
                Some("spiffe://prod.example/ns/billing/sa/api"),
            ),
            (vec![rule(CertField::Uri, "spiffe://prod.example/ns/other/", true)], None),
            (vec![rule(CertField::Dns, "api.billing.svc", false)], Some("api.billing.svc")),
            (vec![rule(CertField::Cn, "billing", true)], Some("billing-api")),
            (vec![rule(CertField::Cn, "billing", false), rule(CertField::Dns, "api.", true)], Some("api.billing.svc")),
        ];
        for (rules, want) in cases {
            let got = cert_rule_for(rules, &names);
            assert_eq!(got.as_ref().ok().map(|(_, v)| v.as_str()), *want, "{rules:?}");
            if want.is_none() {
                let err = format!("{:?}", got.unwrap_err());
                assert!(
                    err.contains("spiffe://prod.example/ns/billing/sa/api") && err.contains("PermissionDenied"),
                    "{err}"
                );
            }
        }
        assert!(cert_names(b"not a certificate").is_err());
    }

    #[test]
    fn bearer_metadata_table() {
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some("Basic abc"), false),
            (Some("Bearer "), false),
            (Some("Bearer a.b.c"), true),
            (Some("bearer a.b.c"), true),
        ];
        for (value, ok) in cases {
            let mut md = MetadataMap::new();
            if let Some(v) = value {
                md.insert("authorization", v.parse().unwrap());
            }
            assert_eq!(bearer(&md).is_ok(), *ok, "{value:?}");
        }
    }

    #[test]
    fn claims_of_malformed_tokens_are_unauthenticated() {
        for token in ["", "a", "a.b", "a.!!!.c", "a.b.c.d", &jwt("[1,2]"), &jwt("not json")] {
            assert!(matches!(claims(token), Err(Error::Unauthenticated(_))), "{token}");
        }
        let c = claims(&jwt(r#"{"sub":"billing","iss":"i","exp":5}"#)).unwrap();
        assert_eq!(expiry(&c), Some(5));
        assert_eq!(caller_id(&c), "jwt:i#billing");
        for (exp, want) in [("5.9", Some(5)), ("-1", None), ("\"5\"", None), ("1e400", None)] {
            let c = claims(&jwt(&format!(r#"{{"exp":{exp}}}"#)));
            assert_eq!(c.ok().and_then(|c| expiry(&c)), want, "exp {exp}");
        }
    }

    #[test]
    fn caller_ids_never_collide() {
        // Pairs that a plain `iss#sub` join would give the same id.
        let pairs = [
            (r#"{"iss":"a#b","sub":"c"}"#, r#"{"iss":"a","sub":"b#c"}"#),
            (r#"{"iss":"a%23b","sub":"c"}"#, r#"{"iss":"a#b","sub":"c"}"#),
            (r#"{"iss":"a%","sub":"23b#c"}"#, r#"{"iss":"a%23b","sub":"c"}"#),
            (r##"{"iss":"","sub":"#x"}"##, r##"{"iss":"#","sub":"x"}"##),
        ];
        for (a, b) in pairs {
            let (ia, ib) = (caller_id(&claims(&jwt(a)).unwrap()), caller_id(&claims(&jwt(b)).unwrap()));
            assert_ne!(ia, ib, "{a} vs {b}");
            // The issuer part never holds a '#': the first one is the separator.
            for (id, payload) in [(&ia, a), (&ib, b)] {
                let c = claims(&jwt(payload)).unwrap();
                let (iss, sub) = id.trim_start_matches("jwt:").split_once('#').unwrap();
                assert_eq!(iss.replace("%23", "#").replace("%25", "%"), c["iss"].as_str().unwrap());
                assert_eq!(sub, c["sub"].as_str().unwrap());
            }
        }
        assert_eq!(caller_id(&claims(&jwt(r#"{"iss":"https://i","sub":"s"}"#)).unwrap()), "jwt:https://i#s");
        assert!(subject(&claims(&jwt(r#"{"iss":"i"}"#)).unwrap()).is_err());
        assert!(subject(&claims(&jwt(r#"{"sub":""}"#)).unwrap()).is_err());
        assert!(subject(&claims(&jwt(r#"{"sub":"x"}"#)).unwrap()).is_ok());
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule("billing", "sub", Some("billing"), None, Some("https://issuer")),
            rule("teams", "team", None, Some("pay"), None),
            rule("reports", "sub", Some("reports"), None, None),
        ];
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"sub":"billing","iss":"https://issuer"}"#, Some("billing")),
            (r#"{"sub":"billing","iss":"https://other"}"#, None),
            (r#"{"sub":"x","team":"payments"}"#, Some("teams")),
            (r#"{"sub":"reports","team":"ops"}"#, Some("reports")),
            (r#"{"sub":"nobody"}"#, None),
        ];
        for (payload, role) in cases {
            let c = claims(&jwt(payload)).unwrap();
            assert_eq!(rule_for(&rules, &c).ok().map(|r| r.role.as_str()), *role, "{payload}");
        }
    }
}
