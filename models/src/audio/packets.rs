//! The packet loop every decode shares: opening a file with symphonia,
//! [`walk_packets`] over its audio track (edit list, stop flag, length
//! limit, bounded decode errors) and the checks on what it found. Only one
//! packet's samples exist at a time.

use std::io;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use symphonia::core::audio::AudioBufferRef;
use symphonia::core::codecs::{
    self as codecs, CodecParameters, CodecType, DecoderOptions, CODEC_TYPE_NULL,
};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{mp4, opus, AudioError, Input, MeasuredLength};

/// Decode errors in a row after which a stream is declared corrupt: a few
/// damaged frames in a long file are skipped, a stream of garbage is not.
pub(super) const MAX_CONSECUTIVE_DECODE_ERRORS: usize = 32;

/// Packets decoded between two looks at the stop flag: FLAC and MP3 packets
/// hold 26 ms to 100 ms of audio, so a stop is seen within a few seconds of
/// audio (milliseconds of work), and the check costs nothing measurable.
const CANCEL_CHECK_EVERY: usize = 32;

/// Sample rates accepted, in Hz. Real recordings lie well inside; outside,
/// the resampler's buffers grow with the rate ratio (a header claiming
/// 838 MHz asked for gigabytes of lead-in), so such a file is refused.
const SOURCE_RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Runs `work` so that a panic inside symphonia or rubato becomes an error.
pub(super) fn guarded<T>(
    path: &Path,
    work: impl FnOnce() -> Result<T, AudioError>,
) -> Result<T, AudioError> {
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
pub(super) struct Opened {
    pub(super) reader: Box<dyn FormatReader>,
    pub(super) track_id: u32,
    pub(super) params: CodecParameters,
}

/// The EBML magic that opens Matroska and WebM files.
const EBML: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];

/// Container magic numbers, to tell "a WAV cut short inside its header" from
/// "not audio at all" when probing fails.
fn looks_like_audio(head: &[u8]) -> bool {
    head.starts_with(b"RIFF")
        || head.starts_with(b"fLaC")
        || head.starts_with(b"OggS")
        || head.starts_with(b"ID3")
        || head.get(4..8) == Some(b"ftyp")
        || head.starts_with(&EBML)
}

/// A codec's name for messages: the decoder's own when Murmur has one, the
/// usual name of codecs it has none for.
fn codec_name(codec: CodecType) -> String {
    if let Some(d) = opus::codecs().get_codec(codec) {
        return d.short_name.to_string();
    }
    let known = [
        (codecs::CODEC_TYPE_MP1, "MPEG-1 Layer I"),
        (codecs::CODEC_TYPE_MP2, "MPEG-1 Layer II"),
        (codecs::CODEC_TYPE_SPEEX, "Speex"),
        (codecs::CODEC_TYPE_MUSEPACK, "Musepack"),
        (codecs::CODEC_TYPE_ATRAC1, "ATRAC1"),
        (codecs::CODEC_TYPE_ATRAC3, "ATRAC3"),
        (codecs::CODEC_TYPE_ATRAC3PLUS, "ATRAC3plus"),
        (codecs::CODEC_TYPE_ATRAC9, "ATRAC9"),
        (codecs::CODEC_TYPE_EAC3, "E-AC-3 (Dolby Digital Plus)"),
        (codecs::CODEC_TYPE_AC4, "AC-4"),
        (codecs::CODEC_TYPE_DCA, "DTS"),
        (codecs::CODEC_TYPE_WMA, "WMA"),
        (codecs::CODEC_TYPE_WAVPACK, "WavPack"),
        (codecs::CODEC_TYPE_MONKEYS_AUDIO, "Monkey's Audio"),
        (codecs::CODEC_TYPE_ALAC, "ALAC (Apple Lossless)"),
        (codecs::CODEC_TYPE_TTA, "TTA"),
    ];
    known.iter().find(|(c, _)| *c == codec).map_or_else(
        || format!("an unknown codec (id {codec})"),
        |(_, n)| n.to_string(),
    )
}

