//! Gateway-side rules per role (`[roles.<name>]`): which Transit keys, KV paths and database
//! roles a role may touch, and in which mounts. Checked before any Vault call, so a refused call
//! costs Vault nothing and says precisely which rule refused it; Vault's policy stays the final word.
//!
//! Invariants: a KV prefix matches whole path segments (`billing/` and `billing` both cover
//! `billing/x`, never `billingx/x`); a role with `kv_prefixes` (or `db_roles`) may name only the
//! mounts of `kv_mounts` (`db_mounts`), so naming another mount cannot escape its prefixes.

use crate::{config::RoleConfig, error::Error, service::Gateway, session::Actor};

/// What a call wants to touch.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// A Transit key by name.
    Key(&'a str),
    /// A KV v2 secret path or folder, in a mount (empty: the configured default).
    Secret {
        /// The KV mount as the request names it.
        mount: &'a str,
        /// The path or folder inside it.
        path: &'a str,
    },
    /// A database role, in a mount (empty: the configured default).
    DbRole {
        /// The database mount as the request names it.
        mount: &'a str,
        /// The role.
        role: &'a str,
    },
}

impl<'a> Resource<'a> {
    /// The resource with an empty mount replaced by the configured default of its engine.
    pub fn in_mounts(self, mounts: &'a crate::config::Mounts) -> Resource<'a> {
        let or = |mount: &'a str, default: &'a str| if mount.is_empty() { default } else { mount };
        match self {
            Resource::Secret { mount, path } => Resource::Secret { mount: or(mount, &mounts.kv), path },
            Resource::DbRole { mount, role } => Resource::DbRole { mount: or(mount, &mounts.database), role },
            key => key,
        }
    }
}

/// `name` or `prefix*` patterns.
fn matches_pattern(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == p,
    })
}

/// A KV path (or folder) is allowed when it lies under one of the prefixes, segment by segment:
/// the prefix's folder itself, or anything below it (`billing/` never covers `billingx/`).
fn under_prefix(prefixes: &[String], path: &str) -> bool {
    let path = path.trim_end_matches('/');
    prefixes.iter().any(|p| {
        let folder = p.trim_end_matches('/');
        path.strip_prefix(folder).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Whether `mount` is one of `mounts` (leading and trailing slashes do not count).
fn in_mounts(mounts: &[String], mount: &str) -> bool {
    let mount = mount.trim_matches('/');
    mounts.iter().any(|m| m.trim_matches('/') == mount)
}

/// Whether the role's rules allow the resource (a role without rules, or without a rule for
/// that kind of resource, is not limited by the gateway).
pub fn allowed(role: Option<&RoleConfig>, resource: Resource<'_>) -> bool {
    let Some(role) = role else { return true };
    match resource {
        Resource::Key(k) => role.transit_keys.as_deref().is_none_or(|p| matches_pattern(p, k)),
        Resource::Secret { mount, path } => {
            role.kv_prefixes.as_deref().is_none_or(|p| in_mounts(&role.kv_mounts, mount) && under_prefix(p, path))
        }
        Resource::DbRole { mount, role: r } => {
            role.db_roles.as_deref().is_none_or(|p| in_mounts(&role.db_mounts, mount) && matches_pattern(p, r))
        }
    }
}

impl Gateway {
    /// Refuses (PERMISSION_DENIED, naming the rule) what the caller's role may not touch.
    pub fn allow(&self, actor: &Actor, resource: Resource<'_>) -> Result<(), Error> {
        let role = &*actor.role;
        let resource = resource.in_mounts(&self.config.mounts);
        if allowed(self.config.roles.get(role), resource) {
            return Ok(());
        }
        let (what, key) = match resource {
            Resource::Key(k) => (format!("Transit key {k:?}"), "transit_keys"),
            Resource::Secret { mount, path } => {
                (format!("secret path {path:?} in mount {mount:?}"), "kv_prefixes, kv_mounts")
            }
            Resource::DbRole { mount, role } => {
                (format!("database role {role:?} in mount {mount:?}"), "db_roles, db_mounts")
            }
        };
        Err(Error::PermissionDenied(format!("role {role:?} may not use {what} (gateway rule roles.{role}.{key})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(path: &str) -> Resource<'_> {
        Resource::Secret { mount: "secret", path }
    }

    #[test]
    fn rule_table() {
        let role = RoleConfig {
            login: None,
            transit_keys: Some(vec!["billing".into(), "pay-*".into()]),
            kv_prefixes: Some(vec!["billing/".into(), "team/eu".into()]),
            kv_mounts: vec!["secret".into(), "kv2".into()],
            db_roles: Some(vec!["billing".into()]),
            db_mounts: vec!["database".into()],
            ..RoleConfig::default()
        };
        let cases: &[(Resource<'_>, bool)] = &[
            (Resource::Key("billing"), true),
            (Resource::Key("billing2"), false),
            (Resource::Key("pay-eu"), true),
            (Resource::Key("pay"), false),
            (secret("billing/api-keys"), true),
            (secret("billing"), true),
            (secret("billing/"), true),
            (secret("billing/a/b/c"), true),
            (secret("billingx/a"), false),
            (secret("billingx"), false),
            (secret("reports/a"), false),
            (secret(""), false),
            // A prefix without the trailing slash still matches by whole segments.
            (secret("team/eu"), true),
            (secret("team/eu/x"), true),
            (secret("team/europe/x"), false),
            (secret("team/eux"), false),
            (secret("team"), false),
            // Mounts: the listed ones only, however the slashes fall.
            (Resource::Secret { mount: "kv2", path: "billing/a" }, true),
            (Resource::Secret { mount: "/kv2/", path: "billing/a" }, true),
            (Resource::Secret { mount: "other-kv", path: "billing/a" }, false),
            (Resource::Secret { mount: "secret/billing", path: "a" }, false),
            (Resource::DbRole { mount: "database", role: "billing" }, true),
            (Resource::DbRole { mount: "database", role: "reports" }, false),
            (Resource::DbRole { mount: "db-prod", role: "billing" }, false),
        ];
        for (resource, want) in cases {
            assert_eq!(allowed(Some(&role), *resource), *want, "{resource:?}");
        }
        assert!(allowed(None, Resource::Key("x")));
        // A role without a KV rule is not limited by the gateway, whatever the mount.
        let open = RoleConfig { kv_mounts: vec!["secret".into()], ..RoleConfig::default() };
        assert!(allowed(Some(&open), Resource::Secret { mount: "anything", path: "x" }));
    }

    #[test]
    fn mounts_default_to_the_configured_ones() {
        let text = "listen = \"127.0.0.1:0\"\n[vault]\naddress = \"http://127.0.0.1:1\"\n[mounts]\nkv = \"kv-main\"\n\
                    [roles.r]\nkv_prefixes = [\"billing/\"]\ndb_roles = [\"b\"]\n";
        let config = crate::config::Config::parse(text).unwrap();
        let role = &config.roles["r"];
        assert!(allowed(Some(role), Resource::Secret { mount: "kv-main", path: "billing/x" }));
        assert!(!allowed(Some(role), Resource::Secret { mount: "secret", path: "billing/x" }));
        assert!(allowed(Some(role), Resource::DbRole { mount: "database", role: "b" }));
        assert!(!allowed(Some(role), Resource::DbRole { mount: "db2", role: "b" }));
    }
}
