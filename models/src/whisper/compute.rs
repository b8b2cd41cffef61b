//! How a model's weights are stored and multiplied: the compute type
//! (`int8`, `f16`, `f32`, as faster-whisper names them) and the linear
//! layer and token embedding that follow it.
//!
//! - `f32`: float32 weights and activations (the reference path).
//! - `f16`: float16 weights and activations, for GPUs (on a CPU it is
//!   correct but slower than `f32`: candle has no fast float16 CPU kernels).
//! - `int8`: the linear layers' weights (attention projections, MLPs, and the
//!   token embedding that doubles as the vocabulary-wide output projection)
//!   are 8-bit blocks with one scale per 32 values (ggml's `Q8_0`), and the
//!   activations are quantized on the fly in the same blocks: on a CPU with
//!   AVX-512 VNNI by `gemm_q8.rs`, elsewhere by candle's generic kernels
//!   (never by candle's repacked ones, which quantize the activations per
//!   256 values and cost Whisper accuracy; `gemm_q8.rs` says how much).
//!   The quantized weights come from `quantize.rs`'s cache. Asked for
//!   (`models.int8_encoder`), on a CPU with AVX-512 VNNI, the encoder's
//!   linear layers are int8 too, quantized per output channel at load and
//!   multiplied by `gemm_i8.rs` (1,500 rows per window, where candle's int8
//!   kernels are no faster than float32).
//!   Everything else (convolutions, layer norms, position embeddings,
//!   biases, attention over the audio) stays float32.
//!
//! Limits: `int8` activations stay float32 on every device (faster-whisper's
//! `int8_float16` on a GPU is not offered).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Shape, Tensor};
use candle_nn::{LayerNorm, VarBuilder};

use super::gemm_i8::{self, PackedI8};
use super::gemm_q8::{self, PackedQ8};

/// Whether this CPU can run the encoder's linear layers in int8
/// (AVX-512 F, BW and VNNI; see `gemm_i8.rs`).
pub fn int8_encoder_available() -> bool {
    gemm_i8::available()
}

/// A model's compute type; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeType {
    Int8,
    F16,
    F32,
}

/// A compute type setting that is not one.
#[derive(Debug, thiserror::Error)]
#[error("unknown compute type `{0}`; use `int8`, `f16`, `f32` or `default` (int8 on a CPU, f16 on a GPU)")]
pub struct UnknownComputeType(pub String);

impl ComputeType {
    /// faster-whisper's `default`: int8 on a CPU, float16 on a GPU.
    pub fn default_for(device: &Device) -> Self {
        if device.is_cpu() {
            Self::Int8
        } else {
            Self::F16
        }
    }

    /// Reads a setting: a compute type, or `default` / empty for
    /// [`ComputeType::default_for`] the device. faster-whisper's spellings
    /// `float16` and `float32` are accepted too.
    pub fn resolve(
        setting: &str,
        device: &Device,
    ) -> std::result::Result<Self, UnknownComputeType> {
        match setting.trim().to_ascii_lowercase().as_str() {
            "" | "default" | "auto" => Ok(Self::default_for(device)),
            other => other.parse(),
        }
    }

    /// The dtype of the weights and activations kept in floating point.
    pub(super) fn float_dtype(self) -> DType {
        match self {
            Self::F16 => DType::F16,
            Self::Int8 | Self::F32 => DType::F32,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }
}

impl std::str::FromStr for ComputeType {
    type Err = UnknownComputeType;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "int8" => Ok(Self::Int8),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            _ => Err(UnknownComputeType(s.to_string())),
        }
    }
}

