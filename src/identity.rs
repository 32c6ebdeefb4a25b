//! Who is calling: the bearer JWT in the `authorization` metadata, its claims, and the configured
//! rule that maps the caller to a Vault role.
//!
//! The claims are read here *without* verifying the signature: only to choose the role. Vault
//! verifies the JWT at login against that role (signature, issuer, audience, bound claims), and a
//! token is used only after that login succeeded for these exact JWT bytes, so a forged claim can
//! at most choose a role whose Vault-side bindings then refuse it.

use crate::{config::CallerRule, error::Error};
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

/// The JWT's `exp` claim, in Unix seconds.
pub fn expiry(claims: &Map<String, Value>) -> Option<u64> {
    claims.get("exp").and_then(Value::as_u64)
}

/// A stable name of the caller for ownership and logs: issuer and subject (neither is secret).
pub fn caller_id(claims: &Map<String, Value>) -> String {
    let iss = claim(claims, "iss").unwrap_or_default();
    let sub = claim(claims, "sub").unwrap_or_default();
    format!("jwt:{iss}#{sub}")
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
            auth_mount: "jwt".into(),
        }
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
