//! Whisper's audio encoder: two convolutions over the log-mel spectrogram,
//! sinusoidal positions, pre-norm self-attention blocks.
//!
//! The same computation as candle-transformers' `AudioEncoder` (tanh GELU,
//! keys and queries each scaled by `head_dim^-1/4`), with its softmax and
//! GELU vectorised (`activations.rs`, within 2 ulp of libm's) and, on a
//! CPU with AVX-512, its attention fused (`fused_attention.rs`); ours because
//! its linear layers follow the compute type (float or int8, see `compute.rs`) and its `forward` takes
//! `&self`: the encoder keeps no state, so one loaded model encodes for any
//! number of jobs at once. Loads the weight names `model.encoder.*`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, LayerNorm};

use super::activations::{gelu, softmax_last_dim};
use super::compute::{Linear, Weights};
use super::fused_attention;
use super::Config;

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    n_head: usize,
}

impl SelfAttention {
    fn load(d: usize, n_head: usize, w: Weights) -> Result<Self> {
        Ok(Self {
            q: w.pp("q_proj").linear(d, d, true)?,
            // Whisper's key projection has no bias.
            k: w.pp("k_proj").linear(d, d, false)?,
            v: w.pp("v_proj").linear(d, d, true)?,
            out: w.pp("out_proj").linear(d, d, true)?,
            n_head,
        })
    }

    /// `[b, t, d]` -> `[b, heads, t, head_dim]`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        x.reshape((b, t, self.n_head, d / self.n_head))?
            .transpose(1, 2)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, d) = x.dims3()?;
        if fused_attention::applies(x, self.n_head) {
            let (q, k, v) = (self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?);
            return self
                .out
                .forward(&fused_attention::self_attention(&q, &k, &v, self.n_head)?);
        }
        let scale = ((d / self.n_head) as f64).powf(-0.25);
        let q = (self.heads(&self.q.forward(x)?)? * scale)?;
        let k = (self.heads(&self.k.forward(x)?)?.transpose(2, 3)? * scale)?;
        let v = self.heads(&self.v.forward(x)?)?.contiguous()?;
        // One head at a time: the same products and softmax as over all
        // heads at once (candle multiplies a batch one matrix after the
        // other), but each head's scores are 1500 x 1500 (9 MB) where all
        // heads' are 6 to 20 times that. Buffers that large are fresh
        // mmapped pages at every allocation (malloc's mmap threshold tops
        // out at 32 MB), and faulting them in was a tenth of tiny.en's time.
        let ctx = (0..self.n_head)
            .map(|h| {
                let scores = q.narrow(1, h, 1)?.matmul(&k.narrow(1, h, 1)?)?;
                softmax_last_dim(&scores)?.matmul(&v.narrow(1, h, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let ctx = Tensor::cat(&ctx, 1)?.transpose(1, 2)?.flatten_from(2)?;
        self.out.forward(&ctx)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn: SelfAttention,
    attn_ln: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
}

impl Block {
    fn load(cfg: &Config, w: Weights) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            attn: SelfAttention::load(d, cfg.encoder_attention_heads, w.pp("self_attn"))?,
            attn_ln: w.pp("self_attn_layer_norm").layer_norm(d)?,
            fc1: w.pp("fc1").linear(d, 4 * d, true)?,
            fc2: w.pp("fc2").linear(4 * d, d, true)?,
            mlp_ln: w.pp("final_layer_norm").layer_norm(d)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.attn_ln.forward(x)?)?)?;
        let mlp = self
            .fc2
            .forward(&gelu(&self.fc1.forward(&self.mlp_ln.forward(&x)?)?)?)?;
        x + mlp
    }
}

/// The encoder; immutable once loaded.
#[derive(Debug, Clone)]
pub(super) struct AudioEncoder {
    conv1: Conv1d,
    conv2: Conv1d,
    /// `[max_source_positions, d]`.
    positions: Tensor,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    dtype: DType,
}

fn conv1d(d_in: usize, d_out: usize, stride: usize, w: Weights) -> Result<Conv1d> {
    let config = Conv1dConfig {
        padding: 1,
        stride,
        groups: 1,
        dilation: 1,
        cudnn_fwd_algo: None,
    };
    Ok(Conv1d::new(
        w.get((d_out, d_in, 3), "weight")?,
        Some(w.get(d_out, "bias")?),
        config,
    ))
}

/// Whisper's sinusoidal position table `[length, channels]`.
fn sinusoids(length: usize, channels: usize, device: &Device) -> Result<Tensor> {
    let increment = 10000f32.ln() / (channels / 2 - 1) as f32;
    let inv: Vec<f32> = (0..channels / 2)
        .map(|i| (i as f32 * -increment).exp())
        .collect();
    let inv = Tensor::new(inv.as_slice(), device)?.unsqueeze(0)?;
    let time = Tensor::arange(0, length as u32, device)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let shape = (length, channels / 2);
    let scaled = (time.broadcast_as(shape)? * inv.broadcast_as(shape)?)?;
    Tensor::cat(&[scaled.sin()?, scaled.cos()?], 1)
}

impl AudioEncoder {
    /// Loads `model.encoder.*` (`w` already under that prefix).
    pub(super) fn load(cfg: &Config, w: Weights) -> Result<Self> {
        let d = cfg.d_model;
        let blocks = (0..cfg.encoder_layers)
            .map(|i| Block::load(cfg, w.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1: conv1d(cfg.num_mel_bins, d, 1, w.pp("conv1"))?,
            conv2: conv1d(d, d, 2, w.pp("conv2"))?,
            positions: sinusoids(cfg.max_source_positions, d, w.device())?.to_dtype(w.dtype())?,
            blocks,
            ln_post: w.pp("layer_norm").layer_norm(d)?,
            dtype: w.dtype(),
        })
    }

    /// `[b, n_mels, frames]` (f32) -> `[b, frames / 2, d]` in the compute
    /// dtype.
    pub(super) fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = gelu(&self.conv1.forward(&mel.to_dtype(self.dtype)?)?)?;
        let x = gelu(&self.conv2.forward(&x)?)?.transpose(1, 2)?;
        let (_, len, _) = x.dims3()?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, len)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.ln_post.forward(&x)
    }
}