impl std::fmt::Display for ComputeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Makes candle's int8 kernels run on the thread that calls them, unless
/// `CANDLE_NUM_THREADS` says otherwise. They hand each product to a
/// spinning thread pool of their own, separate from the one float32
/// products use; a decoder step alternates between the two dozens of times,
/// and on a busy CPU (other workers, other processes) every hand-off waits
/// for a thread to be scheduled: measured on 2 cores, base on the 30 s call
/// took 17.3 s with the pool and 5.0 s without (docs/models.md, "Compute
/// types"). Each worker then runs its own int8 products, in parallel with
/// the others, instead of queueing for the pool's one caller at a time.
///
/// It also fixes `RAYON_NUM_THREADS` (unless set) at the count candle would
/// choose: without it candle works that count out again for every float32
/// product, by reading `/proc/cpuinfo` (`num_cpus::get_physical`), which
/// was 2.5% of tiny.en's time on a long recording plus the kernel's time
/// formatting the file.
///
/// Call it first thing in `main`, before any thread starts: it sets
/// environment variables, which candle and rayon read when their pools
/// start.
pub fn quantized_kernels_on_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// From this many rows a quantized layer's product is split by rows over
/// rayon's threads: a decoding's cross-attention keys and values (1,500
/// rows per window) and its prompts (up to 224 tokens). candle's int8
/// kernels run on the calling thread alone (see
/// [`quantized_kernels_on_calling_thread`]), and these products were a
/// fifth of tiny.en's time on a long recording, on one core. Each row's
/// result depends on that row alone (its activations are quantized per
/// 32-value block), so the split gives the same numbers. Multiplying these
/// rows in float32 instead was faster still but changed the transcripts
/// (base on the call fell into a repetition). The steps (one row per
/// sequence) stay on the calling thread.
const SPLIT_ROWS: usize = 32;

/// A linear layer `x W^T + b` with float or quantized weights.
#[derive(Debug, Clone)]
pub(super) enum Linear {
    Float(candle_nn::Linear),
    /// int8 weights quantized per output channel, for products of many
    /// rows (the encoder's; see `gemm_i8.rs`).
    Rows {
        weight: Arc<PackedI8>,
        bias: Option<Vec<f32>>,
    },
    /// `Q8_0` weights multiplied by `gemm_q8.rs` (a CPU with AVX-512 VNNI).
    Blocks {
        weight: Arc<PackedQ8>,
        bias: Option<Vec<f32>>,
    },
    /// `weight` may have `pad` zero columns past the input width (see
    /// [`widened`]), met by as many zeros appended to the input.
    Quantized {
        weight: QMatMul,
        bias: Option<Tensor>,
        pad: usize,
    },
}

impl Linear {
    pub(super) fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let k = weight.shape().dims2()?.1;
        Self::quantized_columns(weight, k, bias)
    }

    /// A layer on the first `k` columns of a quantized weight (a padded
    /// table's columns past them are zero): `gemm_q8.rs` where it runs,
    /// else candle's generic kernels, the input met by zeros for the
    /// columns past `k` (and for a [`widened`] weight's extra block).
    fn quantized_columns(weight: Arc<QTensor>, k: usize, bias: Option<Tensor>) -> Result<Self> {
        let (rows, cols) = weight.shape().dims2()?;
        if let Some(packed) = blocks_of(&weight, rows, k)? {
            return Ok(Self::Blocks {
                weight: Arc::new(packed),
                bias: bias.map(|b| b.to_vec1::<f32>()).transpose()?,
            });
        }
        let (weight, wider) = match widened(&weight)? {
            Some((wide, wider)) => (Arc::new(wide), wider),
            None => (weight, 0),
        };
        Ok(Self::Quantized {
            weight: QMatMul::from_arc(weight)?,
            bias,
            pad: cols - k + wider,
        })
    }
}

/// The output widths of the padded token embedding in the cache are a
/// multiple of this (`quantize.rs`), which `gemm_q8.rs`'s panels need.
pub(super) const PACKED_ROWS: usize = gemm_q8::LANES;
/// The cache pads the token embedding's input width to a multiple of this
/// (a layout kept from when candle's repacked kernels were used; the
/// padding columns are zero and `gemm_q8.rs` skips them).
pub(super) const PACKED_WIDTH: usize = 256;

/// A CPU `Q8_0` weight repacked for `gemm_q8.rs`, where this CPU has the
/// instructions and the weight the shape; its first `rows` rows.
fn blocks_of(weight: &QTensor, rows: usize, cols: usize) -> Result<Option<PackedQ8>> {
    use candle_core::quantized::GgmlDType;
    if !weight.device().is_cpu()
        || weight.dtype() != GgmlDType::Q8_0
        || !gemm_q8::available()
        || !gemm_q8::fits(rows, cols)
    {
        return Ok(None);
    }
    PackedQ8::from_q8_0(weight, rows, cols).map(Some)
}

