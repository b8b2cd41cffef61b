//! Silero VAD on real recordings, checked against silero's own ONNX model and
//! post-processing.
//!
//! The reference numbers in `tests/data/` were produced once from the
//! `silero-vad==6.2.3` wheel; these tests need no Python:
//! - `probs`: the forward of the package's `tinygrad_model.py` in float64
//!   numpy with the same `silero_vad_16k.safetensors` we load;
//! - `probs_onnx`: the package's `silero_vad.onnx` under onnxruntime. That
//!   file holds a *different checkpoint* of the same network (its weights
//!   differ from the safetensors ones; the same numpy forward with the ONNX
//!   weights reproduces onnxruntime to 1.5e-6), so it is compared loosely;
//! - regions and the random tracks: the package's
//!   `get_speech_timestamps_from_probs`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::Device;
use murmur_models::audio::decode_file;
use murmur_models::registry;
use murmur_models::testaudio;
use murmur_models::transcript::SpeechRegion;
use murmur_models::vad::{regions_from_probs, SileroVad, VadParams, VadStream};
use serde_json::Value;

const SILERO_WHEEL_SHA256: &str =
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8";
const SILERO_WEIGHTS_SHA256: &str =
    "c59271c284ae9c8335d795d60e0bfdb71aaaceec578d9bd9ffc1b8153c319ea1";
const SILERO_ONNX_SHA256: &str = "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49";

/// A member of the silero-vad wheel, fetched from PyPI once and cached.
fn wheel_member(member: &str, file: &str, sha256: &str) -> PathBuf {
    let cache = registry::cache_dir();
    let dest = cache.join("test-models").join(file);
    if registry::is_verified(&dest, sha256).unwrap() {
        return dest;
    }
    let wheel = registry::fetch_pypi("silero-vad", "6.2.3", SILERO_WHEEL_SHA256, &cache)
        .expect("download silero-vad wheel");
    registry::extract_member(&wheel, member, &dest).expect("extract weights");
    assert!(registry::is_verified(&dest, sha256).unwrap());
    dest
}

fn weights() -> PathBuf {
    wheel_member(
        "silero_vad/data/silero_vad_16k.safetensors",
        "silero_vad_16k.safetensors",
        SILERO_WEIGHTS_SHA256,
    )
}

fn model() -> &'static SileroVad {
    static MODEL: OnceLock<SileroVad> = OnceLock::new();
    MODEL.get_or_init(|| SileroVad::load(&weights(), &Device::Cpu).expect("load Silero VAD"))
}

fn reference(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn pairs(v: &Value) -> Vec<(i64, i64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_i64().unwrap()))
        .collect()
}

fn in_samples(regions: &[murmur_models::transcript::SpeechRegion]) -> Vec<(i64, i64)> {
    regions
        .iter()
        .map(|r| {
            (
                (r.start * 16_000.0).round() as i64,
                (r.end * 16_000.0).round() as i64,
            )
        })
        .collect()
}

#[test]
fn probabilities_match_the_reference_forward() {
    let refs = reference("silero_probs_reference.json");
    let sample = testaudio::pyannote_sample().unwrap();
    for (name, path) in [
        ("jfk.wav", testaudio::jfk().unwrap()),
        ("pyannote-sample.wav", sample.wav),
    ] {
        let audio = decode_file(&path).unwrap();
        let entry = &refs["files"][name];
        assert_eq!(
            audio.samples.len() as u64,
            entry["n_samples"].as_u64().unwrap()
        );
        let start = Instant::now();
        let probs = model().speech_probs(&audio.samples).unwrap();
        let took = start.elapsed();
        let diff = |expected: &[f32]| {
            assert_eq!(
                probs.len(),
                expected.len(),
                "{name}: one probability per 512 samples"
            );
            let d: Vec<f32> = probs
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .collect();
            let max = d.iter().copied().fold(0f32, f32::max);
            (max, d.iter().sum::<f32>() / d.len() as f32)
        };
        let (max_ref, mean_ref) = diff(&floats(&entry["probs"]));
        let (max_onnx, mean_onnx) = diff(&floats(&entry["probs_onnx"]));
        println!(
            "{name}: {} frames in {took:?} ({:.0}x real time); vs reference forward: max {max_ref:.1e}, \
             mean {mean_ref:.1e}; vs silero_vad.onnx checkpoint: max {max_onnx:.2}, mean {mean_onnx:.3}",
            probs.len(),
            audio.duration_s / took.as_secs_f64()
        );
        assert!(max_ref < 1e-4, "{name}: max difference {max_ref}");
        // Another checkpoint: close on average, not frame by frame.
        assert!(
            mean_onnx < 0.05,
            "{name}: mean difference to ONNX {mean_onnx}"
        );
    }
}

