//! The encoder's element-wise hot spots, softmax and GELU, on float32 CPU
//! tensors: one `exp` per attention score (54 million per 30 s window for
//! tiny, 108 million for base) and one per GELU value. libm's `expf` and
//! `tanhf` are scalar calls, and were a tenth of the encoder's time; here
//! `exp` is a polynomial the compiler vectorises, compiled for the CPU's
//! widest vectors at run time (pulp picks AVX2 or AVX-512 where present).
//!
//! Every lane runs the same operations in the same order and nothing is
//! fused (Rust never contracts `a * b + c`), so results are the same bit
//! for bit whatever the vector width or CPU. They differ from libm's in
//! the last bit or two of some values (`exp` is within 2 ulp of exact on
//! [-87, 88]), so transcripts can move by a word where a decision was
//! close; `models/tests/whisper_int8.rs` and `whisper_beam.rs` hold them
//! to the reference transcripts.
//!
//! Other dtypes and devices use candle's own operations.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Values per rayon task: large enough that a task's work outweighs handing
/// it out.
const CHUNK: usize = 16 * 1024;

/// The tanh GELU, `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715
/// x^3)`, computed as the equal `x / (1 + exp(-2u))`, on all of rayon's
/// threads (candle's runs on its element-wise pool, which `murmur` keeps to
/// the calling thread, see `compute::quantized_kernels_on_calling_thread`).
pub(super) fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
        x.apply_op1_no_bwd(&Elementwise(gelu_f32))
    } else {
        x.gelu()
    }
}

/// The exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, as Whisper's decoder
/// MLP has it, vectorised on all of rayon's threads. candle's `gelu_erf`
/// calls a scalar `erf` per value: in base's beam search on a 5-minute
/// recording that was 6% of the whole run.
pub(super) fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
        x.apply_op1_no_bwd(&Elementwise(gelu_erf_f32))
    } else {
        x.gelu_erf()
    }
}

/// Softmax over the last dimension, each row on one of rayon's threads.
pub(super) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous() {
        x.apply_op1_no_bwd(&Softmax)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// The float32 values of a contiguous CPU tensor.
pub(super) fn values<'a>(
    name: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(src) = storage else {
        candle_core::bail!("{name}: float32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: contiguous input only");
    };
    Ok(&src[start..end])
}

/// A function applied to every value, on rayon's threads, each chunk
/// built for the CPU's vectors through pulp: `F` is a function item (a
/// type of its own), so the loop inlines and vectorises it.
struct Elementwise<F>(F);

impl<F: Fn(f32) -> f32 + Copy + Send + Sync> CustomOp1 for Elementwise<F> {
    fn name(&self) -> &'static str {
        "vec-elementwise"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = values(self.name(), storage, layout)?;
        let mut dst = vec![0f32; src.len()];
        let f = self.0;
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(dst, src)| pulp::Arch::new().dispatch(MapSlice { src, dst, f }));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

struct MapSlice<'a, F> {
    src: &'a [f32],
    dst: &'a mut [f32],
    f: F,
}

impl<F: Fn(f32) -> f32> pulp::WithSimd for MapSlice<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (d, &v) in self.dst.iter_mut().zip(self.src) {
            *d = (self.f)(v);
        }
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "vec-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = values(self.name(), storage, layout)?;
        let row = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        // Whole rows per task, at least one.
        let chunk = (CHUNK / row).max(1) * row;
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(dst, src)| pulp::Arch::new().dispatch(SoftmaxRows { src, dst, row }));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

struct SoftmaxRows<'a> {
    src: &'a [f32],
    dst: &'a mut [f32],
    row: usize,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (dst, src) in self.dst.chunks_mut(self.row).zip(self.src.chunks(self.row)) {
            softmax_row(src, dst);
        }
    }
}

/// Lanes of the partial sums and maxima: the order of the additions is
/// fixed by this, not by the CPU's vector width.
const LANES: usize = 16;

/// The mask of the [`LANES`] values from `j` that are below `len`: all of
/// them inside, the first `len - j` at the end, none past it; for the
/// masked loads and stores of the AVX-512 kernels (`fused_attention.rs`,
/// `gemm_i8.rs`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn lanes(j: usize, len: usize) -> u16 {
    match len.saturating_sub(j) {
        n if n >= LANES => u16::MAX,
        n => ((1u32 << n) - 1) as u16,
    }
}

#[inline(always)]
fn softmax_row(src: &[f32], dst: &mut [f32]) {
    let sum = exp_minus_max(src, dst);
    for d in dst.iter_mut() {
        *d /= sum;
    }
}

/// `dst[i] = e^(src[i] - max(src))`; returns the sum of `dst`: a softmax
/// row before its division.
#[inline(always)]
fn exp_minus_max(src: &[f32], dst: &mut [f32]) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = src.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in maxes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let mut max = maxes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in chunks.remainder() {
        max = max.max(v);
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = exp_f32(s - max);
    }
    let mut sums = [0f32; LANES];
    let mut chunks = dst.chunks_exact(LANES);
    for c in &mut chunks {
        for (acc, &v) in sums.iter_mut().zip(c) {
            *acc += v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for &v in chunks.remainder() {
        sum += v;
    }
    sum
}

#[inline(always)]
fn gelu_f32(v: f32) -> f32 {
    #[allow(clippy::excessive_precision)]
    const SQRT_TWO_OVER_PI: f32 = 0.79788456080286535587989211986876373;
    let u = SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v);
    v / (1.0 + exp_f32(-2.0 * u))
}

