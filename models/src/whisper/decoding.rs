//! Decoding one 30 s window: language detection, the prompt and the
//! no-speech probability, the search for the window's tokens (`search.rs`:
//! beam search or greedy at temperature 0, `best_of` samples above), its
//! average log-probability, and the temperature fallback that retries a
//! window whose result fails the thresholds.

use candle_core::IndexOp;

use super::decoder::{self, DecoderState};
use super::guards::{compression_ratio, Cut};
use super::search::{best_candidate, Candidate, Limits};
use super::{DecodeOptions, WhisperError, WhisperModel, TIME_PRECISION};

/// The outcome of decoding one window at one temperature.
#[derive(Debug, Clone)]
pub(super) struct WindowResult {
    /// Sampled tokens (text and timestamps), without the prompt or EOT.
    pub(super) tokens: Vec<u32>,
    pub(super) avg_logprob: f64,
    pub(super) no_speech_prob: f64,
    pub(super) temperature: f64,
    pub(super) compression_ratio: f64,
    /// Decoding stopped at a repetition (see `guards.rs`).
    pub(super) cut: Option<Cut>,
}

impl WindowResult {
    /// Whether it came from a search (a fallback temperature or a beam)
    /// rather than greedy decoding at temperature 0.
    pub(super) fn searched(&self, opts: &DecodeOptions) -> bool {
        self.temperature > 0.0 || opts.beam_size > 1
    }
}

impl WhisperModel {
    /// The language tokens with their probabilities after `<|startoftranscript|>`,
    /// most likely first: a softmax over the language tokens only, as
    /// openai-whisper's `detect_language` does.
    pub(super) fn detect_language(
        &self,
        state: &mut DecoderState,
    ) -> Result<Vec<(u32, f64)>, WhisperError> {
        state.reset_tokens();
        let hidden = self.decoder.forward(&[self.specials.sot], state)?;
        let logits = self
            .decoder
            .logits(&decoder::last_row(&hidden)?)?
            .i(0)?
            .to_vec1::<f32>()?;
        state.reset_tokens();
        let mut ranked: Vec<(u32, f64)> = self
            .specials
            .languages
            .iter()
            .filter_map(|&t| logits.get(t as usize).map(|&l| (t, f64::from(l))))
            .collect();
        let max = ranked
            .iter()
            .map(|(_, l)| *l)
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = ranked.iter().map(|(_, l)| (l - max).exp()).sum();
        for (_, l) in &mut ranked {
            *l = (*l - max).exp() / sum;
        }
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        if ranked.is_empty() {
            ranked.push((self.specials.sot + 1, 1.0));
        }
        Ok(ranked)
    }

    /// Decodes a window at each of `opts.temperatures` in turn until a
    /// result passes the thresholds ([`needs_fallback`]); when none does,
    /// the least bad attempt.
    pub(super) fn decode_with_fallback(
        &self,
        state: &mut DecoderState,
        prompt: &[u32],
        sot_sequence: &[u32],
        opts: &DecodeOptions,
        rng: &mut SplitMix64,
        check: &mut dyn FnMut() -> bool,
    ) -> Result<WindowResult, WhisperError> {
        let temperatures: &[f64] = if opts.temperatures.is_empty() {
            &[0.0]
        } else {
            &opts.temperatures
        };
        self.fall_back(
            state,
            prompt,
            sot_sequence,
            opts,
            temperatures,
            None,
            rng,
            check,
        )
    }

