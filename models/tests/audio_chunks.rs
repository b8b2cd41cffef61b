//! Chunked decoding: `decode_chunks` laid end to end must be exactly what
//! `decode_file_with` answers, for pass-through (16 kHz WAV), resampled
//! (44.1 kHz stereo MP3, 48 kHz FLAC made by ffmpeg) and stereo output, and
//! must stop on the caller's error, a stop flag or the length limit.
//!
//! The FLAC and M4A cases need ffmpeg (Debian package `ffmpeg`); without it
//! they print why and skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use murmur_models::audio::{
    decode_chunks, decode_file_with, AudioError, ChannelLayout, ChunkedDecode, DecodeOptions,
};
use murmur_models::testaudio;

/// The chunks of `path`, checked to follow one another, laid end to end.
fn chunked(path: &Path, options: &DecodeOptions) -> (Vec<f32>, ChunkedDecode, usize) {
    let channels = options.channels.count();
    let mut joined = Vec::new();
    let mut calls = 0;
    let info = decode_chunks::<AudioError>(path, options, &|| false, |chunk, first| {
        assert_eq!(
            first as usize,
            joined.len() / channels,
            "chunks must follow on"
        );
        assert_eq!(chunk.len() % channels, 0, "whole frames only");
        // A chunk is about CHUNK_FRAMES plus at most one packet's output.
        assert!(
            chunk.len() <= 2 * 16_384 * channels + 8192,
            "{}",
            chunk.len()
        );
        joined.extend_from_slice(chunk);
        calls += 1;
        Ok(())
    })
    .expect("chunked decode");
    (joined, info, calls)
}

fn assert_same_as_whole(path: &Path, options: &DecodeOptions) -> usize {
    let whole = decode_file_with(path, options).expect("whole decode");
    let (joined, info, calls) = chunked(path, options);
    assert_eq!(joined.len(), whole.samples.len(), "{}", path.display());
    // Bit-exact: the same resampler runs, only its output is taken early.
    let first_diff = joined
        .iter()
        .zip(&whole.samples)
        .position(|(a, b)| a.to_bits() != b.to_bits());
    assert_eq!(first_diff, None, "{}: samples differ", path.display());
    assert_eq!(info.frames as usize, whole.frames());
    assert_eq!(info.channels, whole.channels);
    assert_eq!(info.sample_rate, whole.sample_rate);
    assert_eq!(info.duration_s, whole.duration_s);
    assert_eq!(info.source_rate, whole.source_rate);
    assert_eq!(info.source_channels, whole.source_channels);
    calls
}

#[test]
fn chunks_of_the_test_recordings_equal_the_whole_decode() {
    let jfk = testaudio::jfk().expect("fetch jfk.wav");
    let calls = assert_same_as_whole(&jfk, &DecodeOptions::default());
    assert!(calls >= 10, "11 s in about 1 s chunks, got {calls} calls");
    let mp3 = testaudio::music_mp3().expect("fetch test.mp3");
    assert_same_as_whole(&mp3, &DecodeOptions::default());
    assert_same_as_whole(&mp3, &DecodeOptions::stereo(44_100));
    assert_same_as_whole(&jfk, &DecodeOptions::stereo(44_100));
}

fn ffmpeg(args: &[&str], out: &Path) -> bool {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn chunks_of_generated_flac_and_m4a_equal_the_whole_decode() {
    let dir = tempfile::tempdir().unwrap();
    let flac: PathBuf = dir.path().join("chirp.flac");
    let lavfi = "aevalsrc=0.4*sin(2*PI*(200+300*t)*t)|0.3*sin(2*PI*440*t):s=48000:d=7.3";
    if !ffmpeg(&["-f", "lavfi", "-i", lavfi, "-c:a", "flac"], &flac) {
        println!("SKIPPED: ffmpeg not found or failed (Debian package `ffmpeg`)");
        return;
    }
    assert_same_as_whole(&flac, &DecodeOptions::default());
    assert_same_as_whole(&flac, &DecodeOptions::stereo(44_100));
    // AAC in MP4: the edit list trims priming frames inside the walk.
    let m4a = dir.path().join("chirp.m4a");
    assert!(ffmpeg(&["-i", flac.to_str().unwrap(), "-c:a", "aac"], &m4a));
    assert_same_as_whole(&m4a, &DecodeOptions::default());
}

#[derive(Debug)]
enum Mine {
    Enough,
    Audio(AudioError),
}

impl From<AudioError> for Mine {
    fn from(e: AudioError) -> Self {
        Mine::Audio(e)
    }
}

#[test]
fn the_callers_error_a_stop_and_the_limit_end_a_chunked_decode() {
    let jfk = testaudio::jfk().expect("fetch jfk.wav");
    let mut calls = 0;
    let err = decode_chunks::<Mine>(&jfk, &DecodeOptions::default(), &|| false, |_, _| {
        calls += 1;
        if calls == 3 {
            Err(Mine::Enough)
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert!(matches!(err, Mine::Enough), "{err:?}");
    assert_eq!(calls, 3, "no chunk after the caller's error");

    let err = decode_chunks::<Mine>(&jfk, &DecodeOptions::default(), &|| true, |_, _| {
        panic!("no chunk after a stop")
    })
    .unwrap_err();
    assert!(
        matches!(err, Mine::Audio(AudioError::Cancelled { .. })),
        "{err:?}"
    );

    let options = DecodeOptions {
        max_duration_s: Some(5.0),
        channels: ChannelLayout::Mono,
        ..DecodeOptions::default()
    };
    let err = decode_chunks::<AudioError>(&jfk, &options, &|| false, |_, _| Ok(())).unwrap_err();
    assert!(matches!(err, AudioError::TooLong { .. }), "{err:?}");
}