/// The ONNX checkpoint (what silero's Python and ONNX users run) loaded from
/// the op15 export reproduces onnxruntime, regions included.
#[test]
fn onnx_checkpoint_matches_onnxruntime() {
    let path = wheel_member(
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "silero_vad_16k_op15.onnx",
        SILERO_ONNX_SHA256,
    );
    let vad = SileroVad::load(&path, &Device::Cpu).expect("load the ONNX checkpoint");
    let refs = reference("silero_probs_reference.json");
    let sample = testaudio::pyannote_sample().unwrap();
    let fine = VadParams {
        min_silence_ms: 100,
        speech_pad_ms: 30,
        ..VadParams::default()
    };
    for (name, path) in [
        ("jfk.wav", testaudio::jfk().unwrap()),
        ("pyannote-sample.wav", sample.wav),
    ] {
        let audio = decode_file(&path).unwrap();
        let entry = &refs["files"][name];
        let probs = vad.speech_probs(&audio.samples).unwrap();
        let expected = floats(&entry["probs_onnx"]);
        assert_eq!(probs.len(), expected.len());
        let max = probs
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{name}: ONNX checkpoint in candle vs onnxruntime: max |dp| = {max:.1e}");
        assert!(max < 1e-4, "{name}: {max}");
        let regions = regions_from_probs(&probs, audio.samples.len(), &fine);
        assert_eq!(
            in_samples(&regions),
            pairs(&entry["regions_onnx_silence100_pad30"]),
            "{name}"
        );
    }
    let music = decode_file(&testaudio::music_mp3().unwrap()).unwrap();
    let regions = vad
        .speech_regions(&music.samples, &VadParams::default())
        .unwrap();
    println!("test.mp3 with the ONNX checkpoint: {regions:?}");
    assert!(regions.iter().map(|r| r.end - r.start).sum::<f64>() < 0.5);

    // `load_dir` prefers the ONNX checkpoint when both files are installed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&path, dir.path().join("silero_vad_16k_op15.onnx")).unwrap();
    std::fs::copy(weights(), dir.path().join("silero_vad_16k.safetensors")).unwrap();
    let from_dir = SileroVad::load_dir(dir.path(), &Device::Cpu).unwrap();
    let jfk = decode_file(&testaudio::jfk().unwrap()).unwrap();
    assert_eq!(
        from_dir.speech_probs(&jfk.samples).unwrap(),
        vad.speech_probs(&jfk.samples).unwrap()
    );

    let not_silero = tempfile::tempdir().unwrap();
    let bogus = not_silero.path().join("other.onnx");
    std::fs::write(&bogus, [0x3a, 0x02, 0x2a, 0x00]).unwrap();
    let err = SileroVad::load(&bogus, &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("0 of the 15"), "{err}");
}

#[test]
fn post_processing_matches_silero_on_random_tracks() {
    let refs = reference("silero_timestamps_reference.json");
    let cases = refs["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for (i, case) in cases.iter().enumerate() {
        let probs = floats(&case["probs"]);
        let params: VadParams = serde_json::from_value(case["params"].clone()).unwrap();
        let n = case["n_samples"].as_u64().unwrap() as usize;
        let got = in_samples(&regions_from_probs(&probs, n, &params));
        assert_eq!(got, pairs(&case["expected"]), "case {i} with {params:?}");
    }
}

#[test]
fn regions_on_real_audio_match_the_reference() {
    let refs = reference("silero_probs_reference.json");
    let sample = testaudio::pyannote_sample().unwrap();
    let jfk = decode_file(&testaudio::jfk().unwrap()).unwrap();
    let conversation = decode_file(&sample.wav).unwrap();
    let default = VadParams::default();
    let fine = VadParams {
        min_silence_ms: 100,
        speech_pad_ms: 30,
        ..VadParams::default()
    };
    let jfk_regions = model().speech_regions(&jfk.samples, &default).unwrap();
    assert_eq!(
        in_samples(&jfk_regions),
        pairs(&refs["files"]["jfk.wav"]["regions_default"])
    );
    let conv_default = model()
        .speech_regions(&conversation.samples, &default)
        .unwrap();
    assert_eq!(
        in_samples(&conv_default),
        pairs(&refs["files"]["pyannote-sample.wav"]["regions_default"])
    );
    let conv_fine = model()
        .speech_regions(&conversation.samples, &fine)
        .unwrap();
    assert_eq!(
        in_samples(&conv_fine),
        pairs(&refs["files"]["pyannote-sample.wav"]["regions_silence100_pad30"])
    );
    println!("pyannote sample, silence 100 ms / pad 30 ms: {conv_fine:?}");
}

