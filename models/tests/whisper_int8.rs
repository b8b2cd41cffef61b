//! int8 against f32 on real recordings with the real weights: JFK's clip
//! and pyannote-audio's 30 s two-speaker call, with tiny.en and base. The
//! int8 transcripts must score no worse than the f32 ones (against the
//! references) by more than 0.02 WER, or two words on the call (its
//! reference has 81 words, so 0.02 is less than two). Both decode with
//! beam 5 (Whisper-WebUI's default): greedy decoding of the call is
//! chaotic, moving by more than that on rounding alone (base's f32 scored
//! 0.321 in a debug build and 0.259 in a release one; base's int8 0.185 or
//! 0.284 as the encoder's softmax summed in one order or another), where
//! beam 5 scored 0.185 under both compute types after the same change. The
//! int8 weights must come from the cache beside the safetensors, and word
//! timestamps must still work (they read the cross-attention, whose
//! projections are int8 too).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use murmur_models::audio;
use murmur_models::fetch;
use murmur_models::testaudio;
use murmur_models::transcript::Transcript;
use murmur_models::wer::{stm_file_text, wer};
use murmur_models::whisper::quantize::{CACHE_FILE, CACHE_RECORD};
use murmur_models::whisper::{ComputeType, DecodeOptions, WhisperModel};

/// One model decoding at a time on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// WER int8 may lose against f32 on one recording...
const MAX_WER_GAP: f64 = 0.02;
/// ...or this many words, whichever is more (see the module docs).
const NOISE_WORDS: f64 = 2.0;

fn model_dir(name: &str) -> PathBuf {
    fetch::install_cached(name).expect("install model").path
}

fn load(dir: &Path, compute: ComputeType) -> WhisperModel {
    WhisperModel::load_as(dir, &candle_core::Device::Cpu, compute).expect("load")
}

fn samples(path: &Path) -> Vec<f32> {
    audio::decode_file(path).expect("decode").samples
}

fn transcribe(m: &WhisperModel, audio: &[f32], opts: &DecodeOptions) -> Transcript {
    m.transcribe(audio, opts, &mut |_| true)
        .expect("transcribe")
}

/// f32 and int8 on both recordings with `name`; returns the recordings
/// where int8's WER is worse than f32's by more than [`MAX_WER_GAP`] and
/// [`NOISE_WORDS`].
fn compare(name: &str) -> Vec<String> {
    let dir = model_dir(name);
    let call = testaudio::pyannote_sample().expect("fetch sample");
    let recordings = [
        (
            "jfk",
            samples(&testaudio::jfk().expect("fetch jfk")),
            testaudio::JFK_TEXT.to_string(),
        ),
        (
            "call",
            samples(&call.wav),
            stm_file_text(&call.stm).expect("read stm"),
        ),
    ];
    let f32_model = load(&dir, ComputeType::F32);
    let int8_model = load(&dir, ComputeType::Int8);
    assert_eq!(int8_model.compute_type(), ComputeType::Int8);
    assert!(dir.join(CACHE_FILE).is_file() && dir.join(CACHE_RECORD).is_file());
    let mut apart = Vec::new();
    for (clip, audio, reference) in &recordings {
        let opts = DecodeOptions {
            beam_size: 5,
            best_of: 5,
            ..DecodeOptions::default()
        };
        let full = transcribe(&f32_model, audio, &opts);
        let int8 = transcribe(&int8_model, audio, &opts);
        let (a, b) = (wer(reference, &full.text), wer(reference, &int8.text));
        eprintln!(
            "{name} {clip}: f32 WER {:.3}, int8 WER {:.3}, int8 against f32 {:.3}\n  f32:  {}\n  int8: {}",
            a,
            b,
            wer(&full.text, &int8.text),
            full.text,
            int8.text
        );
        assert!(
            !int8.text.trim().is_empty(),
            "{name} {clip}: int8 heard nothing"
        );
        let words = murmur_models::wer::normalize_words(reference).len() as f64;
        if b - a > MAX_WER_GAP.max(NOISE_WORDS / words) + 1e-9 {
            apart.push(format!("{name} {clip}: f32 WER {a:.3}, int8 {b:.3}"));
        }
    }
    apart
}

#[test]
fn int8_matches_f32_on_tiny_en() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let apart = compare("tiny.en");
    assert!(apart.is_empty(), "int8 worse than f32: {apart:?}");
}

#[test]
fn int8_matches_f32_on_base() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let apart = compare("base");
    assert!(apart.is_empty(), "int8 worse than f32: {apart:?}");
}

