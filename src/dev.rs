//! `vaultgate dev`: the embedded default. Starts a local OpenBao dev server and (where PostgreSQL
//! is installed) a throwaway PostgreSQL, sets them up for two demo callers, writes the files
//! contract §4 lists, serves the gateway, and stops everything it started on SIGINT/SIGTERM.
//!
//! Dev mode shows everything: the metrics endpoint is on (its address is printed next to `ready`
//! and written to `DIR/metrics-addr`), and the gateway's audit log is `DIR/gateway-audit.log`
//! (`DIR/audit.log` is OpenBao's own audit device).

pub mod certs;
pub mod issuer;
pub mod process;
pub mod provision;

use crate::{config::Config, vault};
use process::{Bao, Postgres};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

/// The SPIFFE ID of dev mode's demo certificate caller (`--mtls`).
pub const DEMO_SPIFFE_ID: &str = "spiffe://vaultgate.dev/ns/billing/sa/api";

/// The name of the demo issuer's `[issuers.<name>]` table in the config dev mode writes.
pub const DEV_ISSUER: &str = "dev";

/// How long the demo callers' JWTs are valid.
pub const DEMO_JWT_TTL_SECS: i64 = 7 * 24 * 3600;

/// A running, provisioned local stack (OpenBao, maybe PostgreSQL) and the demo issuer.
pub struct Stack {
    /// The OpenBao dev server.
    pub bao: Bao,
    /// PostgreSQL, when installed.
    pub postgres: Option<Postgres>,
    /// The demo JWT issuer.
    pub issuer: issuer::Issuer,
    /// Vault's root token: for setting up and inspecting Vault only, never for serving.
    pub root_token: String,
}

fn random_token() -> String {
    use sha2::{Digest, Sha256};
    let seed = format!("{:?}{:?}{}", std::time::SystemTime::now(), std::thread::current().id(), std::process::id());
    format!("root-{}", &hex(&Sha256::digest(seed.as_bytes()))[..24])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Stack {
    /// Starts and provisions OpenBao and PostgreSQL, keeping their logs and data in `dir`.
    pub async fn start(dir: &Path) -> Result<Stack, String> {
        let root_token = random_token();
        let bao = Bao::start(&process::find_bao()?, dir, &root_token).await?;
        let postgres = match Postgres::start(dir, &random_token()).await {
            Ok(pg) => pg,
            Err(e) => {
                bao.stop().await;
                return Err(e);
            }
        };
        if postgres.is_none() {
            tracing::warn!("PostgreSQL (initdb, pg_ctl) not found: the database engine is not set up");
        }
        let stack = Stack { bao, postgres, issuer: issuer::Issuer::generate()?, root_token };
        let client = stack.admin_client()?;
        let admin = provision::Admin { vault: &client, root: vault::VaultToken::new(stack.root_token.as_str()) };
        let pg = stack.postgres.as_ref().map(|p| provision::PgTarget { port: p.port, password: p.password.clone() });
        if let Err(e) = provision::provision(&admin, &stack.issuer.public_pem, pg.as_ref()).await {
            stack.stop().await;
            return Err(e);
        }
        Ok(stack)
    }

    /// A Vault client for the stack's OpenBao.
    pub fn admin_client(&self) -> Result<vault::Client, String> {
        vault::Client::new(
            &vault::ClientConfig::single(self.bao.addr.parse().map_err(|e| format!("{e}"))?),
            Default::default(),
        )
    }

    /// The gateway config for this stack: demo callers mapped by JWT subject to their roles, the
    /// audit log at `audit` (a file path or `stdout`), metrics on `metrics` when given.
    pub fn config_toml(&self, listen: SocketAddr, audit: &Path, metrics: Option<SocketAddr>) -> String {
        let metrics = metrics.map(|m| format!("metrics_listen = \"{m}\"\n")).unwrap_or_default();
        let mut text = format!(
            "# Written by `vaultgate dev`: the gateway config for the local demo stack.\nlisten = \"{listen}\"\n{metrics}\n[vault]\naddress = \"{}\"\n\n[shutdown]\ngrace_ms = 0\ndrain_timeout_ms = 5000\n\n[audit]\npath = {:?}\n\n",
            self.bao.addr,
            audit.to_string_lossy(),
        );
        // The demo issuer's public key: the gateway verifies every demo JWT itself before a login.
        text.push_str(&format!(
            "[issuers.{DEV_ISSUER}]\nissuer = \"{}\"\naudiences = [\"{}\"]\njwt_validation_pubkeys = ['''\n{}''']\n\n",
            issuer::ISSUER,
            issuer::AUDIENCE,
            self.issuer.public_pem.trim_end().to_string() + "\n"
        ));
        for (name, _) in provision::CALLERS {
            text.push_str(&format!(
                "[[callers]]\nrole = \"{name}\"\nclaim = \"sub\"\nequals = \"{name}\"\nverify_with = \"{DEV_ISSUER}\"\n\n"
            ));
        }
        text
    }

    /// Writes the files of contract §4 into `dir`: `config` is the gateway's config text, served
    /// with its metrics endpoint at `metrics`.
    pub fn write_files(&self, dir: &Path, config: &str, metrics: SocketAddr) -> Result<(), String> {
        let w = |p: PathBuf, text: &str| std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()));
        std::fs::create_dir_all(dir.join("callers")).map_err(|e| e.to_string())?;
        w(dir.join("vaultgate.toml"), config)?;
        w(dir.join("metrics-addr"), &metrics.to_string())?;
        for (name, _) in provision::CALLERS {
            w(dir.join(format!("callers/{name}.jwt")), &self.issuer.mint(name, DEMO_JWT_TTL_SECS)?)?;
        }
        w(dir.join("vault-addr"), &self.bao.addr)?;
        let pg_addr = self.postgres.as_ref().map(|p| format!("127.0.0.1:{}", p.port)).unwrap_or_default();
        w(dir.join("postgres-addr"), &pg_addr)?;
        w(dir.join("root-token"), &self.root_token)?;
        Ok(())
    }

    /// Sets up the demo certificate caller and returns the config lines that turn the listener into
    /// TLS with optional client certificates: a CA, a server certificate for `localhost` and
    /// `127.0.0.1` (`DIR/tls/`), the client certificate `DIR/callers/billing-cert.pem` (+ `-key.pem`)
    /// with SPIFFE ID [`DEMO_SPIFFE_ID`], and an AppRole role `billing-cert` with the `billing`
    /// policy whose role_id/secret_id files the gateway reads (`DIR/approle/`).
    pub async fn enable_mtls(&self, dir: &Path) -> Result<String, String> {
        let w = |p: PathBuf, text: &str| std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()));
        for sub in ["tls", "approle", "callers"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.join(sub).display()))?;
        }
        let ca = certs::Ca::new("vaultgate dev CA")?;
        let server = ca.server()?;
        let client = ca.client(&certs::ClientNames { uri: Some(DEMO_SPIFFE_ID), ..Default::default() })?;
        w(dir.join("tls/ca.pem"), &ca.cert_pem())?;
        w(dir.join("tls/server.pem"), &server.cert_pem)?;
        w(dir.join("tls/server-key.pem"), &server.key_pem)?;
        w(dir.join("callers/billing-cert.pem"), &client.cert_pem)?;
        w(dir.join("callers/billing-cert-key.pem"), &client.key_pem)?;
        let client = self.admin_client()?;
        let admin = provision::Admin { vault: &client, root: vault::VaultToken::new(self.root_token.as_str()) };
        let (role_id, secret_id) = provision::approle(&admin, "billing-cert", "billing").await?;
        w(dir.join("approle/billing-cert.role-id"), &role_id)?;
        w(dir.join("approle/billing-cert.secret-id"), &secret_id)?;
        let file = |p: &str| format!("{:?}", dir.join(p).to_string_lossy());
        Ok(format!(
            "[tls]\ncert = {}\nkey = {}\nclient_ca = {}\n\n[roles.billing-cert]\nrole_id_file = {}\nsecret_id_file = {}\ntransit_keys = [\"billing\"]\nkv_prefixes = [\"billing/\"]\ndb_roles = [\"billing\"]\n\n[[cert_callers]]\nrole = \"billing-cert\"\nuri = \"{DEMO_SPIFFE_ID}\"\n",
            file("tls/server.pem"),
            file("tls/server-key.pem"),
            file("tls/ca.pem"),
            file("approle/billing-cert.role-id"),
            file("approle/billing-cert.secret-id"),
        ))
    }

    /// Stops PostgreSQL and OpenBao.
    pub async fn stop(self) {
        if let Some(pg) = self.postgres {
            pg.stop().await;
        }
        self.bao.stop().await;
    }
}