/// A CPU `Q8_0` weight that candle's repacked kernels would take (input
/// width a multiple of 256, output width of 16, on a CPU with AVX-512 VNNI
/// or AVX-VNNI), widened by one zero block so that its generic kernels take
/// it instead, and how many columns were added (see the module docs for
/// why). A zero block (scale 0, values 0) is what quantizing zeros gives,
/// so the weight's values are unchanged. Only a CPU with AVX-VNNI and no
/// AVX-512 gets here: with AVX-512 VNNI `gemm_q8.rs` takes the weight.
fn widened(weight: &QTensor) -> Result<Option<(QTensor, usize)>> {
    use candle_core::quantized::{GgmlDType, QStorage};
    let dtype = weight.dtype();
    let (rows, cols) = weight.shape().dims2()?;
    let wide = cols + dtype.block_size();
    if !weight.device().is_cpu()
        || !packed_kernels()
        || dtype != GgmlDType::Q8_0
        || !cols.is_multiple_of(PACKED_WIDTH)
        || !rows.is_multiple_of(PACKED_ROWS)
    {
        return Ok(None);
    }
    let (block, block_bytes) = (dtype.block_size(), dtype.type_size());
    let (row_bytes, wide_bytes) = (cols / block * block_bytes, wide / block * block_bytes);
    let data = weight.data()?;
    if data.len() != rows * row_bytes {
        candle_core::bail!(
            "quantized weight of {} bytes for {rows} x {cols}",
            data.len()
        );
    }
    let mut out = vec![0u8; rows * wide_bytes];
    for (src, dst) in data
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(wide_bytes))
    {
        dst[..row_bytes].copy_from_slice(src);
    }
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), &Device::Cpu, dtype)?;
    Ok(Some((QTensor::new(storage, (rows, wide))?, wide - cols)))
}

/// Whether candle would take a `Q8_0` product of the right widths to its
/// repacked kernels on this CPU (x86 with AVX-512 VNNI or AVX-VNNI, as
/// candle checks).
fn packed_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
            || (is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(l) => l.forward(x),
            Self::Rows { weight, bias } => weight.forward(x, bias.as_deref()),
            Self::Blocks { weight, bias } => weight.forward(x, bias.as_deref()),
            Self::Quantized { weight, bias, pad } => {
                let y = forward_split(weight, &with_zero_columns(x, *pad)?)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// What a quantized product reads: `x` as one contiguous row-major block,
/// with `pad` zero columns appended to meet a weight's zero columns (a
/// widened layer's, [`widened`], or the padded token embedding's).
fn with_zero_columns(x: &Tensor, pad: usize) -> Result<Tensor> {
    x.pad_with_zeros(candle_core::D::Minus1, 0, pad)?
        .contiguous()
}

/// `weight` applied to the contiguous `x` (`[..., k]`), its rows split
/// over rayon's threads when there are [`SPLIT_ROWS`] or more.
fn forward_split(weight: &QMatMul, x: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let k = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    let threads = rayon::current_num_threads();
    if !x.device().is_cpu() || rows < SPLIT_ROWS || threads < 2 {
        return weight.forward(x);
    }
    // Even row counts per part, as the kernels pair rows.
    let chunk = rows.div_ceil(threads).next_multiple_of(2);
    let flat = x.reshape((rows, k))?;
    let parts = (0..rows)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| weight.forward(&flat.narrow(0, start, chunk.min(rows - start))?))
        .collect::<Result<Vec<_>>>()?;
    let y = Tensor::cat(&parts, 0)?;
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = y.dim(1)?;
    }
    y.reshape(dims)
}

/// The decoder's token embedding `[vocab, d]`, which is also its output
/// projection (Whisper ties them).
#[derive(Debug, Clone)]
pub(super) enum TokenEmbedding {
    Float(Tensor),
    /// `table` (`[rows, cols]`) may have zero rows past `vocab` and zero
    /// columns past `d` (padding for the fast kernels, see `quantize.rs`);
    /// their logits and embedding values are cut off.
    Quantized {
        table: Arc<QTensor>,
        /// The table as a linear layer on its first `d` columns.
        projection: Linear,
        vocab: usize,
        d: usize,
    },
}

