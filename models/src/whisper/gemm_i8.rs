//! Products of many rows by int8 weights, much as CTranslate2's int8
//! encoder makes them: each weight row (output channel) quantized to 8 bits
//! with one scale, each input row quantized on the fly with one scale, the
//! products summed exactly in 32-bit integers by the CPU's 8-bit dot
//! products (AVX-512 VNNI), and scaled back to float32.
//!
//! Used for the encoder's linear layers under `int8` when
//! `models.int8_encoder` asks, on a CPU that has AVX-512 VNNI: a 30 s
//! window multiplies 1,500 rows by each weight, where candle's int8
//! kernels (built for a few rows at a time) were no faster than its
//! float32 GEMM. Elsewhere the encoder stays float32 ([`available`] says
//! which).
//!
//! The arithmetic, for an input row `x` and a weight row `w`: the weight
//! symmetric, `sw = max|w| / 127`, `wq = round(w / sw)`; the input over its
//! own range (which always holds 0), as the unsigned bytes the dot-product
//! instruction takes: `sx = (max - min) / 255`, zero point
//! `z = round(-min / sx)`, `xu = round(x / sx + z)` in `0..=255`. Then
//! `y = sx * sw * (sum(xu * wq) - z * sum(wq)) + b`, with `sum(wq)` kept per
//! weight row. 256 levels over the row's range rather than CTranslate2's
//! 255 symmetric ones (`-127..=127`) halve the rounding of one-sided inputs
//! (the MLP's second layer reads GELU's output, nearly all of it positive). Integer sums are exact, and the
//! scaling is done in one order, so a result depends on its own row and
//! column alone: splitting the rows over threads gives the same numbers.

use candle_core::{Result, Tensor};

/// Input rows per micro-tile.
const ROWS: usize = 6;
/// Output channels per panel: one 512-bit register of 32-bit sums.
const LANES: usize = 16;
/// Panels per group: a micro-tile is [`ROWS`] x `GROUP * LANES` sums, 24 of
/// the 32 vector registers.
const GROUP: usize = 4;
/// Rows per parallel part, so each part's quantized input stays in L2.
const PART_ROWS: usize = 192;

/// Whether this CPU has the instructions [`PackedI8::forward`] needs.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The frame of a product of `x` (`[..., k]`) by a weight `[n, k]` packed
/// for one of the int8 kernels (this file's, `gemm_q8.rs`'s): checks `x`'s
/// width and that this CPU has the instructions ([`available`]), hands
/// `product` the rows of `x` in float32 (`rows * k`) and the output to fill
/// (`rows * n`, zeros), and returns the output in `x`'s shape (last
/// dimension `n`) and dtype. `what` names the kernel in errors.
pub(super) fn rows_product(
    x: &Tensor,
    n: usize,
    k: usize,
    what: &str,
    product: impl FnOnce(&[f32], &mut [f32]),
) -> Result<Tensor> {
    let width = x.dim(candle_core::D::Minus1)?;
    if width != k {
        candle_core::bail!("{what}: input width {width}, weight takes {k}");
    }
    if !available() {
        candle_core::bail!("{what}: this CPU has no AVX-512 VNNI");
    }
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / k;
    let input = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = vec![0f32; rows * n];
    product(&input, &mut out);
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, dims, x.device())?.to_dtype(x.dtype())
}

/// A weight `[n, k]` quantized per row and packed for the kernel: panels of
/// [`LANES`] rows, grouped by [`GROUP`], each group stored `k / 4` steps of
/// `panels x LANES x 4` bytes (four consecutive inputs of each channel).
pub(super) struct PackedI8 {
    n: usize,
    k: usize,
    data: Vec<i8>,
    /// Per output channel: the weight row's scale.
    scale: Vec<f32>,
    /// Per output channel: `sum(wq)`, which the input's zero point
    /// multiplies.
    sums: Vec<i32>,
}

impl std::fmt::Debug for PackedI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedI8 {{ n: {}, k: {} }}", self.n, self.k)
    }
}

/// The weight shapes the kernel takes: output channels in whole panels,
/// inputs in whole steps of four.
pub(super) fn fits(n: usize, k: usize) -> bool {
    n > 0 && k > 0 && n.is_multiple_of(LANES) && k.is_multiple_of(4)
}

