//! Whisper's text decoder with a key/value cache, over a batch of sequences.
//!
//! candle-transformers' `TextDecoder` caches only the cross-attention keys and
//! values and re-runs self-attention over every previous token at each step,
//! so a 224-token window costs O(n^2) projections. This decoder loads the same
//! weight names (`model.decoder.*`) and keeps, per layer, the self-attention
//! keys/values of the tokens already seen plus the cross-attention
//! keys/values of the current 30 s window, so each step only processes the
//! new token.
//!
//! The weights are read-only; everything a decoding writes lives in its own
//! [`DecoderState`]. A state holds `b` sequences decoded side by side (the
//! beams of a beam search, the samples of best-of-n): each step feeds one
//! token per sequence as one batch, and [`DecoderState::select`] reorders,
//! duplicates or drops sequences between steps. When the audio is the same
//! for every sequence its cross-attention keys/values are stored once and the
//! batch is folded into the query rows when attending to it; a batch of
//! different windows (the batched pipeline, `batch.rs`) keeps one audio per
//! sequence, and selecting sequences selects their audio too.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::LayerNorm;

use super::activations::{gelu_erf, softmax_last_dim};
use super::compute::{Linear, TokenEmbedding, Weights};
use super::Config;

/// One multi-head attention block's projections.
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    n_head: usize,
    head_dim: usize,
}

impl Attention {
    fn load(d: usize, n_head: usize, w: Weights) -> Result<Self> {
        Ok(Self {
            q: w.pp("q_proj").linear(d, d, true)?,
            // Whisper's key projection has no bias.
            k: w.pp("k_proj").linear(d, d, false)?,
            v: w.pp("v_proj").linear(d, d, true)?,
            out: w.pp("out_proj").linear(d, d, true)?,
            n_head,
            head_dim: d / n_head,
        })
    }

    /// `[b, t, d]` -> `[b, heads, t, head_dim]`, contiguous.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.n_head, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.heads(&self.k.forward(x)?)?,
            self.heads(&self.v.forward(x)?)?,
        ))
    }

    /// Scaled dot-product attention of `x`'s queries over keys `kt`
    /// (transposed: `[b, heads, head_dim, t]`) and values `v` (`[b, heads,
    /// t, head_dim]`); `mask` is `[n, t]` additive.
    fn attend(&self, x: &Tensor, kt: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.attend_with_scores(x, kt, v, mask)?.0)
    }

    /// Attention of `b` sequences' queries (`x`: `[b, n, d]`) over keys
    /// (transposed, as in [`Attention::attend`]) and values they share
    /// (`[1, heads, ...]`, the audio): the sequences become query rows of
    /// one product instead of `b` copies of the audio's keys and values.
    fn attend_shared(&self, x: &Tensor, kt: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        if b == 1 {
            return self.attend(x, kt, v, None);
        }
        let q = self.heads(&self.q.forward(x)?)?; // [b, heads, n, hd]
        let q = (q
            .transpose(0, 1)?
            .reshape((1, self.n_head, b * n, self.head_dim))?
            * (self.head_dim as f64).powf(-0.5))?;
        let scores = q.matmul(kt)?;
        let weights = softmax_last_dim(&scores)?;
        let ctx = weights
            .matmul(v)? // [1, heads, b * n, hd]
            .reshape((self.n_head, b, n, self.head_dim))?
            .transpose(0, 1)? // [b, heads, n, hd]
            .transpose(1, 2)?
            .reshape((b, n, d))?;
        self.out.forward(&ctx)
    }

    /// [`Attention::attend`], also returning the scaled scores before the
    /// softmax (`[b, heads, n, t]`), which word alignment reads.
    fn attend_with_scores(
        &self,
        x: &Tensor,
        kt: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let q = (self.heads(&self.q.forward(x)?)? * (self.head_dim as f64).powf(-0.5))?;
        let mut scores = q.matmul(kt)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = softmax_last_dim(&scores)?;
        let ctx = weights.matmul(v)?.transpose(1, 2)?.flatten_from(2)?;
        Ok((self.out.forward(&ctx)?, scores))
    }
}

#[derive(Debug, Clone)]
struct Layer {
    self_attn: Attention,
    self_attn_ln: LayerNorm,
    cross_attn: Attention,
    cross_attn_ln: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
}

