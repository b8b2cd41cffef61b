//! Inputs crafted to crash or mislead the decoder, found by fuzzing
//! (`scripts/fuzz`, target `audio_decode`): each stays refused or harmless.

use super::*;

/// A mono 32-bit float WAV of `samples` at `rate` Hz.
fn float_wav(rate: u32, samples: &[f32]) -> Vec<u8> {
    let data_len = (samples.len() * 4) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.wrapping_mul(4).to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&32u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Found by fuzzing (`fuzz/fuzz_targets/audio_decode.rs`): a float WAV
/// whose data holds NaN and infinities decoded to non-finite samples,
/// which the resampler smears over its output and the models read.
#[test]
fn non_finite_float_samples_decode_to_silence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.wav");
    let mut samples = vec![0.25f32; 64];
    samples[10] = f32::NAN;
    samples[20] = f32::INFINITY;
    samples[30] = f32::NEG_INFINITY;
    samples[40] = 3.0;
    std::fs::write(&path, float_wav(16_000, &samples)).unwrap();
    let same_rate = decode_file(&path).unwrap();
    assert_eq!(same_rate.samples.len(), 64);
    assert!(same_rate
        .samples
        .iter()
        .all(|s| s.is_finite() && s.abs() <= 1.0));
    assert_eq!(same_rate.samples[10], 0.0);
    assert_eq!(same_rate.samples[40], 1.0);
    // Through the resampler too (8 kHz source).
    std::fs::write(&path, float_wav(8_000, &samples)).unwrap();
    let resampled = decode_file(&path).unwrap();
    assert_eq!(resampled.samples.len(), 128);
    assert!(resampled.samples.iter().all(|s| s.is_finite()));
}

/// An MP4 box: 32-bit size, type, body.
fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

/// Found by fuzzing (`fuzz/fuzz_targets/audio_decode.rs`, a 1,243-byte
/// M4A): symphonia's MP4 reader reserves an `stsc` table for its entry
/// count before reading it, so a count of 0xffffdfff asked for 68 GB and
/// aborted the process (no panic to catch). Such a file is now refused
/// as corrupt before symphonia opens it, by the probe and the decoder.
#[test]
fn mp4_sample_table_larger_than_the_file_is_refused() {
    let mut stsc = vec![0u8; 4]; // version, flags
    stsc.extend_from_slice(&0xffff_dfffu32.to_be_bytes());
    stsc.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1]);
    let stbl = mp4_box(b"stbl", &mp4_box(b"stsc", &stsc));
    let minf = mp4_box(b"minf", &stbl);
    let mdia = mp4_box(b"mdia", &minf);
    let trak = mp4_box(b"trak", &mdia);
    let mut file = mp4_box(b"ftyp", b"M4A \0\0\0\0M4A isom");
    file.extend(mp4_box(b"moov", &trak));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-table.m4a");
    std::fs::write(&path, &file).unwrap();
    for err in [
        probe_duration(&path).unwrap_err(),
        decode_file(&path).unwrap_err(),
    ] {
        assert!(
            matches!(&err, AudioError::Corrupt { detail, .. } if detail.contains("stsc")),
            "{err}"
        );
    }
    // A table the file does hold passes this check (and fails later,
    // the file has no audio track description).
    let mut small = vec![0u8; 4];
    small.extend_from_slice(&1u32.to_be_bytes());
    small.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1]);
    let stbl = mp4_box(b"stbl", &mp4_box(b"stsc", &small));
    let trak = mp4_box(b"trak", &mp4_box(b"mdia", &mp4_box(b"minf", &stbl)));
    let mut file = mp4_box(b"ftyp", b"M4A \0\0\0\0M4A isom");
    file.extend(mp4_box(b"moov", &trak));
    std::fs::write(&path, &file).unwrap();
    assert_eq!(mp4::oversized_sample_table(Input::file(&path)), None);
}

/// A box whose 64-bit size reaches past 2^64 ends the edit-list walk
/// (it used to overflow: a panic with overflow checks, an endless loop
/// without them).
#[test]
fn mp4_box_size_near_u64_max_ends_the_walk() {
    let mut file = mp4_box(b"ftyp", b"M4A \0\0\0\0");
    let start = file.len() as u64;
    file.extend_from_slice(&1u32.to_be_bytes());
    file.extend_from_slice(b"free");
    file.extend_from_slice(&(u64::MAX - start + 1).to_be_bytes());
    file.extend_from_slice(&[0; 16]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrap.m4a");
    std::fs::write(&path, &file).unwrap();
    assert_eq!(mp4::audio_edit(Input::file(&path), 16_000), None);
    assert_eq!(mp4::oversized_sample_table(Input::file(&path)), None);
}

/// Found by fuzzing (`fuzz/fuzz_targets/audio_decode.rs`, a 1,365-byte
/// WAV claiming 838,860,801 Hz): the resampler's lead-in is
/// `rate / gcd(rate, 16000) - 1` frames, here 838 million per channel,
/// gigabytes allocated before a sample was read. Rates outside
/// [`SOURCE_RATES`] are refused at the probe and the decode.
#[test]
fn absurd_sample_rates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rate.wav");
    for rate in [838_860_801, u32::MAX, 999, 1] {
        std::fs::write(&path, float_wav(rate, &[0.1; 32])).unwrap();
        for err in [
            probe_duration(&path).unwrap_err(),
            decode_file(&path).unwrap_err(),
        ] {
            assert!(
                matches!(&err, AudioError::Unsupported { detail, .. }
                        if detail.contains(&format!("{rate} Hz"))),
                "{rate}: {err}"
            );
        }
    }
    std::fs::write(&path, float_wav(768_000, &[0.1; 32])).unwrap();
    assert_eq!(decode_file(&path).unwrap().samples.len(), 1);
}
