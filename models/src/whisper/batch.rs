//! The batched pipeline, as faster-whisper's `BatchedInferencePipeline` and
//! WhisperX run Whisper: the speech regions are merged into chunks of at
//! most 30 s, each chunk is one window decoded on its own (no text carried
//! from the previous window, no seeking inside it), and `batch_size` chunks
//! go through the encoder together and are decoded greedily together, one
//! row of the decoder's batch per chunk.
//!
//! Why: a decoding step of one sequence reads every decoder weight (the
//! vocabulary projection alone is `51,865 x d_model`) to produce one token;
//! `b` sequences share that read. On a GPU this is where throughput comes
//! from; on a CPU the figures are in docs/models.md.
//!
//! What it gives up: the sequential loop's conditioning on previous text
//! and its seeking to the last timestamp, so a word cut by a chunk's edge
//! (a region longer than 30 s) is not re-read. A chunk whose greedy result
//! fails the thresholds (`needs_fallback`) is decoded again alone with the
//! temperature fallback, as the sequential loop would; beam search and
//! sampling run per chunk too (the encoder is still batched).
//!
//! Memory: the recording is read once, front to back; only the chunks of
//! the batch being decoded are held.

use std::collections::VecDeque;
use std::ops::Range;

use candle_core::{IndexOp, Tensor};

