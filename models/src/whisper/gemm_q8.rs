//! Products by ggml `Q8_0` weights (blocks of 32 int8 values, one scale
//! each) on a CPU with AVX-512 VNNI, with the activations quantized in the
//! same blocks of 32: the arithmetic of candle's generic `Q8_0` kernel,
//! on the CPU's 8-bit dot products.
//!
//! Why not candle's own fast path: on a CPU with VNNI (AVX-512 or AVX)
//! candle repacks a `Q8_0` weight whose widths are multiples of 256 and 16
//! and then quantizes the activations in blocks of 256 with one scale. A
//! Whisper decoder's hidden state has a few channels far larger than the
//! rest, so one scale per 256 values rounds most of them to a few levels:
//! measured on a 2-core AVX-512 VNNI CPU, base on the 30 s call went from
//! WER 0.185 to 0.259 and tiny.en misheard the 55 s repeated JFK clip ("say
//! my pol seven cop denticle"). In blocks of 32 an outlier spoils its own
//! block only.
//!
//! The arithmetic, for an input row `x` and a weight row `w`, block by
//! block: the weight block is `dw * wq` as the cache holds it; the input
//! block `dx = max|x| / 127`, `xq = round(x / dx)` in `-127..=127`, stored
//! as the unsigned bytes `xq + 128` the dot-product instruction takes, and
//! `dx` rounded to float16 as candle's generic kernel keeps it (so that a
//! CPU with VNNI transcribes as one without: base on the 30 s call, WER
//! 0.185 either way, came out at 0.284 with `dx` kept in float32, a
//! change of 1 part in 2,048 in each scale; the call is that sensitive). Then
//! `y = sum over blocks of (sum(xu * wq) - 128 * sum(wq)) * (dw * dx)`, plus
//! the bias. Integer sums are exact and the blocks are added in order, so a
//! result depends on its own row and column alone: splitting the rows over
//! threads gives the same numbers.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};

/// Values per block (ggml's `QK8_0`).
const BLOCK: usize = 32;
/// Bytes per stored `Q8_0` block: an f16 scale, then 32 values.
const BLOCK_BYTES: usize = 2 + BLOCK;
/// Output channels per panel: one 512-bit register of 32-bit sums.
pub(super) const LANES: usize = 16;
/// Panels per micro-tile.
const GROUP: usize = 2;
/// Input rows per micro-tile: `ROWS x GROUP` integer sums and as many
/// float sums, 20 of the 32 vector registers (six rows spilled them). Five
/// is also a beam's width.
const ROWS: usize = 5;
/// From this many rows a product is split by rows over rayon's threads
/// (a window's cross-attention keys and values, prompts); below it, a
/// decoding step's few rows, it runs on the calling thread, where handing
/// it to a pool costs more than it saves.
const SPLIT_ROWS: usize = 32;

/// Whether this CPU has the instructions [`PackedQ8::forward`] needs.
pub(super) fn available() -> bool {
    super::gemm_i8::available()
}

/// The weight shapes the kernel takes: output channels in whole panels,
/// inputs in whole blocks.
pub(super) fn fits(n: usize, k: usize) -> bool {
    n > 0 && k > 0 && n.is_multiple_of(LANES) && k.is_multiple_of(BLOCK)
}

/// A `Q8_0` weight `[n, k]` packed for the kernel: groups of [`GROUP`]
/// panels of [`LANES`] channels, each group stored block by block, each
/// block as 8 steps of `panels x LANES x 4` bytes (four consecutive inputs
/// of each channel).
pub(super) struct PackedQ8 {
    n: usize,
    k: usize,
    data: Vec<i8>,
    /// `[k / 32][n]`: each block's scale.
    scale: Vec<f32>,
    /// `[k / 32][n]`: `128 * sum(wq)` of each block, which the inputs'
    /// offset multiplies.
    offset: Vec<i32>,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8 {{ n: {}, k: {} }}", self.n, self.k)
    }
}

