//! Only the speech of a long recording: a second decoding pass that keeps
//! the samples inside VAD's regions and drops the rest as it goes, so a
//! transcription holds memory in proportion to its speech, not its length.

use super::Input;
use std::ops::Range;

use super::{decode_chunks, AudioError, DecodeOptions};
use crate::transcript::SpeechRegion;
use crate::whisper::SampleSource;

/// 16 kHz mono samples of some ranges of a recording; the rest reads as
/// silence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeechSamples {
    /// Samples in the whole recording.
    pub len: usize,
    /// (first sample, samples), sorted and apart.
    pub parts: Vec<(usize, Vec<f32>)>,
}

impl SpeechSamples {
    /// The sample ranges covering `regions` at `rate` (a sample either side
    /// of rounding), sorted and merged.
    pub fn ranges_for(regions: &[SpeechRegion], rate: u32) -> Vec<Range<usize>> {
        let rate = f64::from(rate);
        let mut ranges: Vec<Range<usize>> = regions
            .iter()
            .filter(|r| r.start.is_finite() && r.end.is_finite() && r.end > r.start)
            .map(|r| {
                let a = (r.start.max(0.0) * rate).floor() as usize;
                let b = (r.end.max(0.0) * rate).ceil() as usize + 1;
                a.saturating_sub(1)..b
            })
            .collect();
        ranges.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// Samples kept.
    pub fn kept(&self) -> usize {
        self.parts.iter().map(|(_, s)| s.len()).sum()
    }
}

impl SampleSource for SpeechSamples {
    fn sample_count(&self) -> usize {
        self.len
    }

    fn extend_range(&self, range: Range<usize>, out: &mut Vec<f32>) {
        let mut at = range.start;
        for (first, samples) in &self.parts {
            let end = first + samples.len();
            if end <= at || *first >= range.end {
                continue;
            }
            if *first > at {
                out.extend(std::iter::repeat_n(0f32, first - at));
                at = *first;
            }
            let stop = end.min(range.end);
            out.extend_from_slice(&samples[at - first..stop - first]);
            at = stop;
        }
        out.extend(std::iter::repeat_n(0f32, range.end.saturating_sub(at)));
    }
}

/// Decodes `path` (mono, at `options.sample_rate`) keeping only the samples
/// in `ranges` (sorted, apart; see [`SpeechSamples::ranges_for`]).
pub fn decode_speech<'a>(
    input: impl Into<Input<'a>>,
    options: &DecodeOptions,
    should_stop: &dyn Fn() -> bool,
    ranges: &[Range<usize>],
) -> Result<SpeechSamples, AudioError> {
    if options.channels.count() != 1 {
        return Err(AudioError::InvalidArgument(
            "speech is kept from mono audio only".into(),
        ));
    }
    let mut parts: Vec<(usize, Vec<f32>)> = Vec::new();
    // ranges[next] is the first not finished; `filling`: its part is open.
    let mut next = 0;
    let mut filling = false;
    let info = decode_chunks::<AudioError>(input, options, should_stop, |chunk, first| {
        let first = first as usize;
        let end = first + chunk.len();
        while let Some(r) = ranges.get(next) {
            if r.start >= end {
                break;
            }
            let (a, b) = (r.start.max(first), r.end.min(end));
            if a < b {
                let piece = &chunk[a - first..b - first];
                match parts.last_mut() {
                    Some((_, samples)) if filling => samples.extend_from_slice(piece),
                    _ => parts.push((a, piece.to_vec())),
                }
                filling = true;
            }
            if r.end > end {
                break;
            }
            next += 1;
            filling = false;
        }
        Ok(())
    })?;
    Ok(SpeechSamples {
        len: info.frames as usize,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_read_back_with_silence_between() {
        let regions = [
            SpeechRegion {
                start: 0.5,
                end: 1.0,
            },
            SpeechRegion {
                start: 0.9,
                end: 1.5,
            },
            SpeechRegion {
                start: 3.0,
                end: 3.25,
            },
        ];
        let ranges = SpeechSamples::ranges_for(&regions, 16);
        assert_eq!(ranges, vec![7..25, 47..53]);
        let whole: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let speech = SpeechSamples {
            len: 64,
            parts: ranges
                .iter()
                .map(|r| (r.start, whole[r.clone()].to_vec()))
                .collect(),
        };
        assert_eq!(speech.kept(), 24);
        let mut out = Vec::new();
        speech.extend_range(10..20, &mut out);
        assert_eq!(out, whole[10..20]);
        out.clear();
        speech.extend_range(20..50, &mut out);
        let expected: Vec<f32> = (20..50)
            .map(|i| if (25..47).contains(&i) { 0.0 } else { i as f32 })
            .collect();
        assert_eq!(out, expected);
    }
}
