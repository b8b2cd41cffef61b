//! pyannote `segmentation-3.0` (PyanNet) in candle: which of up to three
//! local speakers talks in each ~17 ms frame of a 10 s window.
//!
//! SincNet front end (instance-normalised waveform, 80 parametric sinc
//! band-pass filters of 251 taps with stride 10, |.|, then two plain conv
//! blocks, each followed by max-pool 3, instance norm and leaky ReLU), a
//! 4-layer bidirectional LSTM (hidden 128), two leaky-ReLU linear layers and
//! a 7-class "powerset" classifier whose classes are the speaker sets
//! `{}, {0}, {1}, {2}, {0,1}, {0,2}, {1,2}`. The argmax class is decoded to
//! per-speaker activity.
//!
//! Weight names follow the checkpoint's `state_dict` (`sincnet.*`, `lstm.*`,
//! `linear.*`, `classifier.*`).

use candle_core::{Device, Tensor, D};

use super::{DiarizeError, Weights};

/// Samples per window: pyannote's 10 s chunks at 16 kHz.
pub const WINDOW_SAMPLES: usize = 160_000;
/// Output frames per window.
pub const FRAMES_PER_WINDOW: usize = 589;
/// Samples between two output frames (10 * 3 * 3 * 3).
pub const FRAME_STEP_SAMPLES: usize = 270;
/// Samples one output frame sees (its receptive field); frame `i` covers
/// samples `[270 i, 270 i + 991)` of its window.
pub const FRAME_SPAN_SAMPLES: usize = 991;
/// Local speakers per window.
pub const LOCAL_SPEAKERS: usize = 3;

const SINC_FILTERS: usize = 80;
const SINC_TAPS: usize = 251;
const SINC_STRIDE: usize = 10;
const HIDDEN: usize = 128;
const LSTM_LAYERS: usize = 4;
const LEAKY_SLOPE: f64 = 0.01;
const NORM_EPS: f64 = 1e-5;
const SAMPLE_RATE: f64 = 16_000.0;

/// The powerset classes as speaker bit masks, in the classifier's order.
const POWERSET: [u8; 7] = [0b000, 0b001, 0b010, 0b100, 0b011, 0b101, 0b110];

/// One direction of one LSTM layer.
struct LstmDirection {
    /// [in, 512], transposed `weight_ih`.
    w_ih_t: Tensor,
    /// `bias_ih + bias_hh`: [512].
    bias: Tensor,
    /// [128, 512], transposed `weight_hh`; on the CPU (see [`Segmentation::lstm`]).
    w_hh_t: Tensor,
}

/// An affine instance norm's scale and shift, each [1, C, 1].
struct InstanceNorm {
    weight: Tensor,
    bias: Tensor,
}

impl InstanceNorm {
    fn load(
        w: &Weights,
        prefix: &str,
        channels: usize,
        device: &Device,
    ) -> Result<Self, DiarizeError> {
        Ok(InstanceNorm {
            weight: w
                .get(&format!("{prefix}.weight"), &[channels])?
                .reshape((1, channels, 1))?
                .to_device(device)?,
            bias: w
                .get(&format!("{prefix}.bias"), &[channels])?
                .reshape((1, channels, 1))?
                .to_device(device)?,
        })
    }

