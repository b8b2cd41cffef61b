//! The encoder's self-attention on a CPU with AVX-512, fused per block of
//! query rows: `softmax(q k^T / sqrt(64)) v` for each head, without the
//! attention matrix ever leaving the core's cache.
//!
//! Unfused, each head's scores are a 1,500 x 1,500 matrix (9 MB) written
//! by one product, read and written again by the softmax and read by the
//! next product, all from memory: for base, the softmax alone was a fifth
//! of the encoder's time, and candle's float32 products run on 256-bit
//! vectors (its `gemm` takes AVX-512 only when built with nightly Rust).
//! Here a task takes [`BLOCK`] query rows of one head: their scores
//! against every key (`BLOCK x t` floats, 288 KB for a 30 s window, in L2),
//! their exponentials, and their context rows, in 512-bit registers. The
//! softmax's division is applied to the context rows (64 values) instead
//! of the scores (`t` values).
//!
//! Numbers: the same products as the unfused path, summed in another
//! order, and the scale `1 / sqrt(64)` applied once to the scores instead
//! of `64^-1/4` to queries and keys each; `exp` is `activations.rs`'s.
//! The output differs from the unfused path's by float32 rounding (see the
//! tests), so a transcript can move by a word where a decision was close.
//!
//! Taken for float32 CPU tensors with 64-wide heads (every Whisper size) on
//! a CPU with AVX-512 F; elsewhere the encoder keeps the unfused path.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::activations::lanes;

/// Every Whisper model's attention head width.
const HEAD_DIM: usize = 64;

/// Query rows per task: their scores and exponentials (two `BLOCK x t`
/// buffers, 576 KB at `t` = 1,500) stay in a core's L2.
const BLOCK: usize = 48;

/// Query rows per micro-tile: 6 rows x 4 vectors are 24 of the 32 vector
/// registers, with room for the 4 vectors of keys or values and a
/// broadcast.
const ROWS: usize = 6;

/// Whether this CPU runs the fused kernels.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`self_attention`] takes queries `[b, t, d]` like `q` with
/// `n_head` heads here.
pub(super) fn applies(q: &Tensor, n_head: usize) -> bool {
    q.device().is_cpu()
        && q.dtype() == DType::F32
        && q.rank() == 3
        && q.dim(2).is_ok_and(|d| d == n_head * HEAD_DIM)
        && available()
}

/// `softmax(q_h k_h^T / sqrt(64)) v_h` for every head `h` of `q`, `k`, `v`
/// (`[b, t, d]`, float32, on the CPU, head `h` in columns `64h..64h+64`),
/// in the same layout: what the attention's output projection takes.
/// Check [`applies`] first.
pub(super) fn self_attention(q: &Tensor, k: &Tensor, v: &Tensor, n_head: usize) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "fused attention: q {:?}, k {:?} and v {:?} differ",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    q.apply_op3_no_bwd(&k, &v, &FusedAttention { n_head })
}