    /// [`WhisperModel::decode_with_fallback`] at `temperatures`, after a
    /// first attempt made elsewhere (`tried`: a batch's, which failed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fall_back(
        &self,
        state: &mut DecoderState,
        prompt: &[u32],
        sot_sequence: &[u32],
        opts: &DecodeOptions,
        temperatures: &[f64],
        tried: Option<WindowResult>,
        rng: &mut SplitMix64,
        check: &mut dyn FnMut() -> bool,
    ) -> Result<WindowResult, WhisperError> {
        let mut best: Option<WindowResult> = tried;
        for &t in temperatures {
            let started = std::time::Instant::now();
            let result = self.decode_window(state, prompt, sot_sequence, t, opts, rng, check)?;
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                temperature = t,
                avg_logprob = result.avg_logprob,
                compression_ratio = result.compression_ratio,
                no_speech_prob = result.no_speech_prob,
                cut = ?result.cut,
                tokens = result.tokens.len(),
                text = %self.decode_text(&result.tokens).unwrap_or_default(),
                "window decoded"
            );
            if !needs_fallback(&result, opts) {
                return Ok(result);
            }
            // Keep the least bad attempt in case every temperature fails.
            if best.as_ref().is_none_or(|b| less_bad(&result, b, opts)) {
                best = Some(result);
            }
        }
        best.ok_or(WhisperError::Cancelled)
    }

    /// Decodes one window at one temperature: beam search at temperature 0
    /// when `opts.beam_size` is above 1 (greedy otherwise), `opts.best_of`
    /// samples above 0; the best candidate by `opts.length_penalty` wins.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode_window(
        &self,
        state: &mut DecoderState,
        prompt: &[u32],
        sot_sequence: &[u32],
        temperature: f64,
        opts: &DecodeOptions,
        rng: &mut SplitMix64,
        check: &mut dyn FnMut() -> bool,
    ) -> Result<WindowResult, WhisperError> {
        state.reset_tokens();
        let (initial, sot_index) = self.initial_tokens(prompt, sot_sequence);
        let hidden = self.decoder.forward(&initial, state)?;
        let no_speech_prob = {
            let logits = self.decoder.logits(&decoder::row(&hidden, sot_index)?)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?;
            probs
                .i((0, self.specials.no_speech as usize))?
                .to_scalar::<f32>()? as f64
        };
        let first = self
            .decoder
            .logits(&decoder::last_row(&hidden)?)?
            .i(0)?
            .to_vec1::<f32>()?;
        let limits = self.limits(opts);
        let mut candidates = if temperature <= 0.0 && opts.beam_size > 1 {
            self.beam_search(state, first, opts.beam_size, opts.patience, &limits, check)?
        } else {
            let n = if temperature > 0.0 { opts.best_of } else { 1 };
            self.sample_sequences(state, first, n, temperature, &limits, rng, check)?
        };
        let chosen = match best_candidate(&candidates, opts.length_penalty) {
            Some(i) => candidates.swap_remove(i),
            None => Candidate {
                tokens: Vec::new(),
                sum_logprob: 0.0,
                cut: None,
            },
        };
        self.window_result(chosen, no_speech_prob, temperature)
    }

    /// What a window is prompted with: `<|startofprev|>` and the latest
    /// half-context of `prompt` (when there is one), then `sot_sequence`;
    /// and the index of `<|startoftranscript|>` in it.
    pub(super) fn initial_tokens(&self, prompt: &[u32], sot_sequence: &[u32]) -> (Vec<u32>, usize) {
        let mut initial: Vec<u32> = Vec::new();
        if !prompt.is_empty() {
            initial.push(self.specials.sot_prev);
            let keep = (self.decoder.n_ctx() / 2).saturating_sub(1);
            initial.extend_from_slice(&prompt[prompt.len().saturating_sub(keep)..]);
        }
        let sot_index = initial.len();
        initial.extend_from_slice(sot_sequence);
        (initial, sot_index)
    }

    /// What bounds every search of a window under `opts`.
    pub(super) fn limits(&self, opts: &DecodeOptions) -> Limits {
        Limits {
            sample_len: self.decoder.n_ctx() / 2,
            max_initial: (opts.max_initial_timestamp / TIME_PRECISION).round() as u32,
            loop_guard: opts.suppress_repetition_loops,
        }
    }

    /// The window's result for its chosen candidate.
    pub(super) fn window_result(
        &self,
        chosen: Candidate,
        no_speech_prob: f64,
        temperature: f64,
    ) -> Result<WindowResult, WhisperError> {
        let text = self.decode_text(&chosen.tokens)?;
        Ok(WindowResult {
            avg_logprob: chosen.sum_logprob / (chosen.tokens.len() + 1) as f64,
            no_speech_prob,
            temperature,
            compression_ratio: compression_ratio(&text),
            tokens: chosen.tokens,
            cut: chosen.cut,
        })
    }
}

