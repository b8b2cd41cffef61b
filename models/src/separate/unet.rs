//! Spleeter's U-Net and its layers on the host, in TensorFlow's NHWC layout:
//! the weights as the converted checkpoint names them ([`Weights`]), "same"
//! convolutions and transposed convolutions as im2col / col2im plus one gemm,
//! inference-time batch norm, and one stem's encoder-decoder ([`UNet`]).
//! The layers are checked against by-definition TensorFlow references in
//! the tests below.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::{SeparateError, BN_EPSILON, CHANNELS, FILTERS};

/// The converted checkpoint, and where it came from for error messages.
pub(super) struct Weights<'a> {
    pub(super) tensors: &'a HashMap<String, Tensor>,
    pub(super) path: &'a Path,
}

impl Weights<'_> {
    /// Keras names layers `conv2d`, `conv2d_1`, ... in creation order.
    fn get(
        &self,
        layer: &str,
        index: usize,
        var: &str,
        shape: &[usize],
    ) -> Result<Tensor, SeparateError> {
        let name = if index == 0 {
            format!("{layer}/{var}")
        } else {
            format!("{layer}_{index}/{var}")
        };
        let t = self
            .tensors
            .get(&name)
            .ok_or_else(|| SeparateError::BadModelFile {
                path: self.path.to_path_buf(),
                detail: format!("tensor `{name}` is missing"),
            })?;
        if t.dims() != shape {
            return Err(SeparateError::BadModelFile {
                path: self.path.to_path_buf(),
                detail: format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                ),
            });
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// TF "same" padding along one axis: (before, after).
fn same_padding(input: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let span = (kernel - 1) * dilation + 1;
    let total = ((out - 1) * stride + span).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// An activation in TF's NHWC layout, on the host.
///
/// The layers run as im2col (or col2im) on the host plus one large matrix
/// product on the model's device. candle's own CPU convolutions gather
/// patches element by element (and its transposed convolution is a direct
/// loop); in NHWC every patch row is a run of contiguous channels, so
/// im2col is a series of `memcpy`s and the product is one big gemm, about
/// twice as fast overall here.
#[derive(Debug, Clone)]
pub(super) struct Nhwc {
    pub(super) data: Vec<f32>,
    pub(super) n: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c: usize,
}

impl Nhwc {
    /// Concatenates `self` and `other` along channels (Keras `Concatenate`).
    fn concat(&self, other: &Nhwc) -> Nhwc {
        let c = self.c + other.c;
        let mut data = Vec::with_capacity(self.n * self.h * self.w * c);
        for (a, b) in self
            .data
            .chunks_exact(self.c)
            .zip(other.data.chunks_exact(other.c))
        {
            data.extend_from_slice(a);
            data.extend_from_slice(b);
        }
        Nhwc { data, c, ..*self }
    }

    fn map(&mut self, f: impl Fn(f32) -> f32) {
        self.data.iter_mut().for_each(|v| *v = f(*v));
    }
}

/// `[m, k]` (host) times `weight` `[k, n]` (on its device), back to the host.
/// Takes `a` by value: on the CPU candle keeps the buffer without a copy.
fn matmul(a: Vec<f32>, m: usize, k: usize, weight: &Tensor) -> candle_core::Result<Vec<f32>> {
    Tensor::from_vec(a, (m, k), weight.device())?
        .matmul(weight)?
        .flatten_all()?
        .to_vec1::<f32>()
}

fn add_bias(data: &mut [f32], bias: &[f32]) {
    for row in data.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// A Keras `Conv2D` with "same" padding.
struct Conv {
    /// The TF HWIO kernel flattened to `[kh * kw * in, out]`: row order
    /// matches the im2col patch order (ky, kx, channel).
    weight: Tensor,
    bias: Vec<f32>,
    kernel: (usize, usize),
    in_c: usize,
    out_c: usize,
    stride: usize,
    dilation: usize,
}

impl Conv {
    /// From a TF HWIO kernel `[kh, kw, in, out]` and bias `[out]`.
    fn from_tf(
        kernel: &Tensor,
        bias: &Tensor,
        stride: usize,
        dilation: usize,
    ) -> candle_core::Result<Self> {
        let (kh, kw, in_c, out_c) = kernel.dims4()?;
        Ok(Conv {
            weight: kernel.reshape((kh * kw * in_c, out_c))?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            kernel: (kh, kw),
            in_c,
            out_c,
            stride,
            dilation,
        })
    }

    fn forward(&self, x: &Nhwc) -> candle_core::Result<Nhwc> {
        let (kh, kw) = self.kernel;
        let (s, d, c) = (self.stride, self.dilation, self.in_c);
        if x.c != c {
            candle_core::bail!("conv expects {c} channels, got {}", x.c);
        }
        let (top, _) = same_padding(x.h, kh, s, d);
        let (left, _) = same_padding(x.w, kw, s, d);
        let (oh, ow) = (x.h.div_ceil(s), x.w.div_ceil(s));
        let k = kh * kw * c;
        let rows = x.n * oh * ow;
        let mut cols = vec![0f32; rows * k];
        for b in 0..x.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = ((b * oh + oy) * ow + ox) * k;
                    for ky in 0..kh {
                        let iy = (oy * s + ky * d) as isize - top as isize;
                        if iy < 0 || iy >= x.h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * s + kx * d) as isize - left as isize;
                            if ix < 0 || ix >= x.w as isize {
                                continue;
                            }
                            let src = ((b * x.h + iy as usize) * x.w + ix as usize) * c;
                            let dst = row + (ky * kw + kx) * c;
                            cols[dst..dst + c].copy_from_slice(&x.data[src..src + c]);
                        }
                    }
                }
            }
        }
        let mut data = matmul(cols, rows, k, &self.weight)?;
        add_bias(&mut data, &self.bias);
        Ok(Nhwc {
            data,
            n: x.n,
            h: oh,
            w: ow,
            c: self.out_c,
        })
    }
}

