//! Speech regions joined into one signal for Whisper, and its times mapped
//! back: [`RegionMap`] cuts the regions out (with a short silence between
//! them) from a recording in memory ([`SampleSource`]) or, through a
//! [`Joiner`], from one read front to back in pieces.

use super::SAMPLE_RATE;
use crate::transcript::SpeechRegion;

/// Silence put between joined speech regions: Whisper places segment
/// boundaries better at a pause, and times that fall in it map to the edge
/// of a region instead of into the audio that was cut out.
pub(super) const REGION_GAP_SAMPLES: usize = SAMPLE_RATE * 3 / 10;

/// 16 kHz audio in memory that [`WhisperModel::transcribe_regions`] reads
/// its regions from (long recordings are read from their file instead,
/// window by window: `transcribe_regions_streamed`).
pub trait SampleSource {
    /// Samples in the whole recording.
    fn sample_count(&self) -> usize;
    /// Appends samples `range` to `out`.
    fn extend_range(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>);
}

impl SampleSource for [f32] {
    fn sample_count(&self) -> usize {
        self.len()
    }

    fn extend_range(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        out.extend_from_slice(&self[range]);
    }
}

impl SampleSource for Vec<f32> {
    fn sample_count(&self) -> usize {
        self.len()
    }

    fn extend_range(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        out.extend_from_slice(&self[range]);
    }
}

/// Joins speech regions into one signal and maps its times back.
pub(super) struct RegionMap {
    /// (start in joined signal, start in original, length), seconds.
    spans: Vec<(f64, f64, f64)>,
    /// Sample ranges in the original signal.
    ranges: Vec<(usize, usize)>,
}

impl RegionMap {
    pub(super) fn new(regions: &[SpeechRegion], n_samples: usize) -> Self {
        let sr = SAMPLE_RATE as f64;
        let mut ranges: Vec<(usize, usize)> = regions
            .iter()
            .filter(|r| r.start.is_finite() && r.end.is_finite())
            .map(|r| {
                let a = ((r.start.max(0.0) * sr) as usize).min(n_samples);
                let b = ((r.end.max(0.0) * sr).ceil() as usize).min(n_samples);
                (a, b)
            })
            .filter(|(a, b)| b > a)
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut spans = Vec::new();
        let mut at = 0usize;
        for &(a, b) in &merged {
            spans.push((at as f64 / sr, a as f64 / sr, (b - a) as f64 / sr));
            at += b - a + REGION_GAP_SAMPLES;
        }
        Self {
            spans,
            ranges: merged,
        }
    }

    pub(super) fn gather<S: SampleSource + ?Sized>(&self, samples: &S) -> Vec<f32> {
        let total = self
            .ranges
            .iter()
            .map(|(a, b)| b - a + REGION_GAP_SAMPLES)
            .sum();
        let mut out = Vec::with_capacity(total);
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            if i > 0 {
                out.extend(std::iter::repeat_n(0f32, REGION_GAP_SAMPLES));
            }
            samples.extend_range(a..b, &mut out);
        }
        out
    }

    /// Maps a time of the joined signal to the original timeline. A time in
    /// the gap after a region (or exactly on its end) is the start of the
    /// next region, or with `is_end` the end of that region, so a segment
    /// never spans the silence that was cut out.
    pub(super) fn to_original(&self, t: f64, is_end: bool) -> f64 {
        let Some(i) = self
            .spans
            .iter()
            .rposition(|&(joined, _, _)| joined <= t)
            .or((!self.spans.is_empty()).then_some(0))
        else {
            return t;
        };
        let (joined, orig, len) = self.spans[i];
        if is_end && t <= joined && i > 0 {
            let (_, prev_orig, prev_len) = self.spans[i - 1];
            return prev_orig + prev_len;
        }
        if t - joined < len || is_end {
            return orig + (t - joined).clamp(0.0, len);
        }
        match self.spans.get(i + 1) {
            Some(&(_, next_orig, _)) => next_orig,
            None => orig + len,
        }
    }
}

