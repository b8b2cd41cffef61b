//! Silero VAD (v6, 16 kHz) in candle, and the speech-region post-processing of
//! silero's `get_speech_timestamps`.
//!
//! The network reads 512-sample frames (32 ms at 16 kHz), each with the 64
//! samples before it as context: a learned STFT (a strided conv), magnitude,
//! four conv blocks, one LSTM cell whose state runs across frames, and a 1x1
//! conv to a speech probability. The weights are `silero_vad_16k.safetensors`
//! from the `silero-vad==6.2.3` wheel; the forward follows the package's
//! `tinygrad_model.py`.
//!
//! Only the LSTM depends on earlier frames, so the convolutional front end
//! and the LSTM's input projection run batched over many frames at once, and
//! only the small recurrence (one [1,128] x [128,512] matmul per frame) runs
//! frame by frame. [`VadStream`] runs the same batches over audio
//! handed in piece by piece, keeping one batch of samples at most.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::transcript::SpeechRegion;

mod onnx;
mod regions;
mod stream;

pub use regions::{regions_from_probs, RegionTracker};
pub use stream::VadStream;

/// The only rate the 16 kHz model reads.
pub const SAMPLE_RATE: u32 = 16_000;
/// New samples per frame.
pub const FRAME_SAMPLES: usize = 512;
/// Samples of the previous frame prepended to each frame.
pub const CONTEXT_SAMPLES: usize = 64;
/// The weights file inside an installed model directory (wheel member
/// `silero_vad/data/silero_vad_16k.safetensors`).
pub const WEIGHTS_FILE: &str = "silero_vad_16k.safetensors";
/// The same network as silero's default ONNX/JIT checkpoint (wheel member
/// `silero_vad/data/silero_vad_16k_op15.onnx`); preferred when installed.
pub const ONNX_WEIGHTS_FILE: &str = "silero_vad_16k_op15.onnx";

const WINDOW: usize = CONTEXT_SAMPLES + FRAME_SAMPLES;
/// Right reflect-padding of each window before the STFT conv.
const STFT_PAD: usize = 64;
const HIDDEN: usize = 128;
/// Frames whose conv front end runs in one candle batch; bounds memory.
const BATCH_FRAMES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error("cannot load Silero VAD weights from {path}: {detail}")]
    Load { path: String, detail: String },
    #[error("Silero VAD inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}

/// Voice-activity parameters: docs/API.md's `vad` block, defaults from there.
/// Durations are in the units their names say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VadParams {
    pub enabled: bool,
    /// Probability at or above which a frame is speech.
    pub threshold: f64,
    /// Probability below which speech ends; `threshold - 0.15` (at least
    /// 0.01) when unset, as in silero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neg_threshold: Option<f64>,
    /// Shorter speech regions are dropped.
    pub min_speech_ms: u32,
    /// Silence must last this long to end a region.
    pub min_silence_ms: u32,
    /// Padding added on both sides of each region.
    pub speech_pad_ms: u32,
    /// Longer regions are split (at the longest pause inside, if any);
    /// unlimited when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_speech_s: Option<f64>,
}

impl Default for VadParams {
    fn default() -> Self {
        VadParams {
            enabled: true,
            threshold: 0.5,
            neg_threshold: None,
            min_speech_ms: 250,
            min_silence_ms: 2000,
            speech_pad_ms: 400,
            max_speech_s: None,
        }
    }
}

impl VadParams {
    /// Checks ranges, so a job with nonsense parameters is refused up front
    /// (the message names the field).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!(
                "vad.threshold must be in (0, 1], got {}",
                self.threshold
            ));
        }
        if let Some(neg) = self.neg_threshold {
            if !(0.0..=self.threshold).contains(&neg) {
                return Err(format!(
                    "vad.neg_threshold must be between 0 and vad.threshold ({}), got {neg}",
                    self.threshold
                ));
            }
        }
        if let Some(max) = self.max_speech_s {
            // Silero subtracts a frame and both paddings from the maximum.
            let floor = (FRAME_SAMPLES as f64 + 2.0 * 16.0 * f64::from(self.speech_pad_ms))
                / f64::from(SAMPLE_RATE);
            if max.is_nan() || max <= floor {
                return Err(format!(
                    "vad.max_speech_s must exceed {floor:.3} s (a frame plus twice \
                     speech_pad_ms), got {max}"
                ));
            }
        }
        Ok(())
    }
}

