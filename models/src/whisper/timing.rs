//! Word-level timestamps, openai-whisper's `timing.py` (which
//! faster-whisper and CTranslate2 follow): the window's text tokens aligned
//! with its audio (`align.rs`) are grouped into words (at spaces, or at
//! whole characters for languages written without them), punctuation joins
//! its word, and the duration heuristics of both upstream implementations
//! trim implausibly long words at pauses and segment edges.
//!
//! The long-form loops also time a window's words when nobody asked for
//! them, when its timestamp tokens end well before its text does
//! ([`WhisperModel::time_window`]).
//!
//! Limits: timings are as good as the attention, typically within a few
//! tens of milliseconds of faster-whisper's on the same weights; a word
//! has the resolution of one encoder frame (20 ms).

use candle_core::Tensor;

use super::align::Aligned;
use super::decoder::DecoderState;
use super::{WhisperError, WhisperModel};
use crate::mel::{HOP_LENGTH, SAMPLE_RATE};
use crate::transcript::Word;

/// Punctuation that joins the word after it, as openai-whisper merges it.
const PREPEND_PUNCTUATIONS: &str = "\"'“¿([{-";
/// Punctuation that joins the word before it.
const APPEND_PUNCTUATIONS: &str = "\"'.。,，!！?？:：”)]}、";
/// A word counts as a sentence end for the duration clamp.
const SENTENCE_END_MARKS: &str = ".。!！?？";
/// Python's `string.punctuation`, which decides a word of its own.
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
/// Languages written without spaces between words: split at characters.
const UNICODE_SPLIT_LANGUAGES: [&str; 6] = ["zh", "ja", "th", "lo", "my", "yue"];

/// One word of a window, times in seconds from the window's start.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct WordTiming {
    /// The word's text with Whisper's spacing (a leading space).
    pub(super) word: String,
    pub(super) tokens: Vec<u32>,
    pub(super) start: f64,
    pub(super) end: f64,
    /// Mean probability of the word's tokens.
    pub(super) probability: f64,
}

/// A segment of one window while its words are placed (absolute seconds on
/// the decoded timeline).
#[derive(Debug, Clone)]
pub(super) struct WindowSegment {
    pub(super) start: f64,
    pub(super) end: f64,
    /// Text and timestamp tokens.
    pub(super) tokens: Vec<u32>,
    pub(super) words: Option<Vec<Word>>,
}