impl Layer {
    fn load(cfg: &Config, w: Weights) -> Result<Self> {
        let d = cfg.d_model;
        let h = cfg.decoder_attention_heads;
        Ok(Self {
            self_attn: Attention::load(d, h, w.pp("self_attn"))?,
            self_attn_ln: w.pp("self_attn_layer_norm").layer_norm(d)?,
            cross_attn: Attention::load(d, h, w.pp("encoder_attn"))?,
            cross_attn_ln: w.pp("encoder_attn_layer_norm").layer_norm(d)?,
            fc1: w.pp("fc1").linear(d, 4 * d, true)?,
            fc2: w.pp("fc2").linear(4 * d, d, true)?,
            mlp_ln: w.pp("final_layer_norm").layer_norm(d)?,
        })
    }
}

/// One decoding's state: what the decoder has seen so far in this window,
/// for each of the `b` sequences decoded side by side. Created by
/// [`TextDecoder::start`] for each window (and reused by each temperature
/// retry, which keeps the cross-attention tensors). Owned by one
/// transcription; the model itself holds none.
pub struct DecoderState {
    /// Self-attention keys/values of the tokens fed so far, per layer
    /// (`[b, heads, len, head_dim]` each), `None` before the first token.
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// The sequences the self-attention keys/values are still to be
    /// gathered into (row `i` becomes cached row `pending_rows[i]`): a
    /// [`DecoderState::select`] waits for the next token's keys and values
    /// so both land in one copy (see [`gather_append`]).
    pending_rows: Option<Vec<usize>>,
    /// Cross-attention keys/values of the audio, per layer: `[1, heads,
    /// frames, head_dim]` shared by the `b` sequences, or `[b, ...]`, one
    /// window per sequence; the keys `[.., head_dim, frames]` instead while
    /// `keys_transposed`.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// The audio's keys are stored transposed, contiguous: see
    /// [`DecoderState::lay_out_keys`].
    keys_transposed: bool,
    /// Tokens fed so far per sequence (the position of the next one).
    len: usize,
}

impl DecoderState {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the tokens (and the sequences) but keeps the audio (for a
    /// retry at another temperature, or the alignment pass).
    pub fn reset_tokens(&mut self) {
        for kv in &mut self.self_kv {
            *kv = None;
        }
        self.pending_rows = None;
        self.len = 0;
    }

    /// Keeps the sequences `rows` in that order: sequence `i` of the state
    /// becomes what sequence `rows[i]` was. A row may repeat (a beam that
    /// spawns two) or be left out (a finished sample).
    pub fn select(&mut self, rows: &[usize]) -> Result<()> {
        // On the steps' thread, which also grows the caches: their memory
        // then comes from one malloc arena, not two.
        on_one_thread(self.on_cpu(), || self.select_rows(rows))
    }

    fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        let per_row_audio = self.per_row_audio()?;
        let current = match (&self.pending_rows, self.self_kv.first()) {
            (Some(pending), _) => pending.len(),
            (None, Some(Some((k, _)))) => k.dim(0)?,
            _ if per_row_audio => self.cross_kv[0].0.dim(0)?,
            _ => return Ok(()),
        };
        if current == rows.len() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        if self.self_kv.iter().any(Option::is_some) {
            // A selection after a selection: row i is what `rows[i]` was
            // to become.
            let composed = match &self.pending_rows {
                Some(pending) => rows.iter().map(|&r| pending[r]).collect(),
                None => rows.to_vec(),
            };
            self.pending_rows = Some(composed);
        }
        if per_row_audio {
            // Each sequence's own window: gathered now (only the
            // self-attention caches wait for the step).
            let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let ids = Tensor::from_vec(ids, rows.len(), self.cross_kv[0].0.device())?;
            for (k, v) in &mut self.cross_kv {
                *k = k.index_select(&ids, 0)?;
                *v = v.index_select(&ids, 0)?;
            }
        }
        Ok(())
    }