use super::decoding::{needs_fallback, SplitMix64, WindowResult};
use super::guards::Cut;
use super::transcribe::{end_window_at, finish, reported_language, ChunkSource, MIN_TAIL_SAMPLES};
use super::{DecodeOptions, Progress, WhisperError, WhisperModel};
use crate::mel::{self, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use crate::transcript::{LanguageCandidate, Segment, SpeechRegion, Transcript};

/// Most chunks decoded together.
pub const MAX_BATCH_SIZE: usize = 32;

/// The chunks (sample ranges, in order, not overlapping) the batched
/// pipeline decodes `regions` of a recording of `n_samples` samples in:
/// consecutive regions are merged while the chunk spans at most 30 s
/// (silence between them included); a region longer than that is cut into
/// 30 s pieces.
pub fn plan_chunks(regions: &[SpeechRegion], n_samples: usize) -> Vec<Range<usize>> {
    let sr = SAMPLE_RATE as f64;
    let mut out: Vec<Range<usize>> = Vec::new();
    for region in regions {
        let floor = out.last().map_or(0, |c| c.end);
        let start = ((region.start.max(0.0) * sr).floor() as usize)
            .min(n_samples)
            .max(floor);
        let end = ((region.end.max(0.0) * sr).ceil() as usize).min(n_samples);
        if end <= start {
            continue;
        }
        if let Some(last) = out.last_mut() {
            if end - last.start <= N_SAMPLES {
                last.end = end;
                continue;
            }
        }
        let mut from = start;
        while end - from > N_SAMPLES {
            out.push(from..from + N_SAMPLES);
            from += N_SAMPLES;
        }
        out.push(from..end);
    }
    out
}

/// Audio waiting to be decoded: a chunk, or the rest of one.
struct Piece {
    /// Index of its chunk (segments are handed on chunk by chunk).
    chunk: usize,
    /// Its first sample on the recording's timeline.
    start: usize,
    samples: Vec<f32>,
    /// How many pieces of its chunk came before it.
    round: u32,
}

/// Most pieces one chunk is decoded in (a 30 s chunk needs a few).
const MAX_PIECES_PER_CHUNK: u32 = 16;

/// Reads the sample ranges of a [`ChunkSource`] in order, holding only what
/// the next range needs.
struct RangeReader<R> {
    pieces: R,
    buf: Vec<f32>,
    /// Sample index of `buf[0]`.
    start: usize,
}

impl<E: std::fmt::Display, R: Iterator<Item = Result<Vec<f32>, E>>> RangeReader<R> {
    /// The samples of `range` (fewer if the recording ends first); ranges
    /// must come in order and not overlap.
    fn take(&mut self, range: Range<usize>) -> Result<Vec<f32>, WhisperError> {
        while self.start + self.buf.len() < range.end {
            match self.pieces.next() {
                Some(piece) => self
                    .buf
                    .extend(piece.map_err(|e| WhisperError::Input(e.to_string()))?),
                None => break,
            }
        }
        let from = range.start.saturating_sub(self.start).min(self.buf.len());
        let to = range.end.saturating_sub(self.start).min(self.buf.len());
        let out = self.buf[from..to].to_vec();
        self.buf.drain(..to);
        self.start += to;
        Ok(out)
    }
}

impl WhisperModel {
    /// Transcribes (or translates) the `regions` of a recording of
    /// `n_samples` samples read from `source`, `batch_size` 30 s chunks at a
    /// time (see the module docs). Times are on the recording's timeline.
    /// `on_progress` returning `false` cancels with
    /// [`WhisperError::Cancelled`].
    pub fn transcribe_batched<C: ChunkSource + ?Sized>(
        &self,
        source: &C,
        n_samples: usize,
        regions: &[SpeechRegion],
        opts: &DecodeOptions,
        batch_size: usize,
        on_progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Transcript, WhisperError> {
        let sr = SAMPLE_RATE as f64;
        let total_s = n_samples as f64 / sr;
        let (mut language_token, mut language) = self.asked_language(opts)?;
        let mut detected: Option<Vec<LanguageCandidate>> = None;
        let chunks = plan_chunks(regions, n_samples);
        let prompt = match opts.initial_prompt.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => self.encode_text(&format!(" {p}"))?,
            _ => Vec::new(),
        };
        let mut reader = RangeReader {
            pieces: source.open(),
            buf: Vec::new(),
            start: 0,
        };
        let batch_size = batch_size.clamp(1, MAX_BATCH_SIZE);
        let mut rng = SplitMix64(opts.seed);
        let mut segments: Vec<Segment> = Vec::new();
        // Waiting to be decoded: tails first (see below), then chunks in order.
        let mut queue: VecDeque<Piece> = VecDeque::new();
        let mut next_chunk = 0;
        // Per chunk: its segments so far, and whether a tail of it is
        // still to decode. Chunks are handed on in order once complete.
        let mut done: Vec<(Vec<Segment>, bool)> = vec![(Vec::new(), true); chunks.len()];
        let mut handed = 0;
        let mut last_speech_timestamp = vec![0.0; chunks.len()];
        loop {
            while queue.len() < batch_size && next_chunk < chunks.len() {
                let range = chunks[next_chunk].clone();
                let samples = reader.take(range.clone())?;
                queue.push_back(Piece {
                    chunk: next_chunk,
                    start: range.start,
                    samples,
                    round: 0,
                });
                next_chunk += 1;
            }
            if queue.is_empty() {
                break;
            }
            let group: Vec<Piece> = queue.drain(..batch_size.min(queue.len())).collect();
            // Fully handled: the chunks handed on (a group may hold the
            // rest of a chunk not yet complete, whose start is ahead).
            let handled_s = match handed {
                0 => chunks[0].start as f64 / sr,
                n => chunks[n - 1].end as f64 / sr,
            };
            let mut check = || {
                on_progress(Progress {
                    processed_s: handled_s,
                    total_s,
                    segment: None,
                    resumable_at: None,
                })
            };
            if !check() {
                return Err(WhisperError::Cancelled);
            }
            let windows = group
                .iter()
                .map(|p| {
                    mel::log_mel_spectrogram(&p.samples, &self.filters, N_SAMPLES)
                        .window(0, N_FRAMES)
                })
                .collect();
            let audio = self.encode_batch(windows)?;
            if self.is_multilingual() && language_token.is_none() {
                let mut state = self.decoder.start(&audio.i(0..1)?)?;
                let (token, candidates) = self.detected_language(&mut state)?;
                language = self.language_code(token);
                language_token = Some(token);
                detected = Some(candidates);
            }
            let sot_sequence = self.sot_sequence(language_token, opts.task);
            let results =
                self.decode_batch(&audio, &prompt, &sot_sequence, opts, &mut rng, &mut check)?;

            let mut tails = Vec::new();
            for (i, (piece, result)) in group.into_iter().zip(results).enumerate() {
                done[piece.chunk].1 = false;
                if let Some(threshold) = opts.no_speech_threshold {
                    let loud = opts
                        .logprob_threshold
                        .is_some_and(|lp| result.avg_logprob > lp);
                    if result.no_speech_prob > threshold && !loud {
                        continue;
                    }
                }
                let offset = piece.start as f64 / sr;
                let len = piece.samples.len();
                let split = self.split_window(&result.tokens, 0.0, len as f64 / sr);
                let mut window = split.segments;
                // The model stopped at a timestamp before the piece's end,
                // leaving the rest for a next window (as the sequential loop
                // seeks): that rest is decoded as a piece of its own.
                let mut consumed = split.consumed_frames.map_or(len, |f| f * HOP_LENGTH);
                let frames = (len / HOP_LENGTH).min(N_FRAMES);
                let searched = result.searched(opts);
                let may_be_squeezed = self
                    .may_be_squeezed(
                        &window,
                        split.single_timestamp_ending,
                        split.consumed_frames,
                        frames,
                        searched,
                    )
                    .is_some();
                if opts.word_timestamps || may_be_squeezed {
                    let mut state = self.decoder.start(&audio.i(i..i + 1)?)?;
                    let last = &mut last_speech_timestamp[piece.chunk];
                    // Word edges are kept within the piece's own timeline.
                    if let Some((last_speech, words_end)) = self.time_window(
                        &mut window,
                        split.single_timestamp_ending,
                        split.consumed_frames,
                        &mut state,
                        &sot_sequence,
                        frames,
                        &language,
                        0.0,
                        (*last - offset).max(0.0),
                        opts.word_timestamps,
                        searched,
                    )? {
                        *last = last_speech + offset;
                        // As openai-whisper: the rest starts after the last word.
                        if let (Some(end), false) = (words_end, split.single_timestamp_ending) {
                            if split.consumed_frames.is_some() {
                                consumed = ((end * sr) as usize).clamp(1, len);
                            }
                        }
                    }
                }
                // A sentence said again: the piece's rest, from where the
                // copy starts in its audio, is decoded as a piece of its
                // own (see the sequential loop).
                if let Some(Cut::Repeat { copy }) = &result.cut {
                    let mut state = self.decoder.start(&audio.i(i..i + 1)?)?;
                    let start =
                        self.aligned_text_end(&window, copy, &mut state, &sot_sequence, frames)?;
                    if let Some(start) = start {
                        let at = ((start * sr) as usize).min(len);
                        if at >= MIN_TAIL_SAMPLES && at < consumed {
                            consumed = at;
                            end_window_at(&mut window, start);
                        }
                    }
                }
                let to_original = |t: f64, _: bool| (offset + t).min(total_s);
                let new = self.window_segments(window, &result, offset, &to_original)?;
                done[piece.chunk].0.extend(new);
                // Never stall: a piece that consumed nothing, or a chunk cut
                // into too many pieces, ends here.
                let consumed = consumed.min(len);
                if consumed > 0
                    && len - consumed >= MIN_TAIL_SAMPLES
                    && piece.round < MAX_PIECES_PER_CHUNK
                {
                    done[piece.chunk].1 = true;
                    tails.push(Piece {
                        chunk: piece.chunk,
                        start: piece.start + consumed,
                        samples: piece.samples[consumed..].to_vec(),
                        round: piece.round + 1,
                    });
                }
            }
            for tail in tails.into_iter().rev() {
                queue.push_front(tail);
            }
            // Hand on the chunks that are complete, in order.
            while handed < next_chunk && !done[handed].1 {
                let end_s = chunks[handed].end as f64 / sr;
                for segment in std::mem::take(&mut done[handed].0) {
                    let segment = Segment {
                        id: segments.len() as u32,
                        ..segment
                    };
                    segments.push(segment.clone());
                    if !on_progress(Progress {
                        processed_s: end_s.min(total_s),
                        total_s,
                        segment: Some(segment),
                        resumable_at: None,
                    }) {
                        return Err(WhisperError::Cancelled);
                    }
                }
                // Every chunk is decoded on its own: a run from its end
                // goes on as this one.
                if !on_progress(Progress {
                    processed_s: end_s.min(total_s),
                    total_s,
                    segment: None,
                    resumable_at: Some(end_s.min(total_s)),
                }) {
                    return Err(WhisperError::Cancelled);
                }
                handed += 1;
            }
        }
        on_progress(Progress {
            processed_s: total_s,
            total_s,
            segment: None,
            resumable_at: Some(total_s),
        });
        let (language, detected) = reported_language(&segments, opts, language, detected);
        Ok(finish(language, detected, total_s, segments))
    }

    /// Decodes the windows of `audio` (`[b, frames, d]`), all prompted
    /// alike: greedily as one batch when the first temperature is 0 and no
    /// beam search is asked for, then, for each window whose result fails
    /// the thresholds (and for every window otherwise), alone with the
    /// temperature fallback.
    fn decode_batch(
        &self,
        audio: &Tensor,
        prompt: &[u32],
        sot_sequence: &[u32],
        opts: &DecodeOptions,
        rng: &mut SplitMix64,
        check: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<WindowResult>, WhisperError> {
        let b = audio.dim(0)?;
        let greedy_first = opts.temperatures.first().is_none_or(|&t| t <= 0.0);
        // `Ok`: a result that passed; `Err`: the batch's attempt, which
        // failed the thresholds; `None`: not decoded in the batch.
        let mut batched: Vec<Option<Result<WindowResult, WindowResult>>> = vec![None; b];
        if b > 1 && greedy_first && opts.beam_size <= 1 {
            let mut state = self.decoder.start(audio)?;
            let (initial, sot_index) = self.initial_tokens(prompt, sot_sequence);
            let tokens: Vec<u32> = initial
                .iter()
                .copied()
                .cycle()
                .take(b * initial.len())
                .collect();
            let hidden = self.decoder.forward_rows(&tokens, b, &mut state)?; // [b, n, d]
            let at = |i: usize| -> Result<Tensor, WhisperError> {
                // Quantized products want contiguous rows.
                let rows = hidden.i((.., i, ..))?.contiguous()?;
                Ok(self.decoder.logits(&rows)?.contiguous()?)
            };
            let no_speech = candle_nn::ops::softmax_last_dim(&at(sot_index)?)?
                .i((.., self.specials.no_speech as usize))?
                .to_vec1::<f32>()?;
            let firsts = at(initial.len() - 1)?.to_vec2::<f32>()?;
            let limits = self.limits(opts);
            let candidates = self.decode_rows(&mut state, firsts, 0.0, &limits, rng, check)?;
            for (i, chosen) in candidates.into_iter().enumerate() {
                let result = self.window_result(chosen, f64::from(no_speech[i]), 0.0)?;
                batched[i] = Some(if needs_fallback(&result, opts) {
                    Err(result)
                } else {
                    Ok(result)
                });
            }
        }
        let temperatures: &[f64] = if opts.temperatures.is_empty() {
            &[0.0]
        } else {
            &opts.temperatures
        };
        batched
            .into_iter()
            .enumerate()
            .map(|(i, done)| {
                let (rest, tried) = match done {
                    Some(Ok(result)) => return Ok(result),
                    Some(Err(failed)) => (&temperatures[1..], Some(failed)),
                    None => (temperatures, None),
                };
                let mut state = self.decoder.start(&audio.i(i..i + 1)?)?;
                self.fall_back(
                    &mut state,
                    prompt,
                    sot_sequence,
                    opts,
                    rest,
                    tried,
                    rng,
                    check,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: f64, end: f64) -> SpeechRegion {
        SpeechRegion { start, end }
    }

    #[test]
    fn chunks_merge_regions_up_to_thirty_seconds_and_cut_longer_ones() {
        let sr = SAMPLE_RATE;
        let n = 200 * sr;
        let chunks = plan_chunks(
            &[
                region(1.0, 5.0),
                region(6.0, 20.0),
                region(25.0, 40.0),   // 1..40 would be too long: a new chunk
                region(41.0, 108.0),  // longer than 30 s: cut
                region(150.0, 250.0), // runs past the end
            ],
            n,
        );
        assert_eq!(
            chunks,
            vec![
                sr..20 * sr,
                25 * sr..40 * sr,
                41 * sr..71 * sr,
                71 * sr..101 * sr,
                101 * sr..108 * sr,
                150 * sr..180 * sr,
                180 * sr..200 * sr,
            ]
        );
        for c in &chunks {
            assert!(c.end - c.start <= N_SAMPLES && c.start < c.end, "{c:?}");
        }
        for pair in chunks.windows(2) {
            assert!(pair[0].end <= pair[1].start, "{pair:?}");
        }
        assert!(plan_chunks(&[], n).is_empty());
        assert!(plan_chunks(&[region(5.0, 5.0)], n).is_empty());
    }

    #[test]
    fn the_reader_hands_out_ranges_across_pieces() {
        let pieces: Vec<Result<Vec<f32>, String>> = vec![
            Ok(vec![0.0, 1.0, 2.0]),
            Ok(vec![3.0, 4.0]),
            Ok(vec![5.0, 6.0, 7.0]),
        ];
        let mut reader = RangeReader {
            pieces: pieces.into_iter(),
            buf: Vec::new(),
            start: 0,
        };
        assert_eq!(reader.take(1..4).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(reader.take(5..7).unwrap(), vec![5.0, 6.0]);
        // Past the end: what there is.
        assert_eq!(reader.take(7..20).unwrap(), vec![7.0]);
        assert!(reader.take(20..30).unwrap().is_empty());
    }
}
