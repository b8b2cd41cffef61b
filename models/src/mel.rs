//! Whisper's log-mel spectrogram.
//!
//! Matches `whisper.audio.log_mel_spectrogram`: a 400-point STFT with a
//! periodic Hann window and hop 160 over reflect-padded audio (the last frame
//! dropped), power spectrum, a Slaney-style mel filter bank (librosa's default,
//! which is what `mel_filters.npz` holds), `log10` clamped at 1e-10, values
//! floored at `max - 8` over the whole signal, then scaled as `(x + 4) / 4`.
//! The filter bank is computed here rather than shipped; a unit test checks it
//! against values from `mel_filters.npz`.

use std::sync::Arc;

use realfft::RealFftPlanner;

mod stream;
pub use stream::{MelMax, MelWindows};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Frames in one 30 s Whisper window.
pub const N_FRAMES: usize = 3000;
/// Samples in one 30 s Whisper window.
pub const N_SAMPLES: usize = N_FRAMES * HOP_LENGTH;

/// A mel filter bank stored sparsely: each filter is non-zero over a short run
/// of FFT bins, which makes the projection ~20x cheaper than a dense matmul.
#[derive(Debug, Clone)]
pub struct MelFilters {
    n_freqs: usize,
    /// Per mel band: first non-zero FFT bin and the weights from there on.
    bands: Vec<(usize, Vec<f32>)>,
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

impl MelFilters {
    /// librosa's `filters.mel(sr, n_fft, n_mels)` with `fmin = 0`,
    /// `fmax = sr / 2`, Slaney mel scale and Slaney area normalisation.
    pub fn slaney(n_mels: usize, n_fft: usize, sample_rate: usize) -> Self {
        let n_freqs = n_fft / 2 + 1;
        let sr = sample_rate as f64;
        let fft_freqs: Vec<f64> = (0..n_freqs).map(|k| k as f64 * sr / n_fft as f64).collect();
        let mel_max = hz_to_mel(sr / 2.0);
        let mel_points: Vec<f64> = (0..n_mels + 2)
            .map(|i| mel_to_hz(mel_max * i as f64 / (n_mels + 1) as f64))
            .collect();
        let bands = (0..n_mels)
            .map(|m| {
                let (lo, mid, hi) = (mel_points[m], mel_points[m + 1], mel_points[m + 2]);
                let norm = 2.0 / (hi - lo);
                let weights: Vec<f64> = fft_freqs
                    .iter()
                    .map(|&f| {
                        let rising = (f - lo) / (mid - lo);
                        let falling = (hi - f) / (hi - mid);
                        rising.min(falling).max(0.0) * norm
                    })
                    .collect();
                let first = weights.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                let run = if last >= first {
                    weights[first..=last].iter().map(|&w| w as f32).collect()
                } else {
                    Vec::new()
                };
                (first, run)
            })
            .collect();
        Self { n_freqs, bands }
    }

    pub fn n_mels(&self) -> usize {
        self.bands.len()
    }

    /// The bank as a dense row-major `[n_mels, n_fft / 2 + 1]` matrix.
    pub fn dense(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.bands.len() * self.n_freqs];
        for (m, (first, run)) in self.bands.iter().enumerate() {
            let row = &mut out[m * self.n_freqs..(m + 1) * self.n_freqs];
            row[*first..first + run.len()].copy_from_slice(run);
        }
        out
    }
}

/// A log-mel spectrogram, row-major `[n_mels, n_frames]`.
#[derive(Debug, Clone)]
pub struct LogMel {
    pub n_mels: usize,
    pub n_frames: usize,
    pub data: Vec<f32>,
}

impl LogMel {
    /// Frames `start..start + N_FRAMES` as a `[n_mels, N_FRAMES]` block, zero
    /// padded (in the log domain, i.e. with the spectrogram's floor) past the
    /// end, as Whisper's `pad_or_trim`.
    pub fn window(&self, start: usize, len: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.n_mels * N_FRAMES];
        let avail = self.n_frames.saturating_sub(start).min(len).min(N_FRAMES);
        for m in 0..self.n_mels {
            let src = &self.data[m * self.n_frames + start..][..avail];
            out[m * N_FRAMES..m * N_FRAMES + avail].copy_from_slice(src);
        }
        out
    }
}

/// The padded signal's sample `i` as an index into the signal of `total`
/// samples: Whisper reflect-pads `N_FFT / 2` samples on each side.
fn reflect(i: usize, total: usize) -> usize {
    let half = N_FFT / 2;
    let j = i as isize - half as isize;
    let j = if j < 0 {
        -j
    } else if j as usize >= total {
        2 * (total as isize - 1) - j
    } else {
        j
    };
    j.clamp(0, total.max(1) as isize - 1) as usize
}

/// One frame's log-mel values before the floor: the FFT plan, window and
/// buffers, reused frame after frame. One per thread.
pub(crate) struct FrameMel {
    fft: Arc<dyn realfft::RealToComplex<f32>>,
    window: Vec<f32>,
    input: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex32>,
    scratch: Vec<realfft::num_complex::Complex32>,
    power: Vec<f32>,
}

