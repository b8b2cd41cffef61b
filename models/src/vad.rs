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
//! frame by frame.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::transcript::SpeechRegion;

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
        let mut h = [0f32; HIDDEN];
        let mut c = [0f32; HIDDEN];
        let mut gates = vec![0f32; 4 * HIDDEN];
        let mut start = 0;
        while start < frames {
            let n = BATCH_FRAMES.min(frames - start);
            // Input projections of the whole batch: [n, 512].
            let projected = self.front_end(samples, start, n)?;
            for row in projected.chunks_exact(4 * HIDDEN) {
                self.lstm_step(row, &mut h, &mut c, &mut gates)?;
                let logit = h
                    .iter()
                    .zip(&self.out_w)
                    .map(|(h, w)| h.max(0.0) * w)
                    .sum::<f32>()
                    + self.out_b;
                probs.push(1.0 / (1.0 + (-logit).exp()));
            }
            start += n;
        }
        Ok(probs)
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
    /// `first..first + n`, returned flat as [n, 4 * 128] (bias included).
    fn front_end(&self, samples: &[f32], first: usize, n: usize) -> Result<Vec<f32>, VadError> {
        const PADDED: usize = WINDOW + STFT_PAD;
        let mut windows = vec![0f32; n * PADDED];
        for (k, window) in windows.chunks_exact_mut(PADDED).enumerate() {
            // Window of frame f: the 64 samples before it (zeros before the
            // start) and its 512 samples (zeros past the end).
            let begin = ((first + k) * FRAME_SAMPLES) as isize - CONTEXT_SAMPLES as isize;
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

/// Just enough protobuf to read the float initializers of an ONNX model
/// (`ModelProto.graph.initializer`), renamed to the safetensors names.
mod onnx {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};

    /// ONNX initializer names of the 16 kHz op15 export -> our names.
    const NAMES: [(&str, &str); 15] = [
        ("model.stft.forward_basis_buffer", "stft_conv.weight"),
        ("model.encoder.0.reparam_conv.weight", "conv1.weight"),
        ("model.encoder.0.reparam_conv.bias", "conv1.bias"),
        ("model.encoder.1.reparam_conv.weight", "conv2.weight"),
        ("model.encoder.1.reparam_conv.bias", "conv2.bias"),
        ("model.encoder.2.reparam_conv.weight", "conv3.weight"),
        ("model.encoder.2.reparam_conv.bias", "conv3.bias"),
        ("model.encoder.3.reparam_conv.weight", "conv4.weight"),
        ("model.encoder.3.reparam_conv.bias", "conv4.bias"),
        ("model.decoder.rnn.weight_ih", "lstm_cell.weight_ih"),
        ("model.decoder.rnn.weight_hh", "lstm_cell.weight_hh"),
        ("model.decoder.rnn.bias_ih", "lstm_cell.bias_ih"),
        ("model.decoder.rnn.bias_hh", "lstm_cell.bias_hh"),
        ("model.decoder.decoder.2.weight", "final_conv.weight"),
        ("model.decoder.decoder.2.bias", "final_conv.bias"),
    ];

    /// A protobuf field: number and payload.
    enum Value<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Fixed32(u32),
        Fixed64,
    }

    struct Reader<'a> {
        data: &'a [u8],
    }

    impl<'a> Reader<'a> {
        fn varint(&mut self) -> Result<u64, String> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = self.data.split_first().ok_or("truncated varint")?;
                self.data = rest;
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Ok(value);
                }
            }
            Err("varint too long".into())
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if n > self.data.len() {
                return Err("truncated field".into());
            }
            let (head, rest) = self.data.split_at(n);
            self.data = rest;
            Ok(head)
        }

        fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
            if self.data.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                w => return Err(format!("unsupported protobuf wire type {w}")),
            };
            Ok(Some((key >> 3, value)))
        }
    }

    fn fields(data: &[u8]) -> Result<Vec<(u64, Value<'_>)>, String> {
        let mut reader = Reader { data };
        let mut out = Vec::new();
        while let Some(f) = reader.field()? {
            out.push(f);
        }
        Ok(out)
    }

    /// One `TensorProto` as (name, dims, f32 data).
    fn tensor(data: &[u8]) -> Result<(String, Vec<usize>, Vec<f32>), String> {
        let (mut name, mut dims, mut floats, mut raw, mut dtype) =
            (String::new(), Vec::new(), Vec::new(), None, 1);
        for (number, value) in fields(data)? {
            match (number, value) {
                (1, Value::Varint(d)) => dims.push(d as usize),
                (1, Value::Bytes(packed)) => {
                    let mut r = Reader { data: packed };
                    while !r.data.is_empty() {
                        dims.push(r.varint()? as usize);
                    }
                }
                (2, Value::Varint(t)) => dtype = t,
                (4, Value::Fixed32(bits)) => floats.push(f32::from_bits(bits)),
                (4, Value::Bytes(packed)) => floats.extend(
                    packed
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                (8, Value::Bytes(n)) => name = String::from_utf8_lossy(n).into_owned(),
                (9, Value::Bytes(bytes)) => raw = Some(bytes),
                _ => {}
            }
        }
        if dtype != 1 {
            return Err(format!(
                "initializer `{name}` is not float32 (type {dtype})"
            ));
        }
        if let Some(bytes) = raw {
            floats = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
        }
        Ok((name, dims, floats))
    }

    /// The Silero tensors of an ONNX file, under the safetensors names.
    pub fn silero_tensors(model: &[u8]) -> Result<HashMap<String, Tensor>, String> {
        let graph = fields(model)?
            .into_iter()
            .find_map(|(n, v)| match (n, v) {
                (7, Value::Bytes(g)) => Some(g),
                _ => None,
            })
            .ok_or("no graph in the ONNX file")?;
        let mut out = HashMap::new();
        for (number, value) in fields(graph)? {
            let (5, Value::Bytes(t)) = (number, value) else {
                continue;
            };
            let (name, dims, data) = tensor(t)?;
            let Some((_, ours)) = NAMES.iter().find(|(onnx, _)| *onnx == name) else {
                continue;
            };
            if dims.iter().product::<usize>() != data.len() {
                return Err(format!(
                    "initializer `{name}`: shape {dims:?} but {} values",
                    data.len()
                ));
            }
            let t = Tensor::from_vec(data, dims, &Device::Cpu).map_err(|e| e.to_string())?;
            out.insert(ours.to_string(), t);
        }
        if out.len() != NAMES.len() {
            return Err(format!(
                "found {} of the {} Silero tensors; use the wheel's silero_vad_16k_op15.onnx",
                out.len(),
                NAMES.len()
            ));
        }
        Ok(out)
    }
}

