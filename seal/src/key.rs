//! Keys: generated, read from hex, identified, wrapped.

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{open_value, seal_value, SealError};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

/// A 256-bit secret key: a tenant's data key or the server's master key.
/// Cleared from memory when dropped; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id())
    }
}

impl DataKey {
    /// A fresh random key (the operating system's randomness, through
    /// rand's thread generator).
    pub fn generate() -> DataKey {
        DataKey(rand::random())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey(bytes)
    }

    /// A key written as 64 hexadecimal digits (surrounding whitespace is
    /// ignored, as in a file with a final newline).
    pub fn from_hex(text: &str) -> Result<DataKey, SealError> {
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            SealError::Malformed(format!(
                "a key is {} hexadecimal digits ({KEY_LEN} bytes)",
                KEY_LEN * 2
            ))
        })?;
        Ok(DataKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A public name for the key (16 hex digits of a hash of it): which
    /// master key wrapped a record, without revealing the key.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"murmur key id v1\0")
            .chain_update(self.0)
            .finalize();
        hex::encode(&digest[..8])
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// `key` sealed under this key, bound to `context` (whose key it is).
    pub fn wrap(&self, key: &DataKey, context: &[u8]) -> Vec<u8> {
        seal_value(self, context, &key.0)
    }

    /// The key [`wrap`](Self::wrap) sealed, if this key and `context` are
    /// the ones it was sealed with.
    pub fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<DataKey, SealError> {
        let mut plain = open_value(self, context, wrapped)?;
        let key = <[u8; KEY_LEN]>::try_from(plain.as_slice())
            .map_err(|_| SealError::Malformed("a wrapped key of the wrong length".into()));
        plain.zeroize();
        key.map(DataKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_wrap_for_one_context_only() {
        let master = DataKey::generate();
        let tenant = DataKey::generate();
        let wrapped = master.wrap(&tenant, b"tenant-key:t_a");
        assert_eq!(
            master.unwrap(&wrapped, b"tenant-key:t_a").unwrap().to_hex(),
            tenant.to_hex()
        );
        assert!(master.unwrap(&wrapped, b"tenant-key:t_b").is_err());
        assert!(DataKey::generate()
            .unwrap(&wrapped, b"tenant-key:t_a")
            .is_err());
    }

    #[test]
    fn hex_round_trips_and_debug_hides_the_key() {
        let key = DataKey::generate();
        assert_eq!(
            DataKey::from_hex(&format!("{}\n", key.to_hex()))
                .unwrap()
                .to_hex(),
            key.to_hex()
        );
        assert!(DataKey::from_hex("abcd").is_err());
        assert!(!format!("{key:?}").contains(&key.to_hex()));
        assert_eq!(key.id().len(), 16);
        assert_ne!(key.id(), DataKey::generate().id());
    }
}
