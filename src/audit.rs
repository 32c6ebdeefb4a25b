//! The audit log: one JSON line per call (time, request id, caller, role, RPC, target, item
//! count, result code, latency, the ids of the Vault requests that served it) to a file or stdout. It never holds a plaintext, ciphertext,
//! secret, password, token or JWT: only names the caller chose (key, path, role, lease id).
//!
//! Fail closed, as Vault's audit devices do: when a line cannot be written the call's answer is
//! replaced by `UNAVAILABLE` (configurable), so nothing is served unaudited.
//!
//! Group commit: a call's line is appended to a shared buffer (a short lock, no I/O under it);
//! one call at a time writes every line that is ready with one `write` (the leader), while the
//! others wait. When that write ends, every call whose line it carried gets its result, and
//! one of the calls whose lines arrived meanwhile writes the next group. So a call is answered
//! only after its own line was written (or its group failed, and then every call of the group
//! fails), and under load the lines of many calls cost one system call.

use serde::Serialize;
use std::{
    fs::OpenOptions,
    io::Write,
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::Notify;

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
    /// What it acted on (its two fields are the line's `target` and `items`).
    #[serde(flatten)]
    pub target: &'a Target,
    /// gRPC code name.
    pub code: &'a str,
    /// Latency in milliseconds.
    pub latency_ms: f64,
    /// Vault's `request_id` of every Vault request made for the call (a coalesced call names the
    /// shared batch request), to find the call in Vault's own audit log.
    pub vault_request_ids: &'a [String],
}

/// Where audit lines go: written only by the group's leader, one group at a time.
type Sink = Box<dyn Write + Send>;

/// The lines of one group commit and, once written, its result.
#[derive(Default)]
struct Group {
    result: OnceLock<Result<(), String>>,
}

/// Lines waiting for a write, and whether a write is under way.
struct Queue {
    /// Lines not yet handed to a writer (all of them belong to `group`).
    pending: Vec<u8>,
    /// The group of the pending lines.
    group: Arc<Group>,
    /// A leader is writing a group now.
    writing: bool,
    /// The buffer of the last write, kept for the next one (no allocation per group).
    spare: Vec<u8>,
}

/// A written buffer larger than this is not kept for reuse (a burst does not pin its memory).
const KEEP_BUFFER: usize = 1 << 20;

/// The audit log: lines are group-committed to its sink (module doc).
pub struct AuditLog {
    queue: Mutex<Queue>,
    /// Woken after every write: the waiting calls find their result, or lead the next group.
    written: Notify,
    sink: Mutex<Sink>,
    /// Refuse calls whose line cannot be written.
    pub fail_closed: bool,
}

impl AuditLog {
    /// Opens the sink: `"stdout"` or a file path (appended to, created if missing).
    pub fn open(destination: &str, fail_closed: bool) -> Result<AuditLog, String> {
        let sink: Sink = if destination == "stdout" {
            Box::new(std::io::stdout())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(Path::new(destination))
                .map_err(|e| format!("audit.path: cannot open {destination}: {e}"))?;
            Box::new(file)
        };
        Ok(AuditLog::with_sink(sink, fail_closed))
    }

    fn with_sink(sink: Sink, fail_closed: bool) -> AuditLog {
        AuditLog {
            queue: Mutex::new(Queue { pending: Vec::new(), group: Arc::default(), writing: false, spare: Vec::new() }),
            written: Notify::new(),
            sink: Mutex::new(sink),
            fail_closed,
        }
    }

