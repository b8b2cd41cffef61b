//! Murmur's speech engine: everything that turns an audio file into a timed
//! transcript, on candle, with real pretrained weights.
//!
//! This crate knows nothing of tenants, HTTP or storage (see docs/ARCHITECTURE.md).
//! Each model lives in its own module, loadable from a directory and testable
//! alone on real audio.

pub mod audio;
pub mod ct2;
pub mod device;
pub mod diarize;
pub mod fetch;
pub mod formats;
pub mod import;
pub mod mel;
pub mod registry;
pub mod separate;
pub mod testaudio;
pub mod transcript;
pub mod vad;
pub mod wer;
pub mod whisper;