/// The loaded model. Weights are small (1.2 MB); inference state lives in
/// each call, so one instance can serve many calls (it is `Send + Sync`).
pub struct SileroVad {
    device: Device,
    /// [258, 1, 256]: real and imaginary STFT bases, 129 bins each.
    stft: Tensor,
    /// (weight [out, in, 3], bias [1, out, 1], stride), all padding 1.
    convs: Vec<(Tensor, Tensor, usize)>,
    /// LSTM input weights, transposed: [128, 512].
    w_ih_t: Tensor,
    /// b_ih + b_hh: [512].
    lstm_bias: Tensor,
    /// Recurrent weights, transposed: [128, 512], always on the CPU: the
    /// recurrence is one tiny matmul per frame, which would drown in
    /// transfers on a GPU.
    w_hh_t: Tensor,
    /// 1x1 output conv.
    out_w: Vec<f32>,
    out_b: f32,
}

impl SileroVad {
    /// Loads the weights onto `device`: `silero_vad_16k.safetensors`, or
    /// (by the `.onnx` extension) the wheel's `silero_vad_16k_op15.onnx`,
    /// which holds the checkpoint silero's Python and ONNX users run by
    /// default. The two files hold different checkpoints of one network.
    pub fn load(path: &Path, device: &Device) -> Result<Self, VadError> {
        let load_err = |detail: String| VadError::Load {
            path: path.display().to_string(),
            detail,
        };
        let is_onnx = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
        let tensors = if is_onnx {
            let bytes = std::fs::read(path).map_err(|e| load_err(e.to_string()))?;
            onnx::silero_tensors(&bytes).map_err(load_err)?
        } else {
            candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| load_err(e.to_string()))?
        };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor, VadError> {
            let t = tensors
                .get(name)
                .ok_or_else(|| load_err(format!("tensor `{name}` is missing")))?;
            if t.dims() != shape {
                return Err(load_err(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let stft = get("stft_conv.weight", &[258, 1, 256])?.to_device(device)?;
        let mut convs = Vec::new();
        for (name, out, inp, stride) in [
            ("conv1", 128, 129, 1),
            ("conv2", 64, 128, 2),
            ("conv3", 64, 64, 2),
            ("conv4", 128, 64, 1),
        ] {
            let w = get(&format!("{name}.weight"), &[out, inp, 3])?.to_device(device)?;
            let b = get(&format!("{name}.bias"), &[out])?
                .reshape((1, out, 1))?
                .to_device(device)?;
            convs.push((w, b, stride));
        }
        let w_ih_t = get("lstm_cell.weight_ih", &[4 * HIDDEN, HIDDEN])?
            .t()?
            .contiguous()?
            .to_device(device)?;
        let lstm_bias = (get("lstm_cell.bias_ih", &[4 * HIDDEN])?
            + get("lstm_cell.bias_hh", &[4 * HIDDEN])?)?
        .to_device(device)?;
        let w_hh_t = get("lstm_cell.weight_hh", &[4 * HIDDEN, HIDDEN])?
            .t()?
            .contiguous()?;
        let out_w = get("final_conv.weight", &[1, HIDDEN, 1])?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let out_b = get("final_conv.bias", &[1])?.to_vec1::<f32>()?[0];
        Ok(SileroVad {
            device: device.clone(),
            stft,
            convs,
            w_ih_t,
            lstm_bias,
            w_hh_t,
            out_w,
            out_b,
        })
    }

    /// Loads an installed model directory: [`ONNX_WEIGHTS_FILE`] when it is
    /// there (the checkpoint silero's own Python API runs), else
    /// [`WEIGHTS_FILE`].
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self, VadError> {
        let onnx = dir.join(ONNX_WEIGHTS_FILE);
        if onnx.is_file() {
            return Self::load(&onnx, device);
        }
        Self::load(&dir.join(WEIGHTS_FILE), device)
    }

    /// One speech probability per 512-sample frame of 16 kHz mono `samples`
    /// (the last frame zero-padded), with context and LSTM state carried from
    /// frame to frame exactly as silero's own wrapper does.
    pub fn speech_probs(&self, samples: &[f32]) -> Result<Vec<f32>, VadError> {
        let frames = samples.len().div_ceil(FRAME_SAMPLES);
        let mut probs = Vec::with_capacity(frames);
        let mut state = LstmState::default();
        let mut start = 0;
        while start < frames {
            let n = BATCH_FRAMES.min(frames - start);
            self.run_batch(samples, 0, start, n, &mut state, &mut |p| probs.push(p))?;
            start += n;
        }
        Ok(probs)
    }

    /// Frames `first..first + n` of `samples`, whose frame 0 starts at
    /// `origin`, through the network: one probability each to `emit`, in
    /// order, carrying `state` from frame to frame.
    fn run_batch(
        &self,
        samples: &[f32],
        origin: usize,
        first: usize,
        n: usize,
        state: &mut LstmState,
        emit: &mut dyn FnMut(f32),
    ) -> Result<(), VadError> {
        // Input projections of the whole batch: [n, 512].
        let projected = self.front_end(samples, origin, first, n)?;
        for row in projected.chunks_exact(4 * HIDDEN) {
            self.lstm_step(row, &mut state.h, &mut state.c, &mut state.gates)?;
            let logit = state
                .h
                .iter()
                .zip(&self.out_w)
                .map(|(h, w)| h.max(0.0) * w)
                .sum::<f32>()
                + self.out_b;
            emit(1.0 / (1.0 + (-logit).exp()));
        }
        Ok(())
    }

    /// Speech regions of 16 kHz mono `samples`, in seconds.
    pub fn speech_regions(
        &self,
        samples: &[f32],
        params: &VadParams,
    ) -> Result<Vec<SpeechRegion>, VadError> {
        let probs = self.speech_probs(samples)?;
        Ok(regions_from_probs(&probs, samples.len(), params))
    }

    /// Conv front end and LSTM input projection for frames
    /// `first..first + n` (frame 0 starting at `samples[origin]`), returned
    /// flat as [n, 4 * 128] (bias included).
    fn front_end(
        &self,
        samples: &[f32],
        origin: usize,
        first: usize,
        n: usize,
    ) -> Result<Vec<f32>, VadError> {
        const PADDED: usize = WINDOW + STFT_PAD;
        let mut windows = vec![0f32; n * PADDED];
        for (k, window) in windows.chunks_exact_mut(PADDED).enumerate() {
            // Window of frame f: the 64 samples before it (zeros before the
            // start) and its 512 samples (zeros past the end).
            let begin = (origin + (first + k) * FRAME_SAMPLES) as isize - CONTEXT_SAMPLES as isize;
            for (i, slot) in window[..WINDOW].iter_mut().enumerate() {
                let at = begin + i as isize;
                if at >= 0 {
                    if let Some(s) = samples.get(at as usize) {
                        *slot = *s;
                    }
                }
            }
            // Reflect padding on the right (the edge sample not repeated).
            for i in 0..STFT_PAD {
                window[WINDOW + i] = window[WINDOW - 2 - i];
            }
        }
        let x = Tensor::from_vec(windows, (n, 1, PADDED), &self.device)?;
        // STFT as a conv: [n, 258, 4], then magnitude [n, 129, 4].
        let spec = x.conv1d(&self.stft, 0, 128, 1, 1)?;
        let re = spec.narrow(1, 0, 129)?;
        let im = spec.narrow(1, 129, 129)?;
        let mut x = (re.sqr()? + im.sqr()?)?.sqrt()?;
        for (w, b, stride) in &self.convs {
            x = x.conv1d(w, 1, *stride, 1, 1)?.broadcast_add(b)?.relu()?;
        }
        // [n, 128, 1] -> [n, 128] -> input projection [n, 512].
        let x = x.squeeze(D::Minus1)?;
        let projected = x.matmul(&self.w_ih_t)?.broadcast_add(&self.lstm_bias)?;
        Ok(projected.flatten_all()?.to_vec1::<f32>()?)
    }

    /// One LSTM cell step (PyTorch gate order i, f, g, o) given the input
    /// projection `xw` (bias included).
    fn lstm_step(
        &self,
        xw: &[f32],
        h: &mut [f32; HIDDEN],
        c: &mut [f32; HIDDEN],
        gates: &mut [f32],
    ) -> Result<(), VadError> {
        // h @ W_hh^T through candle's optimised CPU matmul.
        let recurrent = Tensor::from_slice(&h[..], (1, HIDDEN), &Device::Cpu)?
            .matmul(&self.w_hh_t)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        for ((gate, x), r) in gates.iter_mut().zip(xw).zip(&recurrent) {
            *gate = x + r;
        }
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        for j in 0..HIDDEN {
            let i = sigmoid(gates[j]);
            let f = sigmoid(gates[HIDDEN + j]);
            let g = gates[2 * HIDDEN + j].tanh();
            let o = sigmoid(gates[3 * HIDDEN + j]);
            c[j] = f * c[j] + i * g;
            h[j] = o * c[j].tanh();
        }
        Ok(())
    }
}

/// The LSTM's state between frames.
struct LstmState {
    h: [f32; HIDDEN],
    c: [f32; HIDDEN],
    /// Work buffer for the gates.
    gates: Vec<f32>,
}

impl Default for LstmState {
    fn default() -> Self {
        LstmState {
            h: [0.0; HIDDEN],
            c: [0.0; HIDDEN],
            gates: vec![0.0; 4 * HIDDEN],
        }
    }
}