impl FrameMel {
    pub(crate) fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let window = (0..N_FFT)
            .map(|i| {
                let x = std::f32::consts::PI * 2.0 * i as f32 / N_FFT as f32;
                0.5 - 0.5 * x.cos()
            })
            .collect();
        FrameMel {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            power: vec![0f32; N_FFT / 2 + 1],
            window,
            fft,
        }
    }

    /// `log10` mel energies of frame `f` into `row` (`n_mels` values), the
    /// signal read through `at` (an index into the padded signal; see
    /// [`reflect`]). Leaves `row` alone if the FFT refuses (it cannot, the
    /// buffers come from its plan).
    pub(crate) fn compute(
        &mut self,
        at: &dyn Fn(usize) -> f32,
        f: usize,
        filters: &MelFilters,
        row: &mut [f32],
    ) {
        let offset = f * HOP_LENGTH;
        for (i, x) in self.input.iter_mut().enumerate() {
            *x = at(offset + i) * self.window[i];
        }
        if self
            .fft
            .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch)
            .is_err()
        {
            return;
        }
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.norm_sqr();
        }
        for (m, (first, run)) in filters.bands.iter().enumerate() {
            let s: f32 = run
                .iter()
                .zip(&self.power[*first..])
                .map(|(w, p)| w * p)
                .sum();
            row[m] = s.max(1e-10).log10();
        }
    }
}

/// Whisper's floor and scaling of a `log10` value, given the floor
/// (`max - 8` over the whole signal).
pub(crate) fn scale(v: f32, floor: f32) -> f32 {
    (v.max(floor) + 4.0) / 4.0
}

/// Computes Whisper's log-mel spectrogram of 16 kHz mono `samples` followed
/// by `pad_samples` zeros (Whisper's transcribe pads with 30 s).
pub fn log_mel_spectrogram(samples: &[f32], filters: &MelFilters, pad_samples: usize) -> LogMel {
    let n_mels = filters.n_mels();
    let total = samples.len() + pad_samples;
    let n_frames = total / HOP_LENGTH;
    let at = |i: usize| -> f32 { samples.get(reflect(i, total)).copied().unwrap_or(0.0) };
    let mut data = vec![0f32; n_mels * n_frames];

    // Two halves of the frames on two threads: the STFT is independent per
    // frame, and the spectrogram of an hour of audio is ~360k frames.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let per = n_frames.div_ceil(threads).max(1);
    let columns: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let at = &at;
                scope.spawn(move || {
                    let start = (t * per).min(n_frames);
                    let end = ((t + 1) * per).min(n_frames);
                    let mut frame = FrameMel::new();
                    // Frame-major block [frames, n_mels], transposed below.
                    let mut out = vec![0f32; (end - start) * n_mels];
                    for f in start..end {
                        let row = &mut out[(f - start) * n_mels..(f - start + 1) * n_mels];
                        frame.compute(at, f, filters, row);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut frame = 0;
    for block in columns {
        for row in block.chunks(n_mels) {
            for (m, &v) in row.iter().enumerate() {
                data[m * n_frames + frame] = v;
            }
            frame += 1;
        }
    }
    let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let floor = max - 8.0;
    for v in data.iter_mut() {
        *v = scale(*v, floor);
    }
    LogMel {
        n_mels,
        n_frames,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_bank_shape_and_area() {
        let f = MelFilters::slaney(80, N_FFT, SAMPLE_RATE);
        assert_eq!(f.n_mels(), 80);
        let dense = f.dense();
        assert_eq!(dense.len(), 80 * 201);
        // Every band has some weight and all weights are non-negative.
        for m in 0..80 {
            let row = &dense[m * 201..(m + 1) * 201];
            assert!(row.iter().all(|&w| w >= 0.0));
            assert!(row.iter().any(|&w| w > 0.0), "band {m} is empty");
        }
    }

    /// Values read from `whisper/assets/mel_filters.npz` of the
    /// `openai-whisper==20250625` sdist (librosa's bank, float32): the peak of
    /// every 9th band, and the last bin of the last band. The whole matrices
    /// were also compared once: max abs difference 4e-9.
    #[test]
    fn slaney_bank_matches_openai_whisper() {
        let refs80: &[(usize, usize, f64)] = &[
            (0, 1, 0.02486259490251541),
            (9, 9, 0.017917396500706673),
            (18, 18, 0.0178720373660326),
            (27, 26, 0.02173672430217266),
            (36, 37, 0.016561277210712433),
            (45, 52, 0.011507894843816757),
            (54, 74, 0.00787146482616663),
            (63, 104, 0.006075479090213776),
            (72, 147, 0.004347721114754677),
            (79, 199, 0.0004487590049393475),
            (79, 200, 0.0),
        ];
        let refs128: &[(usize, usize, f64)] = &[
            (0, 1, 0.012373986653983593),
            (9, 6, 0.031477365642786026),
            (18, 11, 0.03495235741138458),
            (27, 16, 0.015848975628614426),
            (36, 22, 0.01562839187681675),
            (45, 27, 0.036729052662849426),
            (54, 34, 0.014979788102209568),
            (63, 42, 0.017935046926140785),
            (72, 52, 0.017279881983995438),
            (81, 64, 0.012008999474346638),
            (90, 80, 0.0129347313195467),
            (99, 99, 0.008731318637728691),
            (108, 123, 0.007041127886623144),
            (117, 153, 0.0060142697766423225),
            (126, 191, 0.0049519846215844154),
            (127, 199, 0.0011142801959067583),
            (127, 200, 0.0),
        ];
        for (n_mels, refs) in [(80, refs80), (128, refs128)] {
            let dense = MelFilters::slaney(n_mels, N_FFT, SAMPLE_RATE).dense();
            for &(m, k, want) in refs {
                let got = dense[m * 201 + k];
                assert!(
                    (got as f64 - want).abs() < 1e-7,
                    "bank {n_mels} [{m},{k}]: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn silence_is_floor() {
        let f = MelFilters::slaney(80, N_FFT, SAMPLE_RATE);
        let mel = log_mel_spectrogram(&vec![0.0; 16_000], &f, 0);
        assert_eq!(mel.n_frames, 100);
        assert!(mel
            .data
            .iter()
            .all(|&v| (v - (-10.0 + 4.0) / 4.0).abs() < 1e-6));
    }
}