struct FusedAttention {
    n_head: usize,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-encoder-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, d) = l1.shape().dims3()?;
        if d != self.n_head * HEAD_DIM || !available() {
            candle_core::bail!(
                "fused attention: width {d} with {} heads, or no AVX-512",
                self.n_head
            );
        }
        use super::activations::values;
        let name = self.name();
        let (q, k, v) = (
            values(name, s1, l1)?,
            values(name, s2, l2)?,
            values(name, s3, l3)?,
        );
        let mut out = vec![0f32; b * t * d];
        #[cfg(target_arch = "x86_64")]
        attend(q, k, v, b, t, self.n_head, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// A pointer to the output that tasks write through, each to rows and
/// columns of its own (one head's 64 columns of one block of rows).
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks' regions of the output are disjoint (see `attend`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The output `offset` floats in (a method, so that closures capture
    /// the whole `Out`, which is `Sync`, and not its pointer).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[cfg(target_arch = "x86_64")]
fn attend(q: &[f32], k: &[f32], v: &[f32], b: usize, t: usize, n_head: usize, out: &mut [f32]) {
    let d = n_head * HEAD_DIM;
    let heads = b * n_head;
    // Each head's keys transposed, `[64, t]`: a score micro-tile loads 64
    // consecutive keys' values of one dimension as 4 vectors.
    let mut kt = vec![0f32; heads * HEAD_DIM * t];
    kt.par_chunks_mut(HEAD_DIM * t)
        .enumerate()
        .for_each(|(bh, dst)| {
            let (bi, h) = (bh / n_head, bh % n_head);
            for j in 0..t {
                let src = &k[(bi * t + j) * d + h * HEAD_DIM..][..HEAD_DIM];
                for (i, &x) in src.iter().enumerate() {
                    dst[i * t + j] = x;
                }
            }
        });
    let blocks = t.div_ceil(BLOCK);
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let dst = Out(out.as_mut_ptr());
    (0..heads * blocks).into_par_iter().for_each_init(
        || (vec![0f32; BLOCK * t], vec![0f32; BLOCK * t]),
        |(scores, probs), task| {
            let (bh, block) = (task / blocks, task % blocks);
            let (bi, h) = (bh / n_head, bh % n_head);
            let first = block * BLOCK;
            let rows = BLOCK.min(t - first);
            let base = (bi * t + first) * d + h * HEAD_DIM;
            // SAFETY: AVX-512 F is present (`cpu_fwd` checked); every
            // pointer below stays inside its slice: rows `first..first +
            // rows` of batch `bi` and head `h`'s 64 columns of `q`, `v`
            // and `out` (`d` floats a row), `kt`'s head, and `rows * t`
            // floats of the scratch buffers. Tasks write disjoint parts of
            // `out`: distinct (batch, head, block) triples.
            unsafe {
                block_attention(
                    q.as_ptr().add(base),
                    &kt[bh * HEAD_DIM * t..][..HEAD_DIM * t],
                    v.as_ptr().add(bi * t * d + h * HEAD_DIM),
                    d,
                    t,
                    rows,
                    scale,
                    &mut scores[..rows * t],
                    &mut probs[..rows * t],
                    dst.at(base),
                )
            }
        },
    );
}

/// One task: `rows` query rows at `q` (row stride `d`) against a head's
/// transposed keys `kt` and values at `v` (`t` rows, stride `d`), context
/// rows written at `out` (stride `d`).
///
/// # Safety
/// AVX-512 F; the pointers cover what `attend` says.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_attention(
    q: *const f32,
    kt: &[f32],
    v: *const f32,
    d: usize,
    t: usize,
    rows: usize,
    scale: f32,
    scores: &mut [f32],
    probs: &mut [f32],
    out: *mut f32,
) {
    let mut r = 0;
    while r < rows {
        let n = ROWS.min(rows - r);
        let (qr, sr) = (q.add(r * d), scores.as_mut_ptr().add(r * t));
        match n {
            6 => score_tile::<6>(qr, d, kt, t, scale, sr),
            5 => score_tile::<5>(qr, d, kt, t, scale, sr),
            4 => score_tile::<4>(qr, d, kt, t, scale, sr),
            3 => score_tile::<3>(qr, d, kt, t, scale, sr),
            2 => score_tile::<2>(qr, d, kt, t, scale, sr),
            _ => score_tile::<1>(qr, d, kt, t, scale, sr),
        }
        r += n;
    }
    let mut inv = [0f32; BLOCK];
    for ((s, p), inv) in scores
        .chunks_exact(t)
        .zip(probs.chunks_exact_mut(t))
        .zip(inv.iter_mut())
    {
        *inv = 1.0 / exp_minus_max(s, p);
    }
    let mut r = 0;
    while r < rows {
        let n = ROWS.min(rows - r);
        let (pr, or, ir) = (probs.as_ptr().add(r * t), out.add(r * d), &inv[r..r + n]);
        match n {
            6 => context_tile::<6>(pr, t, v, d, ir, or),
            5 => context_tile::<5>(pr, t, v, d, ir, or),
            4 => context_tile::<4>(pr, t, v, d, ir, or),
            3 => context_tile::<3>(pr, t, v, d, ir, or),
            2 => context_tile::<2>(pr, t, v, d, ir, or),
            _ => context_tile::<1>(pr, t, v, d, ir, or),
        }
        r += n;
    }
}

/// `p[j] = e^(s[j] - max(s))`, returning the sum of `p`: a softmax row
/// before its division, in 512-bit vectors. (`activations.rs`'s
/// `exp_minus_max` is the same for any vector width, but the compiler
/// keeps its NaN-ordering `max` and float-to-integer conversion in scalar
/// instructions: it took twice as long as both products together.)
///
/// # Safety
/// AVX-512 F; `s` and `p` are equally long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn exp_minus_max(s: &[f32], p: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let t = s.len();
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for j in (0..t).step_by(16) {
        let m = lanes(j, t);
        let v = _mm512_mask_loadu_ps(max, m, s.as_ptr().add(j));
        max = _mm512_max_ps(max, v);
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for j in (0..t).step_by(16) {
        let m = lanes(j, t);
        let v = _mm512_maskz_loadu_ps(m, s.as_ptr().add(j));
        let e = _mm512_maskz_mov_ps(m, exp(_mm512_sub_ps(v, max)));
        _mm512_mask_storeu_ps(p.as_mut_ptr().add(j), m, e);
        sum = _mm512_add_ps(sum, e);
    }
    _mm512_reduce_add_ps(sum)
}

