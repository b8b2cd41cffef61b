//! The counting decoder (`measure_duration`): it agrees with a full decode
//! on generated WAV, FLAC and MP3, does not believe a header that lies,
//! stops at a length limit and at a stop flag.
//!
//! FLAC and MP3 come from ffmpeg (Debian package `ffmpeg`); without it those
//! cases print why and skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use murmur_models::audio::{
    decode_file, decode_file_until, measure_duration, write_wav_16bit, AudioError, DecodeOptions,
    MeasuredLength,
};

fn never() -> bool {
    false
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `seconds` of a 440 Hz tone at `rate` Hz made by ffmpeg into `dir/name`.
fn ffmpeg_tone(dir: &Path, name: &str, seconds: u32, rate: u32, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!(
            "sine=frequency=440:sample_rate={rate}:duration={seconds}"
        ))
        .args(args)
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed for {name}");
    out
}

fn tone(rate: u32, seconds: f32) -> Vec<f32> {
    (0..(rate as f32 * seconds) as usize)
        .map(|i| 0.3 * (std::f32::consts::TAU * 440.0 * i as f32 / rate as f32).sin())
        .collect()
}

#[test]
fn measured_length_matches_a_full_decode_for_wav() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tone.wav");
    write_wav_16bit(&path, &tone(22_050, 3.5), 22_050, 1).unwrap();
    let measured = measure_duration(&path, None, &never).unwrap();
    let decoded = decode_file(&path).unwrap();
    assert_eq!(measured.duration_s, decoded.duration_s);
    assert_eq!(measured.duration_s, 3.5);
    assert_eq!(measured.header_s, Some(3.5));
    assert!(measured.header_exact);
    assert!(!measured.header_disagrees());
}

#[test]
fn measured_length_matches_a_full_decode_for_flac_and_mp3() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not found (Debian package `ffmpeg`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, args, exact) in [
        ("tone.flac", &["-c:a", "flac"][..], true),
        (
            "tone.mp3",
            &["-c:a", "libmp3lame", "-b:a", "64k"][..],
            false,
        ),
    ] {
        let path = ffmpeg_tone(dir.path(), name, 12, 44_100, args);
        let measured = measure_duration(&path, None, &never).unwrap();
        let decoded = decode_file(&path).unwrap();
        println!(
            "{name}: measured {measured:?}, decoded {} s",
            decoded.duration_s
        );
        assert_eq!(measured.duration_s, decoded.duration_s, "{name}");
        assert!(
            (measured.duration_s - 12.0).abs() < 0.05,
            "{name}: {measured:?}"
        );
        assert_eq!(measured.header_exact, exact, "{name}");
        assert!(!measured.header_disagrees(), "{name}: {measured:?}");
    }
}

/// Rewrites the STREAMINFO total-samples field of a FLAC file.
fn patch_flac_total_samples(path: &Path, total: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"fLaC");
    assert_eq!(bytes[4] & 0x7F, 0, "STREAMINFO comes first");
    let at = 18;
    let mut packed = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    packed = (packed & !0xF_FFFF_FFFF) | (total & 0xF_FFFF_FFFF);
    bytes[at..at + 8].copy_from_slice(&packed.to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flac_header_claiming_one_second_is_not_believed() {
    if !ffmpeg_available() {
        println!("SKIPPED: ffmpeg not found (Debian package `ffmpeg`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = ffmpeg_tone(dir.path(), "long.flac", 60, 16_000, &["-c:a", "flac"]);
    patch_flac_total_samples(&path, 16_000);
    let measured = measure_duration(&path, None, &never).unwrap();
    assert_eq!(measured.header_s, Some(1.0));
    assert!((measured.duration_s - 60.0).abs() < 1e-9, "{measured:?}");
    assert!(measured.header_disagrees());
    // Stops at a limit whatever the header says, without decoding the rest.
    match measure_duration(&path, Some(10.0), &never) {
        Err(AudioError::TooLong {
            duration_s,
            limit_s,
            ..
        }) => {
            assert_eq!(limit_s, 10.0);
            assert!(duration_s > 10.0 && duration_s < 11.0, "{duration_s}");
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
}

#[test]
fn headers_disagree_only_beyond_the_slack() {
    let length = |duration_s, header_s, header_exact| MeasuredLength {
        duration_s,
        header_s,
        header_exact,
    };
    // Within 2 s, whatever the share.
    assert!(!length(1.0, Some(2.9), true).header_disagrees());
    // Over 2 s but within 10 % of an exact header.
    assert!(!length(100.0, Some(108.0), true).header_disagrees());
    assert!(length(100.0, Some(112.0), true).header_disagrees());
    assert!(length(700.0, Some(1.0), true).header_disagrees());
    // Estimates get 50 %.
    assert!(!length(100.0, Some(140.0), false).header_disagrees());
    assert!(length(100.0, Some(300.0), false).header_disagrees());
    // No claim, nothing to disagree with.
    assert!(!length(100.0, None, true).header_disagrees());
}

#[test]
fn decoding_stops_at_the_stop_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tone.wav");
    write_wav_16bit(&path, &tone(16_000, 120.0), 16_000, 1).unwrap();
    // Asked from the first packet on: stopped at once.
    let err = measure_duration(&path, None, &|| true).unwrap_err();
    assert!(matches!(err, AudioError::Cancelled { .. }), "{err:?}");
    // A flag that turns true after a few looks: the decode stops there,
    // long before the end.
    let looks = AtomicUsize::new(0);
    let err = decode_file_until(&path, &DecodeOptions::default(), &|| {
        looks.fetch_add(1, Ordering::Relaxed) >= 2
    })
    .unwrap_err();
    assert!(matches!(err, AudioError::Cancelled { .. }), "{err:?}");
    assert_eq!(looks.load(Ordering::Relaxed), 3);
    // Never asked to stop: the whole file.
    let full = decode_file_until(&path, &DecodeOptions::default(), &never).unwrap();
    assert_eq!(full.duration_s, 120.0);
}
