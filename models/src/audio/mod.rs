//! Audio decoding: any supported file to float samples at the rate and channel
//! layout a model wants (16 kHz mono for Whisper and Silero VAD).
//!
//! Decoding streams packet by packet: symphonia reads the compressed file
//! through a small buffer, each decoded packet is downmixed and fed to a rubato
//! resampler in fixed chunks, and only the resampled output is kept. So a long
//! file costs its output samples once, plus a few kilobytes of work buffers.
//!
//! [`measure_duration`] runs the same packet loop without keeping anything:
//! it counts the frames the decoder really produces, which is what an upload
//! is billed and limited by (a header can claim any length). Every decode
//! asks a stop flag every few packets, so a cancelled job or an upload whose
//! client left stops burning its thread.
//!
//! Inputs come from tenants, so nothing here may panic or spin on hostile
//! bytes: the decode loop runs under `catch_unwind`, decode errors are
//! counted and bounded, and every way a file can be unusable maps to one
//! [`AudioError`] variant with a message a user can act on.

use std::io;
use std::path::PathBuf;

use symphonia::core::errors::Error as SymphoniaError;

mod decode;
mod input;
mod mp4;
mod opus;
mod packets;
mod pull;
mod resample;
mod wav;

pub use input::{Input, Opener, ReadSeek};

use decode::decode_inner;
use packets::{corrupt, guarded, measure_inner, open, MAX_CONSECUTIVE_DECODE_ERRORS};
pub use pull::ChunkReader;
pub use resample::resample;
pub use wav::{write_wav_16bit, WavWriter, WAV_HEADER_BYTES};

/// The rate Whisper and Silero VAD expect.
pub const WHISPER_SAMPLE_RATE: u32 = 16_000;

/// A header's length claim may differ from the decoded length by this many
/// seconds before it counts as inconsistent (short files, encoder padding)...
const HEADER_SLACK_S: f64 = 2.0;
/// ...and by this share of the length for exact headers (PCM, FLAC)...
const HEADER_SLACK_EXACT: f64 = 0.10;
/// ...or this share for codecs whose header only estimates (MP3 without a
/// Xing frame guesses from the bitrate).
const HEADER_SLACK_ESTIMATED: f64 = 0.50;

/// Why a file could not be turned into samples.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is empty (0 bytes); upload the audio file again")]
    Empty { path: PathBuf },
    #[error(
        "{path} is not a supported audio file ({detail}); supported are WAV, MP3, FLAC, \
         Ogg Vorbis and AAC/M4A"
    )]
    NotAudio { path: PathBuf, detail: String },
    #[error(
        "{path} contains no audio track Murmur can read (a video without sound, or audio in a \
         codec Murmur does not know)"
    )]
    NoAudioTrack { path: PathBuf },
    #[error("{path} uses an unsupported codec or feature ({detail})")]
    Unsupported { path: PathBuf, detail: String },
    #[error("{path} contains no audio samples (zero-length recording)")]
    NoSamples { path: PathBuf },
    #[error("{path} is truncated: {detail}; the file was probably cut off during upload or copy")]
    Truncated { path: PathBuf, detail: String },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path} is {duration_s:.0} s long, over the limit of {limit_s:.0} s")]
    TooLong {
        path: PathBuf,
        duration_s: f64,
        limit_s: f64,
    },
    #[error("decoding {path} was stopped before the end")]
    Cancelled { path: PathBuf },
    #[error("the decoder failed on {path} ({detail}); the file is probably damaged")]
    DecoderPanicked { path: PathBuf, detail: String },
    #[error("cannot resample {from} Hz to {to} Hz: {detail}")]
    Resample { from: u32, to: u32, detail: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Channel layout of decoded output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelLayout {
    /// All source channels averaged.
    Mono,
    /// Interleaved left/right; a mono source is duplicated, a source with more
    /// than two channels keeps its first two (front left and right).
    Stereo,
}

impl ChannelLayout {
    pub fn count(self) -> usize {
        match self {
            ChannelLayout::Mono => 1,
            ChannelLayout::Stereo => 2,
        }
    }
}

/// What [`decode_file_with`] produces.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Output sample rate in Hz.
    pub sample_rate: u32,
    pub channels: ChannelLayout,
    /// Refuse sources longer than this many seconds (checked from the header
    /// when it tells, else while decoding, so a huge file is stopped early).
    pub max_duration_s: Option<f64>,
}