impl PackedQ8 {
    /// The first `n` rows and `k` columns of a CPU `Q8_0` weight (a padded
    /// table may hold more of both), repacked; the values and scales are
    /// the weight's own.
    pub(super) fn from_q8_0(weight: &QTensor, n: usize, k: usize) -> Result<Self> {
        let (rows, cols) = weight.shape().dims2()?;
        if weight.dtype() != GgmlDType::Q8_0 || !fits(n, k) || n > rows || k > cols {
            candle_core::bail!(
                "q8 blocks: a {:?} weight {rows} x {cols} cannot give {n} x {k}",
                weight.dtype()
            );
        }
        let bytes = weight.data()?;
        let row_blocks = cols / BLOCK;
        if bytes.len() != rows * row_blocks * BLOCK_BYTES {
            candle_core::bail!("q8 blocks: {} bytes for {rows} x {cols}", bytes.len());
        }
        let kb = k / BLOCK;
        let block = |c: usize, b: usize| {
            let at = (c * row_blocks + b) * BLOCK_BYTES;
            &bytes[at..at + BLOCK_BYTES]
        };
        let mut scale = vec![0f32; kb * n];
        let mut offset = vec![0i32; kb * n];
        for c in 0..n {
            for b in 0..kb {
                let blk = block(c, b);
                scale[b * n + c] = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                offset[b * n + c] = 128 * blk[2..].iter().map(|&v| v as i8 as i32).sum::<i32>();
            }
        }
        let mut data = vec![0i8; n * k];
        let mut at = 0;
        for c0 in (0..n).step_by(GROUP * LANES) {
            let np = GROUP.min((n - c0) / LANES);
            for b in 0..kb {
                for step in 0..BLOCK / 4 {
                    for lane in 0..np * LANES {
                        let src = &block(c0 + lane, b)[2 + step * 4..][..4];
                        for (d, &s) in data[at..at + 4].iter_mut().zip(src) {
                            *d = s as i8;
                        }
                        at += 4;
                    }
                }
            }
        }
        Ok(Self {
            n,
            k,
            data,
            scale,
            offset,
        })
    }

    /// `x W^T + bias` for `x` `[..., k]` on the CPU, in float32 (returned
    /// in `x`'s dtype).
    pub(super) fn forward(&self, x: &Tensor, bias: Option<&[f32]>) -> Result<Tensor> {
        use rayon::prelude::*;
        let (n, k) = (self.n, self.k);
        super::gemm_i8::rows_product(x, n, k, "q8 blocks", |input, out| {
            let rows = input.len() / k;
            let threads = rayon::current_num_threads();
            if rows < SPLIT_ROWS || threads < 2 {
                // SAFETY: `available()` holds (`rows_product` checked).
                unsafe { self.part(input, out, bias) };
            } else {
                let chunk = rows.div_ceil(threads).next_multiple_of(ROWS);
                out.par_chunks_mut(chunk * n)
                    .zip(input.par_chunks(chunk * k))
                    // SAFETY: as above.
                    .for_each(|(out, input)| unsafe { self.part(input, out, bias) });
            }
        })
    }

    /// Some rows: quantize them, then every group of channels against every
    /// micro-tile of rows.
    ///
    /// # Safety
    /// [`available`] must hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn part(&self, input: &[f32], out: &mut [f32], bias: Option<&[f32]>) {
        let (n, k) = (self.n, self.k);
        let kb = k / BLOCK;
        let rows = input.len() / k;
        let mut xq = vec![0u8; rows * k];
        let mut xs = vec![0f32; rows * kb];
        for ((x, q), s) in input
            .chunks_exact(BLOCK)
            .zip(xq.chunks_exact_mut(BLOCK))
            .zip(xs.iter_mut())
        {
            *s = quantize_block(x, q);
        }
        let mut at = 0;
        for c0 in (0..n).step_by(GROUP * LANES) {
            let np = GROUP.min((n - c0) / LANES);
            let tile = Tile {
                w: &self.data[at..at + np * LANES * k],
                scale: &self.scale[c0..],
                offset: &self.offset[c0..],
                bias: bias.map(|b| &b[c0..c0 + np * LANES]),
                n,
                kb,
            };
            at += np * LANES * k;
            for r0 in (0..rows).step_by(ROWS) {
                let r = ROWS.min(rows - r0);
                let x = &xq[r0 * k..(r0 + r) * k];
                let s = &xs[r0 * kb..(r0 + r) * kb];
                let y = &mut out[r0 * n + c0..];
                // SAFETY: the CPU has the features (this function's
                // contract); `x` holds `r` rows of `k`, `s` their scales,
                // `tile` `np` panels, and `y` `r` rows of `n` from `c0`.
                unsafe {
                    match np {
                        2 => tile_rows::<2>(r, &tile, x, s, y),
                        1 => tile_rows::<1>(r, &tile, x, s, y),
                        _ => unreachable!("a group holds 1 or {GROUP} panels"),
                    }
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn part(&self, _: &[f32], _: &mut [f32], _: Option<&[f32]>) {
        unreachable!("q8 blocks are used only where available() holds")
    }
}

/// One input block quantized into `out` as unsigned bytes (`xq + 128`);
/// returns its scale, rounded to float16 (0 for a block of zeros, whose
/// bytes are all 128).
#[inline(always)]
fn quantize_block(x: &[f32], out: &mut [u8]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v * inv).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
    }
    // Kept as float16, as candle's generic kernel keeps it (see the module
    // docs).
    half::f16::from_f32(scale).to_f32()
}

/// A group's packed weights and per-block numbers, starting at its first
/// channel (`scale` and `offset` keep the weight's stride `n`).
#[cfg(target_arch = "x86_64")]
struct Tile<'a> {
    w: &'a [i8],
    scale: &'a [f32],
    offset: &'a [i32],
    bias: Option<&'a [f32]>,
    n: usize,
    kb: usize,
}

