//! Word-level timestamps from the decoder's cross-attention, the method of
//! openai-whisper's `timing.py` (which faster-whisper and CTranslate2 follow):
//! the window's text tokens are fed again in one forced pass, the scores of
//! the model's alignment heads (cross-attention heads that follow the audio
//! in time) are softmaxed over the frames that hold audio, normalised per
//! frame over the tokens, median filtered along time and averaged over the
//! heads; dynamic time warping through the negated matrix gives each token
//! the encoder frame where it starts, and tokens are grouped into words
//! (at spaces, or at whole characters for languages written without them).
//! Punctuation joins its word, and the duration heuristics of both upstream
//! implementations trim implausibly long words at pauses and segment edges.
//!
//! Limits: timings are as good as the attention, typically within a few
//! tens of milliseconds of faster-whisper's on the same weights; a word
//! has the resolution of one encoder frame (20 ms).

use candle_core::{DType, Tensor};

use super::decoder::DecoderState;
use super::{WhisperError, WhisperModel};
use crate::transcript::Word;

/// Width of the median filter along time (both upstream defaults).
const MEDIAN_FILTER_WIDTH: usize = 7;
/// Encoder frames per second (100 mel frames, convolution stride 2).
const FRAMES_PER_SECOND: f64 = 50.0;
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

/// Alignment heads openai-whisper publishes per model, for a model whose
/// `config.json` does not list its own (`(decoder layer, head)`).
const KNOWN_HEADS: &[(&str, &[(usize, usize)])] = &[
    (
        "tiny.en",
        &[
            (1, 0),
            (2, 0),
            (2, 5),
            (3, 0),
            (3, 1),
            (3, 2),
            (3, 3),
            (3, 4),
        ],
    ),
    ("tiny", &[(2, 2), (3, 0), (3, 2), (3, 3), (3, 4), (3, 5)]),
    ("base.en", &[(3, 3), (4, 7), (5, 1), (5, 5), (5, 7)]),
    (
        "base",
        &[
            (3, 1),
            (4, 2),
            (4, 3),
            (4, 7),
            (5, 1),
            (5, 2),
            (5, 4),
            (5, 6),
        ],
    ),
    (
        "small.en",
        &[
            (6, 6),
            (7, 0),
            (7, 3),
            (7, 8),
            (8, 2),
            (8, 5),
            (8, 7),
            (9, 0),
            (9, 4),
            (9, 8),
            (9, 10),
            (10, 0),
            (10, 1),
            (10, 2),
            (10, 3),
            (10, 6),
            (10, 11),
            (11, 2),
            (11, 4),
        ],
    ),
    (
        "small",
        &[
            (5, 3),
            (5, 9),
            (8, 0),
            (8, 4),
            (8, 7),
            (8, 8),
            (9, 0),
            (9, 7),
            (9, 9),
            (10, 5),
        ],
    ),
    (
        "medium.en",
        &[
            (11, 4),
            (14, 1),
            (14, 12),
            (14, 14),
            (15, 4),
            (16, 0),
            (16, 4),
            (16, 9),
            (17, 12),
            (17, 14),
            (18, 7),
            (18, 10),
            (18, 15),
            (20, 0),
            (20, 3),
            (20, 9),
            (20, 14),
            (21, 12),
        ],
    ),
    (
        "medium",
        &[(13, 15), (15, 4), (15, 15), (16, 1), (20, 0), (23, 4)],
    ),
    (
        "large-v1",
        &[
            (9, 19),
            (11, 2),
            (11, 4),
            (11, 17),
            (22, 7),
            (22, 11),
            (22, 17),
            (23, 2),
            (23, 15),
        ],
    ),
    (
        "large-v2",
        &[
            (10, 12),
            (13, 17),
            (16, 11),
            (16, 12),
            (16, 13),
            (17, 15),
            (17, 16),
            (18, 4),
            (18, 11),
            (18, 19),
            (19, 11),
            (21, 2),
            (21, 3),
            (22, 3),
            (22, 9),
            (22, 12),
            (23, 5),
            (23, 7),
            (23, 13),
            (25, 5),
            (26, 1),
            (26, 12),
            (27, 15),
        ],
    ),
    (
        "large-v3",
        &[
            (7, 0),
            (10, 17),
            (12, 18),
            (13, 12),
            (16, 1),
            (17, 14),
            (19, 11),
            (21, 4),
            (24, 1),
            (25, 6),
        ],
    ),
    (
        "large-v3-turbo",
        &[(2, 4), (2, 11), (3, 3), (3, 6), (3, 11), (3, 14)],
    ),
];

