//! CAM++ speaker embeddings (3D-Speaker's `speech_campplus_sv_zh_en_16k`,
//! 192 dimensions) in candle.
//!
//! Input: mean-normalised 80-bin log fbank frames ([`super::fbank`]).
//! - FCM head: a 2D conv net over (frequency, time) with four residual
//!   blocks; three of its convs stride 2 along frequency only, so 80 bins
//!   become 10 with 32 channels, flattened to 320 channels per frame.
//! - A TDNN (conv k=5, stride 2 in time) to 128 channels, then three
//!   densely connected D-TDNN blocks (12, 24, 16 layers; growth 32; dilation
//!   1, 2, 2). Each layer is BN-ReLU-1x1 conv-BN-ReLU, then a
//!   context-aware-masking layer: a k=3 conv whose output is gated by a
//!   sigmoid of an MLP over (utterance mean + 100-frame segment mean).
//!   Transition layers halve the channels between blocks.
//! - BN-ReLU, statistics pooling (mean and unbiased std over time), a 1x1
//!   "dense" layer to 192 and a non-affine batch norm.
//!
//! Batch norms are folded into a per-channel scale and shift at load time.
//! Weight names are those of the checkpoint (`head.*`, `xvector.*`).

use candle_core::{Device, Tensor, D};

use super::fbank::NUM_BINS;
use super::{DiarizeError, Weights};

pub const EMBEDDING_DIM: usize = 192;
const BN_EPS: f64 = 1e-5;
const FCM_CHANNELS: usize = 32;
const GROWTH: usize = 32;
const BN_CHANNELS: usize = 128;
const SEGMENT_FRAMES: usize = 100;
/// (layers, dilation) of the three D-TDNN blocks.
const BLOCKS: [(usize, usize); 3] = [(12, 1), (24, 2), (16, 2)];

/// An inference batch norm as `x * scale + shift`, both shaped to broadcast
/// over the channel axis 1 of a [B, C, ...] tensor.
struct Affine {
    scale: Tensor,
    shift: Tensor,
}

impl Affine {
    /// `dims` is the rank of the tensors it will be applied to (3 or 4).
    fn load(
        w: &Weights,
        prefix: &str,
        channels: usize,
        affine: bool,
        dims: usize,
        device: &Device,
    ) -> Result<Self, DiarizeError> {
        let mean = w.get(&format!("{prefix}.running_mean"), &[channels])?;
        let var = w.get(&format!("{prefix}.running_var"), &[channels])?;
        let inv_std = (var + BN_EPS)?.sqrt()?.recip()?;
        let (scale, shift) = if affine {
            let gamma = w.get(&format!("{prefix}.weight"), &[channels])?;
            let beta = w.get(&format!("{prefix}.bias"), &[channels])?;
            let scale = (gamma * inv_std)?;
            let shift = (beta - (mean * &scale)?)?;
            (scale, shift)
        } else {
            let shift = (mean.neg()? * &inv_std)?;
            (inv_std, shift)
        };
        let shape: Vec<usize> = std::iter::once(1)
            .chain(std::iter::once(channels))
            .chain(std::iter::repeat_n(1, dims - 2))
            .collect();
        Ok(Affine {
            scale: scale.reshape(shape.as_slice())?.to_device(device)?,
            shift: shift.reshape(shape.as_slice())?.to_device(device)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }

    fn relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)?.relu()
    }
}

/// A 3x3 conv (padding 1) that strides 2 along frequency (axis 2) only.
/// candle's conv2d takes one stride for both axes, so it runs at stride 1
/// and keeps every other frequency row, which is the same result.
fn conv3x3(x: &Tensor, weight: &Tensor, freq_stride2: bool) -> candle_core::Result<Tensor> {
    let y = x.conv2d(weight, 1, 1, 1, 1)?;
    if freq_stride2 {
        every_other_row(&y)
    } else {
        Ok(y)
    }
}

/// Rows 0, 2, 4, ... of axis 2 of [B, C, H, W] (H even).
fn every_other_row(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / 2, 2 * w))?.narrow(3, 0, w)
}