/// `0.5 v (1 + erf(v / sqrt 2))`. `erfc(z)` for `z = |v| / sqrt 2` is
/// Abramowitz and Stegun's 7.1.26, `t (a1 + t (a2 + ...)) e^(-z^2)` with
/// `t = 1 / (1 + p z)` (absolute error below 1.5e-7, about one float32
/// step of the `1 + erf` it gives), and `1 + erf(v / sqrt 2)` is `2 -
/// erfc(z)` for `v >= 0`, `erfc(z)` below. Branch-free, so a loop over it
/// vectorises.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn gelu_erf_f32(v: f32) -> f32 {
    let z = v.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let mut p = 1.061405429f32;
    p = p * t - 1.453152027;
    p = p * t + 1.421413741;
    p = p * t - 0.284496736;
    p = p * t + 0.254829592;
    let erfc = p * t * exp_f32(-z * z);
    let one_plus_erf = if v >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * v * one_plus_erf
}

/// `e^x` in float32 to within 2 ulp on [-87, 88]: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, a degree-7 polynomial for `e^r` (Cephes' `expf`
/// coefficients, from the minimax fit of `e^r`), times `2^n` built in the
/// exponent bits. Below -87 the result is 0 (float32's normal range ends
/// at -87.3; libm would return subnormals), above 88 infinity, NaN stays
/// NaN. Branch-free, so a loop over it vectorises.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(super) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693359375;
    const LN2_LO: f32 = -2.12194440e-4;
    const LOW: f32 = -87.0;
    const HIGH: f32 = 88.0;
    let c = x.clamp(LOW, HIGH);
    let n = (c * LOG2E + 0.5).floor();
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.9875691500e-4;
    p = p * r + 1.3981999507e-3;
    p = p * r + 8.3334519073e-3;
    p = p * r + 4.1665795894e-2;
    p = p * r + 1.6666665459e-1;
    p = p * r + 5.0000001201e-1;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let v = y * scale;
    let v = if x < LOW { 0.0 } else { v };
    if x > HIGH {
        f32::INFINITY
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_its_range() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (exp_f32(x), (x as f64).exp() as f32);
            worst = worst.max(ulps(got, want));
            x += 0.000_7;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_and_gelu_follow_candles_to_float_precision() {
        let dev = Device::Cpu;
        // Rows of 1,500 (the encoder's) and an odd width with a remainder.
        for (rows, width) in [(40, 1500), (7, 37)] {
            let x = (Tensor::randn(0f32, 1.0, (2, rows, width), &dev).unwrap() * 8.0).unwrap();
            let ours = softmax_last_dim(&x).unwrap();
            let theirs = candle_nn::ops::softmax_last_dim(&x).unwrap();
            let diff = (ours.clone() - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "softmax {rows}x{width}: {diff}");
            let sums: Vec<f32> = ours
                .sum(2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");

            // GELU against the formula in float64: ours within a few float32
            // roundings everywhere, where candle's (which adds 1 to a tanh
            // near -1) loses digits for negative inputs.
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let ours: Vec<f32> = gelu(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let theirs: Vec<f32> = x.gelu().unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let exact = |v: f32| {
                let v = v as f64;
                0.5 * v
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
            };
            let error = |got: &[f32]| {
                xs.iter()
                    .zip(got)
                    .map(|(&v, &g)| ((g as f64 - exact(v)).abs() / exact(v).abs().max(1e-3)) as f32)
                    .fold(0f32, f32::max)
            };
            let (ours, theirs) = (error(&ours), error(&theirs));
            assert!(
                ours < 4e-6 && ours <= theirs,
                "gelu {rows}x{width}: relative error {ours} (candle's {theirs})"
            );
        }
    }

    /// The exact GELU against candle's, whose `erf` is libm's to within a
    /// float32 step: the difference stays within `5e-7 |x|`, A&S 7.1.26's
    /// bound (1.5e-7 on `erf`, `0.75e-7 |x|` on the GELU) plus the float32
    /// rounding of the polynomial's alternating terms (measured: at most
    /// 3.0e-7 |x|, near 0), over a dense grid across the range a decoder
    /// sees and far beyond it.
    #[test]
    fn gelu_erf_follows_candles_to_its_bound() {
        let dev = Device::Cpu;
        let mut xs: Vec<f32> = (0..400_001).map(|i| -20.0 + i as f32 * 1e-4).collect();
        xs.extend([
            0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 50.0, -50.0, 1e4, -1e4,
        ]);
        let x = Tensor::from_slice(&xs, xs.len(), &dev).unwrap();
        let ours: Vec<f32> = gelu_erf(&x).unwrap().to_vec1().unwrap();
        let theirs: Vec<f32> = x.gelu_erf().unwrap().to_vec1().unwrap();
        let mut worst = 0f32;
        for ((&v, &o), &t) in xs.iter().zip(&ours).zip(&theirs) {
            assert!(
                (o - t).abs() <= 5e-7 * v.abs(),
                "gelu_erf({v}): {o} against candle's {t}"
            );
            if v != 0.0 {
                worst = worst.max((o - t).abs() / v.abs());
            }
        }
        eprintln!("gelu_erf: at most {worst:e} |x| from candle's");
        assert!(gelu_erf(&Tensor::new(&[f32::NAN], &dev).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
            .is_nan());
    }

    #[test]
    fn softmax_keeps_masked_scores_at_zero() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY]], &dev).unwrap();
        let y: Vec<f32> = softmax_last_dim(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y[1], 0.0);
        assert_eq!(y[3], 0.0);
        assert!((y[0] + y[2] - 1.0).abs() < 1e-6);
    }
}
