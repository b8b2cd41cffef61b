//! Choosing a window's tokens at one temperature, the way openai-whisper's
//! `DecodingTask` does: independent sequences (greedy at temperature 0, or
//! `best_of` samples above it) or a beam search (`beam_size` beams, stopped
//! once `patience * beam_size` candidates have finished), then one
//! candidate chosen by its length-penalised log-probability.
//!
//! Every sequence of a search is a row of one [`DecoderState`]: a step feeds
//! all rows as one batch, and the rows are reordered (beams), duplicated (a
//! beam with two good continuations) or dropped (a finished sample) in the
//! state between steps. The logit filters and the repetition guard run per
//! sequence on its own tokens, as in the greedy loop.

use super::decoder::DecoderState;
use super::decoding::{argmax, log_sum_exp, sample, SplitMix64};
use super::guards::{repetition_loop, Cut};
use super::{WhisperError, WhisperModel};

/// A finished (or cut off) token sequence of one window.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    /// Sampled tokens (text and timestamps), without EOT.
    pub(super) tokens: Vec<u32>,
    /// Sum of the chosen tokens' log-probabilities (EOT's included when
    /// the sequence ended on it).
    pub(super) sum_logprob: f64,
    /// Cut by the repetition guard, and how (see `guards.rs`).
    pub(super) cut: Option<Cut>,
}

/// What bounds every search of a window.
pub(super) struct Limits {
    /// Most tokens sampled per window (openai's `sample_len`).
    pub(super) sample_len: usize,
    /// Latest first timestamp, in timestamp steps.
    pub(super) max_initial: u32,
    /// Cut a sequence at a repetition loop.
    pub(super) loop_guard: bool,
}

/// How often (in decoding steps) a search asks whether to stop.
const CHECK_EVERY: usize = 16;

impl WhisperModel {
    /// `n` sequences decoded independently from the prompt already in
    /// `state` (whose next-token logits are `first`): greedy at temperature
    /// 0, sampled above. A finished sequence leaves the batch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sample_sequences(
        &self,
        state: &mut DecoderState,
        first: Vec<f32>,
        n: usize,
        temperature: f64,
        limits: &Limits,
        rng: &mut SplitMix64,
        check: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Candidate>, WhisperError> {
        let n = n.max(1);
        state.select(&vec![0; n])?;
        self.decode_rows(state, vec![first; n], temperature, limits, rng, check)
    }