struct ResBlock {
    conv1: Tensor,
    bn1: Affine,
    conv2: Tensor,
    bn2: Affine,
    /// 1x1 conv and its batch norm, on blocks that stride.
    shortcut: Option<(Tensor, Affine)>,
    stride2: bool,
}

impl ResBlock {
    fn load(w: &Weights, p: &str, stride2: bool, device: &Device) -> Result<Self, DiarizeError> {
        let c = FCM_CHANNELS;
        let shortcut = if stride2 {
            Some((
                w.get(&format!("{p}.shortcut.0.weight"), &[c, c, 1, 1])?
                    .to_device(device)?,
                Affine::load(w, &format!("{p}.shortcut.1"), c, true, 4, device)?,
            ))
        } else {
            None
        };
        Ok(ResBlock {
            conv1: w
                .get(&format!("{p}.conv1.weight"), &[c, c, 3, 3])?
                .to_device(device)?,
            bn1: Affine::load(w, &format!("{p}.bn1"), c, true, 4, device)?,
            conv2: w
                .get(&format!("{p}.conv2.weight"), &[c, c, 3, 3])?
                .to_device(device)?,
            bn2: Affine::load(w, &format!("{p}.bn2"), c, true, 4, device)?,
            shortcut,
            stride2,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let out = self.bn1.relu(&conv3x3(x, &self.conv1, self.stride2)?)?;
        let out = self.bn2.forward(&conv3x3(&out, &self.conv2, false)?)?;
        let residual = match &self.shortcut {
            Some((conv, bn)) => bn.forward(&every_other_row(x)?.conv2d(conv, 0, 1, 1, 1)?)?,
            None => x.clone(),
        };
        (out + residual)?.relu()
    }
}

/// One D-TDNN layer with its context-aware masking.
struct DenseTdnnLayer {
    bn1: Affine,
    /// [128, in, 1]
    linear1: Tensor,
    bn2: Affine,
    /// [32, 128, 3]
    local: Tensor,
    dilation: usize,
    /// Masking MLP: [64, 128, 1] + bias, [32, 64, 1] + bias.
    mask1: (Tensor, Tensor),
    mask2: (Tensor, Tensor),
}

impl DenseTdnnLayer {
    fn load(
        w: &Weights,
        p: &str,
        inp: usize,
        dilation: usize,
        device: &Device,
    ) -> Result<Self, DiarizeError> {
        let half = BN_CHANNELS / 2;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor, DiarizeError> {
            Ok(w.get(&format!("{p}.{name}"), shape)?.to_device(device)?)
        };
        Ok(DenseTdnnLayer {
            bn1: Affine::load(
                w,
                &format!("{p}.nonlinear1.batchnorm"),
                inp,
                true,
                3,
                device,
            )?,
            linear1: get("linear1.weight", &[BN_CHANNELS, inp, 1])?,
            bn2: Affine::load(
                w,
                &format!("{p}.nonlinear2.batchnorm"),
                BN_CHANNELS,
                true,
                3,
                device,
            )?,
            local: get("cam_layer.linear_local.weight", &[GROWTH, BN_CHANNELS, 3])?,
            dilation,
            mask1: (
                get("cam_layer.linear1.weight", &[half, BN_CHANNELS, 1])?,
                get("cam_layer.linear1.bias", &[half])?.reshape((1, half, 1))?,
            ),
            mask2: (
                get("cam_layer.linear2.weight", &[GROWTH, half, 1])?,
                get("cam_layer.linear2.bias", &[GROWTH])?.reshape((1, GROWTH, 1))?,
            ),
        })
    }

    /// [B, in, T] -> [B, 32, T]
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.bn1.relu(x)?.conv1d(&self.linear1, 0, 1, 1, 1)?;
        let x = self.bn2.relu(&x)?;
        let y = x.conv1d(&self.local, self.dilation, 1, self.dilation, 1)?;
        let context = x
            .mean_keepdim(D::Minus1)?
            .broadcast_add(&segment_means(&x, SEGMENT_FRAMES)?)?;
        let m = context
            .conv1d(&self.mask1.0, 0, 1, 1, 1)?
            .broadcast_add(&self.mask1.1)?
            .relu()?
            .conv1d(&self.mask2.0, 0, 1, 1, 1)?
            .broadcast_add(&self.mask2.1)?;
        y * candle_nn::ops::sigmoid(&m)?
    }
}

/// Each frame of [B, C, T] replaced by the mean of its `seg`-frame segment
/// (the last segment may be shorter): `avg_pool1d(ceil_mode)` expanded back.
fn segment_means(x: &Tensor, seg: usize) -> candle_core::Result<Tensor> {
    let (b, c, t) = x.dims3()?;
    let n = t.div_ceil(seg);
    let padded = if n * seg > t {
        let zeros = Tensor::zeros((b, c, n * seg - t), x.dtype(), x.device())?;
        Tensor::cat(&[x, &zeros], 2)?
    } else {
        x.clone()
    };
    let counts: Vec<f32> = (0..n)
        .map(|i| 1.0 / (seg.min(t - i * seg)) as f32)
        .collect();
    let inv = Tensor::from_vec(counts, (1, 1, n, 1), x.device())?;
    padded
        .reshape((b, c, n, seg))?
        .sum_keepdim(3)?
        .broadcast_mul(&inv)?
        .broadcast_as((b, c, n, seg))?
        .reshape((b, c, n * seg))?
        .narrow(2, 0, t)
}

struct Transit {
    bn: Affine,
    /// [out, in, 1]
    linear: Tensor,
}

/// The loaded CAM++ network; immutable.
pub struct CamPlus {
    device: Device,
    conv1: Tensor,
    bn1: Affine,
    blocks: Vec<ResBlock>,
    conv2: Tensor,
    bn2: Affine,
    /// [128, 320, 5], stride 2, padding 2.
    tdnn: Tensor,
    tdnn_bn: Affine,
    dense_blocks: Vec<(Vec<DenseTdnnLayer>, Transit)>,
    out_bn: Affine,
    /// [192, 1024, 1]
    dense: Tensor,
    dense_bn: Affine,
}

impl CamPlus {
    pub(crate) fn load(w: &Weights, device: &Device) -> Result<Self, DiarizeError> {
        let c = FCM_CHANNELS;
        let mut blocks = Vec::new();
        for layer in 1..=2 {
            for block in 0..2 {
                blocks.push(ResBlock::load(
                    w,
                    &format!("head.layer{layer}.{block}"),
                    block == 0,
                    device,
                )?);
            }
        }
        let fcm_out = c * NUM_BINS / 8;
        let mut channels = BN_CHANNELS;
        let mut dense_blocks = Vec::new();
        for (i, (layers, dilation)) in BLOCKS.into_iter().enumerate() {
            let mut block = Vec::new();
            for l in 0..layers {
                block.push(DenseTdnnLayer::load(
                    w,
                    &format!("xvector.block{}.tdnnd{}", i + 1, l + 1),
                    channels + l * GROWTH,
                    dilation,
                    device,
                )?);
            }
            channels += layers * GROWTH;
            let p = format!("xvector.transit{}", i + 1);
            let transit = Transit {
                bn: Affine::load(
                    w,
                    &format!("{p}.nonlinear.batchnorm"),
                    channels,
                    true,
                    3,
                    device,
                )?,
                linear: w
                    .get(&format!("{p}.linear.weight"), &[channels / 2, channels, 1])?
                    .to_device(device)?,
            };
            channels /= 2;
            dense_blocks.push((block, transit));
        }
        Ok(CamPlus {
            device: device.clone(),
            conv1: w
                .get("head.conv1.weight", &[c, 1, 3, 3])?
                .to_device(device)?,
            bn1: Affine::load(w, "head.bn1", c, true, 4, device)?,
            blocks,
            conv2: w
                .get("head.conv2.weight", &[c, c, 3, 3])?
                .to_device(device)?,
            bn2: Affine::load(w, "head.bn2", c, true, 4, device)?,
            tdnn: w
                .get("xvector.tdnn.linear.weight", &[BN_CHANNELS, fcm_out, 5])?
                .to_device(device)?,
            tdnn_bn: Affine::load(
                w,
                "xvector.tdnn.nonlinear.batchnorm",
                BN_CHANNELS,
                true,
                3,
                device,
            )?,
            dense_blocks,
            out_bn: Affine::load(
                w,
                "xvector.out_nonlinear.batchnorm",
                channels,
                true,
                3,
                device,
            )?,
            dense: w
                .get(
                    "xvector.dense.linear.weight",
                    &[EMBEDDING_DIM, 2 * channels, 1],
                )?
                .to_device(device)?,
            dense_bn: Affine::load(
                w,
                "xvector.dense.nonlinear.batchnorm",
                EMBEDDING_DIM,
                false,
                2,
                device,
            )?,
        })
    }