impl WhisperModel {
    /// The words of `text_tokens` (a window's text, all its segments) with
    /// their times and probabilities, from their alignment with the audio
    /// ([`WhisperModel::align_tokens`]; `sot_len` tokens before the text).
    fn word_timings(
        &self,
        aligned: Aligned,
        sot_len: usize,
        text_tokens: &[u32],
        language: &str,
    ) -> Result<Vec<WordTiming>, WhisperError> {
        let Aligned { hidden, jump_times } = aligned;
        let eot = self.specials.eot;

        // Probability of each text token among the text tokens, read at the
        // position that predicts it (the first at `<|notimestamps|>`).
        let n_text = text_tokens.len();
        let rows = hidden.narrow(1, sot_len, n_text)?.squeeze(0)?;
        let logits = self
            .decoder
            .logits(&rows.contiguous()?)?
            .narrow(1, 0, eot as usize)?
            .contiguous()?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let ids = Tensor::new(text_tokens, probs.device())?.unsqueeze(1)?;
        let token_probs: Vec<f64> = probs
            .gather(&ids, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect();

        let (words, word_tokens) = self.split_to_word_tokens(text_tokens, language)?;
        let mut out = Vec::with_capacity(words.len());
        let mut at = 0;
        for (word, toks) in words.into_iter().zip(word_tokens) {
            let end_at = at + toks.len();
            let p = &token_probs[at..end_at];
            out.push(WordTiming {
                word,
                start: jump_times[at],
                end: jump_times[end_at],
                probability: p.iter().sum::<f64>() / p.len().max(1) as f64,
                tokens: toks,
            });
            at = end_at;
        }
        Ok(out)
    }

    /// Groups text tokens into words: at spaces and punctuation, or at
    /// every whole character for languages written without spaces.
    fn split_to_word_tokens(
        &self,
        tokens: &[u32],
        language: &str,
    ) -> Result<(Vec<String>, Vec<Vec<u32>>), WhisperError> {
        let (subwords, subword_tokens) = self.split_tokens_on_unicode(tokens)?;
        if UNICODE_SPLIT_LANGUAGES.contains(&language) {
            return Ok((subwords, subword_tokens));
        }
        let mut words: Vec<String> = Vec::new();
        let mut word_tokens: Vec<Vec<u32>> = Vec::new();
        for (subword, toks) in subwords.into_iter().zip(subword_tokens) {
            let with_space = subword.starts_with(' ');
            // Python's `in` on strings: a substring of the punctuation list.
            let punctuation = ASCII_PUNCTUATION.contains(subword.trim());
            match (words.last_mut(), word_tokens.last_mut()) {
                (Some(w), Some(t)) if !with_space && !punctuation => {
                    w.push_str(&subword);
                    t.extend(toks);
                }
                _ => {
                    words.push(subword);
                    word_tokens.push(toks);
                }
            }
        }
        Ok((words, word_tokens))
    }

    /// Splits where the tokens so far decode to whole characters (a token
    /// may hold part of a UTF-8 sequence).
    fn split_tokens_on_unicode(
        &self,
        tokens: &[u32],
    ) -> Result<(Vec<String>, Vec<Vec<u32>>), WhisperError> {
        const REPLACEMENT: char = '\u{fffd}';
        let decode = |ids: &[u32]| {
            self.tokenizer
                .decode(ids, false)
                .map_err(|e| WhisperError::Tokenizer(e.to_string()))
        };
        let full: Vec<char> = decode(tokens)?.chars().collect();
        let mut words = Vec::new();
        let mut word_tokens = Vec::new();
        let mut current: Vec<u32> = Vec::new();
        let mut offset = 0;
        for &token in tokens {
            current.push(token);
            let decoded = decode(&current)?;
            let whole = match decoded.chars().position(|c| c == REPLACEMENT) {
                None => true,
                // A replacement character the text really has.
                Some(i) => full.get(offset + i) == Some(&REPLACEMENT),
            };
            if whole {
                offset += decoded.chars().count();
                words.push(decoded);
                word_tokens.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            words.push(decode(&current)?);
            word_tokens.push(current);
        }
        Ok((words, word_tokens))
    }
}

/// Joins punctuation to its word as openai-whisper does: opening marks
/// (with a space before them) to the word after, closing marks to the word
/// before. Emptied entries stay, with no text and no tokens.
fn merge_punctuations(words: &mut [WordTiming]) {
    if words.len() >= 2 {
        let mut i = words.len() - 2;
        let mut j = words.len() - 1;
        loop {
            if words[i].word.starts_with(' ') && PREPEND_PUNCTUATIONS.contains(words[i].word.trim())
            {
                let previous = std::mem::take(&mut words[i].word);
                let tokens = std::mem::take(&mut words[i].tokens);
                words[j].word = previous + &words[j].word;
                words[j].tokens.splice(0..0, tokens);
            } else {
                j = i;
            }
            if i == 0 {
                break;
            }
            i -= 1;
        }
    }
    let mut i = 0;
    for j in 1..words.len() {
        if !words[i].word.ends_with(' ') && APPEND_PUNCTUATIONS.contains(words[j].word.as_str()) {
            let following = std::mem::take(&mut words[j].word);
            let tokens = std::mem::take(&mut words[j].tokens);
            words[i].word.push_str(&following);
            words[i].tokens.extend(tokens);
        } else {
            i = j;
        }
    }
}

/// A window's text tokens, all its segments', without timestamps.
fn text_tokens(window: &[WindowSegment], eot: u32) -> Vec<u32> {
    window
        .iter()
        .flat_map(|s| s.tokens.iter().copied().filter(|&t| t < eot))
        .collect()
}

/// How far (seconds) the aligned text of a window may run past its last
/// timestamp token before the timestamps count as squeezed (see
/// [`WhisperModel::time_window`]).
const SQUEEZED_TIMESTAMPS_S: f64 = 4.0;

/// Whether a window's timestamp tokens, at least three besides a start at
/// 0.00, all fall on whole seconds (every 50th of Whisper's 20 ms steps).
/// Every squeezed window seen so far wrote its timestamps on whole seconds.
/// Some ordinary windows do too (base on the long test recording: 4 of 22,
/// their text ending 0.5-1.1 s after the last timestamp): they cost an
/// alignment pass each and keep their times.
fn on_whole_seconds(window: &[WindowSegment], timestamp_begin: u32) -> bool {
    const STEPS_PER_SECOND: u32 = 50;
    let mut stamps = window
        .iter()
        .flat_map(|s| s.tokens.iter())
        .filter(|&&t| t > timestamp_begin)
        .map(|&t| t - timestamp_begin);
    let mut count = 0;
    stamps.all(|step| {
        count += 1;
        step % STEPS_PER_SECOND == 0
    }) && count >= 3
}

impl WhisperModel {
    /// The frames a window consumed (up to its last timestamp token) if it
    /// may have squeezed timestamps and must be aligned to tell: it would
    /// be heard again from that timestamp (it ends on a timestamp pair
    /// before `frames`), and it is `searched` (a fallback temperature or a
    /// beam) or its timestamps all fall on whole seconds
    /// ([`on_whole_seconds`]), as every squeezed window seen so far did.
    /// The alignment costs a decoder forward over the window's text, which
    /// is why other windows are not checked. Both long-form loops ask this.
    pub(super) fn may_be_squeezed(
        &self,
        window: &[WindowSegment],
        single_timestamp_ending: bool,
        consumed_frames: Option<usize>,
        frames: usize,
        searched: bool,
    ) -> Option<usize> {
        consumed_frames.filter(|&c| {
            (searched || on_whole_seconds(window, self.specials.timestamp_begin))
                && !single_timestamp_ending
                && c < frames
        })
    }

    /// Times a window's segments after [`WhisperModel::split_window`], for
    /// the long-form loops: their words when `word_timestamps` asks for them
    /// (the window's text aligned to the audio in `state` over `frames`
    /// spectrogram frames, then openai-whisper's heuristics,
    /// [`add_word_timestamps`]); otherwise only when the window
    /// [`WhisperModel::may_be_squeezed`] and its aligned text ends more
    /// than [`SQUEEZED_TIMESTAMPS_S`] after its last timestamp token.
    ///
    /// That is a window whose timestamp tokens were squeezed together (a
    /// sampled fallback, a beam, or a greedy pass that put a whole window's
    /// speech in its first seconds): seeking to its last timestamp would
    /// transcribe the rest of its speech a second time. Its segments then
    /// take their times from their words, which are dropped again, and the
    /// caller seeks to the end of the last word as it does under word
    /// timestamps. The alignment is computed once for the check and the
    /// words.
    ///
    /// `time_offset` is where the window starts on the segments' timeline
    /// and `last_speech` where speech last ended on it. Returns where
    /// speech last ended after this window and where its last word ends,
    /// or `None` when the words were not timed (the segments are
    /// unchanged).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn time_window(
        &self,
        window: &mut [WindowSegment],
        single_timestamp_ending: bool,
        consumed_frames: Option<usize>,
        state: &mut DecoderState,
        sot_sequence: &[u32],
        frames: usize,
        language: &str,
        time_offset: f64,
        last_speech: f64,
        word_timestamps: bool,
        searched: bool,
    ) -> Result<Option<(f64, Option<f64>)>, WhisperError> {
        let check = if word_timestamps {
            None
        } else {
            match self.may_be_squeezed(
                window,
                single_timestamp_ending,
                consumed_frames,
                frames,
                searched,
            ) {
                Some(consumed) => Some(consumed),
                None => return Ok(None),
            }
        };
        let eot = self.specials.eot;
        let text = text_tokens(window, eot);
        let aligned = self.align_tokens(state, sot_sequence, &text, frames)?;
        if let Some(consumed) = check {
            let Some(aligned) = &aligned else {
                return Ok(None);
            };
            let text_end = aligned.jump_times[text.len()];
            let stamped_end = consumed as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64;
            tracing::debug!(text_end, stamped_end, "window text aligned");
            if text_end <= stamped_end + SQUEEZED_TIMESTAMPS_S {
                return Ok(None);
            }
            tracing::debug!(
                window_start = time_offset,
                text_end,
                stamped_end,
                "squeezed timestamps: the window's segments are timed by their words"
            );
        }
        let alignment = match aligned {
            Some(aligned) => self.word_timings(aligned, sot_sequence.len(), &text, language)?,
            None => Vec::new(),
        };
        let last_speech = add_word_timestamps(window, alignment, time_offset, eot, last_speech);
        let words_end = window
            .iter()
            .rev()
            .find_map(|s| s.words.as_ref().and_then(|w| w.last()).map(|w| w.end));
        if !word_timestamps {
            for segment in window.iter_mut() {
                segment.words = None;
            }
        }
        Ok(Some((last_speech, words_end)))
    }
}

impl WhisperModel {
    /// Where a window's text ends in its audio, in seconds from the
    /// window's start: its text aligned to the audio in `state` over
    /// `frames` spectrogram frames (a decoder forward over the text, as for
    /// word timestamps), followed by `after`: tokens said after it (the
    /// start of a sentence said again that the repetition guard cut off),
    /// or none. Aligned alone, a text that stops before the audio does is
    /// stretched over the rest (JFK's sentence, said five times: one copy
    /// timed over 30 s); with what follows, it ends where that starts.
    /// `None` when it cannot be aligned.
    pub(super) fn aligned_text_end(
        &self,
        window: &[WindowSegment],
        after: &[u32],
        state: &mut DecoderState,
        sot_sequence: &[u32],
        frames: usize,
    ) -> Result<Option<f64>, WhisperError> {
        let eot = self.specials.eot;
        let mut text = text_tokens(window, eot);
        let kept = text.len();
        text.extend(after.iter().copied().filter(|&t| t < eot));
        let aligned = self.align_tokens(state, sot_sequence, &text, frames)?;
        Ok(aligned.map(|a| a.jump_times[kept]))
    }
}

/// Places the words of `alignment` (one window's, from
/// [`WhisperModel::word_timings`]; times from `time_offset`) into the
/// window's `segments`, with the upstream duration heuristics: words at
/// sentence ends no longer than twice the median word duration, the first
/// words after a pause clamped, and segment edges taken from the words
/// unless a word runs far past them. `last_speech_timestamp` is where the
/// previous speech ended; returns where this window's ends.
pub(super) fn add_word_timestamps(
    segments: &mut [WindowSegment],
    mut alignment: Vec<WordTiming>,
    time_offset: f64,
    eot: u32,
    mut last_speech_timestamp: f64,
) -> f64 {
    let mut durations: Vec<f64> = alignment
        .iter()
        .map(|w| w.end - w.start)
        .filter(|&d| d != 0.0)
        .collect();
    durations.sort_by(f64::total_cmp);
    let median_duration = median(&durations).min(0.7);
    let max_duration = median_duration * 2.0;
    if !durations.is_empty() {
        for i in 1..alignment.len() {
            if alignment[i].end - alignment[i].start > max_duration {
                if SENTENCE_END_MARKS.contains(alignment[i].word.as_str()) {
                    alignment[i].end = alignment[i].start + max_duration;
                } else if SENTENCE_END_MARKS.contains(alignment[i - 1].word.as_str()) {
                    alignment[i].start = alignment[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuations(&mut alignment);

    let round2 = |t: f64| (t * 100.0).round() / 100.0;
    let mut word_index = 0;
    for segment in segments.iter_mut() {
        let n_text = segment.tokens.iter().filter(|&&t| t < eot).count();
        let mut saved_tokens = 0;
        let mut words: Vec<Word> = Vec::new();
        while word_index < alignment.len() && saved_tokens < n_text {
            let timing = &alignment[word_index];
            if !timing.word.is_empty() {
                words.push(Word {
                    word: timing.word.clone(),
                    start: round2(time_offset + timing.start),
                    end: round2(time_offset + timing.end),
                    probability: timing.probability,
                    speaker: None,
                });
            }
            saved_tokens += timing.tokens.len();
            word_index += 1;
        }
        if !words.is_empty() {
            // The first word (and the second) after a pause is no longer
            // than twice the median word duration.
            let first_long = words[0].end - words[0].start > max_duration;
            let second_long = words.len() > 1 && words[1].end - words[0].start > max_duration * 2.0;
            if words[0].end - last_speech_timestamp > median_duration * 4.0
                && (first_long || second_long)
            {
                if words.len() > 1 && words[1].end - words[1].start > max_duration {
                    let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
                    words[0].end = boundary;
                    words[1].start = boundary;
                }
                words[0].start = (words[0].end - max_duration).max(0.0);
            }
            // Prefer the segment's start when the first word is too long.
            if segment.start < words[0].end && segment.start - 0.5 > words[0].start {
                words[0].start = (words[0].end - median_duration).min(segment.start).max(0.0);
            } else {
                segment.start = words[0].start;
            }
            // Prefer the segment's end when the last word is too long.
            let last = words.len() - 1;
            if segment.end > words[last].start && segment.end + 0.5 < words[last].end {
                words[last].end = (words[last].start + median_duration).max(segment.end);
            } else {
                segment.end = words[last].end;
            }
            last_speech_timestamp = segment.end;
        }
        segment.words = Some(words);
    }
    last_speech_timestamp
}

/// Median of sorted values (0 for none), as numpy's.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(word: &str, start: f64, end: f64) -> WordTiming {
        WordTiming {
            word: word.into(),
            tokens: vec![1],
            start,
            end,
            probability: 0.9,
        }
    }

    #[test]
    fn whole_second_timestamps_are_told_from_timed_ones() {
        const TB: u32 = 50_364;
        let window = |stamps: &[(u32, u32)]| -> Vec<WindowSegment> {
            stamps
                .iter()
                .map(|&(a, b)| WindowSegment {
                    start: 0.0,
                    end: 0.0,
                    tokens: vec![TB + a, 100, 200, TB + b],
                    words: None,
                })
                .collect()
        };
        // As base wrote the call's first window: 0-1 s, 1-2 s, 2-3 s...
        assert!(on_whole_seconds(
            &window(&[(0, 50), (50, 100), (100, 150)]),
            TB
        ));
        // Timed from the audio: 0.00-1.24, 1.50-3.00, 3.20-4.00.
        assert!(!on_whole_seconds(
            &window(&[(0, 62), (75, 150), (160, 200)]),
            TB
        ));
        // Too few to tell: one segment 0.00-2.00 (its start does not count).
        assert!(!on_whole_seconds(&window(&[(0, 100)]), TB));
        assert!(!on_whole_seconds(&[], TB));
    }

    #[test]
    fn punctuation_joins_its_word() {
        let mut words = vec![
            timing(" \"", 0.0, 0.1),
            timing("Ask", 0.1, 0.3),
            timing(" not", 0.3, 0.5),
            timing(",", 0.5, 0.5),
            timing("\"", 0.5, 0.6),
        ];
        merge_punctuations(&mut words);
        let texts: Vec<&str> = words.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(texts, vec!["", " \"Ask", " not,\"", "", ""]);
        assert_eq!(words[2].tokens.len(), 3);
    }

    #[test]
    fn long_first_word_after_a_pause_is_clamped() {
        let alignment = vec![
            timing(" And", 0.0, 3.0),
            timing(" so", 3.0, 3.2),
            timing(" my", 3.2, 3.4),
            timing(" fellow", 3.4, 3.8),
            timing(" Americans", 3.8, 4.0),
        ];
        let mut segments = vec![WindowSegment {
            start: 10.0,
            end: 14.0,
            tokens: vec![1, 1, 1, 1, 1],
            words: None,
        }];
        let last = add_word_timestamps(&mut segments, alignment, 10.0, 50_000, 0.0);
        let words = segments[0].words.as_ref().expect("words");
        // Median duration 0.2 s: the first word keeps at most 0.4 s.
        assert!((words[0].start - 12.6).abs() < 1e-9, "{words:?}");
        assert_eq!(words[0].end, 13.0);
        assert_eq!(segments[0].start, 12.6);
        assert_eq!(last, 14.0);
    }
}