/// A weight row quantized symmetrically into `out`; returns its scale,
/// `max|v| / 127` (1 for a row of zeros).
fn quantize_weights(row: &[f32], out: &mut [i8]) -> f32 {
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    // A row of zeros (or of values so small the scale's inverse would
    // overflow) gets scale 1 and quantizes to zeros.
    let scale = if (max / 127.0).is_normal() {
        max / 127.0
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// An input row's smallest and largest values, with 0 always in range.
/// Sixteen running extremes rather than one, so the loop vectorises.
/// (On x86_64 the vector [`quantize_input`] runs, and this is its
/// reference in the tests.)
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn row_range(row: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for i in 0..16 {
            lo[i] = lo[i].min(chunk[i]);
            hi[i] = hi[i].max(chunk[i]);
        }
    }
    for &v in chunks.remainder() {
        lo[0] = lo[0].min(v);
        hi[0] = hi[0].max(v);
    }
    let lo = lo.iter().fold(0f32, |m, &v| m.min(v));
    let hi = hi.iter().fold(0f32, |m, &v| m.max(v));
    (lo, hi)
}

/// An input row's scale, its inverse and its zero point (a whole number
/// in `[0, 255]`) from its range `(lo, hi)`, 0 within it. As for weights,
/// a scale whose inverse would overflow is 1.
#[inline(always)]
fn input_scale((lo, hi): (f32, f32)) -> (f32, f32, f32) {
    let scale = if ((hi - lo) / 255.0).is_normal() {
        (hi - lo) / 255.0
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    (scale, inv, (-lo * inv).round().clamp(0.0, 255.0))
}

/// An input row quantized into `out` as unsigned bytes; returns its scale
/// and zero point (see the module docs).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn quantize_input_with(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (scale, inv, zero) = input_scale(row_range(row));
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v * inv + zero).round().clamp(0.0, 255.0) as u8;
    }
    (scale, zero as i32)
}

/// [`quantize_input_with`] in AVX-512 vectors, with the same numbers (a
/// test holds it to them). Written out because the compiler kept the
/// scalar loops' `min` and `max` (which must order NaN) in scalar
/// instructions: the quantization took as long as the product itself.
///
/// For the rounding: a value clamped to `[0, 255]` is rounded half away
/// from zero, as `f32::round` does, by truncating it plus the float just
/// below one half (exact: a value below a half by less than that rounds
/// down, and a tie's sum rounds up to the next integer).
///
/// # Safety
/// The CPU must have AVX-512 F; `out` is as long as `row`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_input(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let n = row.len();
    debug_assert_eq!(out.len(), n);
    let mask = |i: usize| super::activations::lanes(i, n);
    // Lanes past the row's end load as 0, which is always in range.
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for i in (0..n).step_by(16) {
        let v = _mm512_maskz_loadu_ps(mask(i), row.as_ptr().add(i));
        // The running extreme second: a NaN lane keeps it, as
        // `f32::min` and `max` ignore NaN.
        lo = _mm512_min_ps(v, lo);
        hi = _mm512_max_ps(v, hi);
    }
    let (scale, inv, zero) = input_scale((_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi)));
    let (vinv, vzero) = (_mm512_set1_ps(inv), _mm512_set1_ps(zero));
    let (floor, ceiling) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    let below_half = _mm512_set1_ps(f32::from_bits(0.5f32.to_bits() - 1));
    for i in (0..n).step_by(16) {
        let m = mask(i);
        let v = _mm512_maskz_loadu_ps(m, row.as_ptr().add(i));
        // `max` first: a NaN becomes 0, as `NaN as u8` is.
        let y = _mm512_add_ps(_mm512_mul_ps(v, vinv), vzero);
        let y = _mm512_min_ps(_mm512_max_ps(y, floor), ceiling);
        let q = _mm512_cvttps_epi32(_mm512_add_ps(y, below_half));
        _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i).cast(), m, q);
    }
    (scale, zero as i32)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn quantize_input(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    quantize_input_with(row, out)
}

