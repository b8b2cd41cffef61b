//! Decoding real recordings from the registries (cached in `$MURMUR_CACHE_DIR`)
//! and every kind of bad input.
//!
//! The FLAC, Ogg Vorbis, M4A, Opus (Ogg, WebM), Matroska and video cases
//! transcode the JFK clip with ffmpeg
//! (Debian package `ffmpeg`); without it they print why and skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use murmur_models::audio::{
    decode_file, decode_file_with, probe_duration, write_wav_16bit, AudioError, ChannelLayout,
    DecodeOptions,
};
use murmur_models::testaudio;

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

#[test]
fn jfk_wav_decodes_to_11_seconds_of_16k_mono() {
    let path = testaudio::jfk().expect("fetch jfk.wav");
    let start = Instant::now();
    let audio = decode_file(&path).expect("decode jfk.wav");
    let took = start.elapsed();
    assert_eq!(audio.sample_rate, 16_000);
    assert_eq!(audio.channels, 1);
    assert_eq!(audio.source_rate, 16_000);
    assert_eq!(audio.source_channels, 1);
    assert_eq!(audio.samples.len(), 176_000);
    assert!(
        (audio.duration_s - 11.0).abs() < 1e-9,
        "{}",
        audio.duration_s
    );
    let level = rms(&audio.samples);
    assert!(level > 0.01 && level < 0.5, "rms {level}");
    assert!(audio.samples.iter().all(|s| (-1.0..=1.0).contains(s)));
    assert!((probe_duration(&path).unwrap() - 11.0).abs() < 1e-9);
    println!("jfk.wav: 11 s decoded in {took:?}");
}

#[test]
fn music_mp3_decodes_and_resamples_to_16k_mono() {
    let path = testaudio::music_mp3().expect("fetch test.mp3");
    let start = Instant::now();
    let audio = decode_file(&path).expect("decode test.mp3");
    let took = start.elapsed();
    assert_eq!(audio.source_rate, 44_100);
    assert_eq!(audio.source_channels, 2);
    assert_eq!(audio.sample_rate, 16_000);
    assert_eq!(audio.channels, 1);
    assert!(
        (audio.duration_s - 20.0).abs() < 1.0,
        "duration {}",
        audio.duration_s
    );
    let expected = (audio.duration_s * 16_000.0).round() as usize;
    assert!(audio.samples.len().abs_diff(expected) <= 1);
    assert!(rms(&audio.samples) > 0.01, "music should not be silent");
    let probed = probe_duration(&path).unwrap();
    assert!((probed - audio.duration_s).abs() < 0.5, "probe {probed}");
    println!(
        "test.mp3: {:.2} s (44.1 kHz stereo MP3 -> 16 kHz mono) in {took:?}, {:.0}x real time",
        audio.duration_s,
        audio.duration_s / took.as_secs_f64()
    );

    // The separator's layout: 44.1 kHz stereo, no resampling.
    let start = Instant::now();
    let stereo = decode_file_with(&path, &DecodeOptions::stereo(44_100)).unwrap();
    println!(
        "test.mp3 -> 44.1 kHz stereo (no resampling) in {:?}",
        start.elapsed()
    );
    assert_eq!(stereo.channels, 2);
    assert_eq!(stereo.sample_rate, 44_100);
    assert_eq!(
        stereo.frames() as f64,
        (stereo.duration_s * 44_100.0).round()
    );
    let (l, r) = (stereo.channel(0), stereo.channel(1));
    assert!(
        l.iter().zip(&r).any(|(a, b)| (a - b).abs() > 1e-3),
        "a stereo mix has different channels"
    );
}

#[test]
fn pyannote_sample_decodes() {
    let sample = testaudio::pyannote_sample().expect("fetch pyannote sample");
    let audio = decode_file(&sample.wav).unwrap();
    assert_eq!(audio.source_rate, 16_000);
    assert!(
        (audio.duration_s - 30.0).abs() < 0.1,
        "{}",
        audio.duration_s
    );
    assert!(std::fs::read_to_string(&sample.rttm)
        .unwrap()
        .starts_with("SPEAKER"));
}

