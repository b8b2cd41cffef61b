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

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rubato::{
    calculate_cutoff, Resampler, SincFixedIn, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};
use symphonia::core::audio::{AudioBufferRef, SampleBuffer};
use symphonia::core::codecs::{CodecParameters, DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// The rate Whisper and Silero VAD expect.
pub const WHISPER_SAMPLE_RATE: u32 = 16_000;

/// Decode errors in a row after which a stream is declared corrupt: a few
/// damaged frames in a long file are skipped, a stream of garbage is not.
const MAX_CONSECUTIVE_DECODE_ERRORS: usize = 32;

/// Packets decoded between two looks at the stop flag: FLAC and MP3 packets
/// hold 26 ms to 100 ms of audio, so a stop is seen within a few seconds of
/// audio (milliseconds of work), and the check costs nothing measurable.
const CANCEL_CHECK_EVERY: usize = 32;

/// A header's length claim may differ from the decoded length by this many
/// seconds before it counts as inconsistent (short files, encoder padding)...
const HEADER_SLACK_S: f64 = 2.0;
/// ...and by this share of the length for exact headers (PCM, FLAC)...
const HEADER_SLACK_EXACT: f64 = 0.10;
/// ...or this share for codecs whose header only estimates (MP3 without a
/// Xing frame guesses from the bitrate).
const HEADER_SLACK_ESTIMATED: f64 = 0.50;

/// Input frames per resampler call: small work buffers, few calls.
const RESAMPLE_CHUNK: usize = 1024;

/// Taps of the windowed-sinc resampling filter, counted at the input rate.
/// rubato's synchronous FFT resampler measured about 6x slower here for
/// 44.1 -> 16 kHz. With 44.1 -> 16 kHz, 128 taps (Blackman-Harris) pass 6 kHz
/// at -0.1 dB and leave a 10 kHz tone's alias at -63 dB (see the tests); 64
/// taps already cut 6 kHz by 4 dB, 256 gain nothing audible at twice the
/// cost (about 70 ms per 20 s of 44.1 kHz audio for 128 taps here).
const SINC_LEN: usize = 128;

/// Sample rates accepted, in Hz. Real recordings lie well inside; outside,
/// the resampler's buffers grow with the rate ratio (a header claiming
/// 838 MHz asked for gigabytes of lead-in), so such a file is refused.
const SOURCE_RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

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
    #[error("{path} contains no audio track")]
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
pub fn measure_duration(
    path: &Path,
    max_duration_s: Option<f64>,
    should_stop: &dyn Fn() -> bool,
) -> Result<MeasuredLength, AudioError> {
    guarded(path, || measure_inner(path, max_duration_s, should_stop))
}

/// Decodes `path` to 16 kHz mono.
pub fn decode_file(path: &Path) -> Result<DecodedAudio, AudioError> {
    decode_file_with(path, &DecodeOptions::default())
}

/// Decodes `path` to the rate and layout of `options`.
pub fn decode_file_with(path: &Path, options: &DecodeOptions) -> Result<DecodedAudio, AudioError> {
    decode_file_until(path, options, &|| false)
}

/// Like [`decode_file_with`], stopping with [`AudioError::Cancelled`] soon
/// after `should_stop` answers true (a cancelled or overdue job).
pub fn decode_file_until(
    path: &Path,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
) -> Result<DecodedAudio, AudioError> {
    if options.sample_rate == 0 {
        return Err(AudioError::InvalidArgument(
            "output sample rate must be positive".into(),
        ));
    }
    guarded(path, || decode_inner(path, options, should_stop))
}

/// The duration of `path` in seconds from its header, without decoding (a
/// header can claim anything: bill and limit by [`measure_duration`]); when
/// the header does not tell (some MP3 and Ogg files), from the packet
/// timestamps, which reads the file but decodes nothing.
pub fn probe_duration(path: &Path) -> Result<f64, AudioError> {
    guarded(path, || {
        let mut opened = open(path)?;
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

/// Writes interleaved `samples` as a 16-bit PCM WAV file (clipped to [-1, 1]).
pub fn write_wav_16bit(
    path: &Path,
    samples: &[f32],
    sample_rate: u32,
    channels: u16,
) -> Result<(), AudioError> {
    if channels == 0 || sample_rate == 0 {
        return Err(AudioError::InvalidArgument(
            "a WAV file needs at least one channel and a positive rate".into(),
        ));
    }
    if samples.len() % usize::from(channels) != 0 {
        return Err(AudioError::InvalidArgument(format!(
            "{} samples do not split into {channels} channels",
            samples.len()
        )));
    }
    let data_len = u32::try_from(samples.len() * 2)
        .ok()
        .filter(|n| *n <= u32::MAX - 36)
        .ok_or_else(|| AudioError::InvalidArgument("too many samples for a WAV file".into()))?;
    let io_err = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(File::create(path).map_err(io_err)?);
    let block_align = channels * 2;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"RIFF");
    header.extend_from_slice(&(36 + data_len).to_le_bytes());
    header.extend_from_slice(b"WAVEfmt ");
    header.extend_from_slice(&16u32.to_le_bytes());
    header.extend_from_slice(&1u16.to_le_bytes()); // PCM
    header.extend_from_slice(&channels.to_le_bytes());
    header.extend_from_slice(&sample_rate.to_le_bytes());
    header.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    header.extend_from_slice(&block_align.to_le_bytes());
    header.extend_from_slice(&16u16.to_le_bytes());
    header.extend_from_slice(b"data");
    header.extend_from_slice(&data_len.to_le_bytes());
    out.write_all(&header).map_err(io_err)?;
    for &s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.write_all(&v.to_le_bytes()).map_err(io_err)?;
    }
    out.flush().map_err(io_err)
}

/// Resamples interleaved `samples` with `channels` channels from `from` Hz to
/// `to` Hz with the same resampler the decoder uses.
pub fn resample(
    samples: &[f32],
    channels: usize,
    from: u32,
    to: u32,
) -> Result<Vec<f32>, AudioError> {
    if channels == 0 || from == 0 || to == 0 {
        return Err(AudioError::InvalidArgument(
            "resampling needs channels and positive rates".into(),
        ));
    }
    let layout = match channels {
        1 => ChannelLayout::Mono,
        2 => ChannelLayout::Stereo,
        n => {
            return Err(AudioError::InvalidArgument(format!(
                "resampling supports 1 or 2 channels, not {n}"
            )))
        }
    };
    let mut stream = ResampleStream::new(from, to, channels, samples.len() / channels)?;
    stream.push(samples, channels, layout)?;
    stream.finish()
}

/// Runs `work` so that a panic inside symphonia or rubato becomes an error.
fn guarded<T>(path: &Path, work: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    match panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            tracing::warn!(path = %path.display(), %detail, "audio decoder panicked");
            Err(AudioError::DecoderPanicked {
                path: path.to_path_buf(),
                detail,
            })
        }
    }
}

