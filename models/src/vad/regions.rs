//! Speech regions from per-frame probabilities: a port of silero's
//! `get_speech_timestamps_from_probs` (v6.2.3, with
//! `min_silence_at_max_speech = 98 ms` and
//! `use_max_poss_sil_at_max_speech = True`), run one frame at a time by
//! [`RegionTracker`] so a stream never keeps its probabilities. A region is
//! handed out once the next one has begun (its padding depends on the gap)
//! or at the end; the whole-slice [`regions_from_probs`] runs the same
//! tracker, so both give the same regions.

use crate::transcript::SpeechRegion;

use super::{VadParams, FRAME_SAMPLES, SAMPLE_RATE};

/// Speech regions of `probs` (one per frame) in audio of `n_samples`
/// samples at 16 kHz, in seconds without rounding.
pub fn regions_from_probs(
    probs: &[f32],
    n_samples: usize,
    params: &VadParams,
) -> Vec<SpeechRegion> {
    let mut tracker = RegionTracker::new(params);
    let mut out = Vec::new();
    for &p in probs {
        tracker.push(p, &mut out);
    }
    tracker.finish(n_samples as u64, &mut out);
    out
}

/// silero's start/stop/padding state machine, fed one probability at a time.
/// Sample positions are integers, as in silero.
#[derive(Debug, Clone)]
pub struct RegionTracker {
    threshold: f32,
    neg_threshold: f32,
    min_speech: f64,
    pad: f64,
    max_speech: f64,
    min_silence: f64,
    min_silence_at_max: f64,
    /// Frames seen.
    frame: usize,
    /// Start of the speech being tracked; `None` plays the role of silero's
    /// empty `current_speech` dict.
    current: Option<i64>,
    triggered: bool,
    temp_end: i64,
    prev_end: i64,
    next_start: i64,
    possible_ends: Vec<(i64, i64)>,
    /// The last finished speech, start already padded, end waiting for the
    /// next one's start.
    held: Option<(i64, i64)>,
    /// Whether a speech was found yet (the first one's start is padded alone).
    any: bool,
}

impl RegionTracker {
    pub fn new(params: &VadParams) -> Self {
        let rate = f64::from(SAMPLE_RATE);
        let window = FRAME_SAMPLES as f64;
        // Probabilities are f32; the thresholds are f64 only so that an API
        // value like 0.4 reads back as 0.4.
        let threshold = params.threshold as f32;
        let neg_threshold = params
            .neg_threshold
            .map(|n| n as f32)
            .unwrap_or_else(|| (threshold - 0.15).max(0.01));
        let pad = rate * f64::from(params.speech_pad_ms) / 1000.0;
        RegionTracker {
            threshold,
            neg_threshold,
            min_speech: rate * f64::from(params.min_speech_ms) / 1000.0,
            pad,
            max_speech: match params.max_speech_s {
                Some(s) if s.is_finite() => rate * s - window - 2.0 * pad,
                _ => f64::INFINITY,
            },
            min_silence: rate * f64::from(params.min_silence_ms) / 1000.0,
            min_silence_at_max: rate * 98.0 / 1000.0,
            frame: 0,
            current: None,
            triggered: false,
            temp_end: 0,
            prev_end: 0,
            next_start: 0,
            possible_ends: Vec::new(),
            held: None,
            any: false,
        }
    }