    /// Stores the audio's keys transposed (`transposed`) or as computed.
    /// A product of several query rows with keys read through a transposed
    /// view first copies every key into candle's matrix layout (a 30 s
    /// window: 1,500 keys a head, each step); stored transposed they are
    /// read as they are, which halves tiny.en's cross-attention scores per
    /// step of a beam search, with the same sums in the same order (a
    /// probe compared every element). A product of one query row is a
    /// matrix-vector product whose sums run in another order depending on
    /// the layout, so for those the keys go back as computed: each layout
    /// gives the numbers it always gave, and only one is kept at a time.
    fn lay_out_keys(&mut self, transposed: bool) -> Result<()> {
        if self.keys_transposed != transposed {
            for (k, _) in &mut self.cross_kv {
                *k = k.transpose(2, 3)?.contiguous()?;
            }
            self.keys_transposed = transposed;
        }
        Ok(())
    }

    /// The keys' layout for feeding `n` tokens to each of `batch`
    /// sequences: transposed for the steps of a search (several sequences
    /// over one window), as computed for products of one query row, kept
    /// as it is otherwise (both give the same numbers).
    fn lay_out_keys_for(&mut self, batch: usize, n: usize) -> Result<()> {
        // A GPU's matrix products read a transposed view as it is.
        if !self.on_cpu() {
            return Ok(());
        }
        // Query rows per head of the cross-attention products.
        let shared = !self.per_row_audio()?;
        let rows = if shared { batch * n } else { n };
        if rows == 1 {
            self.lay_out_keys(false)
        } else if shared && batch > 1 {
            self.lay_out_keys(true)
        } else {
            Ok(())
        }
    }

    /// Whether the state's tensors are on the CPU.
    fn on_cpu(&self) -> bool {
        self.cross_kv
            .first()
            .is_none_or(|(k, _)| k.device().is_cpu())
    }

    /// Whether each sequence attends to its own window (`[b, ...]` audio
    /// with `b` above 1) rather than one shared window.
    fn per_row_audio(&self) -> Result<bool> {
        Ok(match self.cross_kv.first() {
            Some((k, _)) => k.dim(0)? > 1,
            None => false,
        })
    }
}

/// Which cross-attention heads to keep (`(layer, head)`) and where to put
/// their scores, during an alignment pass.
type CrossAttentionCapture<'a> = (&'a [(usize, usize)], &'a mut Vec<Tensor>);

/// Whisper's text decoder (token + learned position embeddings, pre-norm
/// blocks, output tied to the token embedding).
#[derive(Debug, Clone)]
pub struct TextDecoder {
    embed_tokens: TokenEmbedding,
    embed_positions: Tensor,
    layers: Vec<Layer>,
    ln: LayerNorm,
    n_ctx: usize,
    /// The compute dtype of the activations.
    dtype: DType,
}

impl TextDecoder {
    /// Loads `model.decoder.*` (`w` already under that prefix).
    pub(super) fn load(cfg: &Config, w: Weights) -> Result<Self> {
        let d = cfg.d_model;
        let embed_tokens = w.token_embedding(cfg.vocab_size, d, "embed_tokens.weight")?;
        let embed_positions = w.get((cfg.max_target_positions, d), "embed_positions.weight")?;
        let layers = (0..cfg.decoder_layers)
            .map(|i| Layer::load(cfg, w.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            embed_positions,
            layers,
            ln: w.pp("layer_norm").layer_norm(d)?,
            n_ctx: cfg.max_target_positions,
            dtype: w.dtype(),
        })
    }