/// A Keras `Conv2DTranspose` with a 5x5 kernel, stride 2 and "same" padding
/// (output twice the input size): every input pixel times the kernel (one
/// gemm to `[pixels, 25 * out]`), scattered and summed into the output
/// (col2im), where TF's "same" crop drops 1 row/column before and 2 after
/// the full `2n + 3` result.
struct ConvTranspose {
    /// The TF HWOI kernel as `[in, 5 * 5 * out]`, columns (ky, kx, out).
    weight: Tensor,
    bias: Vec<f32>,
    in_c: usize,
    out_c: usize,
}

impl ConvTranspose {
    const KERNEL: usize = 5;
    const STRIDE: usize = 2;

    /// From a TF HWOI kernel `[5, 5, out, in]` and bias `[out]`.
    fn from_tf(kernel: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let (kh, kw, out_c, in_c) = kernel.dims4()?;
        if (kh, kw) != (Self::KERNEL, Self::KERNEL) {
            candle_core::bail!("transposed conv kernel is {kh}x{kw}, expected 5x5");
        }
        Ok(ConvTranspose {
            weight: kernel
                .permute((3, 0, 1, 2))?
                .contiguous()?
                .reshape((in_c, kh * kw * out_c))?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
            in_c,
            out_c,
        })
    }