    /// Takes the next frame's probability; regions it finishes go to `out`.
    pub fn push(&mut self, prob: f32, out: &mut Vec<SpeechRegion>) {
        let cur = (FRAME_SAMPLES * self.frame) as i64;
        self.frame += 1;
        let threshold = self.threshold;

        if prob >= threshold && self.temp_end != 0 {
            let silence = cur - self.temp_end;
            if silence as f64 > self.min_silence_at_max {
                self.possible_ends.push((self.temp_end, silence));
            }
            self.temp_end = 0;
            if self.next_start < self.prev_end {
                self.next_start = cur;
            }
        }

        if prob >= threshold && !self.triggered {
            self.triggered = true;
            self.current = Some(cur);
            return;
        }

        if self.triggered {
            let start = self.current.unwrap_or(0);
            if (cur - start) as f64 > self.max_speech {
                if let Some(&(end, dur)) =
                    self.possible_ends
                        .iter()
                        .reduce(|best, x| if x.1 > best.1 { x } else { best })
                {
                    // Python's max() keeps the first of equal maxima, as
                    // `reduce` with a strict `>` does.
                    self.prev_end = end;
                    self.speech((start, self.prev_end), out);
                    self.current = None;
                    self.next_start = self.prev_end + dur;
                    if self.next_start < self.prev_end + cur {
                        self.current = Some(self.next_start);
                    } else {
                        self.triggered = false;
                    }
                    self.prev_end = 0;
                    self.next_start = 0;
                    self.temp_end = 0;
                    self.possible_ends.clear();
                } else {
                    self.speech((start, cur), out);
                    self.reset();
                    return;
                }
            }
        }

        if prob < self.neg_threshold && self.triggered {
            if self.temp_end == 0 {
                self.temp_end = cur;
            }
            let silence_now = cur - self.temp_end;
            if (silence_now as f64) < self.min_silence {
                return;
            }
            if let Some(start) = self.current {
                if (self.temp_end - start) as f64 > self.min_speech {
                    self.speech((start, self.temp_end), out);
                }
            }
            self.reset();
        }
    }

    /// Ends the audio after `n_samples` samples: the speech still open and
    /// the held region go to `out`.
    pub fn finish(mut self, n_samples: u64, out: &mut Vec<SpeechRegion>) {
        let audio_len = n_samples as i64;
        if let Some(start) = self.current {
            if (audio_len - start) as f64 > self.min_speech {
                self.speech((start, audio_len), out);
            }
        }
        if let Some((start, end)) = self.held.take() {
            let end = (end as f64 + self.pad).min(audio_len as f64) as i64;
            out.push(region(start, end));
        }
    }

    /// Back to silence (silero's reset after a region ends).
    fn reset(&mut self) {
        self.current = None;
        self.prev_end = 0;
        self.next_start = 0;
        self.temp_end = 0;
        self.triggered = false;
        self.possible_ends.clear();
    }

    /// A speech found, before padding. Padding splits a short gap between
    /// neighbours evenly, so the held region's end is padded now that its
    /// successor's start is known, and handed out.
    fn speech(&mut self, (mut start, end): (i64, i64), out: &mut Vec<SpeechRegion>) {
        if !self.any {
            self.any = true;
            start = (start as f64 - self.pad).max(0.0) as i64;
        }
        if let Some((held_start, mut held_end)) = self.held.take() {
            let gap = start - held_end;
            if (gap as f64) < 2.0 * self.pad {
                // Python's `//` floors.
                held_end += gap.div_euclid(2);
                start = (start - gap.div_euclid(2)).max(0);
            } else {
                // silero also caps this end at the audio's length; a later
                // speech starts at least a pad after it, inside the audio.
                held_end += self.pad as i64;
                start = (start - self.pad as i64).max(0);
            }
            out.push(region(held_start, held_end));
        }
        self.held = Some((start, end));
    }
}