    /// Longest token sequence the decoder accepts.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Prepares decoding over `audio`: `[1, frames, d]` encoder output that
    /// every sequence will share, or `[b, frames, d]`, one window for each
    /// of `b` sequences (fed with [`TextDecoder::forward_rows`]).
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let cross_kv = self
            .layers
            .iter()
            .map(|l| l.cross_attn.keys_values(audio))
            .collect::<Result<Vec<_>>>()?;
        let self_kv = self.layers.iter().map(|_| None).collect();
        Ok(DecoderState {
            self_kv,
            pending_rows: None,
            cross_kv,
            keys_transposed: false,
            len: 0,
        })
    }

    /// Feeds `tokens` after those already in `state` (of one sequence) and
    /// returns the final hidden states `[1, tokens.len(), d]`.
    pub fn forward(&self, tokens: &[u32], state: &mut DecoderState) -> Result<Tensor> {
        self.forward_inner(tokens, 1, state, None)
    }

    /// Feeds each of `batch` sequences its own `tokens.len() / batch`
    /// tokens (row after row; every row as long) and returns the final
    /// hidden states `[batch, n, d]`: the prompts of a batch of windows.
    pub fn forward_rows(
        &self,
        tokens: &[u32],
        batch: usize,
        state: &mut DecoderState,
    ) -> Result<Tensor> {
        self.forward_inner(tokens, batch, state, None)
    }

    /// Feeds one token to each of the state's sequences (`tokens[i]` to
    /// sequence `i`; [`DecoderState::select`] first makes as many sequences
    /// as there are tokens) and returns the final hidden states
    /// `[tokens.len(), d]`.
    pub fn forward_step(&self, tokens: &[u32], state: &mut DecoderState) -> Result<Tensor> {
        // Here rather than on the step's thread: the copy then reuses the
        // memory the keys were computed in (another thread's allocations
        // come from another malloc arena).
        state.lay_out_keys_for(tokens.len(), 1)?;
        on_one_thread(state.on_cpu(), || {
            self.forward_inner(tokens, tokens.len(), state, None)
        })?
        .squeeze(1)
    }

    /// [`TextDecoder::forward`] that also returns, for each `(layer, head)`
    /// of `heads` (in layer order), that head's cross-attention scores
    /// before the softmax (`[tokens.len(), frames]`): the alignment pass of
    /// word timestamps.
    pub fn forward_with_cross_attention(
        &self,
        tokens: &[u32],
        state: &mut DecoderState,
        heads: &[(usize, usize)],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut scores = Vec::with_capacity(heads.len());
        let hidden = self.forward_inner(tokens, 1, state, Some((heads, &mut scores)))?;
        Ok((hidden, scores))
    }

    /// Feeds `tokens` (`batch` sequences of `tokens.len() / batch`, row
    /// after row) and returns the hidden states `[batch, n, d]`.
    fn forward_inner(
        &self,
        tokens: &[u32],
        batch: usize,
        state: &mut DecoderState,
        mut capture: Option<CrossAttentionCapture>,
    ) -> Result<Tensor> {
        let n = tokens.len() / batch.max(1);
        let offset = state.len;
        if offset + n > self.n_ctx {
            candle_core::bail!(
                "decoder context overflow: {} tokens, at most {}",
                offset + n,
                self.n_ctx
            );
        }
        let device = self.embed_tokens.device();
        let ids = Tensor::new(tokens, &device)?;
        let mut x = self
            .embed_tokens
            .lookup(&ids, self.dtype)?
            .reshape((batch, n, ()))?
            .broadcast_add(&self.embed_positions.narrow(0, offset, n)?)?;
        let mask = if n > 1 {
            Some(causal_mask(n, offset, &device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        state.lay_out_keys_for(batch, n)?;
        let keys_transposed = state.keys_transposed;
        let pending = state.pending_rows.take();
        if pending.as_ref().is_some_and(|rows| rows.len() != batch) {
            candle_core::bail!("{batch} sequences fed to a state selected for another count");
        }
        for (i, ((layer, kv), (ck, cv))) in self
            .layers
            .iter()
            .zip(state.self_kv.iter_mut())
            .zip(state.cross_kv.iter())
            .enumerate()
        {
            // The audio's keys transposed: as stored, or a view.
            let ck = &if keys_transposed {
                ck.clone()
            } else {
                ck.transpose(2, 3)?
            };
            let h = layer.self_attn_ln.forward(&x)?;
            let (k, v) = layer.self_attn.keys_values(&h)?;
            let (k, v) = match kv.take() {
                Some((pk, pv)) => (
                    gather_append(&pk, &k, pending.as_deref())?,
                    gather_append(&pv, &v, pending.as_deref())?,
                ),
                None => (k, v),
            };
            *kv = Some((k.clone(), v.clone()));
            x = (x + layer
                .self_attn
                .attend(&h, &k.transpose(2, 3)?, &v, mask.as_ref())?)?;
            let h = layer.cross_attn_ln.forward(&x)?;
            let cross = match capture.as_mut() {
                Some((heads, out)) if heads.iter().any(|&(l, _)| l == i) => {
                    let (cross, scores) = layer.cross_attn.attend_with_scores(&h, ck, cv, None)?;
                    for &(_, head) in heads.iter().filter(|&&(l, _)| l == i) {
                        // [1, heads, n, frames] -> [n, frames]
                        out.push(scores.narrow(1, head, 1)?.squeeze(1)?.squeeze(0)?);
                    }
                    cross
                }
                _ if ck.dim(0)? > 1 => layer.cross_attn.attend(&h, ck, cv, None)?,
                _ => layer.cross_attn.attend_shared(&h, ck, cv)?,
            };
            x = (x + cross)?;
            let h = layer.mlp_ln.forward(&x)?;
            // Whisper's MLP uses the exact (erf) GELU.
            x = (x + layer.fc2.forward(&gelu_erf(&layer.fc1.forward(&h)?)?)?)?;
        }
        state.len += n;
        self.ln.forward(&x)
    }

    /// Vocabulary logits for hidden states `[n, d]` -> `[n, vocab]` (f32).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.embed_tokens.project(hidden)?.to_dtype(DType::F32)
    }
}

/// Runs `f` with every rayon-parallel operation in it (candle's float
/// products, softmax, layer norm, GELU) on one thread. A decoding step's
/// tensors are a few rows: handing each operation to the pool's threads and
/// waiting for them cost more than the work (a step of tiny.en with 5 beams
/// is some 150 such operations). Each row's result is the same on one
/// thread as on many, so the numbers do not change. The thread is a
/// one-thread rayon pool of the calling thread's own (made on first use,
/// gone with the calling thread), so concurrent decodings do not queue
/// behind one another; the calling thread waits while it works. Only on a
/// CPU (`cpu`): a GPU's work stays on the thread that holds its context.
fn on_one_thread<T: Send>(cpu: bool, f: impl FnOnce() -> T + Send) -> T {
    if !cpu {
        return f();
    }
    thread_local! {
        static ONE: Option<rayon::ThreadPool> = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "murmur-step".into())
            .build()
            .ok();
    }
    ONE.with(|pool| match pool {
        Some(pool) => pool.install(f),
        None => f(),
    })
}

