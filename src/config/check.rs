//! `vaultgate check-config FILE [--print]`: every problem of a config file at once (line, key,
//! why), and the effective config with every default filled in and secrets redacted.
//!
//! [`Config::parse`] stops at the first problem, which is all start-up needs. To name every one
//! without a second list of rules that could drift from it, the checker asks `Config::parse` (and
//! its TOML deserializer) for the first problem, takes what the problem names out of the document
//! (the key; or, when the key is absent, the array element or table it belongs to) and asks again,
//! until the rest is valid or nothing more can be taken out. Every problem reported is one that
//! `vaultgate serve` would refuse to start with. Keys are reported in the file's own terms (an
//! element of `[[callers]]` keeps its index in the file after earlier ones were taken out) with
//! the line they are on. A problem that only exists because an earlier key was taken out (a
//! required key missing) is never reported: checking stops there, and says so.
//!
//! Invariant: nothing is started or contacted; the only file read besides FILE is what
//! `Config::parse` reads itself (`vault.ca_cert`).

use super::{Config, RawConfig};
use std::{collections::BTreeMap, fmt, ops::Range, path::Path};
use toml::{de::DeValue, Spanned, Table, Value};

/// One problem: where it is and why it is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key (or of the table it belongs to) in the file, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `vault.address`, `callers[1].method`; empty for a syntax error.
    pub key: String,
    /// Why it is wrong, and what to do.
    pub why: String,
}

impl fmt::Display for Problem {
    /// `LINE: KEY: WHY`, for `FILE:LINE: KEY: WHY` lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{line}: ")?,
            None => write!(f, " ")?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.why)
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Key(String),
    Index(usize),
}

type KeyPath = Vec<Seg>;

fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses the key of a `Config::parse` message (`callers[0].equals`, `roles."a b".x`) into
/// segments; a dotted run that is one key in the document (a role named `a.b`) is rejoined while
/// walking it (see [`resolve`]).
fn parse_key(key: &str) -> Option<KeyPath> {
    let mut path = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"')?;
            path.push(Seg::Key(quoted[..end].to_string()));
            rest = &quoted[end + 1..];
        } else if let Some(index) = rest.strip_prefix('[') {
            let end = index.find(']')?;
            path.push(Seg::Index(index[..end].parse().ok()?));
            rest = &index[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let name = &rest[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_@".contains(&b)) {
                return None;
            }
            path.push(Seg::Key(name.to_string()));
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    (!path.is_empty()).then_some(path)
}

/// Splits a `Config::parse` message `KEY: WHY` into its key path and reason.
fn split_message(message: &str) -> (Option<KeyPath>, String) {
    match message.split_once(": ") {
        Some((key, why)) => match parse_key(key) {
            Some(path) => (Some(path), why.to_string()),
            None => (None, message.to_string()),
        },
        None => (None, message.to_string()),
    }
}

/// Maps `path` as written in a message onto the document: a run of keys that is not found is
/// tried joined with dots (role names may contain them). Returns the path as found, plus how far
/// it got when the rest does not exist.
fn resolve(doc: &Table, path: &[Seg]) -> (KeyPath, bool) {
    let mut found = Vec::new();
    let mut at: Option<&Value> = None;
    let mut i = 0;
    while i < path.len() {
        let next = match (&path[i], at) {
            (Seg::Index(n), Some(Value::Array(items))) => items.get(*n).map(|v| (Seg::Index(*n), v, 1)),
            (Seg::Key(_), _) => {
                let table = match at {
                    None => Some(doc),
                    Some(Value::Table(t)) => Some(t),
                    _ => None,
                };
                table.and_then(|t| {
                    // The shortest run of dotted segments that names a key of this table.
                    let mut name = String::new();
                    for (j, seg) in path[i..].iter().enumerate() {
                        let Seg::Key(k) = seg else { return None };
                        if j > 0 {
                            name.push('.');
                        }
                        name.push_str(k);
                        if let Some(v) = t.get(&name) {
                            return Some((Seg::Key(name.clone()), v, j + 1));
                        }
                    }
                    None
                })
            }
            _ => None,
        };
        match next {
            Some((seg, value, used)) => {
                found.push(seg);
                at = Some(value);
                i += used;
            }
            None => return (found, false),
        }
    }
    (found, true)
}

/// Valid values of the keys every config needs, put in place of wrong ones so that checking can
/// go on past them.
const STAND_INS: &str = "listen = \"127.0.0.1:0\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n";

/// Replaces the value at `path` by its stand-in; false when it has none (or has it already).
fn stand_in(doc: &mut Table, path: &[Seg]) -> bool {
    let Ok(stand_ins) = toml::from_str::<Table>(STAND_INS) else { return false };
    let keys: Option<Vec<&str>> =
        path.iter().map(|s| if let Seg::Key(k) = s { Some(k.as_str()) } else { None }).collect();
    let Some((last, parents)) = keys.as_deref().and_then(|k| k.split_last()) else { return false };
    let mut from = &stand_ins;
    let mut to = doc;
    for k in parents {
        match (from.get(*k), to.get_mut(*k)) {
            (Some(Value::Table(f)), Some(Value::Table(t))) => (from, to) = (f, t),
            _ => return false,
        }
    }
    match from.get(*last) {
        Some(value) if to.get(*last) != Some(value) => {
            to.insert((*last).to_string(), value.clone());
            true
        }
        _ => false,
    }
}

/// Takes the value at `path` (which exists) out of the document.
fn take_out(doc: &mut Table, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut at: &mut Value = match parents.first() {
        None => {
            return match last {
                Seg::Key(k) => doc.remove(k).is_some(),
                Seg::Index(_) => false,
            }
        }
        Some(Seg::Key(k)) => match doc.get_mut(k) {
            Some(v) => v,
            None => return false,
        },
        Some(Seg::Index(_)) => return false,
    };
    for seg in &parents[1..] {
        let next = match (seg, at) {
            (Seg::Key(k), Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Seg::Key(k), Value::Table(t)) => t.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// An entry of a table or an element of an array of a parsed document.
struct Child<'a, 'i> {
    seg: Seg,
    /// The key's span (none for an array element).
    key_span: Option<Range<usize>>,
    value: &'a Spanned<DeValue<'i>>,
}

fn children<'a, 'i>(value: &'a DeValue<'i>) -> Vec<Child<'a, 'i>> {
    match value {
        DeValue::Table(t) => t
            .iter()
            .map(|(k, v)| Child { seg: Seg::Key(k.get_ref().to_string()), key_span: Some(k.span()), value: v })
            .collect(),
        DeValue::Array(items) => {
            items.iter().enumerate().map(|(i, v)| Child { seg: Seg::Index(i), key_span: None, value: v }).collect()
        }
        _ => Vec::new(),
    }
}

/// The deepest key path whose key or value covers `offset` (for the TOML deserializer's errors,
/// which carry a span but no key). Tables are searched whatever their own span: a `[table]`'s
/// span may cover its header only.
fn path_at(root: &DeValue<'_>, offset: usize) -> Option<KeyPath> {
    for child in children(root) {
        if let Some(mut deeper) = path_at(child.value.get_ref(), offset) {
            deeper.insert(0, child.seg);
            return Some(deeper);
        }
        if child.key_span.is_some_and(|s| contains(&s, offset)) || contains(&child.value.span(), offset) {
            return Some(vec![child.seg]);
        }
    }
    None
}

/// The path of the table whose span is exactly `span` (a table a `missing field` error names).
fn table_at(root: &DeValue<'_>, span: &Range<usize>) -> Option<KeyPath> {
    for child in children(root) {
        if matches!(child.value.get_ref(), DeValue::Table(_)) && child.value.span() == *span {
            return Some(vec![child.seg]);
        }
        if let Some(mut deeper) = table_at(child.value.get_ref(), span) {
            deeper.insert(0, child.seg);
            return Some(deeper);
        }
    }
    None
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// 1-based line of `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The line of every key path of the original document, to report problems there.
fn lines_of(text: &str, root: &DeValue<'_>) -> BTreeMap<KeyPath, usize> {
    fn walk(text: &str, value: &DeValue<'_>, path: &mut KeyPath, out: &mut BTreeMap<KeyPath, usize>) {
        for child in children(value) {
            path.push(child.seg);
            out.insert(path.clone(), line_of(text, child.key_span.unwrap_or(child.value.span()).start));
            walk(text, child.value.get_ref(), path, out);
            path.pop();
        }
    }
    let mut out = BTreeMap::new();
    walk(text, root, &mut Vec::new(), &mut out);
    out
}

/// Array elements taken out so far, to translate indices of the working document back to the
/// file's: for each array (by its path in file terms), the file indices taken out.
#[derive(Default)]
struct TakenOut(BTreeMap<KeyPath, Vec<usize>>);

impl TakenOut {
    /// The file's path for a path of the working document.
    fn to_file(&self, path: &[Seg]) -> KeyPath {
        let mut out: KeyPath = Vec::with_capacity(path.len());
        for seg in path {
            match seg {
                Seg::Index(work) => {
                    let gone = self.0.get(&out).map_or(&[][..], |v| v.as_slice());
                    let file = (0..).filter(|i| !gone.contains(i)).nth(*work).unwrap_or(*work);
                    out.push(Seg::Index(file));
                }
                key => out.push(key.clone()),
            }
        }
        out
    }

    fn record(&mut self, file_path: &[Seg]) {
        if let Some((Seg::Index(i), array)) = file_path.split_last() {
            self.0.entry(array.to_vec()).or_default().push(*i);
        }
    }
}

/// The first problem of the working document, with its key path (working terms) when it names one.
fn first_problem(work: &Table) -> Result<Config, (Option<KeyPath>, String)> {
    let text = toml::to_string(work).map_err(|e| (None, format!("cannot re-serialize the document: {e}")))?;
    if let Err(e) = toml::from_str::<RawConfig>(&text) {
        let why = e.message().trim().to_string();
        let missing = why.strip_prefix("missing field `").and_then(|r| r.split('`').next());
        let parsed = toml::de::DeTable::parse(&text).map(|t| (t.span(), DeValue::Table(t.into_inner())));
        let path = match (e.span(), parsed, missing) {
            // `missing field `x``: the span is the table's (the whole document's for the top
            // level); the key is that table's `x`.
            (Some(span), Ok((whole, root)), Some(field)) => {
                let mut path = match span == whole {
                    true => Vec::new(),
                    false => table_at(&root, &span).or_else(|| path_at(&root, span.start)).unwrap_or_default(),
                };
                path.push(Seg::Key(field.to_string()));
                path
            }
            (Some(span), Ok((_, root)), None) => {
                let mut path = path_at(&root, span.start).unwrap_or_default();
                // `unknown field `x``: the key is `x`, even when the span also covers what is
                // inside it (a dotted header such as `[x.y]`).
                let unknown = why.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
                if let Some(at) = unknown.and_then(|x| path.iter().rposition(|s| *s == Seg::Key(x.to_string()))) {
                    path.truncate(at + 1);
                }
                path
            }
            _ => Vec::new(),
        };
        return Err(((!path.is_empty()).then_some(path), why));
    }
    Config::parse(&text).map_err(|message| split_message(&message))
}

/// Checks config text: the config, or every problem found (see the module doc), in file order.
pub fn check(text: &str) -> Result<Config, Vec<Problem>> {
    check_unsorted(text).map_err(|mut problems| {
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        problems
    })
}

fn check_unsorted(text: &str) -> Result<Config, Vec<Problem>> {
    let original = match toml::de::DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Problem {
                line: e.span().map(|s| line_of(text, s.start)),
                key: String::new(),
                why: format!("not valid TOML: {}", e.message().trim()),
            }]);
        }
    };
    let lines = lines_of(text, &DeValue::Table(original.into_inner()));
    let mut work: Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => return Err(vec![Problem { line: None, key: String::new(), why: e.message().trim().to_string() }]),
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut taken = TakenOut::default();
    let mut taken_paths: Vec<KeyPath> = Vec::new();
    // Each round takes something out of the document, so this ends; the bound is a backstop.
    for _ in 0..1000 {
        let (path, why) = match first_problem(&work) {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => return Err(problems),
            Err(p) => p,
        };
        let Some(path) = path else {
            problems.push(Problem { line: None, key: String::new(), why });
            return Err(problems);
        };
        let (found, whole) = resolve(&work, &path);
        let file_path = taken.to_file(if whole { &found } else { &path });
        let touched = |t: &KeyPath| file_path.starts_with(t) || why.contains(&format!("{} ", render(t)));
        if taken_paths.iter().any(touched) {
            // Only missing because an earlier problem's key was taken out: not a problem of the file.
            problems.push(Problem {
                line: None,
                key: String::new(),
                why: format!("checking stopped at {}: fix the problems above and check again", render(&file_path)),
            });
            return Err(problems);
        }
        let line = (0..=file_path.len()).rev().find_map(|n| lines.get(&file_path[..n]).copied());
        problems.push(Problem { line, key: render(&file_path), why });
        // A required key gets a valid stand-in; any other is taken out, or, when it is absent, the
        // deepest element or table it belongs to.
        let target_file = taken.to_file(&found);
        if whole && stand_in(&mut work, &found) {
            taken_paths.push(target_file);
            continue;
        }
        if found.is_empty() || !take_out(&mut work, &found) {
            return Err(problems);
        }
        taken.record(&target_file);
        taken_paths.push(target_file);
    }
    Err(problems)
}

/// Reads and checks `file`; on success, the effective config as TOML with secrets redacted.
pub fn check_file(file: &Path) -> Result<String, Vec<Problem>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![Problem { line: None, key: String::new(), why: format!("cannot read the file: {e}") }])?;
    check(&text)?;
    effective(&text).map_err(|why| vec![Problem { line: None, key: String::new(), why }])
}

