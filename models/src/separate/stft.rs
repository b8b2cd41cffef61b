//! Spleeter's short-time Fourier transform: `tf.signal.stft` and
//! `tf.signal.inverse_stft` with a 4096-sample periodic Hann window, hop 1024,
//! no centring, and the forward window reused for synthesis.
//!
//! Frames are computed one at a time straight from the waveform, so a caller
//! can walk a long recording in bounded memory: frame `t` covers samples
//! `t * hop - lead .. t * hop - lead + window` of the input, where `lead` is
//! the zero padding Spleeter puts in front of the waveform (one window), and
//! samples outside the input read as zero (TensorFlow's `pad_end`). Input
//! and output are windows onto the recording (`first` is the recording's
//! frame at their start), so a streaming caller holds only the part of the
//! waveform the frames at hand touch.

use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// Window (and FFT) length in samples.
pub const FRAME_LENGTH: usize = 4096;
/// Hop between frames in samples.
pub const FRAME_STEP: usize = 1024;
/// Bins of the one-sided spectrum.
pub const BINS: usize = FRAME_LENGTH / 2 + 1;
/// Spleeter's `WINDOW_COMPENSATION_FACTOR`: the Hann window applied twice
/// at 75 % overlap sums to 1.5, so overlap-add is scaled by 2/3.
const WINDOW_COMPENSATION: f32 = 2.0 / 3.0;

/// Forward and inverse transforms with their plans and scratch space; one
/// per thread (not `Sync` by use, cheap to build).
pub struct Stft {
    window: Vec<f32>,
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
    frame: Vec<f32>,
    spectrum: Vec<Complex32>,
    scratch_fwd: Vec<Complex32>,
    scratch_inv: Vec<Complex32>,
}

impl Default for Stft {
    fn default() -> Self {
        Self::new()
    }
}

impl Stft {
    pub fn new() -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(FRAME_LENGTH);
        let inverse = planner.plan_fft_inverse(FRAME_LENGTH);
        // Periodic Hann (`tf.signal.hann_window(periodic=True)`).
        let window = (0..FRAME_LENGTH)
            .map(|n| {
                let x = 2.0 * std::f64::consts::PI * n as f64 / FRAME_LENGTH as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        Stft {
            window,
            frame: forward.make_input_vec(),
            spectrum: forward.make_output_vec(),
            scratch_fwd: forward.make_scratch_vec(),
            scratch_inv: inverse.make_scratch_vec(),
            forward,
            inverse,
        }
    }

    /// The spectrum of frame `t` of one channel of `signal` (interleaved,
    /// preceded by `lead` zeros); `BINS` values. Samples outside the window
    /// `signal` holds read as zero: the caller's window must cover every
    /// sample of the recording the frame touches.
    pub fn analyse(&mut self, signal: &Interleaved<'_>, lead: usize, t: usize) -> &[Complex32] {
        let Interleaved {
            samples,
            channels,
            channel,
            first,
        } = *signal;
        let len = (samples.len() / channels) as isize;
        let start = (t * FRAME_STEP) as isize - lead as isize - first as isize;
        for (n, slot) in self.frame.iter_mut().enumerate() {
            let i = start + n as isize;
            let x = if i >= 0 && i < len {
                samples[i as usize * channels + channel]
            } else {
                0.0
            };
            *slot = x * self.window[n];
        }
        self.forward
            .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch_fwd)
            .expect("buffers are sized by the plan");
        &self.spectrum
    }

    /// Inverts `spectrum` (`BINS` values, consumed as scratch), windows it
    /// and adds it into channel `channel` of the interleaved `out` where
    /// frame `t` lands; frame 0 of `out` is the recording's frame `first`,
    /// so the `lead` padding and anything outside `out` are dropped.
    pub fn synthesise_add(
        &mut self,
        spectrum: &mut [Complex32],
        lead: usize,
        t: usize,
        (out, first): (&mut [f32], usize),
        (channels, channel): (usize, usize),
    ) {
        // A real signal's DC and Nyquist bins are real; drop rounding noise.
        spectrum[0].im = 0.0;
        spectrum[BINS - 1].im = 0.0;
        self.inverse
            .process_with_scratch(spectrum, &mut self.frame, &mut self.scratch_inv)
            .expect("buffers are sized by the plan");
        // realfft's inverse is unnormalised; TensorFlow's irfft divides by N.
        let scale = WINDOW_COMPENSATION / FRAME_LENGTH as f32;
        let len = (out.len() / channels) as isize;
        let start = (t * FRAME_STEP) as isize - lead as isize - first as isize;
        for (n, &x) in self.frame.iter().enumerate() {
            let i = start + n as isize;
            if i >= 0 && i < len {
                out[i as usize * channels + channel] += x * self.window[n] * scale;
            }
        }
    }
}

/// One channel of an interleaved window onto a recording.
#[derive(Debug, Clone, Copy)]
pub struct Interleaved<'a> {
    pub samples: &'a [f32],
    pub channels: usize,
    pub channel: usize,
    /// The recording's frame at `samples[0]` (0 for a whole recording).
    pub first: usize,
}

/// The recording's first frame that frame `t` touches (saturating at 0).
pub fn frame_start(t: usize, lead: usize) -> usize {
    (t * FRAME_STEP).saturating_sub(lead)
}

/// The recording's frame just past the last one frame `t` touches.
pub fn frame_end(t: usize, lead: usize) -> usize {
    (t * FRAME_STEP + FRAME_LENGTH).saturating_sub(lead)
}

/// Frames `tf.signal.stft(pad_end=True)` produces for `samples` input
/// samples after `lead` zeros.
pub fn frame_count(samples: usize, lead: usize) -> usize {
    (samples + lead).div_ceil(FRAME_STEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_then_synthesis_reconstructs_the_signal() {
        // A chirp plus noise-like content, 3 s at 44.1 kHz.
        let n = 3 * 44_100;
        let signal: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / 44_100.0;
                0.5 * (2.0 * std::f32::consts::PI * (200.0 + 300.0 * t) * t).sin()
                    + 0.1 * ((i * 7919 % 1000) as f32 / 500.0 - 1.0)
            })
            .collect();
        let mut stft = Stft::new();
        let mut out = vec![0f32; n];
        let input = Interleaved {
            samples: &signal,
            channels: 1,
            channel: 0,
            first: 0,
        };
        for t in 0..frame_count(n, FRAME_LENGTH) {
            let mut spec = stft.analyse(&input, FRAME_LENGTH, t).to_vec();
            stft.synthesise_add(&mut spec, FRAME_LENGTH, t, (&mut out, 0), (1, 0));
        }
        let max_err = signal
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 1e-4, "max reconstruction error {max_err}");
    }

    #[test]
    fn frame_count_matches_tensorflow_pad_end() {
        // ceil((samples + lead) / hop)
        assert_eq!(frame_count(0, 4096), 4);
        assert_eq!(frame_count(1, 4096), 5);
        assert_eq!(frame_count(1024, 4096), 5);
        assert_eq!(frame_count(1025, 4096), 6);
    }
}
