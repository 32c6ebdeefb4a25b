//! The audit log: one JSON line per call (time, request id, caller, role, RPC, target, item
//! count, result code, latency, the ids of the Vault requests that served it) to a file or stdout. It never holds a plaintext, ciphertext,
//! secret, password, token or JWT: only names the caller chose (key, path, role, lease id).
//!
//! Fail closed, as Vault's audit devices do: when a line cannot be written the call's answer is
//! replaced by `UNAVAILABLE` (configurable), so nothing is served unaudited.

use serde::Serialize;
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// What a call acted on, for the audit line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Target {
    /// Transit key, secret path, database role or lease id.
    pub target: String,
    /// Items in the call (1 for single calls).
    pub items: usize,
}

impl Target {
    /// A call on `what` with `items` items.
    pub fn new(what: &str, items: usize) -> Target {
        Target { target: what.to_string(), items }
    }
}

/// One audit line.
#[derive(Serialize)]
pub struct Entry<'a> {
    /// Unix time in milliseconds.
    pub time_ms: u128,
    /// The call's request id.
    pub request_id: &'a str,
    /// Caller name (`jwt:<iss>#<sub>`), empty when authentication failed.
    pub caller: &'a str,
    /// Mapped Vault role, empty when authentication failed.
    pub role: &'a str,
    /// RPC name.
    pub rpc: &'a str,
    /// What it acted on.
    #[serde(flatten)]
    pub target: &'a Target,
    /// gRPC code name.
    pub code: String,
    /// Latency in milliseconds.
    pub latency_ms: f64,
    /// Vault's `request_id` of every Vault request made for the call (a coalesced call names the
    /// shared batch request), to find the call in Vault's own audit log.
    pub vault_request_ids: &'a [String],
}

/// Where audit lines go.
pub struct AuditLog {
    sink: Mutex<Sink>,
    /// Refuse calls whose line cannot be written.
    pub fail_closed: bool,
}

enum Sink {
    Stdout,
    File(File),
}

impl AuditLog {
    /// Opens the sink: `"stdout"` or a file path (appended to, created if missing).
    pub fn open(destination: &str, fail_closed: bool) -> Result<AuditLog, String> {
        let sink = if destination == "stdout" {
            Sink::Stdout
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(destination))
                .map_err(|e| format!("audit.path: cannot open {destination}: {e}"))?;
            Sink::File(file)
        };
        Ok(AuditLog { sink: Mutex::new(sink), fail_closed })
    }

    /// Writes one line; `Err` when it could not be written whole.
    pub fn write(&self, entry: &Entry<'_>) -> Result<(), String> {
        let mut line = serde_json::to_vec(entry).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let written = match &mut *sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(f) => f.write_all(&line),
        };
        written.map_err(|e| e.to_string())
    }
}

/// Milliseconds since the Unix epoch, for `time_ms`.
pub fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_entry_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(path.to_str().unwrap(), true).unwrap();
        let target = Target::new("billing", 3);
        for rpc in ["Encrypt", "Decrypt"] {
            let entry = Entry {
                time_ms: now_ms(),
                request_id: "r1",
                caller: "jwt:i#billing",
                role: "billing",
                rpc,
                target: &target,
                code: "Ok".into(),
                latency_ms: 1.5,
                vault_request_ids: &["64f4fb62-4fc5-b9a3-e7d9-c16f211bcf92".to_string()],
            };
            log.write(&entry).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["rpc"], "Decrypt");
        assert_eq!(lines[0]["target"], "billing");
        assert_eq!(lines[0]["items"], 3);
        assert_eq!(lines[0]["vault_request_ids"][0], "64f4fb62-4fc5-b9a3-e7d9-c16f211bcf92");
        // A sink that cannot be written reports it (here: /dev/full).
        if Path::new("/dev/full").exists() {
            let full = AuditLog::open("/dev/full", true).unwrap();
            let entry = Entry {
                time_ms: 0,
                request_id: "r",
                caller: "",
                role: "",
                rpc: "Encrypt",
                target: &target,
                code: "Ok".into(),
                latency_ms: 0.0,
                vault_request_ids: &[],
            };
            assert!(full.write(&entry).is_err());
        }
        assert!(AuditLog::open("/nonexistent/dir/audit.log", true).is_err());
    }
}