impl RegionMap {
    /// Samples in the joined signal.
    pub(super) fn joined_len(&self) -> usize {
        let speech: usize = self.ranges.iter().map(|(a, b)| b - a).sum();
        speech + REGION_GAP_SAMPLES * self.ranges.len().saturating_sub(1)
    }

    /// Turns the recording, fed front to back, into the joined signal.
    pub(super) fn joiner(&self) -> Joiner<'_> {
        Joiner {
            ranges: &self.ranges,
            next: 0,
            at: 0,
            started: false,
        }
    }
}

/// What [`RegionMap::gather`] makes, from a recording that arrives in
/// pieces: each piece's samples inside the regions go on, a gap of silence
/// before every region but the first, the rest is dropped.
pub(super) struct Joiner<'m> {
    ranges: &'m [(usize, usize)],
    /// The first range not finished.
    next: usize,
    /// The recording's sample at the start of the next piece.
    at: usize,
    /// Whether `ranges[next]` has begun (its gap is out).
    started: bool,
}

impl Joiner<'_> {
    /// Feeds the next piece of the recording, handing the joined signal it
    /// yields to `emit`.
    pub(super) fn feed(&mut self, piece: &[f32], emit: &mut dyn FnMut(&[f32])) {
        static GAP: [f32; REGION_GAP_SAMPLES] = [0.0; REGION_GAP_SAMPLES];
        let (first, end) = (self.at, self.at + piece.len());
        while let Some(&(a, b)) = self.ranges.get(self.next) {
            if a >= end {
                break;
            }
            let (s, e) = (a.max(first), b.min(end));
            if s < e {
                if !self.started && self.next > 0 {
                    emit(&GAP);
                }
                self.started = true;
                emit(&piece[s - first..e - first]);
            }
            if b > end {
                break;
            }
            self.next += 1;
            self.started = false;
        }
        self.at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_map_round_trip() {
        let regions = [
            SpeechRegion {
                start: 1.0,
                end: 2.0,
            },
            SpeechRegion {
                start: 5.0,
                end: 6.5,
            },
        ];
        let map = RegionMap::new(&regions, 10 * SAMPLE_RATE);
        // 1 s + 0.3 s gap + 1.5 s.
        assert_eq!(map.gather(&vec![0.0; 10 * SAMPLE_RATE][..]).len(), 44_800);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(map.to_original(0.0, false), 1.0));
        assert!(near(map.to_original(0.5, false), 1.5));
        assert!(near(map.to_original(1.55, false), 5.25));
        assert!(near(map.to_original(2.8, true), 6.5));
        assert!(near(map.to_original(9.0, true), 6.5));
        // In the gap: a start goes to the next region, an end to the previous.
        assert!(near(map.to_original(1.0, false), 5.0));
        assert!(near(map.to_original(1.1, false), 5.0));
        assert!(near(map.to_original(1.1, true), 2.0));
        assert!(near(map.to_original(1.3, true), 2.0));
        assert!(near(map.to_original(1.3, false), 5.0));
    }

    #[test]
    fn the_joiner_makes_what_gather_makes() {
        let regions = [
            SpeechRegion {
                start: 0.0,
                end: 0.5,
            },
            SpeechRegion {
                start: 1.2,
                end: 2.0,
            },
            SpeechRegion {
                start: 2.01,
                end: 2.6,
            },
            SpeechRegion {
                start: 3.9,
                end: 9.0,
            },
        ];
        let n = 4 * SAMPLE_RATE;
        let signal: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let map = RegionMap::new(&regions, n);
        let gathered = map.gather(&signal);
        assert_eq!(gathered.len(), map.joined_len());
        for piece_len in [1, 999, 16_000, n] {
            let mut joined = Vec::new();
            let mut joiner = map.joiner();
            for piece in signal.chunks(piece_len) {
                joiner.feed(piece, &mut |p| joined.extend_from_slice(p));
            }
            assert!(joined == gathered, "pieces of {piece_len}");
        }
    }
}