impl Default for DecodeOptions {
    /// 16 kHz mono, no length limit: what Whisper and the VAD read.
    fn default() -> Self {
        DecodeOptions {
            sample_rate: WHISPER_SAMPLE_RATE,
            channels: ChannelLayout::Mono,
            max_duration_s: None,
        }
    }
}

impl DecodeOptions {
    /// Interleaved stereo at `sample_rate` (the music separator wants 44.1 kHz).
    pub fn stereo(sample_rate: u32) -> Self {
        DecodeOptions {
            sample_rate,
            channels: ChannelLayout::Stereo,
            max_duration_s: None,
        }
    }
}

/// Decoded, resampled audio.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// Interleaved samples in [-1, 1] (just one channel for mono output).
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// Channels in `samples`.
    pub channels: u16,
    /// Length of the source in seconds (decoded frames / source rate).
    pub duration_s: f64,
    pub source_rate: u32,
    pub source_channels: u16,
}

impl DecodedAudio {
    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// One channel's samples, copied out of the interleaved buffer.
    pub fn channel(&self, index: usize) -> Vec<f32> {
        let n = usize::from(self.channels.max(1));
        self.samples
            .iter()
            .skip(index)
            .step_by(n)
            .copied()
            .collect()
    }
}

/// A file's length as its decoder measured it, beside what its header
/// claims.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeasuredLength {
    /// Decoded frames / source rate: the length to bill and limit by.
    pub duration_s: f64,
    /// The container's claim, when it makes one.
    pub header_s: Option<f64>,
    /// Whether that claim is exact for this format (PCM, FLAC) rather than
    /// an estimate (MP3, AAC, Vorbis, Opus).
    pub header_exact: bool,
}

impl MeasuredLength {
    /// The header's claim and the decoded length differ by more than
    /// [`HEADER_SLACK_S`] and by more than a share of the longer one (10 %
    /// for exact headers, 50 % for estimates): someone edited the header,
    /// or the file is damaged.
    pub fn header_disagrees(&self) -> bool {
        let Some(claimed) = self.header_s else {
            return false;
        };
        let diff = (claimed - self.duration_s).abs();
        let share = if self.header_exact {
            HEADER_SLACK_EXACT
        } else {
            HEADER_SLACK_ESTIMATED
        };
        diff > HEADER_SLACK_S && diff > share * claimed.max(self.duration_s)
    }
}

/// Decodes all of `path` without keeping its samples and answers how long it
/// really is. Memory stays at one packet whatever the length; stops early
/// with [`AudioError::TooLong`] once the count passes `max_duration_s`, and
/// with [`AudioError::Cancelled`] soon after `should_stop` answers true.
pub fn measure_duration<'a>(
    input: impl Into<Input<'a>>,
    max_duration_s: Option<f64>,
    should_stop: &dyn Fn() -> bool,
) -> Result<MeasuredLength, AudioError> {
    let input = input.into();
    guarded(input.path(), || {
        measure_inner(input, max_duration_s, should_stop)
    })
}

/// Decodes `path` to 16 kHz mono.
pub fn decode_file<'a>(input: impl Into<Input<'a>>) -> Result<DecodedAudio, AudioError> {
    decode_file_with(input, &DecodeOptions::default())
}

/// Decodes `path` to the rate and layout of `options`.
pub fn decode_file_with<'a>(
    input: impl Into<Input<'a>>,
    options: &DecodeOptions,
) -> Result<DecodedAudio, AudioError> {
    decode_file_until(input, options, &|| false)
}

/// Like [`decode_file_with`], stopping with [`AudioError::Cancelled`] soon
/// after `should_stop` answers true (a cancelled or overdue job).
pub fn decode_file_until<'a>(
    input: impl Into<Input<'a>>,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
) -> Result<DecodedAudio, AudioError> {
    if options.sample_rate == 0 {
        return Err(AudioError::InvalidArgument(
            "output sample rate must be positive".into(),
        ));
    }
    let input = input.into();
    guarded(input.path(), || decode_inner(input, options, should_stop))
}

/// What [`decode_chunks`] found, beside the samples it handed on.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkedDecode {
    /// Output frames handed on, in all.
    pub frames: u64,
    pub sample_rate: u32,
    /// Channels in each chunk (interleaved).
    pub channels: u16,
    /// Length of the source in seconds (decoded frames / source rate).
    pub duration_s: f64,
    pub source_rate: u32,
    pub source_channels: u16,
}