/// The cached keys (or values) `cached` (`[b, heads, t, head_dim]`) of
/// the sequences `rows` (all of them, in order, when `None`), followed by
/// the new tokens' `new` (`[rows, heads, n, head_dim]`) along the tokens:
/// `[rows, heads, t + n, head_dim]`. On the CPU in one copy; a beam
/// search's step would otherwise copy its caches twice (gathering the
/// beams, then appending the token), which on a long prompt was a tenth of
/// tiny.en's step. Only copies: the numbers are the same either way.
fn gather_append(cached: &Tensor, new: &Tensor, rows: Option<&[usize]>) -> Result<Tensor> {
    let Some(rows) = rows else {
        return Tensor::cat(&[cached, new], 2);
    };
    if cached.device().is_cpu()
        && cached.dtype() == DType::F32
        && new.dtype() == DType::F32
        && cached.is_contiguous()
        && new.is_contiguous()
    {
        return cached.apply_op2_no_bwd(new, &GatherAppend { rows });
    }
    let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let ids = Tensor::from_vec(ids, rows.len(), cached.device())?;
    Tensor::cat(&[&cached.index_select(&ids, 0)?, new], 2)
}

/// [`gather_append`]'s copy on float32 CPU tensors.
struct GatherAppend<'a> {
    rows: &'a [usize],
}

impl candle_core::CustomOp2 for GatherAppend<'_> {
    fn name(&self) -> &'static str {
        "gather-append"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (
            candle_core::CpuStorage::F32(cached),
            candle_core::CpuStorage::F32(new),
            Some((c0, c1)),
            Some((n0, n1)),
        ) = (s1, s2, l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("gather-append: contiguous float32 only");
        };
        let (cached, new) = (&cached[c0..c1], &new[n0..n1]);
        let (b, heads, t, hd) = l1.shape().dims4()?;
        let (b_new, heads_new, n, hd_new) = l2.shape().dims4()?;
        if b_new != self.rows.len()
            || heads_new != heads
            || hd_new != hd
            || self.rows.iter().any(|&r| r >= b)
        {
            candle_core::bail!(
                "gather-append: cached {:?}, new {:?}, rows {:?}",
                l1.shape(),
                l2.shape(),
                self.rows
            );
        }
        let mut out = Vec::with_capacity(b_new * heads * (t + n) * hd);
        for (i, &r) in self.rows.iter().enumerate() {
            for h in 0..heads {
                let old = (r * heads + h) * t * hd;
                out.extend_from_slice(&cached[old..old + t * hd]);
                let add = (i * heads + h) * n * hd;
                out.extend_from_slice(&new[add..add + n * hd]);
            }
        }
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((b_new, heads, t + n, hd)),
        ))
    }
}