    /// The embedding of one utterance given its mean-normalised fbank
    /// `features` ([frames * 80], at least a few frames).
    pub fn embed(&self, features: &[f32]) -> Result<Vec<f32>, DiarizeError> {
        let frames = features.len() / NUM_BINS;
        if frames < 4 {
            return Err(DiarizeError::Input(format!(
                "CAM++ needs at least 4 fbank frames, got {frames}"
            )));
        }
        // (T, F) -> [1, 1, F, T]
        let x = Tensor::from_slice(features, (frames, NUM_BINS), &self.device)?
            .t()?
            .reshape((1, 1, NUM_BINS, frames))?;
        let mut x = self.bn1.relu(&x.conv2d(&self.conv1, 1, 1, 1, 1)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.bn2.relu(&conv3x3(&x, &self.conv2, true)?)?;
        let (b, c, h, t) = x.dims4()?;
        let x = x.reshape((b, c * h, t))?;
        let mut x = self.tdnn_bn.relu(&x.conv1d(&self.tdnn, 2, 2, 1, 1)?)?;
        for (layers, transit) in &self.dense_blocks {
            for layer in layers {
                let y = layer.forward(&x)?;
                x = Tensor::cat(&[&x, &y], 1)?;
            }
            x = transit.bn.relu(&x)?.conv1d(&transit.linear, 0, 1, 1, 1)?;
        }
        let x = self.out_bn.relu(&x)?;
        let t = x.dim(2)?;
        let mean = x.mean_keepdim(2)?;
        let std = if t > 1 {
            (x.broadcast_sub(&mean)?.sqr()?.sum_keepdim(2)? / (t - 1) as f64)?.sqrt()?
        } else {
            (mean.zeros_like()? + 1e-2)?
        };
        let stats = Tensor::cat(&[&mean, &std], 1)?; // [1, 2C, 1]
        let emb = stats.conv1d(&self.dense, 0, 1, 1, 1)?.squeeze(2)?; // [1, 192]
        let emb = self.dense_bn.forward(&emb)?;
        Ok(emb.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_means_average_each_hundred_frames_and_the_short_tail() {
        let t = 250;
        let data: Vec<f32> = (0..t).map(|i| i as f32).collect();
        let x = Tensor::from_vec(data, (1, 1, t), &Device::Cpu).unwrap();
        let m = segment_means(&x, 100)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(m.len(), t);
        assert!((m[0] - 49.5).abs() < 1e-4);
        assert!((m[99] - 49.5).abs() < 1e-4);
        assert!((m[100] - 149.5).abs() < 1e-4);
        assert!((m[249] - 224.5).abs() < 1e-4);
    }

    #[test]
    fn every_other_row_keeps_even_rows() {
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 6))
            .unwrap();
        let y = every_other_row(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 6]);
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&v[..6], &[0., 1., 2., 3., 4., 5.]);
        assert_eq!(&v[6..], &[12., 13., 14., 15., 16., 17.]);
    }
}