#[test]
fn jfk_speech_is_covered() {
    let audio = decode_file(&testaudio::jfk().unwrap()).unwrap();
    // Tight settings show where the speech is; API defaults pad it.
    let tight = VadParams {
        min_silence_ms: 100,
        speech_pad_ms: 30,
        ..VadParams::default()
    };
    let regions = model().speech_regions(&audio.samples, &tight).unwrap();
    println!("jfk.wav regions (silence 100 ms, pad 30 ms): {regions:?}");
    assert!(!regions.is_empty());
    let first = regions.first().unwrap().start;
    let last = regions.last().unwrap().end;
    assert!((0.1..0.6).contains(&first), "speech starts at {first}");
    assert!((10.0..=11.0).contains(&last), "speech ends at {last}");
    let speech: f64 = regions.iter().map(|r| r.end - r.start).sum();
    assert!(speech > 7.0, "only {speech:.2} s of speech found");
    for pair in regions.windows(2) {
        assert!(pair[0].end <= pair[1].start, "regions overlap: {pair:?}");
    }

    let padded = model()
        .speech_regions(&audio.samples, &VadParams::default())
        .unwrap();
    println!("jfk.wav regions (API defaults): {padded:?}");
    assert_eq!(padded.len(), 1);
    assert!(padded[0].start <= 0.35 && padded[0].end >= 10.5);
}

#[test]
fn music_has_no_speech() {
    let audio = decode_file(&testaudio::music_mp3().unwrap()).unwrap();
    let probs = model().speech_probs(&audio.samples).unwrap();
    let regions = regions_from_probs(&probs, audio.samples.len(), &VadParams::default());
    // `+ 0.0` turns the empty sum's -0.0 into 0.0 for printing.
    let speech = regions.iter().map(|r| r.end - r.start).sum::<f64>() + 0.0;
    let max = probs.iter().copied().fold(0f32, f32::max);
    let mean = probs.iter().sum::<f32>() / probs.len() as f32;
    println!(
        "test.mp3: {} regions, {speech:.2} s of speech, max probability {max:.3}, mean {mean:.3}",
        regions.len()
    );
    assert!(speech < 0.5, "music flagged as speech: {regions:?}");
}

#[test]
fn conversation_has_speech_regions() {
    let sample = testaudio::pyannote_sample().unwrap();
    let audio = decode_file(&sample.wav).unwrap();
    let regions = model()
        .speech_regions(&audio.samples, &VadParams::default())
        .unwrap();
    assert!(!regions.is_empty());
    // The RTTM reference turns must lie inside the detected speech (with a
    // little slack for turn boundaries).
    let rttm = std::fs::read_to_string(&sample.rttm).unwrap();
    let mut covered = 0.0;
    let mut total = 0.0;
    for line in rttm.lines().filter(|l| l.starts_with("SPEAKER")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (start, dur): (f64, f64) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        total += dur;
        for r in &regions {
            covered += (r.end.min(start + dur) - r.start.max(start)).max(0.0);
        }
    }
    println!(
        "pyannote sample: {regions:?}; {covered:.2} of {total:.2} s of reference speech covered"
    );
    assert!(covered / total > 0.95, "covered {covered} of {total}");
}

#[test]
fn silence_and_short_input() {
    let silence = vec![0f32; 16_000 * 3];
    let probs = model().speech_probs(&silence).unwrap();
    assert_eq!(probs.len(), 94);
    assert!(probs.iter().all(|p| *p < 0.2), "{probs:?}");
    assert!(model()
        .speech_regions(&silence, &VadParams::default())
        .unwrap()
        .is_empty());
    assert!(model().speech_probs(&[]).unwrap().is_empty());
    assert_eq!(model().speech_probs(&[0.1; 100]).unwrap().len(), 1);
}

#[test]
fn bad_weights_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = SileroVad::load(&path, &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("bad.safetensors"), "{err}");
}

/// The regions a stream finds when the audio is pushed `piece` samples at a
/// time.
fn streamed(samples: &[f32], params: &VadParams, piece: usize) -> Vec<SpeechRegion> {
    let mut stream = VadStream::new(params);
    let mut out = Vec::new();
    for chunk in samples.chunks(piece) {
        stream.push(model(), chunk, &mut out).unwrap();
    }
    assert_eq!(stream.samples_in(), samples.len() as u64);
    stream.finish(model(), &mut out).unwrap();
    out
}

#[test]
fn streaming_in_any_piece_size_finds_the_same_regions() {
    // Over 60 s of real speech (JFK and the two-speaker sample, twice), so
    // the stream crosses the 1024-frame batch boundary.
    let jfk = decode_file(&testaudio::jfk().unwrap()).unwrap().samples;
    let sample = decode_file(&testaudio::pyannote_sample().unwrap().wav)
        .unwrap()
        .samples;
    let mut audio = Vec::new();
    for _ in 0..2 {
        audio.extend_from_slice(&jfk);
        audio.extend_from_slice(&sample);
    }
    // Not a whole number of frames, so the last frame is padded.
    audio.extend_from_slice(&jfk[..1000]);
    assert!(audio.len() > 1024 * 512);
    let tight = VadParams {
        min_silence_ms: 100,
        speech_pad_ms: 30,
        max_speech_s: Some(6.0),
        ..VadParams::default()
    };
    for params in [VadParams::default(), tight] {
        let whole = model().speech_regions(&audio, &params).unwrap();
        assert!(whole.len() >= 3, "{whole:?}");
        for piece in [1, 511, 512, 4096, 100_000, audio.len()] {
            let got = streamed(&audio, &params, piece);
            assert_eq!(got, whole, "pieces of {piece} samples, {params:?}");
        }
    }
}
