//! Whisper's log-mel spectrogram of a signal too long to hold: the same
//! frames as [`super::log_mel_spectrogram`], computed as the samples go by.
//!
//! Whisper floors every value at `max - 8` over the whole signal, so a
//! window cannot be finished before the whole signal was seen once:
//! [`MelMax`] is that first pass (samples pushed in, only the running
//! maximum kept), [`MelWindows`] the second (samples pulled as Whisper asks
//! for 30 s windows, front to back, each computed from a buffer of about
//! one window). Frame `f` reads samples `f * 160 - 200 .. f * 160 + 200`
//! (reflected at the start, zeros and their reflection past the end), so
//! both hold a window of samples, never the signal.

use super::{reflect, scale, FrameMel, MelFilters, HOP_LENGTH, N_FFT, N_FRAMES};

/// Samples frame `f` needs before it can be computed: up to its last one,
/// and past sample 200, which the reflection at the start reads.
fn needed(f: usize) -> usize {
    f * HOP_LENGTH + N_FFT / 2 + 1
}

/// The first sample any frame from `f` on reads.
fn first_read(f: usize) -> usize {
    (f * HOP_LENGTH).saturating_sub(N_FFT / 2)
}

/// Samples from `first` on, the rest of the signal dropped as frames pass.
struct Window {
    samples: Vec<f32>,
    first: usize,
}

impl Window {
    fn end(&self) -> usize {
        self.first + self.samples.len()
    }

    /// Sample `j` of a signal of `len` samples (zero past it).
    fn at(&self, j: usize, len: usize) -> f32 {
        if j >= len {
            return 0.0;
        }
        j.checked_sub(self.first)
            .and_then(|k| self.samples.get(k))
            .copied()
            .unwrap_or(0.0)
    }

    fn drop_before(&mut self, sample: usize) {
        let n = sample.saturating_sub(self.first).min(self.samples.len());
        self.samples.drain(..n);
        self.first += n;
    }
}

/// The first pass: the largest `log10` mel value of a signal pushed in
/// pieces, followed by `pad` zeros. Holds about 400 samples.
pub struct MelMax<'a> {
    filters: &'a MelFilters,
    frame: FrameMel,
    window: Window,
    next_frame: usize,
    row: Vec<f32>,
    max: f32,
}

impl<'a> MelMax<'a> {
    pub fn new(filters: &'a MelFilters) -> Self {
        MelMax {
            filters,
            frame: FrameMel::new(),
            window: Window {
                samples: Vec::new(),
                first: 0,
            },
            next_frame: 0,
            row: vec![0f32; filters.n_mels()],
            max: f32::NEG_INFINITY,
        }
    }

    /// The next samples of the signal.
    pub fn push(&mut self, samples: &[f32]) {
        self.window.samples.extend_from_slice(samples);
        // Before the end is known, frames read only samples already here
        // (so neither the length nor the reflection at the end matters).
        let unknown = isize::MAX as usize;
        while needed(self.next_frame) <= self.window.end() {
            self.compute(unknown, unknown);
        }
        self.window.drop_before(first_read(self.next_frame));
    }

    /// The maximum over every frame of the signal and `pad` zeros after it
    /// (what [`super::log_mel_spectrogram`] floors at, plus 8).
    pub fn finish(mut self, pad: usize) -> f32 {
        let len = self.window.end();
        let total = len + pad;
        while self.next_frame < total / HOP_LENGTH {
            self.compute(len, total);
        }
        self.max
    }

    fn compute(&mut self, len: usize, total: usize) {
        let window = &self.window;
        let at = |i: usize| window.at(reflect(i, total), len);
        self.frame
            .compute(&at, self.next_frame, self.filters, &mut self.row);
        self.max = self.row.iter().copied().fold(self.max, f32::max);
        self.next_frame += 1;
    }
}

/// The second pass: 30 s windows of the spectrogram of a signal of `len`
/// samples followed by `pad` zeros, computed from samples pulled through
/// `read` (which appends the next piece and answers false at the end) as
/// far as each window needs. Windows must be asked for front to back.
pub struct MelWindows<'a, R> {
    filters: &'a MelFilters,
    frame: FrameMel,
    read: R,
    window: Window,
    ended: bool,
    len: usize,
    total: usize,
    floor: f32,
}