/// Keys whose values are secrets (none is read inline today; this keeps `--print` safe when one is).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let by_name =
        ["password", "secret", "token", "private_key", "passphrase", "credential"].iter().any(|s| k.contains(s));
    // A file path names where a secret is, not the secret.
    by_name && !k.ends_with("_file") && !k.ends_with("_path")
}

fn redact(value: &mut Value, key: &str) {
    match value {
        Value::String(s) if is_secret_key(key) => *s = "<redacted>".into(),
        Value::String(s) => {
            // Credentials in a URL (`https://user:pass@host`) are secrets too.
            if let Ok(mut url) = reqwest::Url::parse(s) {
                if url.password().is_some() && url.set_password(Some("redacted")).is_ok() {
                    *s = url.to_string();
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, key)),
        Value::Table(t) => t.iter_mut().for_each(|(k, v)| redact(v, k)),
        _ => {}
    }
}

/// The effective config of valid `text`: every table with its defaults, secrets redacted.
pub fn effective(text: &str) -> Result<String, String> {
    let mut raw: RawConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
    raw.fill_defaults();
    let mut table = Table::try_from(&raw).map_err(|e| format!("cannot print the config: {e}"))?;
    table.iter_mut().for_each(|(k, v)| redact(v, k));
    let body = toml::to_string(&table).map_err(|e| format!("cannot print the config: {e}"))?;
    Ok(format!("# Effective config: every default filled in, secrets redacted.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listen = \"127.0.0.1:0\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n";

    fn problems(text: &str) -> Vec<String> {
        check(text).err().unwrap_or_default().iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_valid_config_has_no_problem() {
        assert!(check(MINIMAL).is_ok());
        let k8s = include_str!("../../deploy/kubernetes/base/vaultgate.toml")
            .replace("ca_cert = \"/etc/vaultgate/openbao-ca.crt\"", "")
            .replace("jwks_ca_cert = \"/etc/vaultgate/kube-ca.crt\"", "");
        assert_eq!(problems(&k8s), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_named_with_its_line_and_key() {
        // Problems of five kinds: an unknown key, a wrong type, bad values, a missing pair, a missing key.
        let text = "listen = \"nope\"\ntypo = 1\n[vault]\naddress = \"ftp://x\"\ntimeout_ms = \"soon\"\n\
                    [batch]\nmax_in_flight = 0\n\n[[callers]]\nrole = \"a\"\nequals = \"a\"\n\n\
                    [[callers]]\nrole = \"b\"\n\n[[callers]]\nrole = \"c\"\nequals = \"c\"\nmethod = \"oidc\"\n\
                    [log]\nformat = \"xml\"\n\n[[callers]]\nequals = \"d\"\n";
        let got = problems(text);
        let want = [
            "2: typo: unknown field `typo`",
            "5: vault.timeout_ms: invalid type: string \"soon\", expected u64",
            "1: listen: \"nope\" is not host:port",
            "4: vault.address: scheme must be http or https",
            "7: batch.max_in_flight: must be greater than 0",
            "13: callers[1].equals: set equals or prefix",
            "19: callers[2].method: must be \"jwt\" or \"kubernetes\"",
            "21: log.format: must be \"human\" or \"json\"",
            "23: callers[3].role: missing field `role`",
        ];
        for w in want {
            assert!(got.iter().any(|g| g.starts_with(w)), "{w:?} not among {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        // An unknown table named by a dotted header is one problem, at the table.
        let got = problems(&format!("{MINIMAL}[nope.inner]\nx = 1\n"));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].starts_with("4: nope: unknown field `nope`"), "{got:#?}");
        let lines: Vec<usize> = check(text).unwrap_err().iter().filter_map(|p| p.line).collect();
        assert!(lines.is_sorted(), "in file order: {lines:?}");
    }

    #[test]
    fn a_problem_caused_by_taking_a_key_out_stops_the_check_instead_of_being_reported() {
        // `vault.addresses` is wrong: taken out, Vault has no address; that is not a second
        // problem of the file. (A wrong `listen` or `vault.address` gets a stand-in instead.)
        let got = problems("listen = \"127.0.0.1:1\"\n[vault]\naddresses = [\"ftp://x\"]\n[log]\nformat = \"xml\"\n");
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].starts_with("3: vault.addresses: scheme must be http or https"), "{got:#?}");
        assert!(got[1].contains("checking stopped at vault.address"), "{got:#?}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let got = problems("listen = \"127.0.0.1:1\"\n[vault\naddress = 1\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("2: not valid TOML"), "{got:?}");
    }

    #[test]
    fn role_names_with_dots_are_found() {
        let got = problems(&format!("{MINIMAL}[roles.\"ns.billing\"]\nrole_id_file = \"a\"\n"));
        assert!(got[0].starts_with("5: roles.\"ns.billing\".role_id_file: AppRole needs both"), "{got:#?}");
    }

    #[test]
    fn the_effective_config_has_the_defaults_and_no_secret() {
        let text = "listen = \"127.0.0.1:0\"\n[vault]\naddress = \"https://gw:hunter2@vault.example:8200\"\n";
        let out = effective(text).unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("https://gw:redacted@vault.example:8200"), "{out}");
        let printed: Table = toml::from_str(&out).unwrap();
        assert_eq!(printed["mounts"]["transit"].as_str(), Some("transit"));
        assert_eq!(printed["limits"]["max_concurrent_calls"].as_integer(), Some(4096));
        assert_eq!(printed["vault"]["retry_max_attempts"].as_integer(), Some(3));
        let mut secret = Value::Table(toml::toml! { token = "s.abc" password = "pw" token_file = "/t" });
        redact(&mut secret, "");
        assert_eq!(secret["token"].as_str(), Some("<redacted>"));
        assert_eq!(secret["password"].as_str(), Some("<redacted>"));
        assert_eq!(secret["token_file"].as_str(), Some("/t"));
        // What is printed is itself a valid config.
        assert!(check(&out.replace("redacted@", "x@")).is_ok(), "{out}");
    }
}
