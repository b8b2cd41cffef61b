//! Diarization error rate, our own scorer.
//!
//! DER = (missed speech + false alarm + speaker confusion) / total reference
//! speech, all in seconds, with overlapping speech scored (each speaker of
//! an overlap counts). The time line is cut at every turn boundary into
//! pieces within which the sets of reference and hypothesis speakers are
//! constant; on a piece of length `d` with `R` reference and `H` hypothesis
//! speakers of which `C` are correctly mapped pairs:
//!
//! - missed += max(R - H, 0) d, false alarm += max(H - R, 0) d,
//! - confusion += (min(R, H) - C) d, total += R d.
//!
//! The reference-to-hypothesis speaker mapping is one to one and maximises
//! the total time each mapped pair speaks together (as NIST's md-eval does):
//! exhaustive search for up to 8 speakers on the smaller side, greedy by
//! overlap beyond that.
//!
//! `collar` follows md-eval's `-c`: that many seconds on *each* side of
//! every reference boundary are not scored (pyannote.metrics' `collar` is
//! the total width instead, so its 0.5 is our 0.25).

use std::collections::HashMap;

use crate::formats::SpeakerTurn;

/// Scored durations in seconds; `der` is their ratio (0 when there is no
/// reference speech and no false alarm).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DerReport {
    pub der: f64,
    pub missed: f64,
    pub false_alarm: f64,
    pub confusion: f64,
    /// Reference speech scored (outside the collars).
    pub total: f64,
}

const EXHAUSTIVE_MAX: usize = 8;

/// Scores `hypothesis` against `reference`; see the module documentation.
pub fn score(reference: &[SpeakerTurn], hypothesis: &[SpeakerTurn], collar: f64) -> DerReport {
    let (ref_ids, ref_names) = speaker_ids(reference);
    let (hyp_ids, hyp_names) = speaker_ids(hypothesis);
    let collar = collar.max(0.0);

    // Boundaries of every piece.
    let mut cuts: Vec<f64> = Vec::new();
    let mut no_score: Vec<(f64, f64)> = Vec::new();
    for t in reference {
        cuts.extend([t.start, t.end]);
        if collar > 0.0 {
            for b in [t.start, t.end] {
                no_score.push((b - collar, b + collar));
                cuts.extend([b - collar, b + collar]);
            }
        }
    }
    for t in hypothesis {
        cuts.extend([t.start, t.end]);
    }
    cuts.retain(|c| c.is_finite());
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();

    // Each piece: (duration, reference speakers, hypothesis speakers).
    let mut pieces: Vec<(f64, Vec<usize>, Vec<usize>)> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let mid = 0.5 * (a + b);
        if b <= a || no_score.iter().any(|&(s, e)| mid > s && mid < e) {
            continue;
        }
        let active = |turns: &[SpeakerTurn], ids: &[usize]| {
            let mut v: Vec<usize> = turns
                .iter()
                .zip(ids)
                .filter(|(t, _)| t.start < mid && mid < t.end)
                .map(|(_, &id)| id)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        pieces.push((
            b - a,
            active(reference, &ref_ids),
            active(hypothesis, &hyp_ids),
        ));
    }

    // Co-speaking time of every (reference, hypothesis) pair.
    let mut overlap = vec![vec![0f64; hyp_names.len()]; ref_names.len()];
    for (d, r, h) in &pieces {
        for &i in r {
            for &j in h {
                overlap[i][j] += d;
            }
        }
    }
    let mapping = best_mapping(&overlap);

    let mut report = DerReport::default();
    for (d, r, h) in &pieces {
        let correct = r
            .iter()
            .filter(|&&i| mapping[i].is_some_and(|j| h.contains(&j)))
            .count();
        let (nr, nh) = (r.len() as f64, h.len() as f64);
        report.total += nr * d;
        report.missed += (nr - nh).max(0.0) * d;
        report.false_alarm += (nh - nr).max(0.0) * d;
        report.confusion += (nr.min(nh) - correct as f64) * d;
    }
    let errors = report.missed + report.false_alarm + report.confusion;
    report.der = if report.total > 0.0 {
        errors / report.total
    } else if errors > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    report
}

/// Dense ids for speaker labels, in order of first appearance.
fn speaker_ids(turns: &[SpeakerTurn]) -> (Vec<usize>, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let ids = turns
        .iter()
        .map(|t| {
            *index.entry(t.speaker.as_str()).or_insert_with(|| {
                names.push(t.speaker.clone());
                names.len() - 1
            })
        })
        .collect();
    (ids, names)
}

/// For each reference speaker, its hypothesis speaker (or none), one to
/// one, maximising the summed overlap.
fn best_mapping(overlap: &[Vec<f64>]) -> Vec<Option<usize>> {
    let nr = overlap.len();
    let nh = overlap.first().map_or(0, Vec::len);
    if nr.min(nh) <= EXHAUSTIVE_MAX && nr.max(nh) <= 2 * EXHAUSTIVE_MAX {
        let mut best = (f64::NEG_INFINITY, vec![None; nr]);
        let mut current = vec![None; nr];
        let mut used = vec![false; nh];
        search(overlap, 0, 0.0, &mut current, &mut used, &mut best);
        return best.1;
    }
    // Greedy: largest overlaps first.
    let mut pairs: Vec<(f64, usize, usize)> = (0..nr)
        .flat_map(|i| (0..nh).map(move |j| (overlap[i][j], i, j)))
        .filter(|p| p.0 > 0.0)
        .collect();
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut mapping = vec![None; nr];
    let mut used = vec![false; nh];
    for (_, i, j) in pairs {
        if mapping[i].is_none() && !used[j] {
            mapping[i] = Some(j);
            used[j] = true;
        }
    }
    mapping
}