/// Decodes `path` to the rate and layout of `options` like
/// [`decode_file_until`], but hands the samples to `on_chunk` a second or so
/// at a time (interleaved, with the index of the chunk's first frame) and
/// keeps none: memory stays at a chunk plus the decoder's and resampler's
/// buffers, whatever the length. The chunks laid end to end are exactly
/// [`decode_file_until`]'s samples. An error from `on_chunk` stops the
/// decode and is returned as is; so is any decode error, possibly after
/// some chunks were handed on (a truncated file is found at its end).
pub fn decode_chunks<'a, E: From<AudioError>>(
    input: impl Into<Input<'a>>,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
    mut on_chunk: impl FnMut(&[f32], u64) -> Result<(), E>,
) -> Result<ChunkedDecode, E> {
    if options.sample_rate == 0 {
        return Err(
            AudioError::InvalidArgument("output sample rate must be positive".into()).into(),
        );
    }
    // The caller's error is kept aside; the decoder just sees a stop.
    let input = input.into();
    let path = input.path();
    let mut failed: Option<E> = None;
    let result = guarded(path, || {
        decode::decode_chunks_inner(input, options, should_stop, |chunk, at| {
            on_chunk(chunk, at).map_err(|e| {
                failed = Some(e);
                AudioError::Cancelled {
                    path: path.to_path_buf(),
                }
            })
        })
    });
    match (result, failed) {
        (_, Some(e)) => Err(e),
        (result, None) => result.map_err(E::from),
    }
}

/// The duration of `path` in seconds from its header, without decoding (a
/// header can claim anything: bill and limit by [`measure_duration`]); when
/// the header does not tell (some MP3 and Ogg files), from the packet
/// timestamps, which reads the file but decodes nothing.
pub fn probe_duration<'a>(input: impl Into<Input<'a>>) -> Result<f64, AudioError> {
    let input = input.into();
    let path = input.path();
    guarded(path, || {
        let mut opened = open(input)?;
        let rate = opened.params.sample_rate.unwrap_or(0);
        if let (Some(frames), true) = (opened.params.n_frames, rate > 0) {
            if frames == 0 {
                return Err(AudioError::NoSamples {
                    path: path.to_path_buf(),
                });
            }
            return Ok(frames as f64 / f64::from(rate));
        }
        let time_base = opened.params.time_base;
        let mut end_ts = 0u64;
        let mut errors = 0usize;
        loop {
            match opened.reader.next_packet() {
                Ok(packet) if packet.track_id() == opened.track_id => {
                    errors = 0;
                    end_ts = end_ts.max(packet.ts() + packet.dur());
                }
                Ok(_) => {}
                Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break
                }
                Err(SymphoniaError::ResetRequired) => break,
                Err(e) => {
                    errors += 1;
                    if errors > MAX_CONSECUTIVE_DECODE_ERRORS {
                        return Err(corrupt(path, &e));
                    }
                }
            }
        }
        if end_ts == 0 {
            return Err(AudioError::NoSamples {
                path: path.to_path_buf(),
            });
        }
        match (time_base, rate) {
            (Some(tb), _) => {
                let t = tb.calc_time(end_ts);
                Ok(t.seconds as f64 + t.frac)
            }
            (None, r) if r > 0 => Ok(end_ts as f64 / f64::from(r)),
            _ => Err(AudioError::Unsupported {
                path: path.to_path_buf(),
                detail: "no sample rate or time base in the stream".into(),
            }),
        }
    })
}

#[cfg(test)]
mod hostile_input_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn wav_writer_round_trips_through_the_decoder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let left = sine(300.0, 22_050, 0.5);
        let stereo: Vec<f32> = left.iter().flat_map(|&s| [s, -s]).collect();
        write_wav_16bit(&path, &stereo, 22_050, 2).unwrap();
        let same = decode_file_with(&path, &DecodeOptions::stereo(22_050)).unwrap();
        assert_eq!(same.channels, 2);
        assert_eq!(same.source_channels, 2);
        assert_eq!(same.frames(), left.len());
        let err = same
            .channel(1)
            .iter()
            .zip(&left)
            .map(|(a, b)| (a + b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "16-bit quantisation error {err}");
        // Mono downmix of L and -L is silence.
        let mono = decode_file(&path).unwrap();
        assert_eq!(mono.frames(), 8_000);
        assert!(mono.samples.iter().all(|s| s.abs() < 1e-3));
        assert!((probe_duration(&path).unwrap() - 0.5).abs() < 1e-9);
    }
}
