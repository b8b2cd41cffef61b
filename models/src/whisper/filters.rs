//! OpenAI's logit filters, applied to each step's logits before sampling.

use super::decoding::{log_softmax, log_sum_exp};
use super::WhisperModel;

impl WhisperModel {
    /// OpenAI's logit filters: blank/EOT suppression at the start, the
    /// suppressed-token list, and the timestamp rules (timestamps come in
    /// pairs, never go backwards, the first token is a timestamp no later
    /// than `max_initial`, and a timestamp wins when the timestamps together
    /// are likelier than any text token).
    ///
    /// Returns `log_sum_exp` of the filtered logits when it computed it on
    /// the logits as they are returned (the last rule changed nothing), so
    /// the caller's log-probabilities need no second pass over the
    /// vocabulary: `logits[i] - lse` is `log_softmax(logits)[i]` bit for bit.
    pub(super) fn apply_filters(
        &self,
        logits: &mut [f32],
        tokens: &[u32],
        max_initial: u32,
    ) -> Option<f32> {
        let neg = f32::NEG_INFINITY;
        let ts_begin = self.specials.timestamp_begin as usize;
        let eot = self.specials.eot as usize;
        let vocab = logits.len();
        if tokens.is_empty() {
            for &t in &self.suppress_begin {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = neg;
                }
            }
        }
        for &t in &self.suppress {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = neg;
            }
        }
        if let Some(l) = logits.get_mut(self.specials.no_timestamps as usize) {
            *l = neg;
        }
        if ts_begin >= vocab {
            return None;
        }
        let is_ts = |t: u32| t as usize >= ts_begin;
        let last_was_ts = tokens.last().is_some_and(|&t| is_ts(t));
        let penultimate_was_ts = tokens.len() < 2 || is_ts(tokens[tokens.len() - 2]);
        if last_was_ts {
            if penultimate_was_ts {
                logits[ts_begin..].fill(neg);
            } else {
                logits[..eot].fill(neg);
            }
        }
        if let Some(&last_ts) = tokens.iter().rev().find(|&&t| is_ts(t)) {
            // Timestamps never decrease; after a closed pair the next one
            // must also move forward (no zero-length segments).
            let floor = if last_was_ts && !penultimate_was_ts {
                last_ts as usize
            } else {
                last_ts as usize + 1
            };
            logits[ts_begin..floor.min(vocab)].fill(neg);
        }
        if tokens.is_empty() {
            logits[..ts_begin].fill(neg);
            let last_allowed = ts_begin + max_initial as usize;
            if last_allowed + 1 < vocab {
                logits[last_allowed + 1..].fill(neg);
            }
        }
        let lse = log_sum_exp(logits);
        if !lse.is_finite() {
            // Nothing allowed (or a NaN): the general formula, as before.
            let logprobs = log_softmax(logits);
            let ts_logprob = log_sum_exp(&logprobs[ts_begin..]);
            let max_text = logprobs[..ts_begin]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            if ts_logprob > max_text {
                logits[..ts_begin].fill(neg);
            }
            return None;
        }
        // `log_softmax(logits)` without building it: the timestamps' values
        // are computed as it computes them, and the largest text value is
        // the largest text logit minus `lse` (rounding keeps the order).
        let ts_logprob = log_sum_exp_minus(&logits[ts_begin..], lse);
        let max_text = logits[..ts_begin]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
            - lse;
        if ts_logprob > max_text {
            logits[..ts_begin].fill(neg);
            return None;
        }
        Some(lse)
    }
}

/// `log_sum_exp` of `v[i] - shift`, the same operations in the same order
/// as [`log_sum_exp`] over those values held in a vector.
fn log_sum_exp_minus(v: &[f32], shift: f32) -> f32 {
    let max = v
        .iter()
        .map(|&x| x - shift)
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + v
        .iter()
        .map(|&x| ((x - shift) - max).exp())
        .sum::<f32>()
        .ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut gives what the vector it replaces gave, bit for bit.
    #[test]
    fn shifted_log_sum_exp_is_the_vectors() {
        let v: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.037 - 20.0)
            .chain([f32::NEG_INFINITY, 3.5])
            .collect();
        let lse = log_sum_exp(&v);
        let logprobs = log_softmax(&v);
        assert_eq!(
            log_sum_exp_minus(&v[100..], lse).to_bits(),
            log_sum_exp(&logprobs[100..]).to_bits()
        );
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) - lse;
        let want = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max.to_bits(), want.to_bits());
        assert_eq!(
            log_sum_exp_minus(&[f32::NEG_INFINITY; 3], lse),
            f32::NEG_INFINITY
        );
    }
}