fn search(
    overlap: &[Vec<f64>],
    i: usize,
    gain: f64,
    current: &mut Vec<Option<usize>>,
    used: &mut Vec<bool>,
    best: &mut (f64, Vec<Option<usize>>),
) {
    if i == overlap.len() {
        if gain > best.0 {
            *best = (gain, current.clone());
        }
        return;
    }
    current[i] = None;
    search(overlap, i + 1, gain, current, used, best);
    for j in 0..used.len() {
        if !used[j] && overlap[i][j] > 0.0 {
            used[j] = true;
            current[i] = Some(j);
            search(overlap, i + 1, gain + overlap[i][j], current, used, best);
            used[j] = false;
            current[i] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(start: f64, end: f64, speaker: &str) -> SpeakerTurn {
        SpeakerTurn {
            start,
            end,
            speaker: speaker.into(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn perfect_hypothesis_with_other_labels_scores_zero() {
        let reference = [t(0.0, 5.0, "A"), t(5.0, 9.0, "B"), t(9.0, 12.0, "A")];
        let hypothesis = [t(0.0, 5.0, "x"), t(5.0, 9.0, "y"), t(9.0, 12.0, "x")];
        let r = score(&reference, &hypothesis, 0.0);
        assert!(close(r.total, 12.0));
        assert!(close(r.der, 0.0), "{r:?}");
    }

    #[test]
    fn missed_false_alarm_and_confusion_by_hand() {
        // Reference: A 0-10, B 10-20 (20 s of speech).
        // Hypothesis: x 0-8 (A, 2 s missed), y 8-12 (2 s confused as y is B's
        // match: 8-10 is A labelled y), y 12-20, x 20-23 (3 s false alarm).
        let reference = [t(0.0, 10.0, "A"), t(10.0, 20.0, "B")];
        let hypothesis = [t(0.0, 8.0, "x"), t(8.0, 20.0, "y"), t(20.0, 23.0, "x")];
        let r = score(&reference, &hypothesis, 0.0);
        assert!(close(r.total, 20.0));
        assert!(close(r.missed, 0.0), "{r:?}");
        assert!(close(r.confusion, 2.0), "{r:?}");
        assert!(close(r.false_alarm, 3.0), "{r:?}");
        assert!(close(r.der, 5.0 / 20.0));

        let shorter = [t(0.0, 8.0, "x"), t(12.0, 20.0, "y")];
        let r = score(&reference, &shorter, 0.0);
        assert!(close(r.missed, 4.0), "{r:?}");
        assert!(close(r.der, 0.2));
    }

    #[test]
    fn overlap_counts_each_speaker() {
        // A 0-10 and B 5-10 overlap; hypothesis only has A's match.
        let reference = [t(0.0, 10.0, "A"), t(5.0, 10.0, "B")];
        let hypothesis = [t(0.0, 10.0, "x")];
        let r = score(&reference, &hypothesis, 0.0);
        assert!(close(r.total, 15.0));
        assert!(close(r.missed, 5.0));
        assert!(close(r.confusion, 0.0));
        // A hypothesis that says "two speakers" where one of them is wrong.
        let hypothesis = [t(0.0, 10.0, "x"), t(5.0, 10.0, "y"), t(5.0, 10.0, "z")];
        let r = score(&reference, &hypothesis, 0.0);
        assert!(close(r.false_alarm, 5.0), "{r:?}");
        assert!(close(r.missed + r.confusion, 0.0), "{r:?}");
    }

    #[test]
    fn collar_hides_errors_near_reference_boundaries() {
        let reference = [t(0.0, 10.0, "A"), t(10.0, 20.0, "B")];
        // The change is detected 0.2 s late.
        let hypothesis = [t(0.0, 10.2, "x"), t(10.2, 20.0, "y")];
        let r = score(&reference, &hypothesis, 0.0);
        assert!(close(r.confusion, 0.2), "{r:?}");
        let r = score(&reference, &hypothesis, 0.25);
        assert!(close(r.der, 0.0), "{r:?}");
        // Collars at 0, 10 and 20 remove 0.25 + 0.5 + 0.25 s of speech.
        assert!(close(r.total, 19.0), "{r:?}");
    }

    #[test]
    fn mapping_is_one_to_one_and_optimal() {
        // A speaks with x more than with y, but giving x to B and y to A is
        // better overall.
        let reference = [t(0.0, 6.0, "A"), t(6.0, 16.0, "B")];
        let hypothesis = [t(0.0, 2.0, "y"), t(2.0, 16.0, "x")];
        let r = score(&reference, &hypothesis, 0.0);
        // x->B (10 s), y->A (2 s): confusion 4 s (A's 2-6 labelled x).
        assert!(close(r.confusion, 4.0), "{r:?}");
        // Empty hypothesis: everything missed.
        let r = score(&reference, &[], 0.0);
        assert!(close(r.der, 1.0));
        assert!(close(score(&[], &[], 0.0).der, 0.0));
    }
}