    /// Consumes `x`: its buffer becomes the gemm's input.
    fn forward(&self, x: Nhwc) -> candle_core::Result<Nhwc> {
        const K: usize = ConvTranspose::KERNEL;
        let (o, s) = (self.out_c, Self::STRIDE);
        if x.c != self.in_c {
            candle_core::bail!(
                "transposed conv expects {} channels, got {}",
                self.in_c,
                x.c
            );
        }
        let (oh, ow) = (x.h * s, x.w * s);
        let (top, _) = same_padding(oh, K, s, 1);
        let (left, _) = same_padding(ow, K, s, 1);
        let pixels = x.n * x.h * x.w;
        let (n, h, w) = (x.n, x.h, x.w);
        let taps = matmul(x.data, pixels, self.in_c, &self.weight)?;
        let mut data = vec![0f32; n * oh * ow * o];
        for b in 0..n {
            for iy in 0..h {
                for ix in 0..w {
                    let row = ((b * h + iy) * w + ix) * K * K * o;
                    for ky in 0..K {
                        let oy = (iy * s + ky) as isize - top as isize;
                        if oy < 0 || oy >= oh as isize {
                            continue;
                        }
                        for kx in 0..K {
                            let ox = (ix * s + kx) as isize - left as isize;
                            if ox < 0 || ox >= ow as isize {
                                continue;
                            }
                            let dst = ((b * oh + oy as usize) * ow + ox as usize) * o;
                            let src = row + (ky * K + kx) * o;
                            data[dst..dst + o]
                                .iter_mut()
                                .zip(&taps[src..src + o])
                                .for_each(|(d, t)| *d += t);
                        }
                    }
                }
            }
        }
        add_bias(&mut data, &self.bias);
        Ok(Nhwc {
            data,
            n,
            h: oh,
            w: ow,
            c: o,
        })
    }
}

/// Inference-time batch norm folded into a per-channel scale and shift.
struct BatchNorm {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl BatchNorm {
    fn load(weights: &Weights, index: usize, channels: usize) -> Result<Self, SeparateError> {
        let get = |var| -> Result<Vec<f32>, SeparateError> {
            Ok(weights
                .get("batch_normalization", index, var, &[channels])?
                .to_vec1()?)
        };
        let (gamma, beta) = (get("gamma")?, get("beta")?);
        let (mean, var) = (get("moving_mean")?, get("moving_variance")?);
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| (f64::from(*g) / (f64::from(*v) + BN_EPSILON).sqrt()) as f32)
            .collect();
        let shift = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok(BatchNorm { scale, shift })
    }

    fn apply(&self, x: &mut Nhwc) {
        for px in x.data.chunks_exact_mut(self.scale.len()) {
            for ((v, s), t) in px.iter_mut().zip(&self.scale).zip(&self.shift) {
                *v = *v * s + t;
            }
        }
    }
}

/// One stem's U-Net (Spleeter's `apply_unet` with the default parameters).
pub(super) struct UNet {
    encoder: Vec<Conv>,
    /// Batch norms after the first five encoder convolutions (the sixth is
    /// in the checkpoint but its output is unused in Spleeter's graph).
    encoder_bn: Vec<BatchNorm>,
    decoder: Vec<ConvTranspose>,
    decoder_bn: Vec<BatchNorm>,
    mask: Conv,
}