    /// Normalises each (batch, channel) row of `x` [B, C, T] over time.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + NORM_EPS)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// The loaded network; immutable, so one instance serves concurrent calls.
pub struct Segmentation {
    device: Device,
    wav_norm: InstanceNorm,
    /// The 80 sinc band-pass filters, computed once from the learned band
    /// edges: [80, 1, 251].
    sinc: Tensor,
    /// conv weight [out, in, 5] and bias [1, out, 1] of the two plain convs.
    convs: Vec<(Tensor, Tensor)>,
    norms: Vec<InstanceNorm>,
    /// `lstm[layer][direction]`, direction 0 forward, 1 backward.
    lstm: Vec<[LstmDirection; 2]>,
    /// (weight^T, bias) of the two hidden linear layers and the classifier.
    linear: Vec<(Tensor, Tensor)>,
    classifier: (Tensor, Tensor),
}

impl Segmentation {
    pub(crate) fn load(w: &Weights, device: &Device) -> Result<Self, DiarizeError> {
        let wav_norm = InstanceNorm::load(w, "sincnet.wav_norm1d", 1, device)?;
        let half = SINC_FILTERS / 2;
        let low_hz = w.get("sincnet.conv1d.0.filterbank.low_hz_", &[half, 1])?;
        let band_hz = w.get("sincnet.conv1d.0.filterbank.band_hz_", &[half, 1])?;
        let window = w.get("sincnet.conv1d.0.filterbank.window_", &[SINC_TAPS / 2])?;
        let n = w.get("sincnet.conv1d.0.filterbank.n_", &[1, SINC_TAPS / 2])?;
        let sinc = sinc_filters(
            &low_hz.flatten_all()?.to_vec1::<f32>()?,
            &band_hz.flatten_all()?.to_vec1::<f32>()?,
            &window.to_vec1::<f32>()?,
            &n.flatten_all()?.to_vec1::<f32>()?,
        );
        let sinc = Tensor::from_vec(sinc, (SINC_FILTERS, 1, SINC_TAPS), device)?;

        let mut convs = Vec::new();
        for (i, inp) in [(1, SINC_FILTERS), (2, 60)] {
            let weight = w
                .get(&format!("sincnet.conv1d.{i}.weight"), &[60, inp, 5])?
                .to_device(device)?;
            let bias = w
                .get(&format!("sincnet.conv1d.{i}.bias"), &[60])?
                .reshape((1, 60, 1))?
                .to_device(device)?;
            convs.push((weight, bias));
        }
        let mut norms = Vec::new();
        for (i, channels) in [(0, SINC_FILTERS), (1, 60), (2, 60)] {
            norms.push(InstanceNorm::load(
                w,
                &format!("sincnet.norm1d.{i}"),
                channels,
                device,
            )?);
        }

        let mut lstm = Vec::new();
        for layer in 0..LSTM_LAYERS {
            let inp = if layer == 0 { 60 } else { 2 * HIDDEN };
            let dir = |suffix: &str| -> Result<LstmDirection, DiarizeError> {
                let name = |what: &str| format!("lstm.{what}_l{layer}{suffix}");
                Ok(LstmDirection {
                    w_ih_t: w
                        .get(&name("weight_ih"), &[4 * HIDDEN, inp])?
                        .t()?
                        .contiguous()?
                        .to_device(device)?,
                    bias: (w.get(&name("bias_ih"), &[4 * HIDDEN])?
                        + w.get(&name("bias_hh"), &[4 * HIDDEN])?)?
                    .to_device(device)?,
                    w_hh_t: w
                        .get(&name("weight_hh"), &[4 * HIDDEN, HIDDEN])?
                        .t()?
                        .contiguous()?,
                })
            };
            lstm.push([dir("")?, dir("_reverse")?]);
        }

        let linear_layer =
            |name: &str, out: usize, inp: usize| -> Result<(Tensor, Tensor), DiarizeError> {
                Ok((
                    w.get(&format!("{name}.weight"), &[out, inp])?
                        .t()?
                        .contiguous()?
                        .to_device(device)?,
                    w.get(&format!("{name}.bias"), &[out])?.to_device(device)?,
                ))
            };
        let linear = vec![
            linear_layer("linear.0", HIDDEN, 2 * HIDDEN)?,
            linear_layer("linear.1", HIDDEN, HIDDEN)?,
        ];
        let classifier = linear_layer("classifier", POWERSET.len(), HIDDEN)?;
        Ok(Segmentation {
            device: device.clone(),
            wav_norm,
            sinc,
            convs,
            norms,
            lstm,
            linear,
            classifier,
        })
    }

    /// Per-frame local speaker activity of each window in `windows` (each
    /// exactly [`WINDOW_SAMPLES`] long): `[window][frame]` bit masks over
    /// the three local speakers.
    pub fn activity(&self, windows: &[&[f32]]) -> Result<Vec<Vec<u8>>, DiarizeError> {
        let logits = self.forward(windows)?; // [B, 589, 7]
        let classes = logits.argmax(D::Minus1)?.to_vec2::<u32>()?;
        Ok(classes
            .into_iter()
            .map(|frames| frames.into_iter().map(|c| POWERSET[c as usize]).collect())
            .collect())
    }

