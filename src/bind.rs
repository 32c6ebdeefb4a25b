//! Identity-bound ciphertexts (`bind_identity = true` on a caller rule): the associated data the
//! gateway sends to Transit for such a caller is a versioned, length-prefixed encoding of the
//! caller's stable id and the caller's own associated data, so a ciphertext one caller made
//! fails authentication (`INVALID_ARGUMENT`) when any other caller decrypts it, even with the
//! same key. The exact bytes are documented in docs/security.md so an operator can decrypt
//! directly in Vault.
//!
//! Encoding, version 1 (all lengths unsigned 32-bit big-endian):
//! `"vaultgate.bind"` (14 bytes) ‖ `0x01` ‖ len(id) ‖ id (UTF-8) ‖ len(aad) ‖ aad
//!
//! Invariants:
//! - **Unambiguous.** Every field is length-prefixed, so no two (id, aad) pairs encode alike.
//! - **Not forgeable through the gateway.** A caller whose rule does not bind may not send
//!   associated data starting with [`MAGIC`]: otherwise it could send another caller's encoding
//!   and decrypt that caller's ciphertexts. (A bound caller's own associated data is wrapped
//!   inside its own encoding, so it cannot forge one either.)
//! - **No silent downgrade.** The encoding is always sent; a key type that takes no associated
//!   data (rsa-*) makes Vault refuse the request, and the caller gets that refusal.

use crate::{error::Error, session::Actor};
use std::borrow::Cow;

/// The reserved prefix of every identity-bound associated data.
pub(crate) const MAGIC: &[u8] = b"vaultgate.bind";
/// The version of the encoding; a new construction gets a new number.
const VERSION: u8 = 1;

/// The associated data of `id`'s encryption with the caller's own associated data `aad`.
pub(crate) fn encode(id: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 9 + id.len() + aad.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for field in [id.as_bytes(), aad] {
        // Ids and payloads are bounded far below 4 GiB by validation (limits.max_item_bytes).
        out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// The associated data to send to Transit for `actor`'s item with its own `aad`: the encoding
/// when its rule binds, else `aad` itself, refused when it starts with [`MAGIC`].
pub(crate) fn associated_data<'a>(actor: &Actor, aad: &'a [u8]) -> Result<Cow<'a, [u8]>, Error> {
    if actor.bind_identity {
        return Ok(Cow::Owned(encode(&actor.caller, aad)));
    }
    if aad.starts_with(MAGIC) {
        return Err(Error::bad_field(
            "associated_data",
            "must not start with \"vaultgate.bind\", the prefix reserved for the gateway's identity-bound associated data",
        ));
    }
    Ok(Cow::Borrowed(aad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_is_exactly_the_documented_bytes() {
        let mut want = b"vaultgate.bind\x01".to_vec();
        want.extend_from_slice(&[0, 0, 0, 6]);
        want.extend_from_slice(b"jwt:i#");
        want.extend_from_slice(&[0, 0, 0, 3]);
        want.extend_from_slice(b"aad");
        assert_eq!(encode("jwt:i#", b"aad"), want);
        // An empty associated data still has its length.
        assert_eq!(encode("c", b""), b"vaultgate.bind\x01\x00\x00\x00\x01c\x00\x00\x00\x00".to_vec());
    }

    #[test]
    fn no_two_identities_and_payloads_encode_alike() {
        // Pairs that a plain concatenation would confuse.
        let pairs: [(&str, &[u8]); 6] =
            [("ab", b"c"), ("a", b"bc"), ("abc", b""), ("", b"abc"), ("a\0\0\0\x01", b"b"), ("a", b"\0\0\0\x01b")];
        let encoded: std::collections::HashSet<Vec<u8>> = pairs.iter().map(|(id, aad)| encode(id, aad)).collect();
        assert_eq!(encoded.len(), pairs.len());
    }
}