impl PackedI8 {
    /// Quantizes and packs a float32 weight `[n, k]` (see [`fits`]).
    pub(super) fn new(weight: &Tensor) -> Result<Self> {
        use rayon::prelude::*;
        let (n, k) = weight.dims2()?;
        if !fits(n, k) {
            candle_core::bail!("int8 rows: weight {n} x {k} is not in panels of {LANES} x 4");
        }
        let w = weight
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Quantized by rows, then packed by groups, on rayon's threads: a
        // model's encoder has tens of millions of weights, quantized at
        // every load.
        let mut q = vec![0i8; n * k];
        let (scale, sums): (Vec<f32>, Vec<i32>) = w
            .par_chunks_exact(k)
            .zip(q.par_chunks_exact_mut(k))
            .map(|(row, out)| {
                let scale = quantize_weights(row, out);
                (scale, out.iter().map(|&v| v as i32).sum::<i32>())
            })
            .unzip();
        let mut data = vec![0i8; n * k];
        data.par_chunks_mut(GROUP * LANES * k)
            .enumerate()
            .for_each(|(g, group)| {
                let first = g * GROUP * LANES;
                let np = group.len() / (LANES * k);
                for (step, dst) in group.chunks_exact_mut(np * LANES * 4).enumerate() {
                    for (i, four) in dst.chunks_exact_mut(4).enumerate() {
                        let src = (first + i) * k + step * 4;
                        four.copy_from_slice(&q[src..src + 4]);
                    }
                }
            });
        Ok(Self {
            n,
            k,
            data,
            scale,
            sums,
        })
    }

    /// `x W^T + bias` for `x` `[..., k]` on the CPU (computed in float32,
    /// returned in `x`'s dtype), its rows split over rayon's threads.
    pub(super) fn forward(&self, x: &Tensor, bias: Option<&[f32]>) -> Result<Tensor> {
        use rayon::prelude::*;
        rows_product(x, self.n, self.k, "int8 rows", |input, out| {
            out.par_chunks_mut(PART_ROWS * self.n)
                .zip(input.par_chunks(PART_ROWS * self.k))
                // SAFETY: `available()` holds (`rows_product` checked).
                .for_each(|(out, input)| unsafe { self.part(input, out, bias) })
        })
    }

    /// One part's rows: quantize them, then every group of channels against
    /// every micro-tile of rows.
    ///
    /// # Safety
    /// [`available`] must hold.
    unsafe fn part(&self, input: &[f32], out: &mut [f32], bias: Option<&[f32]>) {
        let (k, n) = (self.k, self.n);
        let rows = input.len() / k;
        let tiles = rows.div_ceil(ROWS);
        // Rows past the end stay zero and their results are dropped.
        let mut xq = vec![0u8; tiles * ROWS * k];
        let mut xs = vec![0f32; tiles * ROWS];
        let mut xz = vec![0i32; tiles * ROWS];
        for (r, (row, dst)) in input
            .chunks_exact(k)
            .zip(xq.chunks_exact_mut(k))
            .enumerate()
        {
            // SAFETY: `available()` holds (this function's contract).
            (xs[r], xz[r]) = unsafe { quantize_input(row, dst) };
        }
        let panels = n / LANES;
        let mut spare = [0f32; ROWS * GROUP * LANES];
        for group_start in (0..panels).step_by(GROUP) {
            let np = GROUP.min(panels - group_start);
            let c0 = group_start * LANES;
            let weights = &self.data[c0 * k..(c0 + np * LANES) * k];
            let columns = Columns {
                scale: &self.scale[c0..c0 + np * LANES],
                sums: &self.sums[c0..c0 + np * LANES],
                bias: bias.map(|b| &b[c0..c0 + np * LANES]),
            };
            for tile in 0..tiles {
                let first = tile * ROWS;
                let x = &xq[first * k..(first + ROWS) * k];
                let rows_q = RowsQ {
                    scale: &xs[first..first + ROWS],
                    zero: &xz[first..first + ROWS],
                };
                let full = first + ROWS <= rows;
                // A last, partial tile writes to `spare` and is copied out.
                let (y, stride) = if full {
                    (&mut out[first * n + c0..], n)
                } else {
                    (&mut spare[..], np * LANES)
                };
                // SAFETY: `available()` holds (this function's contract); `x` holds
                // `ROWS` rows of `k` bytes, `weights` `np` panels of `k / 4`
                // steps, `columns` `np * LANES` channels, and `y` `ROWS`
                // rows of `stride` from its start.
                unsafe {
                    match np {
                        4 => kernel::<4>(x, weights, k, &rows_q, &columns, y, stride),
                        3 => kernel::<3>(x, weights, k, &rows_q, &columns, y, stride),
                        2 => kernel::<2>(x, weights, k, &rows_q, &columns, y, stride),
                        1 => kernel::<1>(x, weights, k, &rows_q, &columns, y, stride),
                        _ => unreachable!("a group holds 1 to {GROUP} panels"),
                    }
                }
                if !full {
                    for r in 0..rows - first {
                        let src = &spare[r * np * LANES..(r + 1) * np * LANES];
                        out[(first + r) * n + c0..][..np * LANES].copy_from_slice(src);
                    }
                }
            }
        }
    }
}