impl TokenEmbedding {
    pub(super) fn quantized(table: Arc<QTensor>, vocab: usize, d: usize) -> Result<Self> {
        Ok(Self::Quantized {
            projection: Linear::quantized_columns(table.clone(), d, None)?,
            table,
            vocab,
            d,
        })
    }

    /// Rows for `ids` (`[n]` u32) -> `[n, d]` in `dtype`.
    pub(super) fn lookup(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Float(t) => t.embedding(ids),
            Self::Quantized { table, d, .. } => {
                let rows = table.embedding(ids)?;
                let rows = if rows.dim(1)? == *d {
                    rows
                } else {
                    rows.narrow(1, 0, *d)?
                };
                rows.to_dtype(dtype)
            }
        }
    }

    /// Logits for hidden states `[n, d]` -> `[n, vocab]`.
    pub(super) fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(t) => hidden.matmul(&t.t()?),
            Self::Quantized {
                projection, vocab, ..
            } => {
                let logits = projection.forward(hidden)?;
                if logits.dim(1)? == *vocab {
                    Ok(logits)
                } else {
                    logits.narrow(1, 0, *vocab)
                }
            }
        }
    }

    pub(super) fn device(&self) -> Device {
        match self {
            Self::Float(t) => t.device().clone(),
            Self::Quantized { table, .. } => table.device(),
        }
    }
}

/// Quantized weights by tensor name (`model.decoder.layers.0.fc1.weight`).
pub(super) type QuantizedWeights = HashMap<String, Arc<QTensor>>;

/// Where the layers find their weights: float tensors by name and, for
/// `int8`, the quantized linear weights under the same names. A layer asks
/// for a linear layer and gets the quantized one when there is one.
#[derive(Clone)]
pub(super) struct Weights {
    vb: VarBuilder<'static>,
    quantized: Option<Arc<QuantizedWeights>>,
    /// Float linear weights are quantized per output channel at load, for
    /// [`Linear::Rows`]; see [`Weights::with_int8_rows`].
    int8_rows: bool,
}

impl Weights {
    pub(super) fn new(vb: VarBuilder<'static>, quantized: Option<Arc<QuantizedWeights>>) -> Self {
        Self {
            vb,
            quantized,
            int8_rows: false,
        }
    }