/// Speech regions from per-frame probabilities: a line-by-line port of
/// silero's `get_speech_timestamps_from_probs` (v6.2.3, with
/// `min_silence_at_max_speech = 98 ms` and
/// `use_max_poss_sil_at_max_speech = True`), returned in seconds without
/// rounding. `n_samples` is the audio length at 16 kHz.
pub fn regions_from_probs(
    probs: &[f32],
    n_samples: usize,
    params: &VadParams,
) -> Vec<SpeechRegion> {
    let rate = f64::from(SAMPLE_RATE);
    let window = FRAME_SAMPLES as f64;
    // Probabilities are f32; the thresholds are f64 only so that an API
    // value like 0.4 reads back as 0.4.
    let threshold = params.threshold as f32;
    let neg_threshold = params
        .neg_threshold
        .map(|n| n as f32)
        .unwrap_or_else(|| (threshold - 0.15).max(0.01));
    let min_speech = rate * f64::from(params.min_speech_ms) / 1000.0;
    let pad = rate * f64::from(params.speech_pad_ms) / 1000.0;
    let max_speech = match params.max_speech_s {
        Some(s) if s.is_finite() => rate * s - window - 2.0 * pad,
        _ => f64::INFINITY,
    };
    let min_silence = rate * f64::from(params.min_silence_ms) / 1000.0;
    let min_silence_at_max = rate * 98.0 / 1000.0;
    let audio_len = n_samples as i64;

    // Sample positions are integers in silero; `None` plays the role of its
    // empty `current_speech` dict.
    #[derive(Clone, Copy)]
    struct Current {
        start: i64,
    }
    let mut speeches: Vec<(i64, i64)> = Vec::new();
    let mut current: Option<Current> = None;
    let mut triggered = false;
    let mut temp_end: i64 = 0;
    let mut prev_end: i64 = 0;
    let mut next_start: i64 = 0;
    let mut possible_ends: Vec<(i64, i64)> = Vec::new();

    for (i, &prob) in probs.iter().enumerate() {
        let cur = (FRAME_SAMPLES * i) as i64;

        if prob >= threshold && temp_end != 0 {
            let silence = cur - temp_end;
            if silence as f64 > min_silence_at_max {
                possible_ends.push((temp_end, silence));
            }
            temp_end = 0;
            if next_start < prev_end {
                next_start = cur;
            }
        }

        if prob >= threshold && !triggered {
            triggered = true;
            current = Some(Current { start: cur });
            continue;
        }

        if triggered {
            let start = current.map_or(0, |c| c.start);
            if (cur - start) as f64 > max_speech {
                if let Some(&(end, dur)) =
                    possible_ends
                        .iter()
                        .reduce(|best, x| if x.1 > best.1 { x } else { best })
                {
                    // Python's max() keeps the first of equal maxima, as
                    // `reduce` with a strict `>` does.
                    prev_end = end;
                    speeches.push((start, prev_end));
                    current = None;
                    next_start = prev_end + dur;
                    if next_start < prev_end + cur {
                        current = Some(Current { start: next_start });
                    } else {
                        triggered = false;
                    }
                    prev_end = 0;
                    next_start = 0;
                    temp_end = 0;
                    possible_ends.clear();
                } else {
                    speeches.push((start, cur));
                    current = None;
                    prev_end = 0;
                    next_start = 0;
                    temp_end = 0;
                    triggered = false;
                    possible_ends.clear();
                    continue;
                }
            }
        }

        if prob < neg_threshold && triggered {
            if temp_end == 0 {
                temp_end = cur;
            }
            let silence_now = cur - temp_end;
            if (silence_now as f64) < min_silence {
                continue;
            }
            if let Some(c) = current {
                if (temp_end - c.start) as f64 > min_speech {
                    speeches.push((c.start, temp_end));
                }
            }
            current = None;
            prev_end = 0;
            next_start = 0;
            temp_end = 0;
            triggered = false;
            possible_ends.clear();
            continue;
        }
    }

    if let Some(c) = current {
        if (audio_len - c.start) as f64 > min_speech {
            speeches.push((c.start, audio_len));
        }
    }

    // Padding, splitting short gaps between neighbours evenly.
    let pad_i = pad as i64;
    let count = speeches.len();
    for i in 0..count {
        if i == 0 {
            speeches[0].0 = (speeches[0].0 as f64 - pad).max(0.0) as i64;
        }
        if i + 1 < count {
            let gap = speeches[i + 1].0 - speeches[i].1;
            if (gap as f64) < 2.0 * pad {
                // Python's `//` floors.
                speeches[i].1 += gap.div_euclid(2);
                speeches[i + 1].0 = (speeches[i + 1].0 - gap.div_euclid(2)).max(0);
            } else {
                speeches[i].1 = (speeches[i].1 + pad_i).min(audio_len);
                speeches[i + 1].0 = (speeches[i + 1].0 - pad_i).max(0);
            }
        } else {
            speeches[i].1 = (speeches[i].1 as f64 + pad).min(audio_len as f64) as i64;
        }
    }

    speeches
        .into_iter()
        .map(|(start, end)| SpeechRegion {
            start: start as f64 / rate,
            end: end as f64 / rate,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> VadParams {
        VadParams {
            min_silence_ms: 100,
            speech_pad_ms: 30,
            ..VadParams::default()
        }
    }

    #[test]
    fn defaults_match_api_md() {
        let p: VadParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, VadParams::default());
        assert!(p.enabled);
        assert_eq!(p.threshold, 0.5);
        assert_eq!(
            (p.min_speech_ms, p.min_silence_ms, p.speech_pad_ms),
            (250, 2000, 400)
        );
        assert_eq!(p.max_speech_s, None);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"enabled": true, "threshold": 0.5, "min_speech_ms": 250,
                               "min_silence_ms": 2000, "speech_pad_ms": 400})
        );
        assert!(serde_json::from_str::<VadParams>(r#"{"treshold": 0.4}"#).is_err());
    }

    #[test]
    fn validation() {
        assert!(VadParams::default().validate().is_ok());
        let bad = |p: VadParams| p.validate().unwrap_err();
        assert!(bad(VadParams {
            threshold: 0.0,
            ..VadParams::default()
        })
        .contains("vad.threshold"));
        assert!(bad(VadParams {
            threshold: f64::NAN,
            ..VadParams::default()
        })
        .contains("vad.threshold"));
        assert!(bad(VadParams {
            neg_threshold: Some(0.7),
            ..VadParams::default()
        })
        .contains("vad.neg_threshold"));
        assert!(bad(VadParams {
            max_speech_s: Some(0.5),
            ..VadParams::default()
        })
        .contains("vad.max_speech_s"));
        assert!(VadParams {
            max_speech_s: Some(30.0),
            ..VadParams::default()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn no_speech_gives_no_regions() {
        assert!(regions_from_probs(&[0.1; 100], 51_200, &params()).is_empty());
        assert!(regions_from_probs(&[], 0, &params()).is_empty());
    }

    #[test]
    fn one_region_with_padding() {
        // Frames 10..30 speech (0.32 s .. 0.96 s) in 2 s of audio.
        let mut probs = vec![0.0f32; 63];
        probs[10..30].fill(0.9);
        let r = regions_from_probs(&probs, 32_000, &params());
        assert_eq!(r.len(), 1);
        // start 5120 - 480 pad, end at the first silent frame 15360 + 480.
        assert_eq!(r[0].start, (5120.0 - 480.0) / 16_000.0);
        assert_eq!(r[0].end, (15_360.0 + 480.0) / 16_000.0);
    }

    #[test]
    fn short_blips_are_dropped_and_short_gaps_bridged() {
        let mut probs = vec![0.0f32; 200];
        probs[5..7].fill(0.9); // 64 ms: below min_speech
        probs[50..80].fill(0.9);
        probs[81..110].fill(0.9); // a one-frame dip: below min_silence
        let r = regions_from_probs(&probs, 200 * 512, &params());
        assert_eq!(r.len(), 1, "{r:?}");
        assert!((r[0].start - (50.0 * 512.0 - 480.0) / 16_000.0).abs() < 1e-9);
    }

    #[test]
    fn hysteresis_uses_neg_threshold() {
        // 0.4 is above the default neg threshold (0.35): speech continues.
        let mut probs = vec![0.0f32; 100];
        probs[10..20].fill(0.9);
        probs[20..60].fill(0.4);
        let r = regions_from_probs(&probs, 100 * 512, &params());
        assert_eq!(r.len(), 1);
        assert!((r[0].end - (60.0 * 512.0 + 480.0) / 16_000.0).abs() < 1e-9);
    }

    #[test]
    fn max_speech_splits_at_the_longest_pause() {
        // 20 s of speech with a 0.32 s pause at 6 s and 0.16 s at 12 s.
        let mut probs = vec![0.9f32; 625];
        probs[187..197].fill(0.0);
        probs[375..380].fill(0.0);
        let p = VadParams {
            max_speech_s: Some(15.0),
            min_silence_ms: 2000,
            ..params()
        };
        let r = regions_from_probs(&probs, 625 * 512, &p);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!((r[0].end - 187.0 * 512.0 / 16_000.0).abs() < 0.1, "{r:?}");
        assert!(r.iter().all(|s| s.end - s.start <= 15.0));
    }

    #[test]
    fn max_speech_without_pause_cuts_hard() {
        let probs = vec![0.9f32; 1000];
        let p = VadParams {
            max_speech_s: Some(5.0),
            ..params()
        };
        let r = regions_from_probs(&probs, 1000 * 512, &p);
        assert!(r.len() >= 3, "{r:?}");
        assert!(r.iter().all(|s| s.end - s.start <= 5.0 + 1e-9), "{r:?}");
    }
}