/// Word timestamps under int8: the words spell each segment, in order,
/// inside it, are f32's words, and each starts within 0.2 s of where f32
/// puts it.
#[test]
fn int8_word_timestamps_follow_f32() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = model_dir("tiny.en");
    let audio = samples(&testaudio::jfk().expect("fetch jfk"));
    let opts = DecodeOptions {
        word_timestamps: true,
        ..DecodeOptions::default()
    };
    let full = transcribe(&load(&dir, ComputeType::F32), &audio, &opts);
    let int8 = transcribe(&load(&dir, ComputeType::Int8), &audio, &opts);
    for (label, t) in [("f32", &full), ("int8", &int8)] {
        for s in &t.segments {
            eprintln!("{label} [{:.2} - {:.2}] {}", s.start, s.end, s.text);
            for w in s.words.iter().flatten() {
                eprintln!("    {:6.2} {:6.2} {:?}", w.start, w.end, w.word);
            }
        }
    }
    assert!(
        wer(testaudio::JFK_TEXT, &int8.text) <= 0.05,
        "{}",
        int8.text
    );
    let mut last = 0.0;
    for (i, s) in int8.segments.iter().enumerate() {
        let words = s.words.as_ref().expect("words");
        let spelled: String = words.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(spelled.trim(), s.text, "{s:?}");
        // A word starts inside its segment. Its end may pass the segment's
        // by up to the median word length: openai-whisper's rule for a last
        // word that runs far past the segment's timestamp (shortened to
        // start + median, at least the segment's end); never into the next
        // segment.
        let next_start = int8.segments.get(i + 1).map_or(f64::MAX, |n| n.start);
        for w in words {
            assert!(w.start >= last - 1e-6 && w.end >= w.start, "{w:?}");
            assert!(
                w.start >= s.start - 1e-6 && w.start <= s.end + 1e-6 && w.end <= next_start + 1e-6,
                "{w:?} in {s:?}"
            );
            last = w.start;
        }
    }
    let words = |t: &Transcript| -> Vec<(String, f64)> {
        t.segments
            .iter()
            .flat_map(|s| s.words.iter().flatten())
            // Case and punctuation aside: a clip's last word ends in "."
            // under one compute type and not the other.
            .map(|w| {
                let word = w
                    .word
                    .trim()
                    .trim_matches(|c: char| c.is_ascii_punctuation());
                (word.to_lowercase(), w.start)
            })
            .collect()
    };
    let (a, b) = (words(&full), words(&int8));
    assert_eq!(
        a.iter().map(|w| &w.0).collect::<Vec<_>>(),
        b.iter().map(|w| &w.0).collect::<Vec<_>>(),
        "the same words on JFK's clip"
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x.1 - y.1).abs() <= 0.2,
            "{:?} starts at {} in f32, {} in int8",
            x.0,
            x.1,
            y.1
        );
    }
}

/// The encoder in int8 (`models.int8_encoder`): used where the CPU has
/// AVX-512 VNNI, never elsewhere nor under another compute type, and JFK's
/// clip comes out as under float32 with tiny.en and base. (The kernel's
/// numbers against a scalar reference are `gemm_i8.rs`'s unit test.)
#[test]
fn int8_encoder_where_the_cpu_can() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = candle_core::Device::Cpu;
    let audio = samples(&testaudio::jfk().expect("fetch jfk"));
    for name in ["tiny.en", "base"] {
        let dir = model_dir(name);
        let f32_only = WhisperModel::load_with(&dir, &cpu, ComputeType::F32, true).expect("load");
        assert!(!f32_only.int8_encoder(), "f32 keeps a float encoder");
        assert!(
            !load(&dir, ComputeType::Int8).int8_encoder(),
            "off unless asked"
        );
        let m = WhisperModel::load_with(&dir, &cpu, ComputeType::Int8, true).expect("load");
        assert_eq!(
            m.int8_encoder(),
            murmur_models::whisper::int8_encoder_available()
        );
        if !m.int8_encoder() {
            eprintln!("no AVX-512 VNNI on this CPU: the encoder stays float32");
            continue;
        }
        let opts = DecodeOptions::default();
        let reference = transcribe(&f32_only, &audio, &opts);
        let t = transcribe(&m, &audio, &opts);
        eprintln!("{name} int8 encoder: {}", t.text);
        assert!(
            wer(&reference.text, &t.text) <= 0.05,
            "{name}: {} against f32's {}",
            t.text,
            reference.text
        );
    }
}

/// A truncated cache is rebuilt by the next load, not trusted.
#[test]
fn truncated_int8_cache_is_rebuilt() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let installed = model_dir("tiny.en");
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::copy(installed.join(file), dir.path().join(file)).expect("copy");
    }
    load(dir.path(), ComputeType::Int8);
    let cache = dir.path().join(CACHE_FILE);
    let full = std::fs::read(&cache).expect("cache written");
    std::fs::write(&cache, &full[..full.len() / 2]).expect("truncate");
    let m = load(dir.path(), ComputeType::Int8);
    assert_eq!(std::fs::read(&cache).expect("cache"), full, "rebuilt");
    let audio = samples(&testaudio::jfk().expect("fetch jfk"));
    let t = transcribe(&m, &audio, &DecodeOptions::default());
    assert!(wer(testaudio::JFK_TEXT, &t.text) <= 0.05, "{}", t.text);
}

/// f16 (the GPU default) works on the CPU too, slowly: JFK's clip comes
/// out right with tiny.en.
#[test]
fn f16_transcribes_jfk() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = load(&model_dir("tiny.en"), ComputeType::F16);
    assert_eq!(m.compute_type(), ComputeType::F16);
    let audio = samples(&testaudio::jfk().expect("fetch jfk"));
    let t = transcribe(&m, &audio, &DecodeOptions::default());
    assert!(wer(testaudio::JFK_TEXT, &t.text) <= 0.05, "{}", t.text);
}