/// A probed file: its reader and the audio track to decode.
struct Opened {
    reader: Box<dyn FormatReader>,
    track_id: u32,
    params: CodecParameters,
}

/// Container magic numbers, to tell "a WAV cut short inside its header" from
/// "not audio at all" when probing fails.
fn looks_like_audio(head: &[u8]) -> bool {
    head.starts_with(b"RIFF")
        || head.starts_with(b"fLaC")
        || head.starts_with(b"OggS")
        || head.starts_with(b"ID3")
        || head.get(4..8) == Some(b"ftyp")
}

fn open(path: &Path) -> Result<Opened, AudioError> {
    let io_err = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io_err)?.len();
    if len == 0 {
        return Err(AudioError::Empty {
            path: path.to_path_buf(),
        });
    }
    // symphonia 0.5's MP4 reader reserves memory for a sample table from
    // the table's own entry count before reading it: a few hundred bytes
    // could ask for 68 GB and abort the whole process. Refuse such tables
    // before symphonia sees them.
    if let Some(detail) = mp4::oversized_sample_table(path) {
        return Err(AudioError::Corrupt {
            path: path.to_path_buf(),
            detail,
        });
    }
    let file = File::open(path).map_err(io_err)?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let format_options = FormatOptions {
        // Trims MP3/AAC encoder delay and padding so durations are exact.
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &format_options, &MetadataOptions::default())
        .map_err(|e| {
            let mut head = [0u8; 12];
            let n = File::open(path)
                .and_then(|mut f| io::Read::read(&mut f, &mut head))
                .unwrap_or(0);
            match e {
                SymphoniaError::IoError(ref io)
                    if io.kind() == io::ErrorKind::UnexpectedEof
                        && looks_like_audio(&head[..n]) =>
                {
                    AudioError::Truncated {
                        path: path.to_path_buf(),
                        detail: format!("the file ends inside its header ({len} bytes)"),
                    }
                }
                SymphoniaError::IoError(io) if io.kind() != io::ErrorKind::UnexpectedEof => {
                    AudioError::Io {
                        path: path.to_path_buf(),
                        source: io,
                    }
                }
                other => AudioError::NotAudio {
                    path: path.to_path_buf(),
                    detail: other.to_string(),
                },
            }
        })?;
    let reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::NoAudioTrack {
            path: path.to_path_buf(),
        })?;
    if let Some(rate) = track.codec_params.sample_rate {
        if !SOURCE_RATES.contains(&rate) {
            return Err(unsupported_rate(path, rate));
        }
    }
    Ok(Opened {
        track_id: track.id,
        params: track.codec_params.clone(),
        reader,
    })
}

fn unsupported_rate(path: &Path, rate: u32) -> AudioError {
    AudioError::Unsupported {
        path: path.to_path_buf(),
        detail: format!(
            "a sample rate of {rate} Hz; supported are {} to {} Hz",
            SOURCE_RATES.start(),
            SOURCE_RATES.end()
        ),
    }
}

