//! Encryption at rest for Murmur: what a tenant stores is sealed with that
//! tenant's data key, and data keys are wrapped by the server's master key
//! (docs/ARCHITECTURE.md, "Encryption at rest").
//!
//! - [`DataKey`]: a 256-bit key; wraps and unwraps other keys.
//! - [`seal_value`] / [`open_value`]: small values (store rows), sealed
//!   whole with XChaCha20-Poly1305 and a random nonce, bound to a context
//!   (the row's key) so a sealed row moved to another key does not open.
//! - [`SealWriter`], [`SealReader`], [`ChunkOpener`]: files (uploads, stems)
//!   in 64 KiB chunks, each sealed with ChaCha20-Poly1305 under a key drawn
//!   from the data key, a random salt and the file's context; reads can
//!   seek, and a truncated, reordered, moved or edited file fails its check
//!   instead of decoding into something else.
//!
//! The crate knows nothing of tenants or storage: callers choose keys and
//! contexts.

mod file;
mod key;
mod value;

pub use file::{
    is_sealed_file, open_file, plaintext_len, starts_sealed, ChunkOpener, OpenedFile, SealReader,
    SealWriter, Sealer, CHUNK, HEADER_LEN, MAGIC, SEALED_CHUNK,
};
pub use key::DataKey;
pub use value::{is_sealed_value, open_value, seal_value};

/// Why sealed bytes could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "sealed data failed its integrity check ({0}): the wrong key or place, a truncated \
         file, or bytes changed on disk"
    )]
    Integrity(&'static str),
    #[error("sealed data is malformed: {0}")]
    Malformed(String),
}

impl From<SealError> for std::io::Error {
    fn from(e: SealError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