/// Runs dev mode until SIGINT/SIGTERM. With `dir` unset, a temporary directory is used and removed
/// at exit; a directory the user named is kept. `mtls`: the listener serves TLS with optional
/// client certificates, and a demo certificate caller is set up (see [`Stack::enable_mtls`]).
/// `metrics`: where the metrics endpoint listens (port 0: any free port; printed and written to
/// `DIR/metrics-addr`).
pub async fn run(dir: Option<PathBuf>, listen: SocketAddr, metrics: SocketAddr, mtls: bool) -> Result<(), String> {
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (std::env::temp_dir().join(format!("vaultgate-dev-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir).map_err(|e| e.to_string())?;
    let stack = Stack::start(&dir).await?;
    let tls = match mtls {
        true => match stack.enable_mtls(&dir).await {
            Ok(toml) => Some(toml),
            Err(e) => {
                stack.stop().await;
                return Err(e);
            }
        },
        false => None,
    };
    let result = serve(&stack, &dir, (listen, metrics), tls.as_deref()).await;
    stack.stop().await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn serve(
    stack: &Stack,
    dir: &Path,
    (listen, metrics): (SocketAddr, SocketAddr),
    tls: Option<&str>,
) -> Result<(), String> {
    let bind = |addr: SocketAddr, what: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
    };
    let listener = bind(listen, "--listen").await?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Bound here rather than by the server from `metrics_listen`, so port 0 can be printed.
    let metrics_listener = bind(metrics, "--metrics-listen").await?;
    let metrics_addr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
    let mut toml = stack.config_toml(addr, &dir.join("gateway-audit.log"), Some(metrics_addr));
    if let Some(tls) = tls {
        toml.push_str(tls);
    }
    stack.write_files(dir, &toml, metrics_addr)?;
    let mut config = Config::parse(&toml)?;
    config.metrics_listen = None;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let metrics_task = tokio::spawn(crate::metrics::serve(metrics_listener, metrics.clone()));
    println!("vaultgate dev: files in {}", dir.display());
    println!(
        "ready {addr} (metrics: http://{metrics_addr}/metrics, audit log: {})",
        dir.join("gateway-audit.log").display()
    );
    let result = crate::server::run(listener, Arc::new(config), metrics, shutdown_signal()).await;
    metrics_task.abort();
    result
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
