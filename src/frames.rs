//! Reads a gRPC request body as its bytes arrive, without buffering any of it: the 5-byte header
//! of each message (compressed flag, declared length) and the top-level protobuf fields of each
//! message, counted. The byte budget (`layers.rs`) charges a message by what it declares before
//! its body is buffered, and by what its fields decode into before it is decoded.
//!
//! Invariants: any split of a body into chunks gives the same events; the walk never reads past
//! a message's declared end; input the decoder would refuse (a bad wire type, a length past the
//! message) ends the walk of that message and is left to the decoder to refuse.

/// What the walk found, in body order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A message header: the declared length of the message that follows.
    Message {
        /// Its declared length in bytes.
        declared: u32,
        /// Its compressed flag (its fields are then not walked).
        compressed: bool,
    },
    /// `n` more top-level fields of the current message (each repeated entry is one).
    Fields(usize),
}

/// Where the walk is in the current message's protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Reading a field's tag (a varint).
    Tag { value: u64, shift: u32 },
    /// Skipping a varint value.
    Varint { read: u32 },
    /// Reading a length-delimited field's length (a varint).
    Len { value: u64, shift: u32 },
    /// Skipping this many more bytes of a field's value.
    Skip(u64),
    /// Not walking the rest of this message (compressed, or the decoder will refuse it).
    Off,
}

/// The state of one body.
#[derive(Debug, Clone)]
pub struct Frames {
    /// Header bytes of the next message read so far (`None` inside a message).
    header: Option<([u8; 5], usize)>,
    /// Bytes of the current message still to come.
    left: u64,
    walk: Walk,
    /// Group nesting (fields inside a group are not top-level).
    depth: u32,
}

impl Default for Frames {
    fn default() -> Frames {
        Frames { header: Some(([0; 5], 0)), left: 0, walk: Walk::Off, depth: 0 }
    }
}

impl Frames {
    /// True between a message's header and its last byte.
    pub fn in_message(&self) -> bool {
        self.header.is_none()
    }

    /// Walks `chunk`, the next bytes of the body, calling `on` for each event in order; stops at
    /// the first error `on` returns.
    pub fn feed<E>(&mut self, mut chunk: &[u8], mut on: impl FnMut(Event) -> Result<(), E>) -> Result<(), E> {
        while !chunk.is_empty() {
            if let Some((mut bytes, mut have)) = self.header {
                let n = (5 - have).min(chunk.len());
                bytes[have..have + n].copy_from_slice(&chunk[..n]);
                have += n;
                chunk = &chunk[n..];
                if have < 5 {
                    self.header = Some((bytes, have));
                    continue;
                }
                let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                let compressed = bytes[0] != 0;
                self.header = None;
                self.left = u64::from(declared);
                self.depth = 0;
                self.walk = if compressed { Walk::Off } else { Walk::Tag { value: 0, shift: 0 } };
                on(Event::Message { declared, compressed })?;
                if self.left == 0 {
                    self.header = Some(([0; 5], 0));
                }
                continue;
            }
            let take = usize::try_from(self.left).unwrap_or(usize::MAX).min(chunk.len());
            let fields = self.walk_message(&chunk[..take]);
            chunk = &chunk[take..];
            self.left -= take as u64;
            if self.left == 0 {
                self.header = Some(([0; 5], 0));
            }
            if fields > 0 {
                on(Event::Fields(fields))?;
            }
        }
        Ok(())
    }

    /// Walks bytes of the current message (never past its end); the top-level fields started.
    fn walk_message(&mut self, mut bytes: &[u8]) -> usize {
        let (mut fields, whole) = (0, bytes.len() as u64);
        while let Some((&b, rest)) = bytes.split_first() {
            match self.walk {
                Walk::Off => return fields,
                Walk::Skip(n) => {
                    let skip = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[skip..];
                    let n = n - skip as u64;
                    self.walk = if n == 0 { Walk::Tag { value: 0, shift: 0 } } else { Walk::Skip(n) };
                    continue;
                }
                Walk::Tag { value, shift } => {
                    let value = value | (u64::from(b & 0x7f) << shift);
                    bytes = rest;
                    if b & 0x80 != 0 {
                        self.walk = if shift >= 63 { Walk::Off } else { Walk::Tag { value, shift: shift + 7 } };
                        continue;
                    }
                    if value >> 3 == 0 || value >> 3 > u64::from(u32::MAX >> 3) {
                        self.walk = Walk::Off;
                        continue;
                    }
                    if self.depth == 0 && matches!(value & 7, 0 | 1 | 2 | 3 | 5) {
                        fields += 1;
                    }
                    self.walk = match value & 7 {
                        0 => Walk::Varint { read: 0 },
                        1 => self.skip(8),
                        2 => Walk::Len { value: 0, shift: 0 },
                        3 => {
                            self.depth += 1;
                            Walk::Tag { value: 0, shift: 0 }
                        }
                        4 if self.depth > 0 => {
                            self.depth -= 1;
                            Walk::Tag { value: 0, shift: 0 }
                        }
                        5 => self.skip(4),
                        _ => Walk::Off,
                    };
                }
                Walk::Varint { read } => {
                    bytes = rest;
                    self.walk = match (b & 0x80 != 0, read) {
                        (false, _) => Walk::Tag { value: 0, shift: 0 },
                        (true, 9..) => Walk::Off,
                        (true, read) => Walk::Varint { read: read + 1 },
                    };
                }
                Walk::Len { value, shift } => {
                    let value = value | (u64::from(b & 0x7f) << shift);
                    bytes = rest;
                    self.walk = if b & 0x80 != 0 {
                        if shift >= 63 {
                            Walk::Off
                        } else {
                            Walk::Len { value, shift: shift + 7 }
                        }
                    } else {
                        // The message's bytes after this one (`left` counts from the chunk's start).
                        let remaining = self.left - (whole - bytes.len() as u64);
                        if value > remaining {
                            Walk::Off
                        } else {
                            self.skip(value)
                        }
                    };
                }
            }
        }
        fields
    }