    /// Writes one line and returns once it is written; `Err` when its group could not be
    /// written whole.
    pub async fn write(&self, entry: &Entry<'_>) -> Result<(), String> {
        let group = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let at = q.pending.len();
            if let Err(e) = serde_json::to_writer(&mut q.pending, entry) {
                q.pending.truncate(at);
                return Err(e.to_string());
            }
            q.pending.push(b'\n');
            q.group.clone()
        };
        loop {
            // Registered before the check, so a write that ends in between still wakes us.
            let written = self.written.notified();
            if let Some(result) = group.result.get() {
                return result.clone();
            }
            if let Some(leading) = self.lead() {
                // The calls that are ready now add their lines first: on a one-thread runtime
                // the callers of one Vault batch are woken together, and without this each
                // would lead a write of its own single line.
                tokio::task::yield_now().await;
                let (lines, lead) = leading.take();
                self.commit(lines, &lead);
                if Arc::ptr_eq(&lead, &group) {
                    continue;
                }
            }
            written.await;
        }
    }

    /// Claims the next write when none is under way and lines are pending.
    fn lead(&self) -> Option<Leading<'_>> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.writing || q.pending.is_empty() {
            return None;
        }
        q.writing = true;
        Some(Leading { log: self, taken: false })
    }

    /// Writes one group with one `write_all`, records its result, wakes the waiting calls.
    fn commit(&self, mut lines: Vec<u8>, group: &Group) {
        let result = {
            let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            sink.write_all(&lines).and_then(|()| sink.flush()).map_err(|e| e.to_string())
        };
        let _ = group.result.set(result);
        lines.clear();
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.writing = false;
            if lines.capacity() <= KEEP_BUFFER {
                q.spare = lines;
            }
        }
        self.written.notify_waiters();
    }
}

/// The claim of the next write: its holder takes the pending lines and writes them. A leader
/// dropped before it took them (its call was cancelled while it let others add their lines)
/// writes them as it is dropped, so no line waits for a later call.
struct Leading<'a> {
    log: &'a AuditLog,
    taken: bool,
}

impl Leading<'_> {
    /// The pending lines and their group, for [`AuditLog::commit`].
    fn take(mut self) -> (Vec<u8>, Arc<Group>) {
        self.taken = true;
        self.lines()
    }

    fn lines(&self) -> (Vec<u8>, Arc<Group>) {
        let mut q = self.log.queue.lock().unwrap_or_else(|p| p.into_inner());
        let spare = std::mem::take(&mut q.spare);
        let lines = std::mem::replace(&mut q.pending, spare);
        (lines, std::mem::take(&mut q.group))
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.taken {
            let (lines, group) = self.lines();
            self.log.commit(lines, &group);
        }
    }
}