/// A group's output channels: the weight rows' scales and sums and the
/// bias.
struct Columns<'a> {
    scale: &'a [f32],
    sums: &'a [i32],
    bias: Option<&'a [f32]>,
}

/// A tile's input rows: their scales and zero points.
struct RowsQ<'a> {
    scale: &'a [f32],
    zero: &'a [i32],
}

/// `ROWS` rows of unsigned bytes (`x`, `k` each, quantized as `xs` says) against
/// `NP` packed panels (`w`), scaled back to float32 and written to `y`
/// (row `r`, channel `c` at `r * stride + c`).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; `x` must hold `ROWS * k`
/// bytes, `w` `NP * LANES * k`, `xs` `ROWS` rows, `columns` `NP * LANES`
/// channels and `y` `(ROWS - 1) * stride + NP * LANES` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel<const NP: usize>(
    x: &[u8],
    w: &[i8],
    k: usize,
    xs: &RowsQ,
    columns: &Columns,
    y: &mut [f32],
    stride: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= ROWS * k && w.len() >= NP * LANES * k);
    debug_assert!(xs.scale.len() >= ROWS && xs.zero.len() >= ROWS);
    debug_assert!(columns.scale.len() >= NP * LANES && columns.sums.len() >= NP * LANES);
    debug_assert!(y.len() >= (ROWS - 1) * stride + NP * LANES);
    let mut acc = [[_mm512_setzero_si512(); NP]; ROWS];
    let xp = x.as_ptr();
    let mut wp = w.as_ptr();
    for step in 0..k / 4 {
        let mut wv = [_mm512_setzero_si512(); NP];
        for (p, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(wp.add(p * LANES * 4) as *const _);
        }
        for (r, row_acc) in acc.iter_mut().enumerate() {
            let four = (xp.add(r * k + step * 4) as *const i32).read_unaligned();
            let xb = _mm512_set1_epi32(four);
            for (a, v) in row_acc.iter_mut().zip(&wv) {
                *a = _mm512_dpbusd_epi32(*a, xb, *v);
            }
        }
        wp = wp.add(NP * LANES * 4);
    }
    // y = (sum - z * sums) * (xs * scale) + bias: the order of the
    // reference, multiply then add (no fused multiply-add).
    let yp = y.as_mut_ptr();
    for p in 0..NP {
        let c = p * LANES;
        let scale = _mm512_loadu_ps(columns.scale.as_ptr().add(c));
        let sums = _mm512_loadu_si512(columns.sums.as_ptr().add(c) as *const _);
        let bias = columns.bias.map(|b| _mm512_loadu_ps(b.as_ptr().add(c)));
        for (r, row_acc) in acc.iter().enumerate() {
            let offset = _mm512_mullo_epi32(_mm512_set1_epi32(xs.zero[r]), sums);
            let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(row_acc[p], offset));
            let mut v = _mm512_mul_ps(exact, _mm512_mul_ps(_mm512_set1_ps(xs.scale[r]), scale));
            if let Some(b) = bias {
                v = _mm512_add_ps(v, b);
            }
            _mm512_storeu_ps(yp.add(r * stride + c), v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const NP: usize>(
    _: &[u8],
    _: &[i8],
    _: usize,
    _: &RowsQ,
    _: &Columns,
    _: &mut [f32],
    _: usize,
) {
    unreachable!("int8 rows are used only where available() holds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The same arithmetic one value at a time, from the unpacked weight.
    fn reference(x: &[f32], w: &[f32], b: &[f32], k: usize) -> Vec<f32> {
        let mut wq = vec![0i8; k];
        let mut xq = vec![0u8; k];
        let mut out = Vec::new();
        for xr in x.chunks_exact(k) {
            let (sx, z) = quantize_input_with(xr, &mut xq);
            for (c, wr) in w.chunks_exact(k).enumerate() {
                let sw = quantize_weights(wr, &mut wq);
                let sum: i32 = xq
                    .iter()
                    .zip(&wq)
                    .map(|(&a, &b)| (a as i32 - z) * b as i32)
                    .sum();
                out.push(sum as f32 * (sx * sw) + b[c]);
            }
        }
        out
    }

    /// The vector quantization of inputs gives the scalar one's bytes,
    /// scale and zero point: rows of every length mod 16, one-sided rows,
    /// exact ties (a row spanning 0 to 255 has scale 1), NaN and infinity.
    #[test]
    fn input_quantization_matches_the_scalar_one() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for len in [1, 15, 16, 17, 64, 100, 384, 2048] {
            rows.push((0..len).map(|_| (next() - 0.5) * 8.0).collect());
            rows.push((0..len).map(|_| next() * 3.0).collect());
            rows.push((0..len).map(|_| -next() * 3.0).collect());
            let mut ties: Vec<f32> = (0..len).map(|i| (i % 255) as f32 + 0.5).collect();
            ties[0] = 0.0;
            ties[len - 1] = 255.0;
            rows.push(ties);
        }
        rows.push(vec![1.0, f32::NAN, -2.0, 0.25]);
        rows.push(vec![1.0, f32::INFINITY, -2.0, 0.25]);
        rows.push(vec![0.0; 40]);
        for row in rows {
            let (mut a, mut b) = (vec![0u8; row.len()], vec![0u8; row.len()]);
            let scalar = quantize_input_with(&row, &mut a);
            // SAFETY: `available()` holds.
            let vector = unsafe { quantize_input(&row, &mut b) };
            assert_eq!(scalar.0.to_bits(), vector.0.to_bits(), "scale, {row:?}");
            assert_eq!(scalar.1, vector.1, "zero point, {row:?}");
            assert_eq!(a, b, "{row:?}");
        }
    }

    /// The kernel gives exactly the reference's numbers, for row counts
    /// that fill and miss the tiles and parts and channel counts that fill
    /// and miss a group, and is within int8's rounding of float32.
    #[test]
    fn int8_rows_match_the_reference_and_float() -> Result<()> {
        if !available() {
            eprintln!("no AVX-512 VNNI on this CPU: the encoder stays float32 here");
            return Ok(());
        }
        let dev = Device::Cpu;
        for (rows, n, k) in [(1, 16, 4), (7, 48, 64), (200, 80, 384), (401, 64, 36)] {
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?;
            let b = Tensor::randn(0f32, 0.05, n, &dev)?;
            // One-sided inputs too, as GELU's output is.
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let x = if rows % 2 == 0 { x.relu()? } else { x };
            let packed = PackedI8::new(&w)?;
            let bias = b.to_vec1::<f32>()?;
            let got = packed.forward(&x, Some(&bias))?;
            assert_eq!(got.dims(), [rows, n]);
            let got = got.flatten_all()?.to_vec1::<f32>()?;
            let want = reference(
                &x.flatten_all()?.to_vec1()?,
                &w.flatten_all()?.to_vec1()?,
                &bias,
                k,
            );
            assert_eq!(got, want, "{rows} x {n} x {k}");
            let float = x.matmul(&w.t()?)?.broadcast_add(&b)?;
            let float = float.flatten_all()?.to_vec1::<f32>()?;
            let err = got
                .iter()
                .zip(&float)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let size = float.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                err < 0.02 * size.max(1.0),
                "{rows} x {n} x {k}: error {err}"
            );
        }
        assert!(!fits(20, 64) && !fits(16, 6) && fits(16, 8));

        // A batch of windows, read through a transposed (non-contiguous)
        // view as the encoder's attention output is: the same numbers as
        // the rows one by one, in the input's shape.
        let (n, k) = (32, 64);
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev)?;
        let packed = PackedI8::new(&w)?;
        let x = Tensor::randn(0f32, 1.0, (2, k, 9), &dev)?.transpose(1, 2)?;
        assert!(!x.is_contiguous());
        let got = packed.forward(&x, None)?;
        assert_eq!(got.dims(), [2, 9, n]);
        let rows = packed.forward(&x.contiguous()?.reshape((18, k))?, None)?;
        assert_eq!(
            got.flatten_all()?.to_vec1::<f32>()?,
            rows.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