    fn skip(&self, n: u64) -> Walk {
        if n == 0 {
            Walk::Tag { value: 0, shift: 0 }
        } else {
            Walk::Skip(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::vaultgate::v1::{EncryptBatchItem, EncryptBatchRequest, IssueCertificateRequest};
    use prost::Message;

    /// A gRPC body of `messages`: header + bytes each.
    fn body(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// The events of `bytes` fed in chunks of `size`, fields summed per message.
    fn events(bytes: &[u8], size: usize) -> Vec<(u32, usize)> {
        let (mut frames, mut out) = (Frames::default(), Vec::<(u32, usize)>::new());
        for chunk in bytes.chunks(size.max(1)) {
            frames
                .feed(chunk, |e| {
                    match e {
                        Event::Message { declared, .. } => out.push((declared, 0)),
                        Event::Fields(n) => out.last_mut().expect("a message first").1 += n,
                    }
                    Ok::<(), ()>(())
                })
                .expect("never refused");
        }
        out
    }

    fn batch(items: usize, plaintext: &[u8]) -> Vec<u8> {
        let items = vec![EncryptBatchItem { plaintext: plaintext.to_vec(), ..Default::default() }; items];
        EncryptBatchRequest { key: "k".into(), items, ..Default::default() }.encode_to_vec()
    }

    #[test]
    fn headers_and_top_level_fields_whatever_the_chunking() {
        let cert = IssueCertificateRequest {
            role: "web".into(),
            common_name: "a.example".into(),
            alt_names: vec!["b.example".into(); 7],
            ..Default::default()
        }
        .encode_to_vec();
        // Unknown fields of every wire type, a group holding fields, a packed field.
        let mut odd = vec![0x08, 0x96, 0x01]; // 1: varint 150
        odd.extend([0x11, 1, 2, 3, 4, 5, 6, 7, 8]); // 2: fixed64
        odd.extend([0x1d, 1, 2, 3, 4]); // 3: fixed32
        odd.extend([0x23, 0x08, 0x01, 0x12, 0x01, b'x', 0x24]); // 4: group { 1: 1, 2: "x" }
        odd.extend([0xa2, 0x06, 0x03, 1, 2, 3]); // 100: packed
        type Case = (&'static str, Vec<Vec<u8>>, Vec<(u32, usize)>);
        let cases: Vec<Case> = vec![
            ("empty message", vec![vec![]], vec![(0, 0)]),
            ("1,000 empty items", vec![batch(1000, b"")], vec![(2003, 1001)]),
            ("items with bytes", vec![batch(3, &[7; 300])], vec![(3 + 3 * 306, 4)]),
            ("alt names", vec![cert.clone()], vec![(cert.len() as u32, 9)]),
            ("every wire type", vec![odd.clone()], vec![(odd.len() as u32, 5)]),
            ("two messages", vec![batch(2, b""), cert.clone()], vec![(7, 3), (cert.len() as u32, 9)]),
        ];
        for (name, messages, want) in cases {
            let bytes = body(&messages);
            for size in [1, 2, 3, 5, 7, 64, bytes.len()] {
                assert_eq!(events(&bytes, size), want, "{name}, chunks of {size}");
            }
        }
    }

    #[test]
    fn what_the_decoder_refuses_ends_the_walk_inside_its_message() {
        let cases: &[(&str, &[u8], usize)] = &[
            ("a length past the message", &[0x12, 0x7f, 0x12, 0x00], 1),
            ("wire type 7", &[0x0f, 0x12, 0x00], 0),
            ("field 0", &[0x02, 0x00, 0x12, 0x00], 0),
            ("an end group at the top", &[0x0c, 0x12, 0x00], 0),
            (
                "an 11-byte varint",
                &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x12, 0],
                1,
            ),
        ];
        for (name, message, fields) in cases {
            // The next message is walked as usual.
            let bytes = body(&[message.to_vec(), batch(1, b"")]);
            for size in [1, 4, bytes.len()] {
                assert_eq!(
                    events(&bytes, size),
                    vec![(message.len() as u32, *fields), (5, 2)],
                    "{name}, chunks of {size}"
                );
            }
        }
        // A compressed message is not walked.
        let mut bytes = body(&[batch(5, b"")]);
        bytes[0] = 1;
        let mut frames = Frames::default();
        let mut seen = Vec::new();
        frames
            .feed(&bytes, |e| {
                seen.push(e);
                Ok::<(), ()>(())
            })
            .expect("never refused");
        assert_eq!(seen, vec![Event::Message { declared: 13, compressed: true }]);
    }

    #[test]
    fn an_error_of_the_callback_stops_the_walk() {
        let bytes = body(&[batch(100, b"")]);
        let mut frames = Frames::default();
        let mut calls = 0;
        let stopped = frames.feed(&bytes, |_| {
            calls += 1;
            if calls == 2 {
                Err("enough")
            } else {
                Ok(())
            }
        });
        assert_eq!((stopped, calls), (Err("enough"), 2));
    }
}
