//! Gateway-side rules per role (`[roles.<name>]`): which Transit keys, KV paths and database
//! roles a role may touch. Checked before any Vault call, so a refused call costs Vault nothing
//! and says precisely which rule refused it; Vault's policy stays the final word.

use crate::{config::RoleConfig, error::Error, service::Gateway, session::Actor};

/// What a call wants to touch.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// A Transit key by name.
    Key(&'a str),
    /// A KV v2 secret path or folder.
    Secret(&'a str),
    /// A database role.
    DbRole(&'a str),
}

/// `name` or `prefix*` patterns.
fn matches_pattern(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == p,
    })
}

/// A KV path (or folder) is allowed when it lies under one of the prefixes.
fn under_prefix(prefixes: &[String], path: &str) -> bool {
    // The folder itself counts: `billing` (or `billing/`) is under the prefix `billing/`.
    let folder = path.trim_end_matches('/');
    prefixes.iter().any(|p| path.starts_with(p.as_str()) || p.strip_suffix('/').is_some_and(|p| p == folder))
}

/// Whether the role's rules allow the resource (a role without rules, or without a rule for
/// that kind of resource, is not limited by the gateway).
pub fn allowed(role: Option<&RoleConfig>, resource: Resource<'_>) -> bool {
    let Some(role) = role else { return true };
    match resource {
        Resource::Key(k) => role.transit_keys.as_deref().is_none_or(|p| matches_pattern(p, k)),
        Resource::Secret(s) => role.kv_prefixes.as_deref().is_none_or(|p| under_prefix(p, s)),
        Resource::DbRole(r) => role.db_roles.as_deref().is_none_or(|p| matches_pattern(p, r)),
    }
}

impl Gateway {
    /// Refuses (PERMISSION_DENIED, naming the rule) what the caller's role may not touch.
    pub fn allow(&self, actor: &Actor, resource: Resource<'_>) -> Result<(), Error> {
        let role = &*actor.role;
        if allowed(self.config.roles.get(role), resource) {
            return Ok(());
        }
        let (what, key) = match resource {
            Resource::Key(k) => (format!("Transit key {k:?}"), "transit_keys"),
            Resource::Secret(s) => (format!("secret path {s:?}"), "kv_prefixes"),
            Resource::DbRole(r) => (format!("database role {r:?}"), "db_roles"),
        };
        Err(Error::PermissionDenied(format!("role {role:?} may not use {what} (gateway rule roles.{role}.{key})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_table() {
        let role = RoleConfig {
            login: None,
            transit_keys: Some(vec!["billing".into(), "pay-*".into()]),
            kv_prefixes: Some(vec!["billing/".into()]),
            db_roles: None,
            ..RoleConfig::default()
        };
        let cases: &[(Resource<'_>, bool)] = &[
            (Resource::Key("billing"), true),
            (Resource::Key("billing2"), false),
            (Resource::Key("pay-eu"), true),
            (Resource::Key("pay"), false),
            (Resource::Secret("billing/api-keys"), true),
            (Resource::Secret("billing"), true),
            (Resource::Secret("billing/"), true),
            (Resource::Secret("billingx/a"), false),
            (Resource::Secret("reports/a"), false),
            (Resource::Secret(""), false),
            (Resource::DbRole("anything"), true),
        ];
        for (resource, want) in cases {
            assert_eq!(allowed(Some(&role), *resource), *want, "{resource:?}");
        }
        assert!(allowed(None, Resource::Key("x")));
    }
}