    /// Powerset logits (before log-softmax): [B, 589, 7].
    pub fn forward(&self, windows: &[&[f32]]) -> Result<Tensor, DiarizeError> {
        let batch = windows.len();
        let mut flat = Vec::with_capacity(batch * WINDOW_SAMPLES);
        for w in windows {
            if w.len() != WINDOW_SAMPLES {
                return Err(DiarizeError::Input(format!(
                    "a segmentation window has {} samples, expected {WINDOW_SAMPLES}",
                    w.len()
                )));
            }
            flat.extend_from_slice(w);
        }
        let x = Tensor::from_vec(flat, (batch, 1, WINDOW_SAMPLES), &self.device)?;
        let x = self.wav_norm.forward(&x)?;
        let x = x.conv1d(&self.sinc, 0, SINC_STRIDE, 1, 1)?.abs()?;
        let x = leaky(&self.norms[0].forward(&max_pool3(&x)?)?)?;
        let mut x = x;
        for ((weight, bias), norm) in self.convs.iter().zip(&self.norms[1..]) {
            let y = x.conv1d(weight, 0, 1, 1, 1)?.broadcast_add(bias)?;
            x = leaky(&norm.forward(&max_pool3(&y)?)?)?;
        }
        // [B, 60, T] -> [B, T, 60]
        let mut x = x.transpose(1, 2)?.contiguous()?;
        for layer in &self.lstm {
            x = self.bilstm_layer(&x, layer)?;
        }
        for (w_t, b) in &self.linear {
            x = leaky(&x.broadcast_matmul(w_t)?.broadcast_add(b)?)?;
        }
        Ok(x.broadcast_matmul(&self.classifier.0)?
            .broadcast_add(&self.classifier.1)?)
    }