/// Whether failed attempt `a` at a window is less bad than `b`, when every
/// temperature fails, by faster-whisper's rule: the likelier (average
/// log-probability) of those whose text does not compress as repetitive,
/// else of all. An attempt the repetition guard cut competes with its cut
/// text: one copy is kept, and the loop goes on from its last timestamp,
/// so the audio after the cut is heard again.
///
/// (Preferring any attempt that was not cut lost speech: on JFK's clip
/// five times over, where every attempt at a window is cut where the
/// sentence comes round again, a sample at temperature 1.0 reading
/// "America ask", average log-probability -3.4, won over cut attempts at
/// -0.3, and the rest of the recording's last window was never heard.)
pub(super) fn less_bad(a: &WindowResult, b: &WindowResult, opts: &DecodeOptions) -> bool {
    let plain = |r: &WindowResult| {
        opts.compression_ratio_threshold
            .is_none_or(|cr| r.compression_ratio <= cr)
    };
    (plain(a) && !plain(b)) || (plain(a) == plain(b) && a.avg_logprob > b.avg_logprob)
}

/// Whether a window's result fails the thresholds (so the next temperature
/// is tried): it looped ([`Cut::Loop`]; a sentence said again is kept:
/// [`Cut::Repeat`]), its text compresses too well, or its tokens are
/// too unlikely; unless the window is silence anyway.
pub(super) fn needs_fallback(result: &WindowResult, opts: &DecodeOptions) -> bool {
    if let Some(ns) = opts.no_speech_threshold {
        if result.no_speech_prob > ns {
            return false;
        }
    }
    let repetitive = opts
        .compression_ratio_threshold
        .is_some_and(|cr| result.compression_ratio > cr);
    let unlikely = opts
        .logprob_threshold
        .is_some_and(|lp| result.avg_logprob < lp);
    result.cut == Some(Cut::Loop) || repetitive || unlikely
}

pub(super) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

pub(super) fn log_sum_exp(v: &[f32]) -> f32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + v.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

pub(super) fn log_softmax(v: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(v);
    v.iter().map(|&x| x - lse).collect()
}

pub(super) fn sample(logits: &[f32], temperature: f64, rng: &mut SplitMix64) -> u32 {
    let t = temperature as f32;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / t) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut r = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r <= 0.0 && *w > 0.0 {
            return i as u32;
        }
    }
    argmax(logits)
}

/// Small deterministic PRNG for temperature sampling.
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(avg_logprob: f64, compression_ratio: f64, cut: Option<Cut>) -> WindowResult {
        WindowResult {
            tokens: vec![1, 2, 3],
            avg_logprob,
            no_speech_prob: 0.1,
            temperature: 0.0,
            compression_ratio,
            cut,
        }
    }

    #[test]
    fn the_least_bad_failure_is_the_likeliest_plain_one() {
        let opts = DecodeOptions::default();
        // The case that lost speech: a cut attempt at -0.33 against an
        // uncut sample at -3.37; the cut one is kept.
        let cut = attempt(-0.33, 1.4, Some(Cut::Loop));
        let garbled = attempt(-3.37, 0.58, None);
        assert!(less_bad(&cut, &garbled, &opts));
        assert!(!less_bad(&garbled, &cut, &opts));
        // Text that compresses as repetitive loses to any that does not,
        // however likely.
        let repetitive = attempt(-0.1, 3.0, None);
        assert!(less_bad(&garbled, &repetitive, &opts));
        assert!(!less_bad(&attempt(-0.2, 2.6, None), &repetitive, &opts));
        assert!(less_bad(&attempt(-0.05, 2.6, None), &repetitive, &opts));
        // Without a compression threshold, likelihood alone decides.
        let no_cr = DecodeOptions {
            compression_ratio_threshold: None,
            ..DecodeOptions::default()
        };
        assert!(less_bad(&repetitive, &garbled, &no_cr));
    }

    #[test]
    fn a_loop_falls_back_and_a_sentence_said_again_does_not() {
        let opts = DecodeOptions::default();
        assert!(needs_fallback(&attempt(-0.3, 1.4, Some(Cut::Loop)), &opts));
        assert!(!needs_fallback(
            &attempt(-0.3, 1.4, Some(Cut::Repeat { copy: vec![7] })),
            &opts
        ));
        assert!(!needs_fallback(&attempt(-0.3, 1.4, None), &opts));
        // The thresholds still apply to a cut window.
        assert!(needs_fallback(
            &attempt(-1.5, 1.4, Some(Cut::Repeat { copy: vec![7] })),
            &opts
        ));
    }
}