/// Additive mask `[n, offset + n]`: new token i sees cached tokens and new
/// tokens up to itself.
fn causal_mask(n: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let t = offset + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (n, t), device)
}

/// The last hidden row of `[1, n, d]` as `[1, d]`.
pub fn last_row(hidden: &Tensor) -> Result<Tensor> {
    let n = hidden.dim(1)?;
    hidden.narrow(1, n - 1, 1)?.squeeze(0)
}

/// Row `i` of `[1, n, d]` as `[1, d]`.
pub fn row(hidden: &Tensor, i: usize) -> Result<Tensor> {
    hidden.narrow(1, i, 1)?.squeeze(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-copy gather of a beam step holds what gathering the rows
    /// and then appending gives, element for element, repeated and left
    /// out rows included; a wrong count of rows is refused.
    #[test]
    fn gather_append_is_select_then_append() -> Result<()> {
        let device = Device::Cpu;
        let cached = Tensor::randn(0f32, 1.0, (5, 6, 37, 64), &device)?;
        let rows = [3usize, 3, 0, 4];
        let new = Tensor::randn(0f32, 1.0, (rows.len(), 6, 1, 64), &device)?;
        let ids = Tensor::new(&[3u32, 3, 0, 4], &device)?;
        let want = Tensor::cat(&[&cached.index_select(&ids, 0)?, &new], 2)?;
        let got = gather_append(&cached, &new, Some(&rows))?;
        assert_eq!(got.dims(), &[4, 6, 38, 64]);
        let (got, want) = (
            got.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(gather_append(&cached, &new, Some(&rows[..3])).is_err());
        let all = gather_append(
            &cached,
            &Tensor::zeros((5, 6, 2, 64), DType::F32, &device)?,
            None,
        )?;
        assert_eq!(all.dims(), &[5, 6, 39, 64]);
        Ok(())
    }

    /// What [`DecoderState::lay_out_keys`] relies on: with two query rows
    /// or more, scores over keys stored transposed are the very numbers
    /// scores over a transposed view of them give (a candle or gemm
    /// upgrade that breaks this would change transcripts); with one row,
    /// the keys go back as computed.
    #[test]
    fn transposed_keys_give_the_same_scores() -> Result<()> {
        let device = Device::Cpu;
        let (heads, frames, head_dim) = (6, 1500, 64);
        let k = Tensor::randn(0f32, 1.0, (1, heads, frames, head_dim), &device)?;
        let v = Tensor::randn(0f32, 1.0, (1, heads, frames, head_dim), &device)?;
        let kt = k.transpose(2, 3)?.contiguous()?;
        for rows in [2, 3, 5, 10, 100, 224] {
            let q = Tensor::randn(0f32, 1.0, (1, heads, rows, head_dim), &device)?;
            let viewed = q
                .matmul(&k.transpose(2, 3)?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let stored = q.matmul(&kt)?.flatten_all()?.to_vec1::<f32>()?;
            let same = viewed
                .iter()
                .zip(&stored)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{rows} rows: scores differ between the key layouts");
        }

        let mut state = DecoderState {
            self_kv: vec![None],
            pending_rows: None,
            cross_kv: vec![(k.clone(), v)],
            keys_transposed: false,
            len: 0,
        };
        state.lay_out_keys(true)?;
        assert_eq!(state.cross_kv[0].0.dims(), &[1, heads, head_dim, frames]);
        assert!(state.cross_kv[0].0.is_contiguous());
        assert!(state.keys_transposed);
        state.lay_out_keys(false)?;
        let back = state.cross_kv[0].0.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(back, k.flatten_all()?.to_vec1::<f32>()?);
        assert!(!state.keys_transposed);
        Ok(())
    }
}