/// `activations::exp_f32` on 16 lanes: the same operations in the same
/// order, so the same numbers (a test holds them to it) for every input
/// but NaN.
///
/// # Safety
/// AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::excessive_precision)]
unsafe fn exp(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let k = _mm512_set1_ps;
    let c = _mm512_min_ps(_mm512_max_ps(x, k(-87.0)), k(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_add_ps(
        _mm512_mul_ps(c, k(std::f32::consts::LOG2_E)),
        k(0.5),
    ));
    let r = _mm512_sub_ps(
        _mm512_sub_ps(c, _mm512_mul_ps(n, k(0.693359375))),
        _mm512_mul_ps(n, k(-2.12194440e-4)),
    );
    let mut p = k(1.9875691500e-4);
    for coefficient in [
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    ] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), k(coefficient));
    }
    let y = _mm512_add_ps(
        _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
        k(1.0),
    );
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvttps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    let v = _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
    let v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, k(-87.0)), k(0.0));
    _mm512_mask_mov_ps(
        v,
        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, k(88.0)),
        k(f32::INFINITY),
    )
}

/// Scores of `R` query rows (at `q`, stride `d`) against all `t` keys,
/// 64 keys at a time: `scores[r * t + j] = scale * q_r . k_j`.
///
/// # Safety
/// AVX-512 F; `q` covers `R` rows of 64 values, `scores` `R * t` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_tile<const R: usize>(
    q: *const f32,
    d: usize,
    kt: &[f32],
    t: usize,
    scale: f32,
    scores: *mut f32,
) {
    use std::arch::x86_64::*;
    let scale = _mm512_set1_ps(scale);
    let mut j = 0;
    while j < t {
        let masks = [
            lanes(j, t),
            lanes(j + 16, t),
            lanes(j + 32, t),
            lanes(j + 48, t),
        ];
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for i in 0..HEAD_DIM {
            let row = kt.as_ptr().add(i * t + j);
            // Lanes past `t` are not read (masked loads do not fault).
            let keys = [
                _mm512_maskz_loadu_ps(masks[0], row),
                _mm512_maskz_loadu_ps(masks[1], row.wrapping_add(16)),
                _mm512_maskz_loadu_ps(masks[2], row.wrapping_add(32)),
                _mm512_maskz_loadu_ps(masks[3], row.wrapping_add(48)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*q.add(r * d + i));
                for (a, &kv) in acc.iter_mut().zip(&keys) {
                    *a = _mm512_fmadd_ps(x, kv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let dst = scores.add(r * t + j);
            for (c, &a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(dst.wrapping_add(16 * c), masks[c], _mm512_mul_ps(a, scale));
            }
        }
        j += 64;
    }
}

/// Context rows of `R` probability rows (at `probs`, `t` each): the
/// values' rows (at `v`, stride `d`, 64 wide) weighted by them, each
/// output row times its `inv` (the softmax's division), stored at `out`
/// (stride `d`).
///
/// # Safety
/// AVX-512 F; `v` covers `t` rows, `out` `R` rows of 64 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn context_tile<const R: usize>(
    probs: *const f32,
    t: usize,
    v: *const f32,
    d: usize,
    inv: &[f32],
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for j in 0..t {
        let row = v.add(j * d);
        let values = [
            _mm512_loadu_ps(row),
            _mm512_loadu_ps(row.add(16)),
            _mm512_loadu_ps(row.add(32)),
            _mm512_loadu_ps(row.add(48)),
        ];
        for (r, acc) in acc.iter_mut().enumerate() {
            let p = _mm512_set1_ps(*probs.add(r * t + j));
            for (a, &x) in acc.iter_mut().zip(&values) {
                *a = _mm512_fmadd_ps(p, x, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let s = _mm512_set1_ps(inv[r]);
        for (c, &a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add(r * d + 16 * c), _mm512_mul_ps(a, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The attention in float64, head by head, row by row.
    fn reference(q: &[f32], k: &[f32], v: &[f32], b: usize, t: usize, n_head: usize) -> Vec<f64> {
        let d = n_head * HEAD_DIM;
        let mut out = vec![0f64; b * t * d];
        let scale = 1.0 / (HEAD_DIM as f64).sqrt();
        for bi in 0..b {
            for h in 0..n_head {
                let at = |x: &[f32], row: usize, i: usize| {
                    x[(bi * t + row) * d + h * HEAD_DIM + i] as f64
                };
                for r in 0..t {
                    let scores: Vec<f64> = (0..t)
                        .map(|j| {
                            (0..HEAD_DIM)
                                .map(|i| at(q, r, i) * at(k, j, i))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for i in 0..HEAD_DIM {
                        out[(bi * t + r) * d + h * HEAD_DIM + i] =
                            (0..t).map(|j| e[j] * at(v, j, i)).sum::<f64>() / sum;
                    }
                }
            }
        }
        out
    }

    fn random(n: usize, seed: u64, spread: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * spread
            })
            .collect()
    }

    #[test]
    fn vector_exp_is_activations_exp_bit_for_bit() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 F");
            return;
        }
        let mut xs: Vec<f32> = (0..200_000)
            .map(|i| -100.0 + i as f32 * 0.001_000_7)
            .collect();
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            -87.0,
            88.0,
            0.0,
            -0.0,
            1e-30,
        ]);
        xs.resize(xs.len().div_ceil(16) * 16, 0.0);
        for chunk in xs.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512 F is present; 16 floats in and out.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(got.as_mut_ptr(), exp(_mm512_loadu_ps(chunk.as_ptr())));
            }
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = crate::whisper::activations::exp_f32(x);
                assert_eq!(want.to_bits(), g.to_bits(), "e^{x}: {want} against {g}");
            }
        }
    }

    #[test]
    fn fused_attention_matches_float64_and_the_unfused_path() -> Result<()> {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 F, and the encoder keeps the unfused path");
            return Ok(());
        }
        // Lengths around the kernels' edges: fewer keys than one tile of
        // 64, rows not a multiple of a micro-tile's 6 nor of a block's 48,
        // and a 30 s window's 1,500; two batch rows and three heads.
        for (b, t, n_head) in [(1, 5, 1), (2, 37, 3), (1, 100, 2), (1, 1500, 2)] {
            let d = n_head * HEAD_DIM;
            // Spread 3: scores up to a few tens, so the softmax is peaked
            // as in a trained encoder, not uniform.
            let (q, k, v) = (
                random(b * t * d, 1 + t as u64, 3.0),
                random(b * t * d, 2 + t as u64, 3.0),
                random(b * t * d, 3 + t as u64, 1.0),
            );
            let tensor = |x: &Vec<f32>| Tensor::from_slice(x, (b, t, d), &Device::Cpu);
            let (qt, kt, vt) = (tensor(&q)?, tensor(&k)?, tensor(&v)?);
            assert!(applies(&qt, n_head));
            let fused = self_attention(&qt, &kt, &vt, n_head)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let exact = reference(&q, &k, &v, b, t, n_head);
            let worst = fused
                .iter()
                .zip(&exact)
                .map(|(&f, &e)| (f as f64 - e).abs())
                .fold(0f64, f64::max);
            assert!(worst < 1e-5, "b {b} t {t} heads {n_head}: off by {worst}");

            // The unfused path (as `encoder.rs` computes it without the
            // fused kernel) is as close to float64.
            let heads = |x: &Tensor| x.reshape((b, t, n_head, HEAD_DIM))?.transpose(1, 2);
            let s = (HEAD_DIM as f64).powf(-0.25);
            let scores = (heads(&qt)? * s)?.matmul(&(heads(&kt)?.transpose(2, 3)? * s)?)?;
            let unfused = crate::whisper::activations::softmax_last_dim(&scores.contiguous()?)?
                .matmul(&heads(&vt)?.contiguous()?)?
                .transpose(1, 2)?
                .flatten_from(2)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let worst_unfused = unfused
                .iter()
                .zip(&exact)
                .map(|(&f, &e)| (f as f64 - e).abs())
                .fold(0f64, f64::max);
            assert!(
                worst <= 4.0 * worst_unfused.max(1e-6),
                "b {b} t {t}: fused off by {worst}, unfused by {worst_unfused}"
            );
        }
        Ok(())
    }
}
