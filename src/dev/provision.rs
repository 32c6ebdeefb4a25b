//! Sets up a fresh Vault for the demo with its root token: Transit keys (and `billing-signing`,
//! ed25519), KV seed data, the database engine on PostgreSQL, the PKI engine with a root CA and a
//! PKI role per caller, JWT auth trusting the demo issuer, and one least-privilege policy and JWT
//! role per demo caller (contract §4). Integration tests reuse it.

use super::issuer::{AUDIENCE, ISSUER};
use crate::vault::{Call, Client, VaultToken};
use reqwest::Method;
use serde_json::{json, Value};

/// The two demo callers: name, and whether it may get database credentials.
pub const CALLERS: [(&str, bool); 2] = [("billing", true), ("reports", false)];

/// The Transit key (ed25519) that only `billing` may sign and verify with.
pub const SIGNING_KEY: &str = "billing-signing";

/// Common name of the dev PKI mount's root CA.
pub const ROOT_CA: &str = "vaultgate dev root CA";

/// The DNS domain under which a demo caller's PKI role issues certificates.
pub fn cert_domain(name: &str) -> String {
    format!("{name}.svc.cluster.local")
}

/// Where the demo's PostgreSQL listens (`Debug` redacts the password).
#[derive(Clone)]
pub struct PgTarget {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Password of the `postgres` superuser, which Vault uses to create users.
    pub password: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget").field("port", &self.port).field("password", &"<redacted>").finish()
    }
}

/// An admin session on Vault with the root token; used only to set Vault up, never to serve.
pub struct Admin<'a> {
    /// The Vault client.
    pub vault: &'a Client,
    /// The root token.
    pub root: VaultToken,
}

impl Admin<'_> {
    /// `POST /v1/<path>` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<(), String> {
        self.vault
            .call_empty(Call::new(Method::POST, "setup", &[path]), Some(&self.root), Some(&body), None)
            .await
            .map_err(|e| format!("setting up Vault ({path}): {e:?}"))
    }

    /// `GET /v1/<path>` and return its `data`.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let env = self
            .vault
            .call::<(), Value>(Call::new(Method::GET, "setup", &[path]), Some(&self.root), None, None)
            .await
            .map_err(|e| format!("reading Vault ({path}): {e:?}"))?;
        Ok(env.data.unwrap_or(Value::Null))
    }

    /// `POST /v1/<path>` with a JSON body, returning the answer's `data`.
    pub async fn post_json(&self, path: &str, body: Value) -> Result<Value, String> {
        let env = self
            .vault
            .call::<Value, Value>(Call::new(Method::POST, "setup", &[path]), Some(&self.root), Some(&body), None)
            .await
            .map_err(|e| format!("setting up Vault ({path}): {e:?}"))?;
        Ok(env.data.unwrap_or(Value::Null))
    }
}

/// The ACL policy of one demo caller: its own key, its own KV folder, its own database role.
pub fn policy(name: &str, database: bool) -> String {
    let mut p = format!(
        r#"# Demo caller {name}: only its own Transit key, KV folder and database role.
path "transit/encrypt/{name}" {{ capabilities = ["update"] }}
path "transit/decrypt/{name}" {{ capabilities = ["update"] }}
path "transit/rewrap/{name}" {{ capabilities = ["update"] }}
path "transit/datakey/plaintext/{name}" {{ capabilities = ["update"] }}
path "transit/datakey/wrapped/{name}" {{ capabilities = ["update"] }}
path "transit/keys/{name}" {{ capabilities = ["read"] }}
path "transit/keys/{name}/rotate" {{ capabilities = ["update"] }}
path "transit/hmac/{name}" {{ capabilities = ["update"] }}
path "transit/verify/{name}" {{ capabilities = ["update"] }}
path "secret/data/{name}/*" {{ capabilities = ["read"] }}
path "secret/metadata/{name}/*" {{ capabilities = ["read", "list"] }}
path "pki/issue/{name}" {{ capabilities = ["update"] }}
path "pki/sign/{name}" {{ capabilities = ["update"] }}
path "pki/revoke-with-key" {{ capabilities = ["update"] }}
"#
    );
    if name == "billing" {
        p.push_str(&format!(
            "path \"transit/sign/{SIGNING_KEY}\" {{ capabilities = [\"update\"] }}\npath \"transit/verify/{SIGNING_KEY}\" {{ capabilities = [\"update\"] }}\npath \"transit/keys/{SIGNING_KEY}\" {{ capabilities = [\"read\"] }}\n"
        ));
    }
    if database {
        p.push_str(&format!(
            "path \"database/creds/{name}\" {{ capabilities = [\"read\"] }}\npath \"sys/leases/revoke\" {{ capabilities = [\"update\"] }}\n"
        ));
    }
    p
}