    /// One sequence per row of `state`, decoded independently from the
    /// prompt already in it, row `i`'s next-token logits being `firsts[i]`:
    /// the samples of one window ([`WhisperModel::sample_sequences`]), or
    /// the windows of a batch (`batch.rs`). A finished sequence leaves the
    /// batch; the candidates come back in row order.
    pub(super) fn decode_rows(
        &self,
        state: &mut DecoderState,
        firsts: Vec<Vec<f32>>,
        temperature: f64,
        limits: &Limits,
        rng: &mut SplitMix64,
        check: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Candidate>, WhisperError> {
        let eot = self.specials.eot;
        let n_ctx = self.decoder.n_ctx();
        let n = firsts.len();
        let mut rows: Vec<Candidate> = (0..n)
            .map(|_| Candidate {
                tokens: Vec::new(),
                sum_logprob: 0.0,
                cut: None,
            })
            .collect();
        // `live[i]`: which row batch row `i` of `state` and `logits` is.
        let mut live: Vec<usize> = (0..n).collect();
        let mut logits = firsts;
        let mut steps = 0;
        loop {
            let mut keep = Vec::with_capacity(live.len());
            let mut feed = Vec::with_capacity(live.len());
            for (i, &r) in live.iter().enumerate() {
                let row = &mut rows[r];
                let l = &mut logits[i];
                // `log_softmax(l)[t]` is `l[t] - lse`; only the chosen
                // token's is needed.
                let lse = self
                    .apply_filters(l, &row.tokens, limits.max_initial)
                    .unwrap_or_else(|| log_sum_exp(l));
                let logprob = |t: u32| l[t as usize] - lse;
                let next = if temperature <= 0.0 {
                    argmax(l)
                } else {
                    sample(l, temperature, rng)
                };
                if next == eot || row.tokens.len() >= limits.sample_len {
                    if next == eot {
                        row.sum_logprob += logprob(next) as f64;
                    }
                    continue;
                }
                row.sum_logprob += logprob(next) as f64;
                row.tokens.push(next);
                if limits.loop_guard {
                    if let Some((at, cut)) =
                        repetition_loop(&row.tokens, self.specials.timestamp_begin)
                    {
                        row.tokens.truncate(at);
                        row.cut = Some(cut);
                        continue;
                    }
                }
                keep.push(i);
                feed.push(next);
            }
            if keep.is_empty() || state.len() + 1 > n_ctx {
                break;
            }
            steps += 1;
            if steps % CHECK_EVERY == 0 && !check() {
                return Err(WhisperError::Cancelled);
            }
            state.select(&keep)?;
            live = keep.iter().map(|&i| live[i]).collect();
            let hidden = self.decoder.forward_step(&feed, state)?;
            logits = self.decoder.logits(&hidden)?.to_vec2::<f32>()?;
        }
        Ok(rows)
    }

    /// Beam search from the prompt already in `state` (whose next-token
    /// logits are `first`), as openai-whisper's `BeamSearchDecoder`: each
    /// step every beam proposes its `beam_size + 1` likeliest tokens scored
    /// by cumulative log-probability; proposals ending in EOT become
    /// candidates, the best `beam_size` others the next beams. The search
    /// ends when `round(beam_size * patience)` candidates have finished
    /// (or at the length limit, when the best beams still running fill the
    /// candidates up to `beam_size`).
    pub(super) fn beam_search(
        &self,
        state: &mut DecoderState,
        first: Vec<f32>,
        beam_size: usize,
        patience: f64,
        limits: &Limits,
        check: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Candidate>, WhisperError> {
        let eot = self.specials.eot;
        let n_ctx = self.decoder.n_ctx();
        let beam_size = beam_size.max(1);
        let max_candidates = ((beam_size as f64 * patience).round() as usize).max(1);
        // One beam to start with: openai starts `beam_size` copies of the
        // prompt, whose identical proposals collapse into these.
        let mut beams = vec![Beam {
            tokens: Vec::new(),
            sum_logprob: 0.0,
        }];
        let mut logits = vec![first];
        let mut finished: Vec<Candidate> = Vec::new();
        let mut steps = 0;
        loop {
            // (beam, token, cumulative log-probability)
            let mut proposals: Vec<(usize, u32, f64)> =
                Vec::with_capacity(beams.len() * (beam_size + 1));
            for (j, beam) in beams.iter().enumerate() {
                let l = &mut logits[j];
                let lse = self
                    .apply_filters(l, &beam.tokens, limits.max_initial)
                    .unwrap_or_else(|| log_sum_exp(l));
                for (token, logprob) in top_k(l, lse, beam_size + 1) {
                    proposals.push((j, token, beam.sum_logprob + logprob as f64));
                }
            }
            // Stable: equal scores keep beam order, then token order.
            proposals.sort_by(|a, b| b.2.total_cmp(&a.2));
            let mut next: Vec<Beam> = Vec::with_capacity(beam_size);
            let mut sources = Vec::with_capacity(beam_size);
            let mut feed = Vec::with_capacity(beam_size);
            for (j, token, score) in proposals {
                let mut tokens = beams[j].tokens.clone();
                if token == eot {
                    if finished.len() < max_candidates {
                        finished.push(Candidate {
                            tokens,
                            sum_logprob: score,
                            cut: None,
                        });
                    }
                    continue;
                }
                tokens.push(token);
                if limits.loop_guard {
                    if let Some((at, cut)) = repetition_loop(&tokens, self.specials.timestamp_begin)
                    {
                        tokens.truncate(at);
                        if finished.len() < max_candidates {
                            finished.push(Candidate {
                                tokens,
                                sum_logprob: score,
                                cut: Some(cut),
                            });
                        }
                        continue;
                    }
                }
                next.push(Beam {
                    tokens,
                    sum_logprob: score,
                });
                sources.push(j);
                feed.push(token);
                if next.len() == beam_size {
                    break;
                }
            }
            beams = next;
            let at_limit = beams
                .first()
                .is_none_or(|b| b.tokens.len() >= limits.sample_len);
            if finished.len() >= max_candidates || at_limit || state.len() + 1 > n_ctx {
                break;
            }
            steps += 1;
            if steps % CHECK_EVERY == 0 && !check() {
                return Err(WhisperError::Cancelled);
            }
            state.select(&sources)?;
            let hidden = self.decoder.forward_step(&feed, state)?;
            logits = self.decoder.logits(&hidden)?.to_vec2::<f32>()?;
        }
        // Too few finished: the likeliest beams still running join them.
        if finished.len() < beam_size {
            beams.sort_by(|a, b| b.sum_logprob.total_cmp(&a.sum_logprob));
            let missing = beam_size - finished.len();
            finished.extend(beams.into_iter().take(missing).map(|b| Candidate {
                tokens: b.tokens,
                sum_logprob: b.sum_logprob,
                cut: None,
            }));
        }
        Ok(finished)
    }
}

/// A beam still being extended.
struct Beam {
    tokens: Vec<u32>,
    sum_logprob: f64,
}

/// The `k` largest finite values of `v[i] - shift` (the log-probabilities
/// `log_softmax(v)` would hold, for `shift` its `log_sum_exp`) with their
/// indices, largest first (equal values: lower index first). Suppressed
/// tokens (-inf) are never proposed.
fn top_k(v: &[f32], shift: f32, k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, x) in v.iter().map(|&x| x - shift).enumerate() {
        if !x.is_finite() || (best.len() == k && x <= best[k - 1].1) {
            continue;
        }
        let at = best.partition_point(|&(_, y)| y >= x);
        best.insert(at, (i as u32, x));
        best.truncate(k);
    }
    best
}

/// Index of the candidate openai-whisper's `MaximumLikelihoodRanker` picks:
/// the highest sum of log-probabilities divided by the length (`None`) or
/// by the Google NMT penalty `((5 + length) / 6)^alpha`. The first wins a
/// tie; `None` when there are no candidates.
pub(super) fn best_candidate(
    candidates: &[Candidate],
    length_penalty: Option<f64>,
) -> Option<usize> {
    let score = |c: &Candidate| {
        let length = c.tokens.len() as f64;
        let penalty = match length_penalty {
            None => length,
            Some(alpha) => ((5.0 + length) / 6.0).powf(alpha),
        };
        if penalty > 0.0 {
            c.sum_logprob / penalty
        } else {
            f64::NEG_INFINITY
        }
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, c) in candidates.iter().enumerate() {
        let s = score(c);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(len: usize, sum_logprob: f64) -> Candidate {
        Candidate {
            tokens: vec![1; len],
            sum_logprob,
            cut: None,
        }
    }

    #[test]
    fn top_k_takes_the_largest_finite_values_in_order() {
        let v = [0.1, f32::NEG_INFINITY, 0.7, 0.3, 0.7, -2.0];
        assert_eq!(top_k(&v, 0.0, 3), vec![(2, 0.7), (4, 0.7), (3, 0.3)]);
        assert_eq!(top_k(&[f32::NEG_INFINITY, 1.0], 0.0, 3), vec![(1, 1.0)]);
        assert_eq!(top_k(&[1.0, 3.0, 2.0], 1.0, 2), vec![(1, 2.0), (2, 1.0)]);
    }

    #[test]
    fn ranking_divides_by_length_or_the_nmt_penalty() {
        // -6 over 3 tokens (-2 each) beats -3 over 1 token.
        let c = [candidate(1, -3.0), candidate(3, -6.0)];
        assert_eq!(best_candidate(&c, None), Some(1));
        // With alpha 0 the penalty is 1: the raw sum decides.
        assert_eq!(best_candidate(&c, Some(0.0)), Some(0));
        // alpha 1: -3 / 1 = -3 vs -6 / (8 / 6) = -4.5.
        assert_eq!(best_candidate(&c, Some(1.0)), Some(0));
        assert_eq!(best_candidate(&[], None), None);
        // Ties go to the first.
        let tie = [candidate(2, -2.0), candidate(2, -2.0)];
        assert_eq!(best_candidate(&tie, None), Some(0));
    }
}