    /// One bidirectional layer over `x` [B, T, in]: [B, T, 256].
    fn bilstm_layer(&self, x: &Tensor, layer: &[LstmDirection; 2]) -> Result<Tensor, DiarizeError> {
        let (batch, frames, _) = x.dims3()?;
        let mut outputs = Vec::with_capacity(2);
        for (d, dir) in layer.iter().enumerate() {
            // Input projections of every frame at once: [B, T, 512].
            let projected = x
                .broadcast_matmul(&dir.w_ih_t)?
                .broadcast_add(&dir.bias)?
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let hs = lstm_recurrence(&projected, &dir.w_hh_t, batch, frames, d == 1)?;
            outputs.push(Tensor::from_vec(hs, (batch, frames, HIDDEN), &self.device)?);
        }
        Ok(Tensor::cat(&outputs, 2)?)
    }
}

/// The recurrent part of one LSTM direction. `projected` is [B, T, 512]
/// (input projection plus both biases, PyTorch gate order i, f, g, o);
/// returns the hidden states [B, T, 128] in time order. The per-step
/// `h @ W_hh^T` runs as one small candle matmul over the whole batch; the
/// gate arithmetic is plain Rust, which avoids a dozen tensor ops per step.
fn lstm_recurrence(
    projected: &[f32],
    w_hh_t: &Tensor,
    batch: usize,
    frames: usize,
    reverse: bool,
) -> Result<Vec<f32>, DiarizeError> {
    let gates_n = 4 * HIDDEN;
    let mut out = vec![0f32; batch * frames * HIDDEN];
    let mut h = vec![0f32; batch * HIDDEN];
    let mut c = vec![0f32; batch * HIDDEN];
    for step in 0..frames {
        let t = if reverse { frames - 1 - step } else { step };
        let recurrent = Tensor::from_slice(&h, (batch, HIDDEN), &Device::Cpu)?
            .matmul(w_hh_t)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for b in 0..batch {
            let pre = &projected[(b * frames + t) * gates_n..][..gates_n];
            let rec = &recurrent[b * gates_n..][..gates_n];
            let hb = &mut h[b * HIDDEN..][..HIDDEN];
            let cb = &mut c[b * HIDDEN..][..HIDDEN];
            for j in 0..HIDDEN {
                let i = sigmoid(pre[j] + rec[j]);
                let f = sigmoid(pre[HIDDEN + j] + rec[HIDDEN + j]);
                let g = (pre[2 * HIDDEN + j] + rec[2 * HIDDEN + j]).tanh();
                let o = sigmoid(pre[3 * HIDDEN + j] + rec[3 * HIDDEN + j]);
                cb[j] = f * cb[j] + i * g;
                hb[j] = o * cb[j].tanh();
            }
            out[(b * frames + t) * HIDDEN..][..HIDDEN].copy_from_slice(hb);
        }
    }
    Ok(out)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn leaky(x: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::leaky_relu(x, LEAKY_SLOPE)
}

/// `MaxPool1d(3, stride 3)` over the last axis of [B, C, T].
fn max_pool3(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, t) = x.dims3()?;
    x.reshape((b, c, 1, t))?
        .max_pool2d_with_stride((1, 3), (1, 3))?
        .reshape((b, c, t / 3))
}

/// asteroid's `ParamSincFB` filters: 40 cosine (even) band-pass filters
/// then 40 sine (odd) ones, from the learned `low_hz_`/`band_hz_` and the
/// stored half Hamming window `window_` and half time axis `n_` (2 pi k / sr
/// for k = -125..-1). Returns [80 * 251] row-major.
fn sinc_filters(low_hz: &[f32], band_hz: &[f32], window: &[f32], n: &[f32]) -> Vec<f32> {
    const MIN_LOW_HZ: f64 = 50.0;
    const MIN_BAND_HZ: f64 = 50.0;
    let half = window.len();
    let mut out = vec![0f32; SINC_FILTERS * SINC_TAPS];
    for (odd, base) in [(false, 0), (true, SINC_FILTERS / 2)] {
        for (f, (&lo, &bw)) in low_hz.iter().zip(band_hz).enumerate() {
            let low = MIN_LOW_HZ + f64::from(lo).abs();
            let high =
                (low + MIN_BAND_HZ + f64::from(bw).abs()).clamp(MIN_LOW_HZ, SAMPLE_RATE / 2.0);
            let band = high - low;
            let row = &mut out[(base + f) * SINC_TAPS..][..SINC_TAPS];
            for k in 0..half {
                let nk = f64::from(n[k]);
                let (ft_low, ft_high) = (low * nk, high * nk);
                let left = if odd {
                    (ft_low.cos() - ft_high.cos()) / (nk / 2.0)
                } else {
                    (ft_high.sin() - ft_low.sin()) / (nk / 2.0)
                } * f64::from(window[k]);
                row[k] = (left / (2.0 * band)) as f32;
                let right = if odd { -left } else { left };
                row[SINC_TAPS - 1 - k] = (right / (2.0 * band)) as f32;
            }
            // The centre tap: 2 band for the even filter, 0 for the odd
            // one, over the same 2 band normalisation.
            row[half] = if odd { 0.0 } else { 1.0 };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powerset_covers_every_set_of_at_most_two_speakers() {
        let mut seen: Vec<u8> = POWERSET.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 7);
        assert!(POWERSET.iter().all(|m| m.count_ones() <= 2));
        assert_eq!(POWERSET[0], 0);
    }

    #[test]
    fn frame_count_matches_the_receptive_field_arithmetic() {
        // conv(251, /10) -> pool 3 -> conv 5 -> pool 3 -> conv 5 -> pool 3
        let mut t = (WINDOW_SAMPLES - SINC_TAPS) / SINC_STRIDE + 1;
        t /= 3;
        t = (t - 4) / 3;
        t = (t - 4) / 3;
        assert_eq!(t, FRAMES_PER_WINDOW);
    }

    #[test]
    fn sinc_filters_are_symmetric_band_passes() {
        // One filter pair with its band at 1000..1500 Hz (low_hz_ = 950,
        // band_hz_ = 450 after the 50 Hz minimums are added).
        let half = SINC_TAPS / 2;
        let window: Vec<f32> = (0..half)
            .map(|k| {
                (0.54
                    - 0.46 * (2.0 * std::f64::consts::PI * k as f64 / (SINC_TAPS - 1) as f64).cos())
                    as f32
            })
            .collect();
        let n: Vec<f32> = (0..half)
            .map(|k| (2.0 * std::f64::consts::PI * (k as f64 - half as f64) / SAMPLE_RATE) as f32)
            .collect();
        let low = vec![950f32; SINC_FILTERS / 2];
        let band = vec![450f32; SINC_FILTERS / 2];
        let f = sinc_filters(&low, &band, &window, &n);
        let cos = &f[..SINC_TAPS];
        let sin = &f[(SINC_FILTERS / 2) * SINC_TAPS..][..SINC_TAPS];
        for k in 0..SINC_TAPS {
            assert!((cos[k] - cos[SINC_TAPS - 1 - k]).abs() < 1e-6);
            assert!((sin[k] + sin[SINC_TAPS - 1 - k]).abs() < 1e-6);
        }
        // The even filter passes its band and little else.
        let gain = |hz: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (k, &v) in cos.iter().enumerate() {
                let ph = 2.0 * std::f64::consts::PI * hz * k as f64 / SAMPLE_RATE;
                re += f64::from(v) * ph.cos();
                im += f64::from(v) * ph.sin();
            }
            (re * re + im * im).sqrt()
        };
        assert!(gain(0.0) / 16.0 < 0.05, "DC gain {}", gain(0.0));
        assert!(gain(4000.0) / 16.0 < 0.05, "4 kHz gain {}", gain(4000.0));
        // asteroid scales the filters to 1 at their centre tap, so the
        // pass-band gain is sr / (2 * band) = 16.
        let mid = gain(1250.0) / 16.0;
        assert!(mid > 0.8 && mid < 1.2, "relative in-band gain {mid}");
    }
}
