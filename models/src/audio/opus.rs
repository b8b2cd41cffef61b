//! Opus, the codec of browser recordings (WebM), voice notes (Ogg) and many
//! videos (Matroska): symphonia 0.5 demuxes these containers but cannot
//! decode Opus, so this is a symphonia [`Decoder`] over the pure-Rust
//! `opus-decoder` crate (no unsafe code, no C: it reads untrusted uploads),
//! registered beside symphonia's own codecs in [`codecs`].
//!
//! The stream's `OpusHead` (RFC 7845 §5.1, the Ogg identification header and
//! Matroska's CodecPrivate alike) gives the channels, the channel mapping,
//! the output gain and the pre-skip. Audio comes out at 48 kHz, the rate
//! Opus always decodes at; the pipeline resamples it.
//!
//! Only mapping family 0 (mono or stereo in one stream: every recording
//! app, browser and voice-note format) is decoded. Surround Opus (family 1,
//! several streams in one packet) is refused with a message saying how to
//! mix it down: `opus-decoder` 0.1.1's multistream decoder rejects the
//! packets libopus writes (measured on ffmpeg's 5.1 output), and a decoder
//! that fails mid-file is worse than a clear refusal at the start.
//!
//! Pre-skip (the encoder's priming frames) is dropped here, from the start of
//! the stream: Matroska carries it only in the header, and symphonia's Ogg
//! reader does not trim it either. Where a reader does (through a packet's
//! `trim_start`), the larger of the two wins, so nothing is dropped twice.
//! End padding is trimmed where the reader says (`trim_end`, from Ogg's
//! final granule position).

use std::sync::LazyLock;

use opus_decoder::OpusDecoder;
use symphonia::core::audio::SignalSpec;
use symphonia::core::audio::{AsAudioBufferRef, AudioBuffer, AudioBufferRef, Channels, Signal};
use symphonia::core::codecs::{
    CodecDescriptor, CodecParameters, CodecRegistry, Decoder, DecoderOptions, FinalizeResult,
    CODEC_TYPE_OPUS,
};
use symphonia::core::errors::{decode_error, unsupported_error, Result};
use symphonia::core::formats::Packet;
use symphonia::core::support_codec;

/// Opus always decodes at 48 kHz.
const RATE: u32 = 48_000;
/// The longest Opus packet: 120 ms at 48 kHz, per channel.
const MAX_FRAMES: usize = 5_760;

/// symphonia's codecs (those this crate enables) and Opus.
pub(super) fn codecs() -> &'static CodecRegistry {
    static CODECS: LazyLock<CodecRegistry> = LazyLock::new(|| {
        let mut registry = CodecRegistry::new();
        symphonia::default::register_enabled_codecs(&mut registry);
        registry.register_all::<OpusCodec>();
        registry
    });
    &CODECS
}

/// What an `OpusHead` says.
#[derive(Debug, Clone, PartialEq)]
struct Head {
    channels: usize,
    pre_skip: usize,
    /// Linear gain from the header's Q7.8 dB output gain.
    gain: f32,
}

fn parse_head(bytes: &[u8]) -> std::result::Result<Head, &'static str> {
    if bytes.len() < 19 || &bytes[..8] != b"OpusHead" {
        return Err("the Opus stream has no OpusHead header");
    }
    // Versions 0 to 15 share this layout (RFC 7845 §5.1).
    if bytes[8] > 15 {
        return Err("the OpusHead header has an unknown major version");
    }
    let channels = bytes[9] as usize;
    let pre_skip = u16::from_le_bytes([bytes[10], bytes[11]]) as usize;
    let gain_q8 = i16::from_le_bytes([bytes[16], bytes[17]]);
    let gain = 10f32.powf(f32::from(gain_q8) / (20.0 * 256.0));
    match bytes[18] {
        0 if (1..=2).contains(&channels) => {}
        0 => return Err("an Opus mapping family 0 stream must be mono or stereo"),
        1 => {
            return Err(
                "surround Opus (channel mapping family 1) is not supported; mix it \
                 down to stereo first (for example ffmpeg -ac 2)",
            )
        }
        _ => return Err("this Opus channel mapping family is not supported (only 0)"),
    }
    Ok(Head {
        channels,
        pre_skip,
        gain,
    })
}

/// The symphonia decoder for `CODEC_TYPE_OPUS`.
pub struct OpusCodec {
    params: CodecParameters,
    head: Head,
    inner: OpusDecoder,
    /// Interleaved output of one packet.
    pcm: Vec<f32>,
    buf: AudioBuffer<f32>,
    /// Pre-skip frames still to drop.
    skip_left: usize,
}