impl<'a, E, R: FnMut(&mut Vec<f32>) -> Result<bool, E>> MelWindows<'a, R> {
    /// `max` is [`MelMax::finish`] over the same signal and padding.
    pub fn new(filters: &'a MelFilters, len: usize, pad: usize, max: f32, read: R) -> Self {
        MelWindows {
            filters,
            frame: FrameMel::new(),
            read,
            window: Window {
                samples: Vec::new(),
                first: 0,
            },
            ended: false,
            len,
            total: len + pad,
            floor: max - 8.0,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.filters.n_mels()
    }

    /// Frames in the spectrogram.
    pub fn n_frames(&self) -> usize {
        self.total / HOP_LENGTH
    }

    /// Frames `start..start + len` as a `[n_mels, N_FRAMES]` block, zero
    /// past the end: [`super::LogMel::window`] of the whole spectrogram.
    /// `Ok(None)` when the signal ended before its announced length, or a
    /// window before the last one's start is asked for.
    pub fn window(&mut self, start: usize, len: usize) -> Result<Option<Vec<f32>>, E> {
        let n_mels = self.n_mels();
        let mut out = vec![0f32; n_mels * N_FRAMES];
        let avail = self.n_frames().saturating_sub(start).min(len).min(N_FRAMES);
        if avail == 0 {
            return Ok(Some(out));
        }
        if first_read(start) < self.window.first {
            return Ok(None);
        }
        self.window.drop_before(first_read(start));
        let need = needed(start + avail - 1).min(self.len);
        while self.window.end() < need {
            if self.ended || !(self.read)(&mut self.window.samples)? {
                self.ended = true;
                if self.window.end() < need {
                    return Ok(None);
                }
            }
        }
        let mut row = vec![0f32; n_mels];
        let (window, len, total) = (&self.window, self.len, self.total);
        let at = |i: usize| window.at(reflect(i, total), len);
        for k in 0..avail {
            self.frame.compute(&at, start + k, self.filters, &mut row);
            for (m, &v) in row.iter().enumerate() {
                out[m * N_FRAMES + k] = scale(v, self.floor);
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{log_mel_spectrogram, N_SAMPLES, SAMPLE_RATE};
    use super::*;

    #[test]
    fn streamed_windows_equal_the_whole_spectrogram() {
        let filters = MelFilters::slaney(80, N_FFT, SAMPLE_RATE);
        // 75 s of a chirp with noise: three windows, the last partial.
        let n = 75 * SAMPLE_RATE + 123;
        let signal: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                0.4 * (2.0 * std::f32::consts::PI * (100.0 + 40.0 * t) * t).sin()
                    + 0.05 * (((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            })
            .collect();
        let whole = log_mel_spectrogram(&signal, &filters, N_SAMPLES);

        let mut max = MelMax::new(&filters);
        for piece in signal.chunks(777) {
            max.push(piece);
        }
        let max = max.finish(N_SAMPLES);
        let mut pieces = signal.chunks(5_003);
        let mut mel = MelWindows::new(&filters, n, N_SAMPLES, max, |out: &mut Vec<f32>| {
            Ok::<_, ()>(match pieces.next() {
                Some(p) => {
                    out.extend_from_slice(p);
                    true
                }
                None => false,
            })
        });
        assert_eq!(mel.n_frames(), whole.n_frames);
        // Seeks as Whisper makes them: forward, by less than a window too.
        for (start, len) in [(0, 3000), (2_450, 3000), (5_450, 3000), (7_000, 1_200)] {
            let streamed = mel.window(start, len).unwrap().expect("in order");
            assert!(
                streamed == whole.window(start, len),
                "window at {start} differs"
            );
        }
        // Backwards is refused, not answered wrongly.
        assert!(mel.window(0, 3000).unwrap().is_none());
    }

    #[test]
    fn a_signal_shorter_than_announced_is_refused() {
        let filters = MelFilters::slaney(80, N_FFT, SAMPLE_RATE);
        let mut given = false;
        let mut mel = MelWindows::new(&filters, 64_000, N_SAMPLES, 0.0, |out: &mut Vec<f32>| {
            let more = !given;
            if more {
                out.extend_from_slice(&[0.1; 16_000]);
            }
            given = true;
            Ok::<_, ()>(more)
        });
        assert!(mel.window(0, 3000).unwrap().is_none());
    }
}