pub(super) fn open(input: Input<'_>) -> Result<Opened, AudioError> {
    let path = input.path();
    let io_err = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The first bytes tell containers apart (Matroska's length below, and
    // what a probe failure means): read once, here.
    let (file, len) = input.open().map_err(io_err)?;
    let mut head = Vec::with_capacity(12);
    io::Read::read_to_end(&mut io::Read::take(file, 12), &mut head).map_err(io_err)?;
    if len == 0 {
        return Err(AudioError::Empty {
            path: path.to_path_buf(),
        });
    }
    // symphonia 0.5's MP4 reader reserves memory for a sample table from
    // the table's own entry count before reading it: a few hundred bytes
    // could ask for 68 GB and abort the whole process. Refuse such tables
    // before symphonia sees them.
    if let Some(detail) = mp4::oversized_sample_table(input) {
        return Err(AudioError::Corrupt {
            path: path.to_path_buf(),
            detail,
        });
    }
    let source = input.media_source().map_err(io_err)?;
    let mss = MediaSourceStream::new(source, Default::default());
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
            match e {
                // symphonia's Ogg reader reads to the end when no stream has
                // a codec it maps: say which codec that is.
                SymphoniaError::IoError(ref io)
                    if io.kind() == io::ErrorKind::UnexpectedEof && head.starts_with(b"OggS") =>
                {
                    match ogg_codec(input) {
                        Some(codec) => AudioError::Unsupported {
                            path: path.to_path_buf(),
                            detail: format!(
                                "its Ogg stream is {codec}, which Murmur cannot decode; convert \
                                 it to a common format such as MP3, AAC, FLAC, Opus or WAV"
                            ),
                        },
                        None => AudioError::Truncated {
                            path: path.to_path_buf(),
                            detail: format!("the file ends inside its header ({len} bytes)"),
                        },
                    }
                }
                SymphoniaError::IoError(ref io)
                    if io.kind() == io::ErrorKind::UnexpectedEof && looks_like_audio(&head) =>
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
    // The first audio track Murmur can decode (a video's first audio track:
    // video tracks carry no audio codec); when there is none, the error
    // names the codecs the audio tracks use.
    let audio: Vec<_> = reader
        .tracks()
        .iter()
        .filter(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .collect();
    let track = match audio
        .iter()
        .find(|t| opus::codecs().get_codec(t.codec_params.codec).is_some())
    {
        Some(track) => *track,
        None if audio.is_empty() => {
            return Err(AudioError::NoAudioTrack {
                path: path.to_path_buf(),
            })
        }
        None => {
            let names: Vec<String> = audio
                .iter()
                .map(|t| codec_name(t.codec_params.codec))
                .collect();
            return Err(AudioError::Unsupported {
                path: path.to_path_buf(),
                detail: format!(
                    "its audio is {}, which Murmur cannot decode; convert it to a common \
                     format such as MP3, AAC, FLAC, Opus, Vorbis or WAV",
                    names.join(", ")
                ),
            });
        }
    };
    if let Some(rate) = track.codec_params.sample_rate {
        if !SOURCE_RATES.contains(&rate) {
            return Err(unsupported_rate(path, rate));
        }
    }
    let mut params = track.codec_params.clone();
    if head.starts_with(&EBML) {
        frames_from_time_base(&mut params);
    }
    Ok(Opened {
        track_id: track.id,
        params,
        reader,
    })
}

/// The codec of an Ogg file's first stream, from the first packet of its
/// first page (RFC 3533: a 27-byte header, the segment table, then the
/// packet), when it is one of the codecs Ogg commonly carries.
fn ogg_codec(input: Input<'_>) -> Option<&'static str> {
    let mut page = [0u8; 27 + 255 + 16];
    let n = input
        .open()
        .and_then(|(mut f, _)| io::Read::read(&mut f, &mut page))
        .ok()?;
    let segments = *page.get(26)? as usize;
    let packet = page.get(27 + segments..n)?;
    let signatures: [(&[u8], &str); 6] = [
        (b"Speex   ", "Speex"),
        (b"\x80theora", "Theora video"),
        (b"OpusHead", "Opus"),
        (b"\x01vorbis", "Vorbis"),
        (b"\x7fFLAC", "FLAC"),
        (b"CELT    ", "CELT"),
    ];
    signatures
        .iter()
        .find(|(sig, _)| packet.starts_with(sig))
        .map(|(_, name)| *name)
}

/// symphonia's Matroska reader states a track's length (`n_frames`) in the
/// segment's time base (milliseconds, usually), not in frames as every other
/// reader does: make it frames, so lengths and truncation checks hold.
fn frames_from_time_base(params: &mut CodecParameters) {
    if let (Some(n), Some(tb), Some(rate)) = (params.n_frames, params.time_base, params.sample_rate)
    {
        let t = tb.calc_time(n);
        params.n_frames = Some(((t.seconds as f64 + t.frac) * f64::from(rate)).round() as u64);
    }
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

pub(super) fn corrupt(path: &Path, e: &SymphoniaError) -> AudioError {
    AudioError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

pub(super) fn measure_inner(
    input: Input<'_>,
    max_duration_s: Option<f64>,
    should_stop: &dyn Fn() -> bool,
) -> Result<MeasuredLength, AudioError> {
    let opened = open(input)?;
    let header_s = match (opened.params.n_frames, opened.params.sample_rate) {
        (Some(frames), Some(rate)) if rate > 0 => Some(frames as f64 / f64::from(rate)),
        _ => None,
    };
    let header_exact = !header_is_estimate(&opened.params);
    // Decode every packet and count what comes out; the samples themselves
    // are dropped with the decoder's own reused buffer.
    let walked = walk_packets(input, opened, max_duration_s, should_stop, |_, _| Ok(()))?;
    Ok(MeasuredLength {
        duration_s: walked.duration_s(),
        header_s,
        header_exact,
    })
}

/// What one pass over a file's packets found.
pub(super) struct Walked {
    /// Frames kept after the edit list, at `source_rate`: the length.
    pub(super) frames: u64,
    /// Frames the decoder produced before trimming (for the truncation check).
    pub(super) raw_frames: u64,
    pub(super) source_rate: u32,
    pub(super) source_channels: usize,
}

impl Walked {
    pub(super) fn duration_s(&self) -> f64 {
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
pub(super) fn walk_packets(
    input: Input<'_>,
    opened: Opened,
    max_duration_s: Option<f64>,
    should_stop: &dyn Fn() -> bool,
    mut consume: impl FnMut(AudioBufferRef<'_>, Range<usize>) -> Result<(), AudioError>,
) -> Result<Walked, AudioError> {
    let path = input.path();
    let Opened {
        mut reader,
        track_id,
        params,
    } = opened;
    let mut decoder = opus::codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| AudioError::Unsupported {
            path: path.to_path_buf(),
            detail: format!("{} audio: {e}", codec_name(params.codec)),
        })?;

    // MP4/M4A edit lists say how many priming frames an AAC encoder put in
    // front and how long the real audio is; symphonia 0.5 does not apply them.
    let edit = params
        .sample_rate
        .and_then(|rate| mp4::audio_edit(input, rate));
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
        if packets.is_multiple_of(CANCEL_CHECK_EVERY) && should_stop() {
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
pub(super) fn check_truncation(
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