/// Runs the whole demo setup. `pg` is `None` when PostgreSQL is not installed (no database engine).
pub async fn provision(admin: &Admin<'_>, issuer_public_pem: &str, pg: Option<&PgTarget>) -> Result<(), String> {
    admin.post("sys/mounts/transit", json!({"type": "transit"})).await?;
    for (name, _) in CALLERS {
        admin.post(&format!("transit/keys/{name}"), json!({"type": "aes256-gcm96"})).await?;
    }
    admin.post(&format!("transit/keys/{SIGNING_KEY}"), json!({"type": "ed25519"})).await?;
    pki(admin).await?;
    admin.post("secret/data/billing/api-keys", json!({"data": {"stripe_key": "sk_test_demo"}})).await?;
    admin.post("secret/data/reports/config", json!({"data": {"schedule": "daily"}})).await?;
    if let Some(pg) = pg {
        admin.post("sys/mounts/database", json!({"type": "database"})).await?;
        admin
            .post(
                "database/config/postgres",
                json!({
                    "plugin_name": "postgresql-database-plugin",
                    "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port),
                    "username": "postgres",
                    "password": pg.password,
                    "allowed_roles": ["billing"],
                }),
            )
            .await?;
        admin
            .post(
                "database/roles/billing",
                json!({
                    "db_name": "postgres",
                    "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                    "default_ttl": "1h",
                    "max_ttl": "24h",
                }),
            )
            .await?;
    }
    admin.post("sys/auth/jwt", json!({"type": "jwt"})).await?;
    admin
        .post("auth/jwt/config", json!({"jwt_validation_pubkeys": [issuer_public_pem], "bound_issuer": ISSUER}))
        .await?;
    for (name, database) in CALLERS {
        admin
            .post(&format!("sys/policies/acl/{name}"), json!({"policy": policy(name, database && pg.is_some())}))
            .await?;
        admin.post(&format!("auth/jwt/role/{name}"), jwt_role(name, "1h", "24h")).await?;
    }
    Ok(())
}

/// The PKI engine at `pki/`: a root CA (dev only: production signs an intermediate with a
/// separate root, see deploy/openbao/setup.sh) and one role per demo caller that issues only
/// for names under `<caller>.svc.cluster.local` (and IP SANs on loopback), EC P-256 keys, 24 h
/// by default, 72 h at most.
async fn pki(admin: &Admin<'_>) -> Result<(), String> {
    admin.post("sys/mounts/pki", json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}})).await?;
    admin
        .post_json("pki/root/generate/internal", json!({"common_name": ROOT_CA, "key_type": "ec", "ttl": "87600h"}))
        .await?;
    for (name, _) in CALLERS {
        admin
            .post(
                &format!("pki/roles/{name}"),
                json!({
                    "allowed_domains": [cert_domain(name)],
                    "allow_subdomains": true,
                    "allow_bare_domains": false,
                    "allow_localhost": false,
                    "allow_ip_sans": true,
                    "allowed_ip_sans_cidr": ["127.0.0.0/8", "::1/128"],
                    "key_type": "ec",
                    "key_bits": 256,
                    "ttl": "24h",
                    "max_ttl": "72h",
                }),
            )
            .await?;
    }
    Ok(())
}

/// Enables AppRole auth (at `approle/`) and a role `name` with `policy`; returns its role_id and a
/// fresh secret_id, for the gateway's own login on behalf of certificate callers.
pub async fn approle(admin: &Admin<'_>, name: &str, policy: &str) -> Result<(String, String), String> {
    admin.post("sys/auth/approle", json!({"type": "approle"})).await?;
    admin
        .post(
            &format!("auth/approle/role/{name}"),
            json!({"token_policies": [policy], "token_ttl": "1h", "token_max_ttl": "24h", "secret_id_ttl": "0"}),
        )
        .await?;
    let id = admin.get(&format!("auth/approle/role/{name}/role-id")).await?;
    let role_id = id["role_id"].as_str().ok_or("approle: no role_id in the answer")?.to_string();
    let secret = admin.post_json(&format!("auth/approle/role/{name}/secret-id"), json!({})).await?;
    let secret_id = secret["secret_id"].as_str().ok_or("approle: no secret_id in the answer")?.to_string();
    Ok((role_id, secret_id))
}

/// A JWT auth role that admits only JWTs of the demo issuer for `subject`, with its own policy.
/// `token_max_ttl` must be at least the database role's `max_ttl` (see `leases.rs`).
pub fn jwt_role(subject: &str, ttl: &str, max_ttl: &str) -> Value {
    json!({
        "role_type": "jwt",
        "user_claim": "sub",
        "bound_subject": subject,
        "bound_audiences": [AUDIENCE],
        "token_policies": [subject],
        "token_ttl": ttl,
        "token_max_ttl": max_ttl,
        "token_type": "service",
    })
}