#[test]
fn max_duration_is_enforced() {
    let path = testaudio::jfk().unwrap();
    let options = DecodeOptions {
        max_duration_s: Some(5.0),
        ..DecodeOptions::default()
    };
    match decode_file_with(&path, &options) {
        Err(AudioError::TooLong { duration_s, .. }) => assert!(duration_s > 5.0),
        other => panic!("expected TooLong, got {other:?}"),
    }
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Transcodes `src` with ffmpeg into `dir/name`; `args` pick the codec.
fn transcode(src: &Path, dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(src)
        .args(args)
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed for {name}");
    out
}

#[test]
fn jfk_transcoded_to_every_supported_format_decodes() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not found (Debian package `ffmpeg`); FLAC/Ogg/M4A not tested");
        return;
    }
    let jfk = testaudio::jfk().unwrap();
    let reference = decode_file(&jfk).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], u32, u16, f64); 11] = [
        // name, ffmpeg args, source rate, source channels, waveform tolerance
        ("jfk.flac", &["-c:a", "flac"], 16_000, 1, 1e-6),
        // Apple's lossless and uncompressed formats (iPhone, Logic, Core Audio).
        ("jfk_alac.m4a", &["-c:a", "alac"], 16_000, 1, 1e-6),
        ("jfk.aiff", &["-c:a", "pcm_s16be"], 16_000, 1, 1e-6),
        ("jfk.caf", &["-c:a", "pcm_s16le"], 16_000, 1, 1e-6),
        (
            "jfk.ogg",
            &[
                "-af",
                "pan=stereo|c0=c0|c1=c0",
                "-c:a",
                "libvorbis",
                "-q:a",
                "4",
                "-ar",
                "44100",
            ],
            44_100,
            2,
            f64::INFINITY,
        ),
        (
            "jfk.m4a",
            &["-c:a", "aac", "-b:a", "96k", "-ar", "22050"],
            22_050,
            1,
            f64::INFINITY,
        ),
        (
            "jfk.mp3",
            &["-c:a", "libmp3lame", "-b:a", "64k"],
            16_000,
            1,
            f64::INFINITY,
        ),
        // Ogg Opus, mono (mapping family 0). At this rate libopus codes
        // speech in CELT, which keeps the waveform; the low rates of voice
        // notes (SILK) are checked against libopus below.
        (
            "jfk.opus",
            &["-c:a", "libopus", "-b:a", "96k"],
            48_000,
            1,
            f64::INFINITY,
        ),
        // What a browser's MediaRecorder makes: WebM (Matroska) with stereo
        // Opus, the pre-skip only in the track header.
        (
            "jfk.webm",
            &[
                "-af",
                "pan=stereo|c0=c0|c1=c0",
                "-c:a",
                "libopus",
                "-b:a",
                "64k",
            ],
            48_000,
            2,
            f64::INFINITY,
        ),
        // A video: Matroska whose first track is video, then Vorbis audio.
        (
            "jfk_video.mkv",
            &[
                "-f",
                "lavfi",
                "-i",
                "color=c=navy:s=64x48:r=25",
                "-map",
                "1:v",
                "-map",
                "0:a",
                "-shortest",
                "-c:v",
                "mpeg4",
                "-c:a",
                "libvorbis",
                "-ar",
                "44100",
            ],
            44_100,
            1,
            f64::INFINITY,
        ),
        (
            "jfk_48k_stereo.wav",
            &[
                "-af",
                "pan=stereo|c0=c0|c1=c0",
                "-ar",
                "48000",
                "-c:a",
                "pcm_s24le",
            ],
            48_000,
            2,
            f64::INFINITY,
        ),
    ];
    for (name, args, rate, channels, tolerance) in cases {
        let path = transcode(&jfk, dir.path(), name, args);
        let audio = decode_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(audio.source_rate, rate, "{name}");
        assert_eq!(audio.source_channels, channels, "{name}");
        assert_eq!(audio.sample_rate, 16_000);
        assert!(
            (audio.duration_s - 11.0).abs() < 0.1,
            "{name}: duration {}",
            audio.duration_s
        );
        // Same speech, same loudness (lossy codecs and resampling differ in
        // detail, not in level).
        let ratio = rms(&audio.samples) / rms(&reference.samples);
        assert!((0.85..1.15).contains(&ratio), "{name}: rms ratio {ratio}");
        // Correlation with the original at lag 0: a timing offset or a wrong
        // rate would destroy it.
        let n = audio.samples.len().min(reference.samples.len());
        let (a, b) = (&audio.samples[..n], &reference.samples[..n]);
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let norm = (a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>()
            * b.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>())
        .sqrt();
        let corr = dot / norm;
        println!(
            "{name}: {} Hz x{} -> 16 kHz, correlation with the original {corr:.4}",
            rate, channels
        );
        assert!(corr > 0.99, "{name}: correlation {corr}");
        if tolerance.is_finite() {
            let max_diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from((x - y).abs()))
                .fold(0.0, f64::max);
            assert!(max_diff <= tolerance, "{name}: max diff {max_diff}");
        }
        let probed = probe_duration(&path).unwrap();
        assert!((probed - 11.0).abs() < 0.2, "{name}: probe {probed}");
    }
}