impl UNet {
    /// Stem `stem` of [`STEMS`]: its layers follow the previous stem's in
    /// Keras' per-type counters (7 convolutions, 6 transposed, 12 norms).
    pub(super) fn load(weights: &Weights, stem: usize) -> Result<Self, SeparateError> {
        let mut encoder = Vec::new();
        let mut encoder_bn = Vec::new();
        let mut in_c = CHANNELS;
        for (i, &out_c) in FILTERS.iter().enumerate() {
            let conv = 7 * stem + i;
            let kernel = weights.get("conv2d", conv, "kernel", &[5, 5, in_c, out_c])?;
            let bias = weights.get("conv2d", conv, "bias", &[out_c])?;
            encoder.push(Conv::from_tf(&kernel, &bias, 2, 1)?);
            if i < 5 {
                encoder_bn.push(BatchNorm::load(weights, 12 * stem + i, out_c)?);
            }
            in_c = out_c;
        }
        let mut decoder = Vec::new();
        let mut decoder_bn = Vec::new();
        // Decoder outputs: 256, 128, 64, 32, 16, 1; inputs are the previous
        // output concatenated with the matching encoder output (except the
        // first, which reads the bottleneck).
        let outs = [256, 128, 64, 32, 16, 1];
        let mut in_c = FILTERS[5];
        for (i, &out_c) in outs.iter().enumerate() {
            let index = 6 * stem + i;
            let kernel = weights.get("conv2d_transpose", index, "kernel", &[5, 5, out_c, in_c])?;
            let bias = weights.get("conv2d_transpose", index, "bias", &[out_c])?;
            decoder.push(ConvTranspose::from_tf(&kernel, &bias)?);
            decoder_bn.push(BatchNorm::load(weights, 12 * stem + 6 + i, out_c)?);
            in_c = 2 * out_c;
        }
        let conv = 7 * stem + 6;
        let kernel = weights.get("conv2d", conv, "kernel", &[4, 4, 1, CHANNELS])?;
        let bias = weights.get("conv2d", conv, "bias", &[CHANNELS])?;
        let mask = Conv::from_tf(&kernel, &bias, 1, 2)?;
        Ok(UNet {
            encoder,
            encoder_bn,
            decoder,
            decoder_bn,
            mask,
        })
    }

