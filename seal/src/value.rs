//! Small values sealed whole: XChaCha20-Poly1305, a random 192-bit nonce
//! (random nonces of that size never repeat in practice), the context as
//! associated data.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::{DataKey, SealError};

/// Sealed values start with a zero byte, which no JSON text does, so a
/// store can tell them from rows written before encryption.
const MAGIC: [u8; 3] = [0, b'S', 1];
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// `plain` sealed under `key`, opening only with the same `context`.
pub fn seal_value(key: &DataKey, context: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain,
                aad: context,
            },
        )
        // The only failure is a message over 256 GiB.
        .expect("a value in memory always seals");
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Whether `bytes` were made by [`seal_value`] (or claim to be).
pub fn is_sealed_value(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// The value [`seal_value`] sealed with this key and context.
pub fn open_value(key: &DataKey, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if !is_sealed_value(sealed) || sealed.len() < MAGIC.len() + NONCE_LEN + TAG_LEN {
        return Err(SealError::Malformed("not a sealed value".into()));
    }
    let (nonce, body) = sealed[MAGIC.len()..].split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.bytes().into())
        .decrypt(
            &XNonce::from(<[u8; NONCE_LEN]>::try_from(nonce).expect("split at the nonce length")),
            Payload {
                msg: body,
                aad: context,
            },
        )
        .map_err(|_| SealError::Integrity("sealed value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_with_their_key_and_context_only() {
        let key = DataKey::generate();
        let sealed = seal_value(&key, b"t_a/j_1", br#"{"text":"hello"}"#);
        assert!(is_sealed_value(&sealed));
        assert!(!is_sealed_value(br#"{"text":"hello"}"#));
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(
            open_value(&key, b"t_a/j_1", &sealed).unwrap(),
            br#"{"text":"hello"}"#
        );
        assert!(open_value(&key, b"t_a/j_2", &sealed).is_err());
        assert!(open_value(&DataKey::generate(), b"t_a/j_1", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open_value(&key, b"t_a/j_1", &flipped).is_err());
        assert!(open_value(&key, b"t_a/j_1", &sealed[..10]).is_err());
        // Two seals of one value differ (random nonces).
        assert_ne!(sealed, seal_value(&key, b"t_a/j_1", br#"{"text":"hello"}"#));
    }
}