    pub(super) fn pp(&self, name: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(name),
            quantized: self.quantized.clone(),
            int8_rows: self.int8_rows,
        }
    }

    /// These weights, with their float linear layers (those without a
    /// cached quantized weight) quantized to int8 per output channel at
    /// load and multiplied by `gemm_i8.rs`. For layers that multiply many
    /// rows at a time (the encoder's 1,500 per window); the caller has
    /// checked that the weights are float32 on this CPU and that it has the
    /// instructions (`WhisperModel::load_with`, [`int8_encoder_available`]).
    pub(super) fn with_int8_rows(&self) -> Self {
        Self {
            int8_rows: true,
            ..self.clone()
        }
    }

    pub(super) fn device(&self) -> &Device {
        self.vb.device()
    }

    pub(super) fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    /// A float tensor, in the compute dtype.
    pub(super) fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        self.vb.get(shape, name)
    }

    fn quantized(&self, name: &str) -> Option<Arc<QTensor>> {
        let key = format!("{}.{name}", self.vb.prefix());
        self.quantized.as_ref()?.get(&key).cloned()
    }

    /// The linear layer under this prefix (`weight` `[out, in]`, `bias`).
    pub(super) fn linear(&self, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let b = if bias {
            Some(self.vb.get(d_out, "bias")?)
        } else {
            None
        };
        match self.quantized("weight") {
            Some(w) => {
                if w.shape().dims() != [d_out, d_in] {
                    candle_core::bail!(
                        "quantized {}.weight has shape {:?}, expected [{d_out}, {d_in}]",
                        self.vb.prefix(),
                        w.shape()
                    );
                }
                Linear::quantized(w, b)
            }
            None if self.int8_rows && gemm_i8::fits(d_out, d_in) => Ok(Linear::Rows {
                weight: Arc::new(PackedI8::new(&self.vb.get((d_out, d_in), "weight")?)?),
                bias: b.map(|b| b.to_vec1::<f32>()).transpose()?,
            }),
            None => Ok(Linear::Float(candle_nn::Linear::new(
                self.vb.get((d_out, d_in), "weight")?,
                b,
            ))),
        }
    }

    pub(super) fn layer_norm(&self, size: usize) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.vb.get(size, "weight")?,
            self.vb.get(size, "bias")?,
            1e-5,
        ))
    }

    /// The token embedding `name` (`[vocab, d]`).
    pub(super) fn token_embedding(
        &self,
        vocab: usize,
        d: usize,
        name: &str,
    ) -> Result<TokenEmbedding> {
        match self.quantized(name) {
            Some(t) => {
                let (rows, cols) = t.shape().dims2()?;
                if rows < vocab || cols < d {
                    candle_core::bail!(
                        "quantized {}.{name} has shape {:?}, expected [{vocab}, {d}]",
                        self.vb.prefix(),
                        t.shape()
                    );
                }
                TokenEmbedding::quantized(t, vocab, d)
            }
            None => Ok(TokenEmbedding::Float(self.vb.get((vocab, d), name)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_default_by_device() {
        assert_eq!("int8".parse::<ComputeType>().unwrap(), ComputeType::Int8);
        assert_eq!("float16".parse::<ComputeType>().unwrap(), ComputeType::F16);
        assert_eq!(" F32 ".parse::<ComputeType>().unwrap(), ComputeType::F32);
        assert!("int4".parse::<ComputeType>().is_err());
        assert_eq!(
            ComputeType::resolve("default", &Device::Cpu).unwrap(),
            ComputeType::Int8
        );
        assert_eq!(
            ComputeType::resolve("", &Device::Cpu).unwrap(),
            ComputeType::Int8
        );
        for c in [ComputeType::Int8, ComputeType::F16, ComputeType::F32] {
            assert_eq!(c.to_string().parse::<ComputeType>().unwrap(), c);
        }
    }

    /// A quantized layer computes what the float one does, within Q8_0's
    /// rounding.
    #[test]
    fn quantized_linear_matches_float() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (96, 64), &dev)?;
        let b = Tensor::randn(0f32, 0.05, 96, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 64), &dev)?;
        let float = Linear::Float(candle_nn::Linear::new(w.clone(), Some(b.clone())));
        let q = Linear::quantized(
            Arc::new(QTensor::quantize(
                &w,
                candle_core::quantized::GgmlDType::Q8_0,
            )?),
            Some(b),
        )?;
        // 64 wide: candle's generic kernels, or gemm_q8.rs where it runs.
        if gemm_q8::available() {
            assert!(matches!(q, Linear::Blocks { .. }));
        } else {
            assert!(matches!(q, Linear::Quantized { pad: 0, .. }));
        }
        // 10 rows in one product, 64 split over threads.
        for x in [x, Tensor::randn(0f32, 1.0, (2, SPLIT_ROWS, 64), &dev)?] {
            let (a, c) = (float.forward(&x)?, q.forward(&x)?);
            assert_eq!(a.dims(), c.dims());
            let err = (a - c)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 0.02, "max error {err}");
        }
        Ok(())
    }

    /// A weight candle would take to its repacked kernels (256 wide) is
    /// widened by one zero block where those kernels exist, and a layer on
    /// the widened weight gives what candle's generic kernels give on the
    /// weight itself: the same blocks, the zero block adding nothing.
    #[test]
    fn a_weight_candle_would_repack_is_widened_by_one_block() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (32, 256), &dev)?;
        let q = QTensor::quantize(&w, candle_core::quantized::GgmlDType::Q8_0)?;
        let Some((wide, pad)) = widened(&q)? else {
            assert!(!packed_kernels(), "no widening where candle repacks");
            return Ok(());
        };
        assert_eq!((wide.shape().dims2()?, pad), ((32, 288), 32));
        let layer = Linear::Quantized {
            weight: QMatMul::from_arc(Arc::new(wide))?,
            bias: None,
            pad,
        };
        let x = Tensor::randn(0f32, 1.0, (3, 256), &dev)?;
        let got = layer.forward(&x)?;
        // The float product with the stored (quantized) weights: only the
        // inputs' rounding, per 32 values, is left.
        let want = x.matmul(&q.dequantize(&dev)?.t()?)?;
        let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 0.03, "max error {err}");
        Ok(())
    }
}