impl Decoder for OpusCodec {
    fn try_new(params: &CodecParameters, _options: &DecoderOptions) -> Result<Self> {
        let extra =
            params
                .extra_data
                .as_deref()
                .ok_or(symphonia::core::errors::Error::Unsupported(
                    "the Opus stream has no OpusHead header",
                ))?;
        let head = match parse_head(extra) {
            Ok(head) => head,
            Err(why) => return unsupported_error(why),
        };
        let inner = match OpusDecoder::new(RATE, head.channels) {
            Ok(inner) => inner,
            Err(_) => return unsupported_error("the Opus decoder refused the stream's layout"),
        };
        // Channel n of the output is bit n: symphonia only needs the count.
        let channels = Channels::from_bits_truncate((1u32 << head.channels) - 1);
        let buf = AudioBuffer::new(MAX_FRAMES as u64, SignalSpec::new(RATE, channels));
        Ok(OpusCodec {
            params: params.clone(),
            skip_left: head.pre_skip,
            pcm: vec![0.0; MAX_FRAMES * head.channels],
            head,
            inner,
            buf,
        })
    }

    fn supported_codecs() -> &'static [CodecDescriptor] {
        &[support_codec!(CODEC_TYPE_OPUS, "opus", "Opus")]
    }

    fn reset(&mut self) {
        // A fresh state after a discontinuity (a seek: no pre-skip then);
        // the layout was checked.
        if let Ok(inner) = OpusDecoder::new(RATE, self.head.channels) {
            self.inner = inner;
        }
    }

    fn codec_params(&self) -> &CodecParameters {
        &self.params
    }

    fn decode(&mut self, packet: &Packet) -> Result<AudioBufferRef<'_>> {
        self.buf.clear();
        let frames = match self.inner.decode_float(&packet.data, &mut self.pcm, false) {
            Ok(n) if n <= MAX_FRAMES => n,
            Ok(_) => return decode_error("an Opus packet decoded to more than 120 ms"),
            Err(_) => return decode_error("malformed Opus packet"),
        };
        self.buf.render_reserved(Some(frames));
        let channels = self.head.channels;
        for c in 0..channels {
            let plane = self.buf.chan_mut(c);
            for (i, out) in plane.iter_mut().enumerate() {
                *out = self.pcm[i * channels + c] * self.head.gain;
            }
        }
        let skip = self.skip_left.min(frames);
        self.skip_left -= skip;
        let start = skip.max(packet.trim_start() as usize);
        self.buf.trim(start, packet.trim_end() as usize);
        Ok(self.buf.as_audio_buffer_ref())
    }

    fn finalize(&mut self) -> FinalizeResult {
        FinalizeResult::default()
    }

    fn last_decoded(&self) -> AudioBufferRef<'_> {
        self.buf.as_audio_buffer_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(channels: u8, family: u8, tail: &[u8]) -> Vec<u8> {
        let mut h = b"OpusHead".to_vec();
        h.push(1);
        h.push(channels);
        h.extend_from_slice(&312u16.to_le_bytes());
        h.extend_from_slice(&48_000u32.to_le_bytes());
        h.extend_from_slice(&0i16.to_le_bytes());
        h.push(family);
        h.extend_from_slice(tail);
        h
    }

    #[test]
    fn reads_mono_and_stereo_heads() {
        let mono = parse_head(&head(1, 0, &[])).unwrap();
        assert_eq!((mono.channels, mono.pre_skip), (1, 312));
        assert!((mono.gain - 1.0).abs() < 1e-6);
        assert_eq!(parse_head(&head(2, 0, &[])).unwrap().channels, 2);
    }

    #[test]
    fn refuses_heads_it_cannot_decode() {
        assert!(parse_head(b"OpusHea").is_err());
        assert!(parse_head(&head(0, 0, &[])).is_err(), "no channels");
        assert!(
            parse_head(&head(3, 0, &[])).is_err(),
            "family 0 with 3 channels"
        );
        let surround = parse_head(&head(6, 1, &[4, 2, 0, 4, 1, 2, 3, 5])).unwrap_err();
        assert!(surround.contains("mix it down"), "{surround}");
        assert!(parse_head(&head(2, 255, &[])).is_err(), "unknown family");
    }

    #[test]
    fn applies_the_output_gain() {
        let mut h = head(1, 0, &[]);
        // +6.02 dB in Q7.8 doubles the amplitude.
        h[16..18].copy_from_slice(&((6.0206f32 * 256.0) as i16).to_le_bytes());
        assert!((parse_head(&h).unwrap().gain - 2.0).abs() < 0.01);
    }
}