fn corrupt(path: &Path, e: &SymphoniaError) -> AudioError {
    AudioError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn decode_inner(
    path: &Path,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
) -> Result<DecodedAudio, AudioError> {
    let opened = open(path)?;
    let params = opened.params.clone();
    let header_frames = params.n_frames;
    if header_frames == Some(0) {
        return Err(AudioError::NoSamples {
            path: path.to_path_buf(),
        });
    }
    if let (Some(limit), Some(frames), Some(rate)) =
        (options.max_duration_s, header_frames, params.sample_rate)
    {
        let duration_s = frames as f64 / f64::from(rate.max(1));
        if duration_s > limit {
            return Err(AudioError::TooLong {
                path: path.to_path_buf(),
                duration_s,
                limit_s: limit,
            });
        }
    }
    let out_channels = options.channels.count();
    let mut stream: Option<ResampleStream> = None;
    let mut interleaved: Option<SampleBuffer<f32>> = None;
    let walked = walk_packets(
        path,
        opened,
        options.max_duration_s,
        should_stop,
        |decoded, kept| {
            let spec = *decoded.spec();
            let channels = spec.channels.count();
            let stream = match &mut stream {
                Some(stream) => stream,
                slot => slot.insert(ResampleStream::new(
                    spec.rate,
                    options.sample_rate,
                    out_channels,
                    header_frames.unwrap_or(0) as usize,
                )?),
            };
            let needed = decoded.capacity() as u64;
            let buf = match &mut interleaved {
                Some(buf) if buf.capacity() as u64 >= needed * channels as u64 => buf,
                slot => slot.insert(SampleBuffer::<f32>::new(needed, spec)),
            };
            buf.copy_interleaved_ref(decoded);
            // Float formats carry any bit pattern: NaN or infinity would
            // poison the resampler's whole output and every model after it.
            for s in buf.samples_mut() {
                *s = if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
            }
            let all = buf.samples();
            stream.push(
                &all[kept.start * channels..kept.end * channels],
                channels,
                options.channels,
            )
        },
    )?;
    if let Some(expected) = header_frames {
        check_truncation(
            path,
            &params,
            expected,
            walked.raw_frames,
            walked.source_rate,
        )?;
    }
    let stream = stream.ok_or_else(|| AudioError::NoSamples {
        path: path.to_path_buf(),
    })?;
    let samples = stream.finish()?;
    if samples.is_empty() {
        return Err(AudioError::NoSamples {
            path: path.to_path_buf(),
        });
    }
    Ok(DecodedAudio {
        samples,
        sample_rate: options.sample_rate,
        channels: out_channels as u16,
        duration_s: walked.duration_s(),
        source_rate: walked.source_rate,
        source_channels: u16::try_from(walked.source_channels).unwrap_or(u16::MAX),
    })
}

fn measure_inner(
    path: &Path,
    max_duration_s: Option<f64>,
    should_stop: &dyn Fn() -> bool,
) -> Result<MeasuredLength, AudioError> {
    let opened = open(path)?;
    let header_s = match (opened.params.n_frames, opened.params.sample_rate) {
        (Some(frames), Some(rate)) if rate > 0 => Some(frames as f64 / f64::from(rate)),
        _ => None,
    };
    let header_exact = !header_is_estimate(&opened.params);
    // Decode every packet and count what comes out; the samples themselves
    // are dropped with the decoder's own reused buffer.
    let walked = walk_packets(path, opened, max_duration_s, should_stop, |_, _| Ok(()))?;
    Ok(MeasuredLength {
        duration_s: walked.duration_s(),
        header_s,
        header_exact,
    })
}

/// What one pass over a file's packets found.
struct Walked {
    /// Frames kept after the edit list, at `source_rate`: the length.
    frames: u64,
    /// Frames the decoder produced before trimming (for the truncation check).
    raw_frames: u64,
    source_rate: u32,
    source_channels: usize,
}

impl Walked {
    fn duration_s(&self) -> f64 {
        self.frames as f64 / f64::from(self.source_rate.max(1))
    }
}

/// Reads and decodes every packet of the audio track, handing each decoded
/// buffer and the range of its frames to keep (after the MP4 edit list) to
/// `consume`. Only one packet's samples exist at a time, so the pass costs
/// the same memory for a minute as for ten hours.
///
/// Stops with [`AudioError::TooLong`] once the kept frames pass
/// `max_duration_s`, and with [`AudioError::Cancelled`] when `should_stop`
/// answers true (asked every [`CANCEL_CHECK_EVERY`] packets).
fn walk_packets(
    path: &Path,
    opened: Opened,
    max_duration_s: Option<f64>,
    should_stop: &dyn Fn() -> bool,
    mut consume: impl FnMut(AudioBufferRef<'_>, Range<usize>) -> Result<(), AudioError>,
) -> Result<Walked, AudioError> {
    let Opened {
        mut reader,
        track_id,
        params,
    } = opened;
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;

    // MP4/M4A edit lists say how many priming frames an AAC encoder put in
    // front and how long the real audio is; symphonia 0.5 does not apply them.
    let edit = params
        .sample_rate
        .and_then(|rate| mp4::audio_edit(path, rate));
    let mut to_skip = edit.map_or(0, |e| e.skip_frames);
    let keep_limit = edit.and_then(|e| e.keep_frames);

    let mut walked = Walked {
        frames: 0,
        raw_frames: 0,
        source_rate: 0,
        source_channels: 0,
    };
    let mut started = false;
    let mut packets = 0usize;
    let mut good_packets = 0usize;
    let mut consecutive_errors = 0usize;
    let mut total_errors = 0usize;
    let mut last_error: Option<String> = None;

    loop {
        if packets % CANCEL_CHECK_EVERY == 0 && should_stop() {
            return Err(AudioError::Cancelled {
                path: path.to_path_buf(),
            });
        }
        packets += 1;
        let packet = match reader.next_packet() {
            Ok(packet) => packet,
            // symphonia reports the normal end of a stream as an EOF error.
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(SymphoniaError::ResetRequired) => {
                // A chained stream with new parameters; Murmur reads the first.
                tracing::debug!(path = %path.display(), "stream reset required, stopping");
                break;
            }
            Err(SymphoniaError::IoError(e)) => {
                return Err(AudioError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
            Err(e) => {
                consecutive_errors += 1;
                total_errors += 1;
                last_error = Some(e.to_string());
                if consecutive_errors > MAX_CONSECUTIVE_DECODE_ERRORS {
                    return Err(corrupt(path, &e));
                }
                continue;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            Err(SymphoniaError::DecodeError(msg)) => {
                consecutive_errors += 1;
                total_errors += 1;
                last_error = Some(msg.to_string());
                if consecutive_errors > MAX_CONSECUTIVE_DECODE_ERRORS {
                    return Err(AudioError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!("{consecutive_errors} undecodable packets in a row: {msg}"),
                    });
                }
                continue;
            }
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => {
                return Err(AudioError::Unsupported {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
            }
        };
        consecutive_errors = 0;
        good_packets += 1;
        let spec = *decoded.spec();
        let channels = spec.channels.count();
        let frames_here = decoded.frames() as u64;
        if frames_here == 0 || channels == 0 {
            continue;
        }
        if !started {
            if !SOURCE_RATES.contains(&spec.rate) {
                return Err(unsupported_rate(path, spec.rate));
            }
            started = true;
            walked.source_rate = spec.rate;
            walked.source_channels = channels;
        } else if spec.rate != walked.source_rate {
            return Err(AudioError::Unsupported {
                path: path.to_path_buf(),
                detail: format!(
                    "the sample rate changes mid-stream ({} Hz to {} Hz)",
                    walked.source_rate, spec.rate
                ),
            });
        }
        // Drop the encoder's priming frames and anything past the edit's end.
        walked.raw_frames += frames_here;
        let skip_now = to_skip.min(frames_here);
        to_skip -= skip_now;
        let mut keep = frames_here - skip_now;
        if let Some(limit) = keep_limit {
            keep = keep.min(limit.saturating_sub(walked.frames));
        }
        consume(decoded, skip_now as usize..(skip_now + keep) as usize)?;
        walked.frames += keep;
        if let Some(limit) = max_duration_s {
            let duration_s = walked.duration_s();
            if duration_s > limit {
                return Err(AudioError::TooLong {
                    path: path.to_path_buf(),
                    duration_s,
                    limit_s: limit,
                });
            }
        }
    }

    if !started {
        // Nothing decoded: garbage that happened to look like a stream, or a
        // valid container with no samples.
        return Err(if total_errors > 0 {
            AudioError::Corrupt {
                path: path.to_path_buf(),
                detail: last_error.unwrap_or_else(|| "no packet could be decoded".into()),
            }
        } else {
            AudioError::NoSamples {
                path: path.to_path_buf(),
            }
        });
    }
    // Mostly garbage that let a few packets through (random bytes can contain
    // MP3 frame sync words) is not audio.
    if total_errors > good_packets {
        return Err(AudioError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "{total_errors} of {} packets failed to decode (last: {})",
                total_errors + good_packets,
                last_error.unwrap_or_default()
            ),
        });
    }
    if walked.frames == 0 {
        return Err(AudioError::NoSamples {
            path: path.to_path_buf(),
        });
    }
    Ok(walked)
}

/// Whether the container's frame count is only an estimate for this codec
/// (MP3 without a Xing header, AAC, Vorbis, Opus); PCM and FLAC headers
/// state it exactly.
fn header_is_estimate(params: &CodecParameters) -> bool {
    use symphonia::core::codecs::{
        CODEC_TYPE_AAC, CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3, CODEC_TYPE_OPUS,
        CODEC_TYPE_VORBIS,
    };
    [
        CODEC_TYPE_AAC,
        CODEC_TYPE_MP1,
        CODEC_TYPE_MP2,
        CODEC_TYPE_MP3,
        CODEC_TYPE_OPUS,
        CODEC_TYPE_VORBIS,
    ]
    .contains(&params.codec)
}

/// A stream that delivered clearly fewer frames than its header promised was
/// cut off. PCM and FLAC headers are exact; MP3 and AAC headers may only
/// estimate, so those get a wide margin.
fn check_truncation(
    path: &Path,
    params: &CodecParameters,
    expected: u64,
    decoded: u64,
    rate: u32,
) -> Result<(), AudioError> {
    let exact_header = !header_is_estimate(params);
    let rate = u64::from(rate.max(1));
    // Allow one short block (up to 0.05 s) for exact headers, 10 % otherwise.
    let tolerance = if exact_header {
        rate / 20
    } else {
        (expected / 10).max(rate / 2)
    };
    if decoded + tolerance < expected {
        return Err(AudioError::Truncated {
            path: path.to_path_buf(),
            detail: format!(
                "the header announces {:.2} s but only {:.2} s could be read",
                expected as f64 / rate as f64,
                decoded as f64 / rate as f64
            ),
        });
    }
    Ok(())
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Appends interleaved `src` (`channels` per frame) to the planar `out`
/// (one vector per output channel) in the output layout.
fn downmix_into(src: &[f32], channels: usize, layout: ChannelLayout, out: &mut [Vec<f32>]) {
    match (layout, channels) {
        (ChannelLayout::Mono, 1) => out[0].extend_from_slice(src),
        (ChannelLayout::Mono, 2) => out[0].extend(src.chunks_exact(2).map(|f| 0.5 * (f[0] + f[1]))),
        (ChannelLayout::Mono, n) => {
            let scale = 1.0 / n as f32;
            out[0].extend(src.chunks_exact(n).map(|f| f.iter().sum::<f32>() * scale));
        }
        (ChannelLayout::Stereo, 1) => {
            out[0].extend_from_slice(src);
            out[1].extend_from_slice(src);
        }
        (ChannelLayout::Stereo, n) => {
            out[0].extend(src.chunks_exact(n).map(|f| f[0]));
            out[1].extend(src.chunks_exact(n).map(|f| f[1]));
        }
    }
}

/// Streaming resampler: frames go in one at a time, chunks of
/// [`RESAMPLE_CHUNK`] go through rubato's sinc resampler, and output lands in
/// one interleaved vector sized up front. Passes samples straight through
/// when the rates match.
struct ResampleStream {
    resampler: Option<SincFixedIn<f32>>,
    channels: usize,
    from: u32,
    to: u32,
    /// Planar input waiting for a full chunk.
    pending: Vec<Vec<f32>>,
    out_buf: Vec<Vec<f32>>,
    /// Output frames still to drop at the start (the resampler's delay;
    /// zero for the sinc resampler, kept so another resampler can be
    /// dropped in).
    skip: usize,
    frames_in: u64,
    output: Vec<f32>,
}

impl ResampleStream {
    fn new(
        from: u32,
        to: u32,
        channels: usize,
        expected_frames: usize,
    ) -> Result<Self, AudioError> {
        let ratio = f64::from(to) / f64::from(from);
        let capacity = ((expected_frames as f64 * ratio).ceil() as usize + 16) * channels;
        let mut pending = vec![Vec::with_capacity(RESAMPLE_CHUNK); channels];
        let (resampler, out_buf, skip) = if from == to {
            (None, Vec::new(), 0)
        } else {
            let params = SincInterpolationParameters {
                sinc_len: SINC_LEN,
                f_cutoff: calculate_cutoff(SINC_LEN, WindowFunction::BlackmanHarris2),
                oversampling_factor: 256,
                interpolation: SincInterpolationType::Linear,
                window: WindowFunction::BlackmanHarris2,
            };
            let ratio = f64::from(to) / f64::from(from);
            let r = SincFixedIn::<f32>::new(ratio, 1.0, params, RESAMPLE_CHUNK, channels).map_err(
                |e| AudioError::Resample {
                    from,
                    to,
                    detail: e.to_string(),
                },
            )?;
            let out_buf = r.output_buffer_allocate(true);
            // rubato 0.16's SincFixedIn puts output n at input time
            // (n + 1) * from / to - 1 (its `output_delay()` does not describe
            // this). Leading with from/g - 1 zeros (g = gcd) and dropping the
            // first to/g - 1 outputs puts output m at input time
            // m * from / to exactly; the tests check it with a click.
            let g = gcd(from, to);
            let lead_in = (from / g) as usize - 1;
            for ch in &mut pending {
                ch.resize(lead_in, 0.0);
            }
            (Some(r), out_buf, (to / g) as usize - 1)
        };
        Ok(ResampleStream {
            resampler,
            channels,
            from,
            to,
            pending,
            out_buf,
            skip,
            frames_in: 0,
            // Capacity from the header's frame count, capped so a lying
            // header cannot make us allocate gigabytes up front.
            output: Vec::with_capacity(capacity.min(1 << 26)),
        })
    }

    /// Feeds interleaved source samples with `channels` channels, downmixed
    /// to the output layout.
    fn push(
        &mut self,
        src: &[f32],
        channels: usize,
        layout: ChannelLayout,
    ) -> Result<(), AudioError> {
        let frames = src.len() / channels;
        self.frames_in += frames as u64;
        let Some(resampler) = &self.resampler else {
            // Same rate: downmix straight into the (planar, then interleaved)
            // output without a resampler.
            if self.channels == 1 {
                downmix_into(
                    src,
                    channels,
                    layout,
                    std::slice::from_mut(&mut self.output),
                );
            } else {
                downmix_into(src, channels, layout, &mut self.pending);
                let (l, r) = (&self.pending[0], &self.pending[1]);
                self.output
                    .extend(l.iter().zip(r).flat_map(|(a, b)| [*a, *b]));
                self.pending.iter_mut().for_each(Vec::clear);
            }
            return Ok(());
        };
        let next = resampler.input_frames_next();
        // The lead-in can exceed a chunk for unusual rate pairs.
        while self.pending[0].len() >= next {
            self.run_chunk(false)?;
        }
        let mut offset = 0;
        while offset < frames {
            let take = (next - self.pending[0].len()).min(frames - offset);
            let part = &src[offset * channels..(offset + take) * channels];
            downmix_into(part, channels, layout, &mut self.pending);
            offset += take;
            if self.pending[0].len() >= next {
                self.run_chunk(false)?;
            }
        }
        Ok(())
    }

    /// Resamples what is pending (a full chunk, or with `partial` whatever is
    /// left, zero-padded) and appends the output after the delay.
    fn run_chunk(&mut self, partial: bool) -> Result<(), AudioError> {
        let Some(resampler) = &mut self.resampler else {
            return Ok(());
        };
        let err = |e: rubato::ResampleError| AudioError::Resample {
            from: self.from,
            to: self.to,
            detail: e.to_string(),
        };
        let (consumed, produced) = if partial {
            let input = if self.pending[0].is_empty() {
                None
            } else {
                Some(&self.pending[..])
            };
            resampler
                .process_partial_into_buffer(input, &mut self.out_buf, None)
                .map_err(err)?
        } else {
            resampler
                .process_into_buffer(&self.pending, &mut self.out_buf, None)
                .map_err(err)?
        };
        for ch in &mut self.pending {
            ch.drain(..consumed.min(ch.len()));
        }
        let start = self.skip.min(produced);
        self.skip -= start;
        if let [mono] = &self.out_buf[..] {
            self.output.extend_from_slice(&mono[start..produced]);
        } else {
            for i in start..produced {
                self.output.extend(self.out_buf.iter().map(|ch| ch[i]));
            }
        }
        Ok(())
    }

    /// Flushes the resampler and returns exactly `frames_in * to / from`
    /// frames (rounded), interleaved.
    fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        let wanted_frames =
            (self.frames_in as f64 * f64::from(self.to) / f64::from(self.from)).round() as usize;
        let wanted = wanted_frames * self.channels;
        if self.resampler.is_some() {
            // Remaining input, then silence until the delayed tail is out.
            self.run_chunk(true)?;
            let mut guard = 0;
            while self.output.len() < wanted && guard < 64 {
                self.run_chunk(true)?;
                guard += 1;
            }
        }
        self.output.truncate(wanted);
        self.output.shrink_to_fit();
        Ok(self.output)
    }
}

/// Just enough of the ISO base media format (MP4/M4A) to read the audio
/// track's edit list.
mod mp4 {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::Path;

    /// Frames of the first audio track to drop at the start and to keep.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Edit {
        pub skip_frames: u64,
        pub keep_frames: Option<u64>,
    }

    /// A `moov` box larger than this is not worth reading for an edit list.
    const MAX_MOOV: u64 = 64 << 20;

    /// The edit of the first sound track of an MP4 file, in frames at
    /// `sample_rate`; `None` for other files or without an edit list.
    pub fn audio_edit(path: &Path, sample_rate: u32) -> Option<Edit> {
        let mut file = File::open(path).ok()?;
        let mut head = [0u8; 8];
        file.read_exact(&mut head).ok()?;
        file.seek(SeekFrom::Start(4)).ok()?;
        let mut kind = [0u8; 4];
        file.read_exact(&mut kind).ok()?;
        if &kind != b"ftyp" {
            return None;
        }
        let len = file.metadata().ok()?.len();
        let mut pos = 0u64;
        while pos + 8 <= len {
            file.seek(SeekFrom::Start(pos)).ok()?;
            file.read_exact(&mut head).ok()?;
            let mut size = u64::from(u32::from_be_bytes(head[..4].try_into().ok()?));
            let mut header = 8;
            if size == 1 {
                let mut large = [0u8; 8];
                file.read_exact(&mut large).ok()?;
                size = u64::from_be_bytes(large);
                header = 16;
            } else if size == 0 {
                size = len - pos;
            }
            if size < header {
                return None;
            }
            if &head[4..8] == b"moov" {
                if size > MAX_MOOV {
                    return None;
                }
                let mut moov = vec![0u8; (size - header) as usize];
                file.read_exact(&mut moov).ok()?;
                return edit_in_moov(&moov, sample_rate);
            }
            // A box size near 2^64 must end the walk, not wrap it around.
            pos = pos.checked_add(size)?;
        }
        None
    }

    /// How far into a file symphonia's probe looks for the `ftyp` marker
    /// (its search limit is 1 MiB per metadata block it skips).
    const FTYP_SEARCH: u64 = 4 << 20;
    /// `ftyp` markers checked; more is not a real MP4.
    const MAX_FTYP_MARKERS: usize = 16;
    /// Box nesting followed; the sample tables sit at depth 5.
    const MAX_DEPTH: usize = 8;

    /// Describes the first sample table (`stts`, `stsc`, `stsz`, `stco`,
    /// `co64`) whose entry count needs more bytes than the file holds for
    /// it, in any MP4 box tree that starts at an `ftyp` marker in the first
    /// [`FTYP_SEARCH`] bytes (symphonia starts wherever its probe finds that
    /// marker); `None` when there is none. Reads box headers and counts
    /// only, never a table.
    pub fn oversized_sample_table(path: &Path) -> Option<String> {
        let mut file = File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let mut head = Vec::new();
        (&mut file).take(FTYP_SEARCH).read_to_end(&mut head).ok()?;
        let starts = head
            .windows(4)
            .enumerate()
            .filter(|(i, w)| *i >= 4 && *w == b"ftyp")
            .map(|(i, _)| (i - 4) as u64)
            .take(MAX_FTYP_MARKERS);
        for start in starts {
            if let Some(found) = check_boxes(&mut file, start, len, 0) {
                return Some(found);
            }
        }
        None
    }

    /// Walks the boxes in `[pos, end)` of `file`.
    fn check_boxes(file: &mut File, mut pos: u64, end: u64, depth: usize) -> Option<String> {
        if depth > MAX_DEPTH {
            return None;
        }
        let file_len = file.metadata().ok()?.len();
        while pos.checked_add(8)? <= end {
            let mut head = [0u8; 8];
            file.seek(SeekFrom::Start(pos)).ok()?;
            file.read_exact(&mut head).ok()?;
            let mut size = u64::from(u32::from_be_bytes(head[..4].try_into().ok()?));
            let mut header = 8u64;
            if size == 1 {
                let mut large = [0u8; 8];
                file.read_exact(&mut large).ok()?;
                size = u64::from_be_bytes(large);
                header = 16;
            } else if size == 0 {
                size = end - pos;
            }
            if size < header {
                return None;
            }
            let kind: [u8; 4] = head[4..8].try_into().ok()?;
            let body_start = pos + header;
            // What a reader can actually get of the body: the file may end
            // before the box says it does.
            let body_end = pos.saturating_add(size).min(end).min(file_len);
            let available = body_end.saturating_sub(body_start);
            match &kind {
                b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"edts" | b"moof" | b"traf"
                | b"mvex" => {
                    if let Some(found) = check_boxes(file, body_start, body_end, depth + 1) {
                        return Some(found);
                    }
                }
                b"stts" | b"stsc" | b"stsz" | b"stco" | b"co64" => {
                    // Full box: version and flags, then the counts.
                    let mut fields = [0u8; 12];
                    file.seek(SeekFrom::Start(body_start)).ok()?;
                    let got = read_up_to(file, &mut fields);
                    let entry_len: u64 = match &kind {
                        b"stts" | b"co64" => 8,
                        b"stsc" => 12,
                        _ => 4,
                    };
                    let (count_at, fixed) = if &kind == b"stsz" { (8, 12) } else { (4, 8) };
                    if got < count_at + 4 {
                        return None;
                    }
                    let count = u64::from(u32::from_be_bytes(
                        fields[count_at..count_at + 4].try_into().ok()?,
                    ));
                    // stsz lists sizes only when all samples do not share one.
                    let uniform = &kind == b"stsz" && fields[4..8] != [0; 4];
                    let needed = if uniform { 0 } else { count * entry_len };
                    if needed > available.saturating_sub(fixed) {
                        return Some(format!(
                            "its {} table claims {count} entries but the file holds {} bytes \
                             for it",
                            String::from_utf8_lossy(&kind),
                            available
                        ));
                    }
                }
                _ => {}
            }
            pos = pos.checked_add(size)?;
        }
        None
    }

    /// Reads as much of `buf` as the file has; answers the bytes read.
    fn read_up_to(file: &mut File, buf: &mut [u8]) -> usize {
        let mut got = 0;
        while got < buf.len() {
            match file.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    }

    /// Child boxes of a container body: (type, body).
    fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        while data.len() >= 8 {
            let size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
            let kind = [data[4], data[5], data[6], data[7]];
            let (start, size) = match size {
                0 => (8, data.len()),
                1 if data.len() >= 16 => {
                    let large = u64::from_be_bytes(data[8..16].try_into().unwrap_or([0; 8]));
                    (16, usize::try_from(large).unwrap_or(usize::MAX))
                }
                n => (8, n),
            };
            if size < start || size > data.len() {
                break;
            }
            out.push((kind, &data[start..size]));
            data = &data[size..];
        }
        out
    }

    fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
        boxes(data)
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, b)| b)
    }

    fn be_u32(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    fn be_u64(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
    }

    /// Timescale of an `mvhd` or `mdhd` body.
    fn timescale(body: &[u8]) -> Option<u32> {
        match body.first()? {
            1 => be_u32(body, 20),
            _ => be_u32(body, 12),
        }
    }

    fn edit_in_moov(moov: &[u8], sample_rate: u32) -> Option<Edit> {
        let movie_scale = timescale(child(moov, b"mvhd")?)?;
        let trak = boxes(moov).into_iter().find_map(|(kind, body)| {
            let mdia = child(body, b"mdia")?;
            let hdlr = child(mdia, b"hdlr")?;
            (kind == *b"trak" && hdlr.get(8..12) == Some(b"soun")).then_some(body)
        })?;
        let media_scale = timescale(child(child(trak, b"mdia")?, b"mdhd")?)?;
        let elst = child(child(trak, b"edts")?, b"elst")?;
        let version = *elst.first()?;
        let count = be_u32(elst, 4)? as usize;
        let entry_len = if version == 1 { 20 } else { 12 };
        // Skip empty edits (media time -1); the first real one is the audio.
        for i in 0..count {
            let at = 8 + i * entry_len;
            let (duration, media_time) = if version == 1 {
                (be_u64(elst, at)?, be_u64(elst, at + 8)? as i64)
            } else {
                (
                    u64::from(be_u32(elst, at)?),
                    i64::from(be_u32(elst, at + 4)? as i32),
                )
            };
            if media_time < 0 {
                continue;
            }
            if movie_scale == 0 || media_scale == 0 {
                return None;
            }
            let rate = u64::from(sample_rate);
            let skip_frames = media_time as u64 * rate / u64::from(media_scale);
            let keep_frames = (duration > 0).then(|| duration * rate / u64::from(movie_scale));
            return Some(Edit {
                skip_frames,
                keep_frames,
            });
        }
        None
    }
}

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
    fn resampling_keeps_length_and_tone() {
        let input = sine(440.0, 44_100, 1.0);
        let out = resample(&input, 1, 44_100, 16_000).unwrap();
        assert_eq!(out.len(), 16_000);
        // Compare with the ideal 16 kHz sine away from the edges: a delay or
        // a wrong ratio would show as a large error.
        let ideal = sine(440.0, 16_000, 1.0);
        let max_err = out[200..15_800]
            .iter()
            .zip(&ideal[200..15_800])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 0.01, "max error {max_err}");
    }

    #[test]
    fn resampling_removes_what_the_new_rate_cannot_hold() {
        // 10 kHz is above 16 kHz's Nyquist frequency: it must vanish, not
        // fold back to 6 kHz.
        let tone = sine(10_000.0, 44_100, 1.0);
        let out = resample(&tone, 1, 44_100, 16_000).unwrap();
        let rms = |x: &[f32]| (x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32).sqrt();
        let ratio = rms(&out[500..15_500]) / rms(&tone);
        println!("10 kHz alias level {ratio:.5}");
        assert!(ratio < 0.01, "alias level {ratio}");
        // 6 kHz passes nearly untouched.
        let tone = sine(6_000.0, 44_100, 1.0);
        let out = resample(&tone, 1, 44_100, 16_000).unwrap();
        let ratio = rms(&out[500..15_500]) / rms(&tone);
        println!("6 kHz level {ratio:.4}");
        assert!((0.95..1.05).contains(&ratio), "6 kHz level {ratio}");
    }

    #[test]
    fn same_rate_passes_through() {
        let input = sine(100.0, 16_000, 0.1);
        assert_eq!(resample(&input, 1, 16_000, 16_000).unwrap(), input);
    }

    /// A click must stay where it was: a resampler delay would move every
    /// timestamp of a transcript. (A sine cannot show this: it repeats.)
    #[test]
    fn resampling_does_not_shift_time() {
        for (from, to) in [
            (44_100, 16_000),
            (48_000, 16_000),
            (22_050, 16_000),
            (8_000, 16_000),
            (16_000, 44_100),
        ] {
            let mut click = vec![0f32; from as usize];
            click[from as usize / 4] = 1.0;
            let out = resample(&click, 1, from, to).unwrap();
            assert_eq!(out.len(), to as usize);
            let peak = out
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map(|(i, _)| i)
                .unwrap();
            let expected = to as usize / 4;
            assert!(
                peak.abs_diff(expected) <= 2,
                "{from}->{to}: click at {peak}, expected {expected}"
            );
        }
    }

    #[test]
    fn downmix_layouts() {
        let mut mono = vec![Vec::new()];
        downmix_into(&[0.2, 0.4, 1.0, 0.0], 2, ChannelLayout::Mono, &mut mono);
        assert_eq!(mono[0].len(), 2);
        assert!((mono[0][0] - 0.3).abs() < 1e-6 && (mono[0][1] - 0.5).abs() < 1e-6);
        let mut stereo = vec![Vec::new(), Vec::new()];
        downmix_into(&[0.7], 1, ChannelLayout::Stereo, &mut stereo);
        downmix_into(&[0.1, 0.2, 0.3], 3, ChannelLayout::Stereo, &mut stereo);
        assert_eq!(stereo, vec![vec![0.7, 0.1], vec![0.7, 0.2]]);
    }

    #[test]
    fn stereo_resampling_keeps_channels_apart() {
        let left = sine(440.0, 48_000, 0.5);
        let input: Vec<f32> = left.iter().flat_map(|&s| [s, 0.0]).collect();
        let out = resample(&input, 2, 48_000, 44_100).unwrap();
        assert_eq!(out.len(), 2 * 22_050);
        assert!(out.iter().skip(1).step_by(2).all(|s| s.abs() < 1e-3));
        let ideal = sine(440.0, 44_100, 0.5);
        let max_err = out
            .iter()
            .step_by(2)
            .zip(&ideal)
            .skip(200)
            .take(21_000)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 0.01, "max error {max_err}");
    }

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
        assert_eq!(mp4::oversized_sample_table(&path), None);
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
        assert_eq!(mp4::audio_edit(&path, 16_000), None);
        assert_eq!(mp4::oversized_sample_table(&path), None);
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
