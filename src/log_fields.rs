//! The fields of a span as the JSON log format keeps them: the text that every log line inside
//! the span repeats (the `call` span's RPC and request id).
//!
//! tracing-subscriber's own `JsonFields` builds a map of `serde_json::Value`s and serializes it
//! at every span's creation: about seven allocations per call for a span whose fields are read
//! only when a line is logged inside it (rare at info level). [`JsonSpanFields`] writes the same
//! JSON object directly, in one allocation.
//!
//! Invariants: the text is one JSON object that `serde_json` parses to the same value as
//! `JsonFields`'s for the same fields (the JSON event formatter parses it back), however the
//! values are escaped; fields recorded later are merged into the same object.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{format::Writer, FormatFields, FormattedFields},
};

/// A span's fields as one JSON object (for `fmt::layer().json().fmt_fields(JsonSpanFields)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut pairs = Pairs::default();
        fields.record(&mut pairs);
        // Built aside and written once: the span's text is allocated at its final size.
        writer.write_str(pairs.out.object())
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let mut pairs = Pairs::default();
        fields.record(&mut pairs);
        if pairs.out.is_empty() {
            return Ok(());
        }
        let text = &mut current.fields;
        // The object so far loses its closing brace; without a pair yet, it starts anew.
        if text.len() > 2 && text.ends_with('}') {
            text.pop();
            text.push_str(&pairs.out);
        } else {
            text.clear();
            text.push('{');
            text.push_str(&pairs.out[1..]);
        }
        text.push('}');
        Ok(())
    }
}

/// `,"name":value` for each field, in the order recorded (each pair starts with a comma).
#[derive(Default)]
struct Pairs {
    out: Inline,
}

impl Pairs {
    fn key(&mut self, field: &Field) {
        self.out.push(',');
        escaped(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for Pairs {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        escaped(&mut self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.out.push('"');
        let _ = write!(Escaping(&mut self.out), "{value:?}");
        self.out.push('"');
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // JSON has no NaN or infinity: `JsonFields` writes `null` for them too.
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }
}

/// `value` as a JSON string.
fn escaped(out: &mut Inline, value: &str) {
    out.push('"');
    let _ = Escaping(out).write_str(value);
    out.push('"');
}

/// Writes what it is given as the inside of a JSON string.
struct Escaping<'a>(&'a mut Inline);

impl Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let escape = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if (c as u32) < 0x20 => "",
                _ => continue,
            };
            self.0.push_str(&s[plain..i]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{:04x}", c as u32);
            } else {
                self.0.push_str(escape);
            }
            plain = i + c.len_utf8();
        }
        self.0.push_str(&s[plain..]);
        Ok(())
    }
}

/// Text kept on the stack while it is short (every span of this gateway), on the heap past that.
struct Inline {
    buf: [u8; INLINE],
    len: usize,
    spilled: String,
}

const INLINE: usize = 256;

impl Default for Inline {
    fn default() -> Inline {
        Inline { buf: [0; INLINE], len: 0, spilled: String::new() }
    }
}

impl Inline {
    fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }

    fn push_str(&mut self, s: &str) {
        if self.spilled.is_empty() && self.len + s.len() <= INLINE {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
            return;
        }
        if self.spilled.is_empty() {
            let Inline { buf, len, spilled } = self;
            spilled.push_str(std::str::from_utf8(&buf[..*len]).unwrap_or_default());
        }
        self.spilled.push_str(s);
    }

    fn inline(&self) -> &str {
        // Only whole `&str`s are copied in, so the bytes so far are UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    /// `,"a":1,"b":2` as the object `{"a":1,"b":2}`; nothing as `{}`.
    fn object(&mut self) -> &str {
        if self.is_empty() {
            return "{}";
        }
        if self.spilled.is_empty() {
            self.buf[0] = b'{';
        } else {
            self.spilled.replace_range(..1, "{");
        }
        self.push('}');
        self
    }
}

impl std::ops::Deref for Inline {
    type Target = str;

    fn deref(&self) -> &str {
        if self.spilled.is_empty() {
            self.inline()
        } else {
            &self.spilled
        }
    }
}

impl Write for Inline {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::{fmt::format::JsonFields, layer::SubscriberExt};

    /// Captures what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The `span` object of the line logged by `log` inside spans, with `fields` formatting the
    /// span fields.
    fn logged<N>(fields: N, log: impl FnOnce()) -> serde_json::Value
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Capture::default();
        let writer = out.clone();
        let layer = tracing_subscriber::fmt::layer().json().fmt_fields(fields).with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, log);
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        let line: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert!(line.get("spans").is_some(), "no JSON line with spans: {}", String::from_utf8_lossy(&bytes));
        line["spans"].clone()
    }

    /// The same spans and event, with each fields formatter: the lines must carry the same values.
    fn both(log: fn()) -> (serde_json::Value, serde_json::Value) {
        (logged(JsonSpanFields, log), logged(JsonFields::default(), log))
    }

    #[test]
    fn span_fields_are_the_same_json_as_tracing_subscribers_own() {
        let cases: &[(&str, fn())] = &[
            ("the call span", || {
                let id = "0123456789abcdef01234567";
                let _g = tracing::info_span!("call", rpc = "Encrypt", request_id = %id).entered();
                tracing::warn!("inside");
            }),
            ("every kind of value", || {
                let _g = tracing::info_span!("s", s = "text", n = -3i64, u = 7u64, b = true, f = 1.5f64, d = ?Some(2))
                    .entered();
                tracing::warn!("inside");
            }),
            ("characters JSON escapes", || {
                let nasty = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} unicode é ✓";
                let _g = tracing::info_span!("s", a = nasty, b = ?nasty).entered();
                tracing::warn!("inside");
            }),
            ("no field, and nested spans", || {
                let _a = tracing::info_span!("outer").entered();
                let _b = tracing::info_span!("inner", x = 1u64).entered();
                tracing::warn!("inside");
            }),
            ("fields recorded after creation", || {
                let span =
                    tracing::info_span!("s", a = 1u64, later = tracing::field::Empty, more = tracing::field::Empty);
                span.record("later", "yes");
                span.record("more", 2.5f64);
                let _g = span.entered();
                tracing::warn!("inside");
            }),
            ("only recorded later", || {
                let span = tracing::info_span!("s", later = tracing::field::Empty);
                span.record("later", "yes");
                let _g = span.entered();
                tracing::warn!("inside");
            }),
            ("longer than the inline buffer", || {
                let long = "x".repeat(3 * INLINE);
                let _g = tracing::info_span!("s", long = %long, after = 1u64).entered();
                tracing::warn!("inside");
            }),
        ];
        for (name, log) in cases {
            let (ours, theirs) = both(*log);
            assert_eq!(ours, theirs, "{name}");
            assert!(ours.as_array().is_some_and(|a| !a.is_empty()), "{name}: no span on the line: {ours}");
        }
    }

    #[test]
    fn non_finite_floats_are_null() {
        let ours = logged(JsonSpanFields, || {
            let _g = tracing::info_span!("s", f = f64::NAN, g = f64::INFINITY).entered();
            tracing::warn!("inside");
        });
        assert_eq!(ours[0]["f"], serde_json::Value::Null);
        assert_eq!(ours[0]["g"], serde_json::Value::Null);
    }
}