/// The alignment heads of a model: `config.json`'s `alignment_heads` (as
/// CTranslate2 and transformers write it), else openai-whisper's list for
/// the model's name, else every head of the last half of the decoder
/// layers (openai-whisper's default). Heads outside the model are dropped.
pub(super) fn alignment_heads(
    config: &serde_json::Value,
    name: &str,
    layers: usize,
    heads: usize,
) -> Vec<(usize, usize)> {
    let fits = |list: &[(usize, usize)]| {
        !list.is_empty() && list.iter().all(|&(l, h)| l < layers && h < heads)
    };
    let listed: Vec<(usize, usize)> = config
        .get("alignment_heads")
        .and_then(|v| v.as_array())
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| {
                    let p = p.as_array()?;
                    Some((p.first()?.as_u64()? as usize, p.get(1)?.as_u64()? as usize))
                })
                .collect()
        })
        .unwrap_or_default();
    if fits(&listed) {
        return listed;
    }
    if let Some((_, known)) = KNOWN_HEADS.iter().find(|(n, _)| *n == name) {
        if fits(known) {
            return known.to_vec();
        }
    }
    (layers / 2..layers)
        .flat_map(|l| (0..heads).map(move |h| (l, h)))
        .collect()
}

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
    /// Aligns `text_tokens` (a window's text, all its segments) with the
    /// audio in `state` (the window's encoder output; `num_frames` mel
    /// frames of it hold audio). `state`'s tokens are reset before and after.
    pub(super) fn find_alignment(
        &self,
        state: &mut DecoderState,
        sot_sequence: &[u32],
        text_tokens: &[u32],
        num_frames: usize,
        language: &str,
    ) -> Result<Vec<WordTiming>, WhisperError> {
        let n_frames = num_frames / 2;
        if text_tokens.is_empty() || n_frames == 0 {
            return Ok(Vec::new());
        }
        let eot = self.specials.eot;
        let mut tokens = sot_sequence.to_vec();
        tokens.push(self.specials.no_timestamps);
        tokens.extend_from_slice(text_tokens);
        tokens.push(eot);
        if tokens.len() > self.decoder.n_ctx() {
            return Ok(Vec::new());
        }
        state.reset_tokens();
        let forward =
            self.decoder
                .forward_with_cross_attention(&tokens, state, &self.alignment_heads);
        state.reset_tokens();
        let (hidden, scores) = forward?;

        // Probability of each text token among the text tokens, read at the
        // position that predicts it (the first at `<|notimestamps|>`).
        let sot_len = sot_sequence.len();
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

        // [tokens, frames] averaged over the heads.
        let t = tokens.len();
        let mut matrix = vec![0f32; t * n_frames];
        for head in &scores {
            let weights = candle_nn::ops::softmax_last_dim(
                &head
                    .narrow(1, 0, n_frames)?
                    .to_dtype(DType::F32)?
                    .contiguous()?,
            )?;
            let mut w = weights.flatten_all()?.to_vec1::<f32>()?;
            standardize_columns(&mut w, t, n_frames);
            median_filter_rows(&mut w, n_frames, MEDIAN_FILTER_WIDTH);
            for (m, x) in matrix.iter_mut().zip(&w) {
                *m += x;
            }
        }
        let n_heads = scores.len().max(1) as f32;
        // Rows from `<|notimestamps|>` (predicting the first text token) to
        // the last text token (predicting EOT).
        let rows = n_text + 1;
        let text_rows: Vec<f32> = matrix[sot_len * n_frames..(sot_len + rows) * n_frames]
            .iter()
            .map(|x| x / n_heads)
            .collect();
        let path = negative_dtw(&text_rows, rows, n_frames);
        // The frame where each row first appears on the path.
        let mut jump_times = Vec::with_capacity(rows);
        let mut last_row = None;
        for &(i, j) in &path {
            if last_row != Some(i) {
                jump_times.push(j as f64 / FRAMES_PER_SECOND);
                last_row = Some(i);
            }
        }
        if jump_times.len() != rows {
            return Ok(Vec::new());
        }

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

/// Standardises each column (frame) of a row-major `[rows, cols]` matrix
/// over its rows: zero mean, unit population standard deviation.
fn standardize_columns(m: &mut [f32], rows: usize, cols: usize) {
    for c in 0..cols {
        let mean = (0..rows).map(|r| m[r * cols + c] as f64).sum::<f64>() / rows as f64;
        let var = (0..rows)
            .map(|r| (m[r * cols + c] as f64 - mean).powi(2))
            .sum::<f64>()
            / rows as f64;
        let std = var.sqrt();
        for r in 0..rows {
            let x = &mut m[r * cols + c];
            *x = if std > 0.0 {
                ((*x as f64 - mean) / std) as f32
            } else {
                0.0
            };
        }
    }
}

/// Median filter of odd `width` along each row, reflecting at the edges
/// (the edge value itself is not repeated). Rows no longer than half the
/// width are left as they are.
fn median_filter_rows(m: &mut [f32], cols: usize, width: usize) {
    let rank = width / 2;
    if cols <= rank || cols == 0 {
        return;
    }
    let mut window = vec![0f32; width];
    let mut row = vec![0f32; cols];
    for chunk in m.chunks_mut(cols) {
        row.copy_from_slice(chunk);
        for (j, out) in chunk.iter_mut().enumerate() {
            for (k, slot) in window.iter_mut().enumerate() {
                let mut read = (j as isize + k as isize - rank as isize).unsigned_abs();
                if read >= cols {
                    read = 2 * cols - read - 2;
                }
                *slot = row[read];
            }
            window.select_nth_unstable_by(rank, f32::total_cmp);
            *out = window[rank];
        }
    }
}

/// Dynamic time warping through the negated `[rows, cols]` matrix: the
/// monotonic path from (0, 0) to the last cell that maximises the summed
/// values. Ties break as in openai-whisper (diagonal, then down, then right).
fn negative_dtw(x: &[f32], rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let w = cols + 1;
    let mut cost = vec![f32::INFINITY; (rows + 1) * w];
    let mut trace = vec![u8::MAX; (rows + 1) * w];
    cost[0] = 0.0;
    for j in 1..=cols {
        for i in 1..=rows {
            let c0 = cost[(i - 1) * w + j - 1];
            let c1 = cost[(i - 1) * w + j];
            let c2 = cost[i * w + j - 1];
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            cost[i * w + j] = -x[(i - 1) * cols + j - 1] + c;
            trace[i * w + j] = t;
        }
    }
    for t in trace.iter_mut().take(w) {
        *t = 2;
    }
    for i in 0..=rows {
        trace[i * w] = 1;
    }
    let (mut i, mut j) = (rows, cols);
    let mut path = Vec::with_capacity(rows + cols);
    while i > 0 || j > 0 {
        path.push((i.saturating_sub(1), j.saturating_sub(1)));
        match trace[i * w + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    path
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

impl WhisperModel {
    /// Times the words of one window's segments: their text tokens aligned
    /// to the audio in `state` ([`WhisperModel::find_alignment`] over
    /// `frames` spectrogram frames), then openai-whisper's heuristics
    /// ([`add_word_timestamps`]). `time_offset` is where the window starts
    /// on the segments' timeline and `last_speech` where speech last ended
    /// on it. Returns where speech last ended after this window, and the end
    /// of its last word when it has words.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn time_words(
        &self,
        window: &mut [WindowSegment],
        state: &mut DecoderState,
        sot_sequence: &[u32],
        frames: usize,
        language: &str,
        time_offset: f64,
        last_speech: f64,
    ) -> Result<(f64, Option<f64>), WhisperError> {
        let eot = self.specials.eot;
        let text_tokens: Vec<u32> = window
            .iter()
            .flat_map(|s| s.tokens.iter().copied().filter(|&t| t < eot))
            .collect();
        let alignment = self.find_alignment(state, sot_sequence, &text_tokens, frames, language)?;
        let last_speech = add_word_timestamps(window, alignment, time_offset, eot, last_speech);
        let words_end = window
            .iter()
            .rev()
            .find_map(|s| s.words.as_ref().and_then(|w| w.last()).map(|w| w.end));
        Ok((last_speech, words_end))
    }
}

/// Places the words of `alignment` (one window's, from
/// [`WhisperModel::find_alignment`]; times from `time_offset`) into the
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
    fn dtw_takes_the_path_openai_whisper_takes() {
        // Row i is strong on columns 2i and 2i + 1. The expected path is
        // what openai-whisper's `dtw_cpu` returns for this matrix (a step
        // down re-counts a strong cell, so rows start one column early).
        let (rows, cols) = (3, 6);
        let mut x = vec![0f32; rows * cols];
        for i in 0..rows {
            x[i * cols + 2 * i] = 1.0;
            x[i * cols + 2 * i + 1] = 1.0;
        }
        let path = negative_dtw(&x, rows, cols);
        let expected = [
            (0, 0),
            (0, 1),
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 3),
            (2, 4),
            (2, 5),
        ];
        assert_eq!(path, expected);
    }

    #[test]
    fn median_filter_reflects_at_the_edges() {
        let mut row = vec![5.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 1.0];
        median_filter_rows(&mut row, 8, 3);
        // Position 0 sees [0, 5, 0] (reflected), position 3 sees [0, 9, 0].
        assert_eq!(row, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let mut row = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        median_filter_rows(&mut row, 5, 3);
        assert_eq!(row, vec![2.0, 2.0, 3.0, 4.0, 4.0]);
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
    fn standardized_columns_have_zero_mean_and_unit_spread() {
        let mut m = vec![1.0, 10.0, 3.0, 10.0, 5.0, 40.0];
        standardize_columns(&mut m, 3, 2);
        let col0 = [m[0], m[2], m[4]];
        assert!((col0.iter().sum::<f32>()).abs() < 1e-5);
        assert!((col0[2] - 1.2247449).abs() < 1e-5);
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

    #[test]
    fn heads_come_from_the_config_then_the_name_then_the_last_half() {
        let cfg: serde_json::Value = serde_json::json!({ "alignment_heads": [[1, 0], [3, 4]] });
        assert_eq!(alignment_heads(&cfg, "x", 4, 6), vec![(1, 0), (3, 4)]);
        let none = serde_json::json!({});
        assert_eq!(alignment_heads(&none, "base", 6, 8).len(), 8);
        let out_of_range = serde_json::json!({ "alignment_heads": [[9, 0]] });
        let fallback = alignment_heads(&out_of_range, "custom", 4, 2);
        assert_eq!(fallback, vec![(2, 0), (2, 1), (3, 0), (3, 1)]);
    }
}