/// A voice note at a voice-note bitrate: libopus codes it in SILK, whose
/// output is not the input waveform, so the reference is libopus's own
/// decode of the same file (ffmpeg's native Opus decoder differs from
/// libopus in SILK; `-c:a libopus` asks for the real one). Both go through
/// Murmur's resampler, so what remains is the Opus decoders' difference.
#[test]
fn low_bitrate_opus_decodes_as_libopus_does() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not found (Debian package `ffmpeg`); Opus not tested");
        return;
    }
    let jfk = testaudio::jfk().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (bitrate, container) in [("16k", "ogg"), ("24k", "webm")] {
        let name = format!("voice_{bitrate}.{container}");
        let note = transcode(
            &jfk,
            dir.path(),
            &name,
            &["-c:a", "libopus", "-b:a", bitrate],
        );
        let reference = dir.path().join(format!("{name}.libopus.wav"));
        let status = Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-c:a",
                "libopus",
                "-i",
            ])
            .arg(&note)
            .args(["-c:a", "pcm_f32le"])
            .arg(&reference)
            .status()
            .expect("run ffmpeg");
        assert!(status.success(), "ffmpeg's libopus decode of {name}");
        let ours = decode_file(&note).unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = decode_file(&reference).unwrap();
        assert_eq!(
            (ours.source_rate, ours.source_channels),
            (48_000, 1),
            "{name}"
        );
        let n = ours.samples.len().min(theirs.samples.len());
        // WebM cannot say where the last packet's padding starts the way
        // Ogg's final granule position does (symphonia reads no
        // DiscardPadding), so up to one 20 ms packet of codec padding may
        // remain at its end.
        let slack = if container == "webm" { 16 + 320 } else { 16 };
        assert!(
            ours.samples.len().abs_diff(theirs.samples.len()) <= slack,
            "{name}: {} samples, libopus {}",
            ours.samples.len(),
            theirs.samples.len()
        );
        let max_diff = ours.samples[..n]
            .iter()
            .zip(&theirs.samples[..n])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!("{name}: largest difference from libopus {max_diff:.2e}");
        assert!(
            max_diff < 1e-3,
            "{name}: differs from libopus by {max_diff}"
        );
    }
}

/// Surround Opus (several streams per packet) is refused up front, in words
/// that say what to do; a codec Murmur has no decoder for is named.
#[test]
fn surround_opus_and_unknown_codecs_are_refused_by_name() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not found (Debian package `ffmpeg`)");
        return;
    }
    let jfk = testaudio::jfk().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let surround = transcode(
        &jfk,
        dir.path(),
        "jfk_51.opus",
        &[
            "-af",
            "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0",
            "-c:a",
            "libopus",
            "-mapping_family",
            "1",
        ],
    );
    let err = decode_file(&surround).unwrap_err();
    assert!(
        matches!(&err, AudioError::Unsupported { detail, .. } if detail.contains("surround Opus") && detail.contains("ffmpeg -ac 2")),
        "{err}"
    );
    // Speex in Ogg: symphonia reads the container, nobody decodes it.
    let speex = dir.path().join("jfk.spx");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&jfk)
        .args(["-c:a", "libspeex"])
        .arg(&speex)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if made {
        let err = decode_file(&speex).unwrap_err();
        println!("speex: {err}");
        assert!(
            matches!(&err, AudioError::Unsupported { detail, .. } if detail.contains("Speex")),
            "{err}"
        );
    } else {
        println!("this ffmpeg has no Speex encoder; the codec naming is checked with Opus only");
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn noise_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn random_bytes_are_not_audio() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=20u64 {
        for (ext, len) in [
            ("bin", 50_000),
            ("mp3", 200_000),
            ("wav", 3_000),
            ("", 1_000),
        ] {
            let path = dir.path().join(format!("noise{seed}.{ext}"));
            std::fs::write(&path, noise_bytes(seed, len)).unwrap();
            match decode_file(&path) {
                Err(AudioError::NotAudio { .. }) | Err(AudioError::Corrupt { .. }) => {}
                other => panic!("seed {seed} .{ext}: expected NotAudio/Corrupt, got {other:?}"),
            }
            assert!(probe_duration(&path).is_err(), "seed {seed} .{ext}");
        }
    }
    // Text is not audio either, and the message says what is supported.
    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "hello, this is not a recording\n".repeat(100)).unwrap();
    let err = decode_file(&text).unwrap_err();
    assert!(matches!(err, AudioError::NotAudio { .. }), "{err:?}");
    assert!(err.to_string().contains("WAV, MP3, FLAC"), "{err}");
}

