//! Uploaded bytes through the audio decoder, as the service runs it: the
//! upload's header probe (`probe_duration`), then the job's full decode to
//! 16 kHz mono (`decode_file_with`).
//!
//! Properties: no panic escapes, no unbounded allocation (libFuzzer's
//! `-rss_limit_mb`), no hang (`-timeout`), and the decode is never much
//! longer than the probe said (tier duration limits and billing read the
//! probe). The decoder catches panics of symphonia and rubato itself
//! (`DecoderPanicked`); with `MURMUR_FUZZ_STRICT=1` (the default in
//! `scripts/fuzz`) such a contained panic counts as a crash when it was
//! raised in our own code, so our bugs hiding behind the guard are found.
//! Contained panics inside the dependencies are printed and tolerated: the
//! guard is exactly what they need, and they are not ours to fix.

#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use murmur_models::audio::{self, AudioError, DecodeOptions};

/// Probed durations above this are refused before decoding, like a tier's
/// length limit would (keeps one input's decode small enough to fuzz).
const MAX_PROBED_S: f64 = 600.0;

/// Source file of the last panic, to tell our panics from the libraries'.
static LAST_PANIC_FILE: Mutex<String> = Mutex::new(String::new());

/// Whether a contained panic was raised in a dependency's source (cargo's
/// registry), not in Murmur's.
fn panic_was_in_dependency() -> bool {
    LAST_PANIC_FILE
        .lock()
        .map(|f| f.contains("/.cargo/registry/"))
        .unwrap_or(false)
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    strict: bool,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        // libfuzzer-sys's panic hook aborts on every panic, even one the
        // decoder's guard catches: taking it restores Rust's default hook,
        // which prints the panic and lets the guard do its job. A panic that
        // escapes the decoder still aborts (libfuzzer-sys checks for it).
        drop(std::panic::take_hook());
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let (Some(at), Ok(mut last)) = (info.location(), LAST_PANIC_FILE.lock()) {
                *last = at.file().to_string();
            }
            default_hook(info);
        }));
        let dir = tempfile::tempdir().expect("temp dir");
        // Uploads are stored without an extension: no format hint.
        let path = dir.path().join("upload");
        let strict = std::env::var("MURMUR_FUZZ_STRICT").is_ok_and(|v| v == "1");
        Setup {
            _dir: dir,
            path,
            strict,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    std::fs::write(&setup.path, data).expect("write input");
    let probed = audio::probe_duration(&setup.path);
    if setup.strict {
        if let Err(AudioError::DecoderPanicked { detail, .. }) = &probed {
            if !panic_was_in_dependency() {
                panic!("probe_duration panicked inside its guard: {detail}");
            }
        }
    }
    let Ok(duration) = probed else { return };
    assert!(
        duration.is_finite() && duration >= 0.0,
        "probe answered {duration} s"
    );
    if duration > MAX_PROBED_S {
        return;
    }
    // A decode that runs well past the probed length fails here as TooLong.
    let limit = duration * 1.5 + 2.0;
    let options = DecodeOptions {
        max_duration_s: Some(limit),
        ..DecodeOptions::default()
    };
    match audio::decode_file_with(&setup.path, &options) {
        Ok(decoded) => {
            assert!(decoded.samples.iter().all(|s| s.is_finite()));
        }
        Err(AudioError::DecoderPanicked { detail, .. })
            if setup.strict && !panic_was_in_dependency() =>
        {
            panic!("decode panicked inside its guard: {detail}");
        }
        Err(AudioError::TooLong { duration_s, .. }) if setup.strict => {
            panic!("the probe said {duration} s but the decode ran to {duration_s} s");
        }
        Err(_) => {}
    }
});
