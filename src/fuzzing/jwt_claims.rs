//! The caller's bearer JWT: `identity::bearer`, `claims`, `expiry`, `caller_id` and `rule_for`
//! against a small fixed rule set. Never a panic; the rule chosen is the first that matches.

use crate::{
    config::{CallerRule, Config},
    error::Error,
    identity,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// The rules, built through the config parser so that new fields keep their defaults.
fn rules() -> &'static [CallerRule] {
    static RULES: OnceLock<Vec<CallerRule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let text = r#"
listen = "127.0.0.1:0"
[vault]
address = "http://127.0.0.1:8200"
[[callers]]
role = "billing"
equals = "billing"
issuer = "https://issuer.example"
[[callers]]
role = "teams"
claim = "team"
prefix = "pay"
[[callers]]
role = "admins"
claim = "admin"
equals = "true"
[[callers]]
role = "uid"
claim = "uid"
equals = "1000"
[[callers]]
role = "services"
prefix = "svc-"
"#;
        // A constant text; a parse failure would show on the first fuzz run, never on input.
        Config::parse(text).expect("the fixed rule set parses").callers
    })
}

/// The claim as text, as the spec says: strings as they are, numbers and booleans printed.
fn claim_text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn rule_matches(rule: &CallerRule, claims: &Map<String, Value>) -> bool {
    let issuer_ok = rule.issuer.as_deref().is_none_or(|iss| claim_text(claims, "iss").as_deref() == Some(iss));
    let value_ok = match (claim_text(claims, &rule.claim), &rule.equals, &rule.prefix) {
        (Some(v), Some(eq), _) => v == *eq,
        (Some(v), None, Some(p)) => v.starts_with(p.as_str()),
        _ => false,
    };
    issuer_ok && value_ok
}

fn check_jwt(jwt: &str) {
    let Ok(claims) = identity::claims(jwt) else { return };
    // A JWT is three dot-separated parts.
    assert_eq!(jwt.split('.').count(), 3, "claims accepted {jwt:?}");

    // Whole seconds, a fraction dropped; negative or non-numeric: none.
    let exp = claims.get("exp").and_then(Value::as_f64).filter(|f| f.is_finite() && *f >= 0.0);
    match (identity::expiry(&claims), exp) {
        // (Past u64::MAX a float saturates: an end that never comes is still no earlier than the JWT's.)
        (Some(got), Some(f)) => assert!(
            (got as f64 <= f && f - (got as f64) < 1.0 + f * 1e-15) || (got == u64::MAX && f >= u64::MAX as f64),
            "exp {f} -> {got}"
        ),
        (got, f) => assert_eq!((got, f), (None, None)),
    }

    // The issuer's '%' and '#' are escaped, so the first '#' separates it from the subject.
    let id = identity::caller_id(&claims);
    let iss = claim_text(&claims, "iss").unwrap_or_default();
    let sub = claim_text(&claims, "sub").unwrap_or_default();
    let (got_iss, got_sub) = id.strip_prefix("jwt:").and_then(|r| r.split_once('#')).unwrap_or_default();
    assert_eq!((got_iss.replace("%23", "#").replace("%25", "%"), got_sub), (iss, sub.as_str()), "{id}");

    let rules = rules();
    let expected = rules.iter().position(|r| rule_matches(r, &claims));
    match identity::rule_for(rules, &claims) {
        Ok(rule) => {
            let got = rules.iter().position(|r| std::ptr::eq(r, rule));
            assert_eq!(got, expected, "rule_for chose {:?} for {claims:?}", rule.role);
        }
        Err(Error::PermissionDenied(m)) => {
            assert_eq!(expected, None, "rule_for refused {claims:?}");
            assert!(!m.is_empty());
        }
        Err(other) => panic!("rule_for failed with {other:?}"),
    }
}

/// One input of the target (what `fuzz_target!` runs).
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        // The bytes are the claims JSON of a well-formed token.
        0 => check_jwt(&format!("eyJhbGciOiJFUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(rest))),
        // The bytes are the token itself.
        1 => {
            if let Ok(jwt) = std::str::from_utf8(rest) {
                check_jwt(jwt);
            }
        }
        // The bytes are the `authorization` metadata value.
        _ => {
            let Ok(value) = tonic::metadata::MetadataValue::try_from(rest) else { return };
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("authorization", value);
            match identity::bearer(&md) {
                Ok(jwt) => {
                    assert!(!jwt.is_empty() && jwt.len() <= identity::MAX_JWT_BYTES);
                    check_jwt(jwt);
                }
                Err(e) => assert!(matches!(e, Error::Unauthenticated(_)), "bearer failed with {e:?}"),
            }
        }
    }
}