#[test]
fn truncated_wav_is_reported_as_truncated() {
    let jfk = std::fs::read(testaudio::jfk().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cut in the middle of the samples.
    let half = dir.path().join("half.wav");
    std::fs::write(&half, &jfk[..jfk.len() / 2]).unwrap();
    let err = decode_file(&half).unwrap_err();
    assert!(matches!(err, AudioError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Cut inside the header.
    let head = dir.path().join("head.wav");
    std::fs::write(&head, &jfk[..20]).unwrap();
    let err = decode_file(&head).unwrap_err();
    assert!(matches!(err, AudioError::Truncated { .. }), "{err:?}");
}

#[test]
fn truncated_mp3_is_an_error() {
    let mp3 = std::fs::read(testaudio::music_mp3().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.mp3");
    std::fs::write(&path, &mp3[..mp3.len() / 3]).unwrap();
    match decode_file(&path) {
        Err(AudioError::Truncated { detail, .. }) => println!("cut.mp3: {detail}"),
        // An MP3 without a frame count in its header cannot know it was cut;
        // then it must at least decode what is there.
        Ok(audio) => {
            println!(
                "cut.mp3 has no length header: decoded {:.2} s",
                audio.duration_s
            );
            assert!(audio.duration_s > 5.0 && audio.duration_s < 8.0);
        }
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn empty_file_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.wav");
    std::fs::write(&path, b"").unwrap();
    let err = decode_file(&path).unwrap_err();
    assert!(matches!(err, AudioError::Empty { .. }), "{err:?}");
    assert!(matches!(
        probe_duration(&path),
        Err(AudioError::Empty { .. })
    ));
}

#[test]
fn wav_with_zero_samples_has_no_samples() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.wav");
    write_wav_16bit(&path, &[], 16_000, 1).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 44);
    let err = decode_file(&path).unwrap_err();
    assert!(matches!(err, AudioError::NoSamples { .. }), "{err:?}");
    assert!(err.to_string().contains("no audio samples"), "{err}");
    assert!(matches!(
        probe_duration(&path),
        Err(AudioError::NoSamples { .. })
    ));
}

#[test]
fn missing_file_is_an_io_error() {
    let err = decode_file(Path::new("/nonexistent/murmur/audio.wav")).unwrap_err();
    assert!(matches!(err, AudioError::Io { .. }), "{err:?}");
}

#[test]
fn stereo_layout_duplicates_mono_sources() {
    let path = testaudio::jfk().unwrap();
    let audio = decode_file_with(
        &path,
        &DecodeOptions {
            sample_rate: 44_100,
            channels: ChannelLayout::Stereo,
            max_duration_s: None,
        },
    )
    .unwrap();
    assert_eq!(audio.frames(), 485_100);
    assert_eq!(audio.channel(0), audio.channel(1));
}

#[test]
fn damaged_frames_in_the_middle_are_skipped() {
    let mut mp3 = std::fs::read(testaudio::music_mp3().unwrap()).unwrap();
    let middle = mp3.len() / 2;
    let noise = noise_bytes(99, 4_000);
    mp3[middle..middle + noise.len()].copy_from_slice(&noise);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.mp3");
    std::fs::write(&path, &mp3).unwrap();
    let audio = decode_file(&path).expect("a few damaged frames are tolerated");
    println!("damaged.mp3: {:.2} s decoded", audio.duration_s);
    assert!(
        (audio.duration_s - 20.0).abs() < 1.0,
        "{}",
        audio.duration_s
    );

    // The same damage in a WAV is just noise in the samples.
    let mut wav = std::fs::read(testaudio::jfk().unwrap()).unwrap();
    let middle = wav.len() / 2;
    wav[middle..middle + noise.len()].copy_from_slice(&noise);
    let path = dir.path().join("damaged.wav");
    std::fs::write(&path, &wav).unwrap();
    assert_eq!(decode_file(&path).unwrap().samples.len(), 176_000);
}
