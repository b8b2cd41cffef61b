//! Arbitrary bytes as a CTranslate2 `model.bin`: [`Ct2Model::from_reader`]
//! (in memory, the same parser `Ct2Model::read` runs on the file), then the
//! Whisper conversion, its config and its safetensors output when the bytes
//! get that far.
//!
//! Properties: no panic, no allocation beyond what the input holds (a length
//! field is never trusted up front), no hang.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use murmur_models::ct2::{Ct2Model, WhisperConversion};

fn out_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Ct2Model::from_reader(data) else {
        return;
    };
    let Ok(conversion) = WhisperConversion::new(&model) else {
        return;
    };
    let _ = conversion.hf_config(None);
    let _ = conversion.write_safetensors(&out_dir().path().join("model.safetensors"));
});