/// [`kernel`] for `r` (1 to [`ROWS`]) rows.
///
/// # Safety
/// As for [`kernel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_rows<const NP: usize>(r: usize, t: &Tile, x: &[u8], s: &[f32], y: &mut [f32]) {
    unsafe {
        match r {
            5 => kernel::<5, NP>(t, x, s, y),
            4 => kernel::<4, NP>(t, x, s, y),
            3 => kernel::<3, NP>(t, x, s, y),
            2 => kernel::<2, NP>(t, x, s, y),
            1 => kernel::<1, NP>(t, x, s, y),
            _ => unreachable!("a tile holds 1 to {ROWS} rows"),
        }
    }
}

/// `R` rows of quantized input (`x`, `k` bytes each, block scales `s`)
/// against `NP` panels of `t`, written to `y` (row `i`, channel `c` at
/// `i * t.n + c`).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; `x` must hold `R * k` bytes,
/// `s` `R * kb` scales, `t.w` `NP * LANES * k` values, `t.scale` and
/// `t.offset` `(kb - 1) * n + NP * LANES`, and `y` `(R - 1) * n + NP *
/// LANES`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel<const R: usize, const NP: usize>(t: &Tile, x: &[u8], s: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let (n, kb) = (t.n, t.kb);
    let k = kb * BLOCK;
    debug_assert!(x.len() >= R * k && s.len() >= R * kb && t.w.len() >= NP * LANES * k);
    debug_assert!(t.scale.len() >= (kb - 1) * n + NP * LANES);
    debug_assert!(t.offset.len() >= (kb - 1) * n + NP * LANES);
    debug_assert!(y.len() >= (R - 1) * n + NP * LANES);
    let mut acc = [[_mm512_setzero_ps(); NP]; R];
    // Pointers advanced as the loops go, so that no index is multiplied
    // (or checked for overflow) inside them.
    let mut xp = [x.as_ptr(); R];
    let mut sp = [s.as_ptr(); R];
    for i in 0..R {
        xp[i] = xp[i].add(i * k);
        sp[i] = sp[i].add(i * kb);
    }
    let mut wp = t.w.as_ptr();
    let (mut dwp, mut offp) = (t.scale.as_ptr(), t.offset.as_ptr());
    for _ in 0..kb {
        let mut sums = [[_mm512_setzero_si512(); NP]; R];
        for _ in 0..BLOCK / 4 {
            let mut wv = [_mm512_setzero_si512(); NP];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(wp.add(p * LANES * 4) as *const _);
            }
            for i in 0..R {
                let xb = _mm512_set1_epi32((xp[i] as *const i32).read_unaligned());
                xp[i] = xp[i].add(4);
                for p in 0..NP {
                    sums[i][p] = _mm512_dpbusd_epi32(sums[i][p], xb, wv[p]);
                }
            }
            wp = wp.add(NP * LANES * 4);
        }
        for p in 0..NP {
            let dw = _mm512_loadu_ps(dwp.add(p * LANES));
            let offset = _mm512_loadu_si512(offp.add(p * LANES) as *const _);
            for i in 0..R {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums[i][p], offset));
                let ds = _mm512_mul_ps(dw, _mm512_set1_ps(*sp[i]));
                acc[i][p] = _mm512_fmadd_ps(exact, ds, acc[i][p]);
            }
        }
        for p in sp.iter_mut() {
            *p = p.add(1);
        }
        dwp = dwp.add(n);
        offp = offp.add(n);
    }
    let yp = y.as_mut_ptr();
    for p in 0..NP {
        let bias = t.bias.map(|b| _mm512_loadu_ps(b.as_ptr().add(p * LANES)));
        for (i, row) in acc.iter().enumerate() {
            let v = match bias {
                Some(b) => _mm512_add_ps(row[p], b),
                None => row[p],
            };
            _mm512_storeu_ps(yp.add(i * n + p * LANES), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module};

    /// The same arithmetic one value at a time, from the stored blocks.
    fn reference(x: &[f32], w: &QTensor, n: usize, k: usize, bias: &[f32]) -> Vec<f32> {
        let (_, cols) = w.shape().dims2().unwrap();
        let bytes = w.data().unwrap();
        let mut xq = vec![0u8; BLOCK];
        let mut out = Vec::new();
        for row in x.chunks_exact(k) {
            for (c, bias_c) in bias.iter().enumerate().take(n) {
                let mut acc = 0f32;
                for b in 0..k / BLOCK {
                    let dx = quantize_block(&row[b * BLOCK..][..BLOCK], &mut xq);
                    let at = (c * (cols / BLOCK) + b) * BLOCK_BYTES;
                    let blk = &bytes[at..at + BLOCK_BYTES];
                    let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let sum: i32 = xq
                        .iter()
                        .zip(&blk[2..])
                        .map(|(&u, &q)| (u as i32 - 128) * (q as i8 as i32))
                        .sum();
                    acc = (sum as f32).mul_add(dw * dx, acc);
                }
                out.push(acc + bias_c);
            }
        }
        out
    }

    fn max_error(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// The kernel gives exactly the reference's numbers for row counts that
    /// fill and miss a tile and the split, channel counts that fill and
    /// miss a group, and a padded table read in part; and what candle's
    /// generic `Q8_0` product gives, to float rounding.
    #[test]
    fn q8_blocks_match_the_reference_and_candle() -> Result<()> {
        if !available() {
            eprintln!("no AVX-512 VNNI on this CPU: candle's kernels are used here");
            return Ok(());
        }
        let dev = Device::Cpu;
        for (rows, n, k, stored) in [
            (1, 16, 32, (16, 32)),
            (5, 48, 384, (48, 384)),
            (7, 80, 512, (96, 544)),
            (SPLIT_ROWS + 13, 64, 256, (64, 256)),
        ] {
            let w = Tensor::randn(0f32, 0.05, stored, &dev)?;
            let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
            let packed = PackedQ8::from_q8_0(&q, n, k)?;
            let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.01).collect();
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let got = packed.forward(&x, Some(&bias))?;
            assert_eq!(got.dims(), [rows, n]);
            let got = got.flatten_all()?.to_vec1::<f32>()?;
            let want = reference(&x.flatten_all()?.to_vec1()?, &q, n, k, &bias);
            assert_eq!(got, want, "{rows} x {n} x {k}");
            // (candle's generic kernel: on a VNNI CPU it repacks widths of 256.)
            if stored == (n, k) && !k.is_multiple_of(256) {
                let candle = QMatMul::from_qtensor(q)?.forward(&x)?;
                let candle = candle
                    .broadcast_add(&Tensor::new(bias.as_slice(), &dev)?)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let err = max_error(&got, &candle);
                assert!(err < 1e-2, "{rows} x {n} x {k}: {err} from candle's");
            }
        }
        Ok(())
    }

    /// One channel far larger than the rest, as in a Whisper decoder's
    /// hidden state, spoils only its own block of 32: the product is several
    /// times nearer float32 (root mean square) than with one input scale per 256 values (candle's
    /// repacked kernels' blocks, worked out here one value at a time).
    #[test]
    fn an_outlier_channel_spoils_only_its_block() -> Result<()> {
        if !available() {
            return Ok(());
        }
        let dev = Device::Cpu;
        let (n, k) = (64, 512);
        let q = QTensor::quantize(&Tensor::randn(0f32, 0.05, (n, k), &dev)?, GgmlDType::Q8_0)?;
        let packed = PackedQ8::from_q8_0(&q, n, k)?;
        // The float product with the stored weights: what is left is the
        // inputs' rounding alone.
        let w = q.dequantize(&dev)?;
        let mut x = Tensor::randn(0f32, 1.0, (4, k), &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for row in x.chunks_exact_mut(k) {
            row[100] = 300.0;
        }
        let want = Tensor::from_slice(&x, (4, k), &dev)?
            .matmul(&w.t()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let got = packed
            .forward(&Tensor::from_slice(&x, (4, k), &dev)?, None)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Inputs rounded with one scale per 256 values.
        let coarse: Vec<f32> = x
            .chunks_exact(256)
            .flat_map(|b| {
                let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                b.iter().map(move |v| (v / d).round() * d)
            })
            .collect();
        let coarse = Tensor::from_slice(&coarse, (4, k), &dev)?
            .matmul(&w.t()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let rms = |a: &[f32]| {
            let sq = a
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>();
            (sq / a.len() as f32).sqrt()
        };
        // 31 inputs rounded coarsely against 255: sqrt(255 / 31) = 2.9.
        let (ours, theirs) = (rms(&got), rms(&coarse));
        assert!(
            ours * 2.0 < theirs,
            "blocks of 32: {ours}; of 256: {theirs}"
        );
        Ok(())
    }
}