    /// `[n, 512, 1024, 2]` mixture magnitude -> this stem's magnitude, same
    /// layout.
    pub(super) fn forward(&self, mix: &Nhwc) -> candle_core::Result<Vec<f32>> {
        let mut skips = Vec::with_capacity(5);
        let mut x = self.encoder[0].forward(mix)?;
        for (i, conv) in self.encoder.iter().enumerate().skip(1) {
            // The skip connection takes the raw convolution output.
            let mut a = x.clone();
            self.encoder_bn[i - 1].apply(&mut a);
            a.map(|v| if v < 0.0 { 0.2 * v } else { v });
            skips.push(x);
            x = conv.forward(&a)?;
        }
        for (i, (up, bn)) in self.decoder.iter().zip(&self.decoder_bn).enumerate() {
            let mut y = up.forward(x)?;
            y.map(|v| v.max(0.0));
            bn.apply(&mut y);
            x = match skips.len().checked_sub(i + 1) {
                Some(k) => skips[k].concat(&y),
                None => y,
            };
        }
        let mut mask = self.mask.forward(&x)?;
        mask.map(|v| 1.0 / (1.0 + (-v).exp()));
        Ok(mask
            .data
            .iter()
            .zip(&mix.data)
            .map(|(m, x)| m * x)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// TF's Conv2D "same" by definition, on NHWC input and an HWIO kernel.
    #[allow(clippy::too_many_arguments)]
    fn tf_conv_reference(
        x: &[f32],
        (h, w, ci): (usize, usize, usize),
        k: &[f32],
        (kh, kw, co): (usize, usize, usize),
        stride: usize,
        dilation: usize,
    ) -> (Vec<f32>, usize, usize) {
        let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
        let (pt, _) = same_padding(h, kh, stride, dilation);
        let (pl, _) = same_padding(w, kw, stride, dilation);
        let mut y = vec![0f32; oh * ow * co];
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut acc = 0f32;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * stride + ky * dilation) as isize - pt as isize;
                            let ix = (ox * stride + kx * dilation) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for i in 0..ci {
                                acc += x[((iy as usize) * w + ix as usize) * ci + i]
                                    * k[((ky * kw + kx) * ci + i) * co + o];
                            }
                        }
                    }
                    y[(oy * ow + ox) * co + o] = acc;
                }
            }
        }
        (y, oh, ow)
    }

    /// TF's Conv2DTranspose "same", stride 2, by definition (scatter of
    /// every input pixel through the HWOI kernel, then the crop).
    fn tf_conv_transpose_reference(
        x: &[f32],
        (h, w, ci): (usize, usize, usize),
        k: &[f32],
        co: usize,
    ) -> Vec<f32> {
        let (oh, ow) = (2 * h, 2 * w);
        let (pt, _) = same_padding(oh, 5, 2, 1);
        let (pl, _) = same_padding(ow, 5, 2, 1);
        let mut y = vec![0f32; oh * ow * co];
        for iy in 0..h {
            for ix in 0..w {
                for ky in 0..5 {
                    for kx in 0..5 {
                        let oy = (2 * iy + ky) as isize - pt as isize;
                        let ox = (2 * ix + kx) as isize - pl as isize;
                        if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                            continue;
                        }
                        for o in 0..co {
                            for i in 0..ci {
                                y[((oy as usize) * ow + ox as usize) * co + o] += x
                                    [(iy * w + ix) * ci + i]
                                    * k[((ky * 5 + kx) * co + o) * ci + i];
                            }
                        }
                    }
                }
            }
        }
        y
    }

    fn nhwc(x: &[f32], (h, w, c): (usize, usize, usize)) -> Nhwc {
        Nhwc {
            data: x.to_vec(),
            n: 1,
            h,
            w,
            c,
        }
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(512, 5, 2, 1), (1, 2));
        assert_eq!(same_padding(1024, 5, 2, 1), (1, 2));
        assert_eq!(same_padding(7, 5, 2, 1), (2, 2));
        assert_eq!(same_padding(512, 4, 1, 2), (3, 3));
        assert_eq!(same_padding(10, 1, 1, 1), (0, 0));
    }

    #[test]
    fn strided_and_dilated_convs_match_tensorflow_semantics() {
        for (h, w, ci, co, k, stride, dilation) in [
            (8, 12, 3, 4, 5, 2, 1),
            (6, 10, 1, 2, 4, 1, 2),
            (7, 9, 2, 3, 5, 2, 1),
        ] {
            let x = noise(h * w * ci, 1);
            let kernel = noise(k * k * ci * co, 2);
            let bias = vec![0f32; co];
            let conv = Conv::from_tf(
                &Tensor::from_vec(kernel.clone(), (k, k, ci, co), &Device::Cpu).unwrap(),
                &Tensor::from_vec(bias, co, &Device::Cpu).unwrap(),
                stride,
                dilation,
            )
            .unwrap();
            let y = conv.forward(&nhwc(&x, (h, w, ci))).unwrap();
            let (r, oh, ow) =
                tf_conv_reference(&x, (h, w, ci), &kernel, (k, k, co), stride, dilation);
            assert_eq!((y.n, y.h, y.w, y.c), (1, oh, ow, co));
            let d = max_diff(&y.data, &r);
            assert!(d < 1e-4, "{h}x{w} k{k} s{stride} d{dilation}: {d}");
        }
    }

    #[test]
    fn transposed_conv_matches_tensorflow_semantics() {
        for (h, w, ci, co) in [(4, 6, 3, 2), (3, 5, 2, 1), (2, 2, 4, 5)] {
            let x = noise(h * w * ci, 3);
            let kernel = noise(25 * co * ci, 4);
            let bias = noise(co, 5);
            let up = ConvTranspose::from_tf(
                &Tensor::from_vec(kernel.clone(), (5, 5, co, ci), &Device::Cpu).unwrap(),
                &Tensor::from_vec(bias.clone(), co, &Device::Cpu).unwrap(),
            )
            .unwrap();
            let y = up.forward(nhwc(&x, (h, w, ci))).unwrap();
            let mut r = tf_conv_transpose_reference(&x, (h, w, ci), &kernel, co);
            for (i, v) in r.iter_mut().enumerate() {
                *v += bias[i % co];
            }
            assert_eq!((y.n, y.h, y.w, y.c), (1, 2 * h, 2 * w, co));
            let d = max_diff(&y.data, &r);
            assert!(d < 1e-4, "{h}x{w} {ci}->{co}: {d}");
        }
    }
}