fn region(start: i64, end: i64) -> SpeechRegion {
    let rate = f64::from(SAMPLE_RATE);
    SpeechRegion {
        start: start as f64 / rate,
        end: end as f64 / rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> VadParams {
        VadParams {
            min_silence_ms: 100,
            speech_pad_ms: 30,
            ..VadParams::default()
        }
    }

    #[test]
    fn defaults_match_api_md() {
        let p: VadParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, VadParams::default());
        assert!(p.enabled);
        assert_eq!(p.threshold, 0.5);
        assert_eq!(
            (p.min_speech_ms, p.min_silence_ms, p.speech_pad_ms),
            (250, 2000, 400)
        );
        assert_eq!(p.max_speech_s, None);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"enabled": true, "threshold": 0.5, "min_speech_ms": 250,
                               "min_silence_ms": 2000, "speech_pad_ms": 400})
        );
        assert!(serde_json::from_str::<VadParams>(r#"{"treshold": 0.4}"#).is_err());
    }

    #[test]
    fn validation() {
        assert!(VadParams::default().validate().is_ok());
        let bad = |p: VadParams| p.validate().unwrap_err();
        assert!(bad(VadParams {
            threshold: 0.0,
            ..VadParams::default()
        })
        .contains("vad.threshold"));
        assert!(bad(VadParams {
            threshold: f64::NAN,
            ..VadParams::default()
        })
        .contains("vad.threshold"));
        assert!(bad(VadParams {
            neg_threshold: Some(0.7),
            ..VadParams::default()
        })
        .contains("vad.neg_threshold"));
        assert!(bad(VadParams {
            max_speech_s: Some(0.5),
            ..VadParams::default()
        })
        .contains("vad.max_speech_s"));
        assert!(VadParams {
            max_speech_s: Some(30.0),
            ..VadParams::default()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn no_speech_gives_no_regions() {
        assert!(regions_from_probs(&[0.1; 100], 51_200, &params()).is_empty());
        assert!(regions_from_probs(&[], 0, &params()).is_empty());
    }

    #[test]
    fn one_region_with_padding() {
        // Frames 10..30 speech (0.32 s .. 0.96 s) in 2 s of audio.
        let mut probs = vec![0.0f32; 63];
        probs[10..30].fill(0.9);
        let r = regions_from_probs(&probs, 32_000, &params());
        assert_eq!(r.len(), 1);
        // start 5120 - 480 pad, end at the first silent frame 15360 + 480.
        assert_eq!(r[0].start, (5120.0 - 480.0) / 16_000.0);
        assert_eq!(r[0].end, (15_360.0 + 480.0) / 16_000.0);
    }

    #[test]
    fn short_blips_are_dropped_and_short_gaps_bridged() {
        let mut probs = vec![0.0f32; 200];
        probs[5..7].fill(0.9); // 64 ms: below min_speech
        probs[50..80].fill(0.9);
        probs[81..110].fill(0.9); // a one-frame dip: below min_silence
        let r = regions_from_probs(&probs, 200 * 512, &params());
        assert_eq!(r.len(), 1, "{r:?}");
        assert!((r[0].start - (50.0 * 512.0 - 480.0) / 16_000.0).abs() < 1e-9);
    }

    #[test]
    fn hysteresis_uses_neg_threshold() {
        // 0.4 is above the default neg threshold (0.35): speech continues.
        let mut probs = vec![0.0f32; 100];
        probs[10..20].fill(0.9);
        probs[20..60].fill(0.4);
        let r = regions_from_probs(&probs, 100 * 512, &params());
        assert_eq!(r.len(), 1);
        assert!((r[0].end - (60.0 * 512.0 + 480.0) / 16_000.0).abs() < 1e-9);
    }

    #[test]
    fn max_speech_splits_at_the_longest_pause() {
        // 20 s of speech with a 0.32 s pause at 6 s and 0.16 s at 12 s.
        let mut probs = vec![0.9f32; 625];
        probs[187..197].fill(0.0);
        probs[375..380].fill(0.0);
        let p = VadParams {
            max_speech_s: Some(15.0),
            min_silence_ms: 2000,
            ..params()
        };
        let r = regions_from_probs(&probs, 625 * 512, &p);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!((r[0].end - 187.0 * 512.0 / 16_000.0).abs() < 0.1, "{r:?}");
        assert!(r.iter().all(|s| s.end - s.start <= 15.0));
    }

    #[test]
    fn max_speech_without_pause_cuts_hard() {
        let probs = vec![0.9f32; 1000];
        let p = VadParams {
            max_speech_s: Some(5.0),
            ..params()
        };
        let r = regions_from_probs(&probs, 1000 * 512, &p);
        assert!(r.len() >= 3, "{r:?}");
        assert!(r.iter().all(|s| s.end - s.start <= 5.0 + 1e-9), "{r:?}");
    }
}