/// Milliseconds since the Unix epoch, for `time_ms`.
pub fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_json_line_per_entry_and_failures_are_reported() {
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
                code: "Ok",
                latency_ms: 1.5,
                vault_request_ids: &["64f4fb62-4fc5-b9a3-e7d9-c16f211bcf92".to_string()],
            };
            log.write(&entry).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["rpc"], "Decrypt");
        assert_eq!(lines[0]["target"], "billing");
        assert_eq!(lines[0]["items"], 3);
        assert_eq!(lines[0]["vault_request_ids"][0], "64f4fb62-4fc5-b9a3-e7d9-c16f211bcf92");
        // The whole line, byte for byte (field order and names are what operators' parsers see).
        let first = text.lines().next().unwrap();
        let time = lines[0]["time_ms"].as_u64().unwrap();
        assert_eq!(
            first,
            format!(
                "{{\"time_ms\":{time},\"request_id\":\"r1\",\"caller\":\"jwt:i#billing\",\"role\":\"billing\",\
                 \"rpc\":\"Encrypt\",\"target\":\"billing\",\"items\":3,\"code\":\"Ok\",\"latency_ms\":1.5,\
                 \"vault_request_ids\":[\"64f4fb62-4fc5-b9a3-e7d9-c16f211bcf92\"]}}"
            )
        );
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
                code: "Ok",
                latency_ms: 0.0,
                vault_request_ids: &[],
            };
            assert!(full.write(&entry).await.is_err());
        }
        assert!(AuditLog::open("/nonexistent/dir/audit.log", true).is_err());
    }

    /// A sink that records each `write` call, takes `delay` per write (so lines pile up behind
    /// one), and fails while `failing` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        delay: Duration,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.delay);
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("disk full"));
            }
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `n` calls, each writing the line of request id `{prefix}{i}` in a task of its own.
    fn spawn_writes(log: &Arc<AuditLog>, n: usize, prefix: &str) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
        (0..n)
            .map(|i| {
                let (log, id) = (log.clone(), format!("{prefix}{i}"));
                tokio::spawn(async move {
                    let target = Target::new("k", 1);
                    log.write(&entry(&id, &target)).await
                })
            })
            .collect()
    }

    fn entry<'a>(request_id: &'a str, target: &'a Target) -> Entry<'a> {
        Entry {
            time_ms: 0,
            request_id,
            caller: "jwt:i#c",
            role: "r",
            rpc: "Encrypt",
            target,
            code: "Ok",
            latency_ms: 0.1,
            vault_request_ids: &[],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn lines_are_group_committed_and_each_call_waits_for_its_own() {
        let sink = Recorder { delay: Duration::from_millis(20), ..Default::default() };
        let log = Arc::new(AuditLog::with_sink(Box::new(sink.clone()), true));
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let (log, writes) = (log.clone(), sink.writes.clone());
                tokio::spawn(async move {
                    let id = format!("call-{i}");
                    let target = Target::new("k", 1);
                    log.write(&entry(&id, &target)).await.expect("written");
                    // Answered only once its own line is in the sink.
                    let needle = format!("\"request_id\":\"{id}\"");
                    let all = writes.lock().unwrap().concat();
                    assert!(String::from_utf8(all).unwrap().contains(&needle), "{id} answered before written");
                })
            })
            .collect();
        for c in calls {
            c.await.expect("call");
        }
        let writes = sink.writes.lock().unwrap().clone();
        let text = String::from_utf8(writes.concat()).unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "every line exactly once, whole");
        assert_eq!(text.lines().count(), 200);
        // 200 calls behind 20 ms writes: a handful of groups, not a write per line.
        assert!(writes.len() <= 50, "{} writes for 200 lines", writes.len());
        assert!(writes.iter().all(|w| w.ends_with(b"\n")), "a write holds whole lines only");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_call_of_a_failed_group_fails_and_later_groups_succeed() {
        let sink = Recorder { delay: Duration::from_millis(10), ..Default::default() };
        let log = Arc::new(AuditLog::with_sink(Box::new(sink.clone()), true));
        sink.failing.store(true, std::sync::atomic::Ordering::SeqCst);
        let target = Target::new("k", 1);
        for f in spawn_writes(&log, 50, "f") {
            assert_eq!(f.await.unwrap(), Err("disk full".to_string()), "no call of a failed write is answered Ok");
        }
        sink.failing.store(false, std::sync::atomic::Ordering::SeqCst);
        log.write(&entry("after", &target)).await.expect("the sink works again");
        let text = String::from_utf8(sink.writes.lock().unwrap().concat()).unwrap();
        assert_eq!(text.lines().count(), 1, "failed lines are not written later: {text}");
        assert!(text.contains("\"after\""));
    }

    /// One thread (the gateway pinned to one CPU): the callers of one Vault batch are woken
    /// together, and their lines must share a write rather than each lead its own.
    #[tokio::test(flavor = "current_thread")]
    async fn calls_ready_together_on_one_thread_share_one_write() {
        let sink = Recorder::default();
        let log = Arc::new(AuditLog::with_sink(Box::new(sink.clone()), true));
        for c in spawn_writes(&log, 100, "c") {
            c.await.unwrap().expect("written");
        }
        let writes = sink.writes.lock().unwrap().clone();
        assert_eq!(writes.concat().iter().filter(|&&b| b == b'\n').count(), 100, "every line written once");
        assert_eq!(writes.len(), 1, "100 calls ready at once, {} writes", writes.len());
    }

    /// A leader whose call is dropped while it lets the others add their lines still writes
    /// them (its own included): no line waits for a later call.
    #[tokio::test(flavor = "current_thread")]
    async fn a_leader_dropped_before_its_write_writes_the_lines_as_it_goes() {
        let sink = Recorder::default();
        let log = AuditLog::with_sink(Box::new(sink.clone()), true);
        let target = Target::new("k", 1);
        let line = entry("dropped", &target);
        let mut leader = Box::pin(log.write(&line));
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(leader.as_mut(), cx))).await;
        assert!(first.is_pending(), "the leader yields before it writes");
        assert!(sink.writes.lock().unwrap().is_empty(), "nothing written before the leader is dropped");
        drop(leader);
        let text = String::from_utf8(sink.writes.lock().unwrap().concat()).unwrap();
        assert!(text.contains("\"dropped\""), "the dropped leader's line was written: {text:?}");
        log.write(&entry("next", &target)).await.expect("a later call leads its own write");
        assert_eq!(sink.writes.lock().unwrap().len(), 2);
    }
}
