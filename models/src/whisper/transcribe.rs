//! The long-form transcription loop of OpenAI's `transcribe()`: 30 s windows
//! of the spectrogram that seek to the last timestamp the model emitted,
//! timestamp tokens turned into segments, language detection on the first
//! window, conditioning on previous text, and the hallucination guards
//! applied per window. Input is a whole signal, speech regions joined
//! (`regions.rs`), or a recording streamed twice ([`ChunkSource`]).

use super::decoding::{SplitMix64, WindowResult};
use super::guards::{copies_prompt, Cut};
use super::regions::{RegionMap, SampleSource};
use super::timing::WindowSegment;
use super::{
    DecodeOptions, Progress, Task, WhisperError, WhisperModel, INPUT_STRIDE, TIME_PRECISION,
};
use crate::mel::{self, LogMel, MelMax, MelWindows, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE};
use crate::transcript::{LanguageCandidate, Segment, SpeechRegion, Transcript, Word};

impl WhisperModel {
    /// Transcribes (or translates) 16 kHz mono audio. `on_progress` returning
    /// `false` cancels with [`WhisperError::Cancelled`].
    pub fn transcribe(
        &self,
        samples: &[f32],
        opts: &DecodeOptions,
        on_progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Transcript, WhisperError> {
        let total_s = samples.len() as f64 / SAMPLE_RATE as f64;
        let mut mel = mel::log_mel_spectrogram(samples, &self.filters, N_SAMPLES);
        let (language, detected, segments) = self.run(
            &mut mel,
            samples.is_empty(),
            opts,
            &mut |p| on_progress(p),
            &|t, _| t,
            total_s,
        )?;
        Ok(finish(language, detected, total_s, segments))
    }

    /// Transcribes only the `regions` of `samples` (VAD output, seconds on
    /// the timeline of `samples`): the regions are cut out, joined and
    /// decoded together, and every timestamp is mapped back to the original
    /// timeline. No regions gives an empty transcript.
    pub fn transcribe_regions<S: SampleSource + ?Sized>(
        &self,
        samples: &S,
        regions: &[SpeechRegion],
        opts: &DecodeOptions,
        on_progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Transcript, WhisperError> {
        let total_s = samples.sample_count() as f64 / SAMPLE_RATE as f64;
        let map = RegionMap::new(regions, samples.sample_count());
        let joined = map.gather(samples);
        let mut mel = mel::log_mel_spectrogram(&joined, &self.filters, N_SAMPLES);
        drop(joined);
        let (language, detected, segments) = self.run(
            &mut mel,
            map.joined_len() == 0,
            opts,
            &mut |p| on_progress(p),
            &|t, is_end| map.to_original(t, is_end),
            total_s,
        )?;
        Ok(finish(language, detected, total_s, segments))
    }

    /// [`WhisperModel::transcribe_regions`] over a recording of `n_samples`
    /// samples that is read, front to back and twice, from `source` rather
    /// than held: the first read finds the spectrogram's maximum (Whisper
    /// floors every value at `max - 8` over the whole signal), the second
    /// feeds the 30 s windows as the long-form loop asks for them. Memory is
    /// a window of samples and of spectrogram, whatever the length; the
    /// transcript is the one `transcribe_regions` gives on the same samples.
    pub fn transcribe_regions_streamed<C: ChunkSource + ?Sized>(
        &self,
        source: &C,
        n_samples: usize,
        regions: &[SpeechRegion],
        opts: &DecodeOptions,
        on_progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Transcript, WhisperError> {
        let total_s = n_samples as f64 / SAMPLE_RATE as f64;
        let map = RegionMap::new(regions, n_samples);
        let joined_len = map.joined_len();
        let filters = &self.filters;
        let mut max = MelMax::new(filters);
        let mut joiner = map.joiner();
        for (i, piece) in source.open().enumerate() {
            let piece = piece.map_err(|e| WhisperError::Input(e.to_string()))?;
            joiner.feed(&piece, &mut |p| max.push(p));
            // A stop is honoured during the first read too (asked now and
            // then: a read is many small pieces).
            if i % 32 == 0
                && !on_progress(Progress {
                    processed_s: 0.0,
                    total_s,
                    segment: None,
                    resumable_at: None,
                })
            {
                return Err(WhisperError::Cancelled);
            }
        }
        let max = max.finish(N_SAMPLES);
        let mut pieces = source.open();
        let mut joiner = map.joiner();
        let read = |out: &mut Vec<f32>| -> Result<bool, WhisperError> {
            match pieces.next() {
                Some(piece) => {
                    let piece = piece.map_err(|e| WhisperError::Input(e.to_string()))?;
                    joiner.feed(&piece, &mut |p| out.extend_from_slice(p));
                    Ok(true)
                }
                None => Ok(false),
            }
        };
        let mut mel = MelWindows::new(filters, joined_len, N_SAMPLES, max, read);
        let (language, detected, segments) = self.run(
            &mut mel,
            joined_len == 0,
            opts,
            &mut |p| on_progress(p),
            &|t, is_end| map.to_original(t, is_end),
            total_s,
        )?;
        Ok(finish(language, detected, total_s, segments))
    }

    /// The long-form loop over the spectrogram `mel` (`empty`: of no
    /// samples). `to_original(t, is_end)` maps seconds of the spectrogram
    /// to the caller's timeline (`is_end`: the time closes a segment, so a
    /// time on a seam between joined regions belongs to the region before
    /// it).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        mel: &mut dyn MelSource,
        empty: bool,
        opts: &DecodeOptions,
        on_progress: &mut dyn FnMut(Progress) -> bool,
        to_original: &dyn Fn(f64, bool) -> f64,
        total_s: f64,
    ) -> Result<Decoded, WhisperError> {
        let multilingual = self.is_multilingual();
        let (mut language_token, mut language) = self.asked_language(opts)?;
        let mut detected: Option<Vec<LanguageCandidate>> = None;
        if empty {
            return Ok((opts.language.as_ref().map(|_| language), None, Vec::new()));
        }

        let content_frames = mel.n_frames().saturating_sub(N_FRAMES);
        let frame_s = HOP_LENGTH as f64 / SAMPLE_RATE as f64;
        let mut rng = SplitMix64(opts.seed);
        let mut all_tokens: Vec<u32> = Vec::new();
        if let Some(prompt) = opts.initial_prompt.as_deref().map(str::trim) {
            if !prompt.is_empty() {
                all_tokens.extend(self.encode_text(&format!(" {prompt}"))?);
            }
        }
        all_tokens.extend_from_slice(&opts.previous_tokens);
        let mut prompt_reset_since = 0;
        let mut segments: Vec<Segment> = Vec::new();
        let mut seek = 0usize;
        // Where the last word ended, for the word duration heuristics.
        let mut last_speech_timestamp = 0.0;
        // The last window's words moved `seek` to where its text ends.
        let mut seek_by_words = false;
        // The last window stopped short and this one hears its rest.
        let mut hearing_rest = false;
        while seek < content_frames {
            // What is left after the last word of a window that reached
            // near the end is the tail of a word or a breath, as in the
            // batched pipeline: decoded alone, Whisper makes words up.
            if seek_by_words && (content_frames - seek) * HOP_LENGTH < MIN_TAIL_SAMPLES {
                break;
            }
            seek_by_words = false;
            let rest_of_stopped = std::mem::take(&mut hearing_rest);
            let window_start = seek;
            let time_offset = seek as f64 * frame_s;
            if !on_progress(Progress {
                processed_s: to_original(time_offset, false),
                total_s,
                segment: None,
                // (A run started here does not know whether this window
                // hears a stopped window's rest, nor whether the last one
                // moved `seek` by its words: it hears the window as a
                // first one.)
                resumable_at: Some(to_original(time_offset, false)),
            }) {
                return Err(WhisperError::Cancelled);
            }
            let segment_size = N_FRAMES.min(content_frames - seek);
            let segment_duration = segment_size as f64 * frame_s;
            let audio = self.encode(mel.window(seek, segment_size)?, mel.n_mels())?;
            let mut state = self.decoder.start(&audio)?;

            if multilingual && language_token.is_none() {
                let (token, candidates) = self.detected_language(&mut state)?;
                language = self.language_code(token);
                language_token = Some(token);
                detected = Some(candidates);
            }
            let sot_sequence = self.sot_sequence(language_token, opts.task);
            let prompt = &all_tokens[prompt_reset_since..];
            let mut check = || {
                on_progress(Progress {
                    processed_s: to_original(time_offset, false),
                    total_s,
                    segment: None,
                    resumable_at: None,
                })
            };
            let mut result = self.decode_with_fallback(
                &mut state,
                prompt,
                &sot_sequence,
                opts,
                &mut rng,
                &mut check,
            )?;
            // A window that re-reads a long stretch of its prompt is the
            // model copying earlier text instead of listening: decode it
            // again without the prompt.
            if opts.suppress_repetition_loops
                && copies_prompt(&result.tokens, prompt, self.specials.eot)
            {
                result = self.decode_with_fallback(
                    &mut state,
                    &[],
                    &sot_sequence,
                    opts,
                    &mut rng,
                    &mut check,
                )?;
            }

            if let Some(threshold) = opts.no_speech_threshold {
                let mut silent = result.no_speech_prob > threshold;
                if let Some(lp) = opts.logprob_threshold {
                    if result.avg_logprob > lp {
                        silent = false;
                    }
                }
                if silent {
                    seek += segment_size;
                    continue;
                }
            }

            let split = self.split_window(&result.tokens, time_offset, segment_duration);
            let single_timestamp_ending = split.single_timestamp_ending;
            seek += split.consumed_frames.unwrap_or(segment_size);
            let mut window = split.segments;
            if let Some((last_speech, words_end)) = self.time_window(
                &mut window,
                single_timestamp_ending,
                split.consumed_frames,
                &mut state,
                &sot_sequence,
                segment_size,
                &language,
                time_offset,
                last_speech_timestamp,
                opts.word_timestamps,
                result.searched(opts),
            )? {
                last_speech_timestamp = last_speech;
                // Seek to the end of the last word rather than the last
                // timestamp token (openai-whisper and faster-whisper do).
                let last_word_end = words_end.or_else(|| window.last().map(|s| s.end));
                if let Some(end) = last_word_end {
                    if !single_timestamp_ending && end > time_offset {
                        seek = (end / frame_s).round() as usize;
                        seek_by_words = true;
                    }
                    last_speech_timestamp = end;
                }
            }

            // A sentence said again: the window goes on where the copy
            // starts in its audio, its text's times kept before that.
            let mut heard_to_copy = false;
            if let Some(Cut::Repeat { copy }) = &result.cut {
                let start =
                    self.aligned_text_end(&window, copy, &mut state, &sot_sequence, segment_size)?;
                let frames = start.map_or(0, |s| (s / frame_s).round() as usize);
                // Answered: the window's text is not aligned alone below.
                heard_to_copy = frames >= MIN_ADVANCE_FRAMES;
                tracing::debug!(
                    window_start = time_offset,
                    copy_start = start,
                    "a sentence said again"
                );
                if heard_to_copy && window_start + frames < seek {
                    seek = window_start + frames;
                    seek_by_words = false;
                    hearing_rest = true;
                    end_window_at(&mut window, time_offset + frames as f64 * frame_s);
                }
            }

            // A window whose text stops well before its end would be
            // skipped whole: the rest of it is heard as the next window,
            // from where the text ends in the audio (its timestamps may end
            // earlier). Not the last window: what follows its text is the
            // recording's end, where a second hearing makes words up
            // ("Thank you." after a speech over music). And once: the
            // rest's own window is skipped as usual. A window the
            // repetition guard cut is always heard on from its text's end:
            // there was more to hear, the last window included.
            let more_follows = window_start + segment_size < content_frames;
            let cut = result.cut.is_some();
            if !seek_by_words && !heard_to_copy && (cut || (!rest_of_stopped && more_follows)) {
                let stamped_end = window.last().map(|s| s.end - time_offset);
                if cut
                    || stopped_short(split.consumed_frames, stamped_end, segment_duration).is_some()
                {
                    let text_end = self.aligned_text_end(
                        &window,
                        &[],
                        &mut state,
                        &sot_sequence,
                        segment_size,
                    )?;
                    tracing::debug!(
                        window_start = time_offset,
                        stamped_end,
                        text_end,
                        "the window's text stopped short"
                    );
                    if let Some(frames) =
                        stopped_short(split.consumed_frames, text_end, segment_duration)
                    {
                        seek = window_start + frames;
                        hearing_rest = true;
                        // Its last segment, without a closing timestamp,
                        // would run to the window's end, over the rest.
                        end_window_at(&mut window, time_offset + frames as f64 * frame_s);
                    }
                }
            }

            let mut window_tokens = Vec::new();
            let seek_original = to_original(time_offset, false);
            for segment in self.window_segments(window, &result, seek_original, to_original)? {
                window_tokens.extend_from_slice(&segment.tokens);
                let segment = Segment {
                    id: segments.len() as u32,
                    ..segment
                };
                segments.push(segment.clone());
                let processed = to_original(seek as f64 * frame_s, true).min(total_s);
                if !on_progress(Progress {
                    processed_s: processed,
                    total_s,
                    segment: Some(segment),
                    resumable_at: None,
                }) {
                    return Err(WhisperError::Cancelled);
                }
            }
            // Never stall: a window that produced nothing seekable moves on.
            if seek as f64 * frame_s <= time_offset {
                seek = (time_offset / frame_s) as usize + segment_size;
            }
            all_tokens.extend(window_tokens);
            if !opts.condition_on_previous_text || result.temperature > 0.5 {
                prompt_reset_since = all_tokens.len();
            }
        }
        on_progress(Progress {
            processed_s: total_s,
            total_s,
            segment: None,
            resumable_at: Some(total_s),
        });
        let (language, detected) = reported_language(&segments, opts, language, detected);
        Ok((language, detected, segments))
    }
}

impl WhisperModel {
    /// The language `opts` names, as its token (multilingual models) and
    /// code ("en" when none is named); refuses what an English-only model
    /// cannot do.
    pub(super) fn asked_language(
        &self,
        opts: &DecodeOptions,
    ) -> Result<(Option<u32>, String), WhisperError> {
        let multilingual = self.is_multilingual();
        if !multilingual {
            if opts.task == Task::Translate {
                return Err(WhisperError::EnglishOnly {
                    model: self.name.clone(),
                    what: "it cannot translate",
                });
            }
            if let Some(lang) = &opts.language {
                if !lang.eq_ignore_ascii_case("en") {
                    return Err(WhisperError::EnglishOnly {
                        model: self.name.clone(),
                        what: "it cannot transcribe other languages",
                    });
                }
            }
        }
        let token = match (&opts.language, multilingual) {
            (Some(code), true) => Some(self.language_token(code)?),
            _ => None,
        };
        let code = opts
            .language
            .clone()
            .unwrap_or_else(|| "en".to_string())
            .to_ascii_lowercase();
        Ok((token, code))
    }

    /// The language spoken in the window in `state`: its token and the
    /// likeliest candidates reported beside it.
    pub(super) fn detected_language(
        &self,
        state: &mut super::decoder::DecoderState,
    ) -> Result<(u32, Vec<LanguageCandidate>), WhisperError> {
        let ranked = self.detect_language(state)?;
        let candidates = ranked
            .iter()
            .take(LANGUAGE_CANDIDATES)
            .map(|&(t, p)| LanguageCandidate {
                language: self.language_code(t),
                probability: p,
            })
            .collect();
        Ok((ranked[0].0, candidates))
    }

    /// `<|startoftranscript|>`, then the language and task tokens when the
    /// language is known (always, on multilingual models, by the time a
    /// window is decoded).
    pub(super) fn sot_sequence(&self, language: Option<u32>, task: Task) -> Vec<u32> {
        let mut sot_sequence = vec![self.specials.sot];
        if let Some(lang) = language {
            sot_sequence.push(lang);
            sot_sequence.push(match task {
                Task::Transcribe => self.specials.transcribe,
                Task::Translate => self.specials.translate,
            });
        }
        sot_sequence
    }
}

/// A window's tokens cut into segments ([`WhisperModel::split_window`]).
pub(super) struct WindowSplit {
    /// Times in seconds of the window's timeline (before any mapping).
    pub(super) segments: Vec<WindowSegment>,
    /// Spectrogram frames the segments cover when the window ended on a
    /// timestamp pair (the next window starts there); `None`: all of it.
    pub(super) consumed_frames: Option<usize>,
    /// The tokens end on a single timestamp (the speech ran to the end).
    pub(super) single_timestamp_ending: bool,
}

impl WhisperModel {
    /// Cuts a window's tokens into segments at consecutive timestamp
    /// tokens, as openai-whisper's `transcribe()`: `time_offset` is where the
    /// window starts, `duration` how much audio it holds.
    pub(super) fn split_window(
        &self,
        tokens: &[u32],
        time_offset: f64,
        duration: f64,
    ) -> WindowSplit {
        let ts_begin = self.specials.timestamp_begin;
        let is_ts = |t: u32| t >= ts_begin;
        let single_timestamp_ending = tokens.len() >= 2
            && !is_ts(tokens[tokens.len() - 2])
            && is_ts(tokens[tokens.len() - 1]);
        let consecutive: Vec<usize> = (1..tokens.len())
            .filter(|&i| is_ts(tokens[i]) && is_ts(tokens[i - 1]))
            .collect();
        // (start, end, tokens) in seconds of this window.
        let mut pieces: Vec<(f64, f64, &[u32])> = Vec::new();
        let mut consumed_frames = None;
        if !consecutive.is_empty() {
            let mut slices = consecutive;
            if single_timestamp_ending {
                slices.push(tokens.len());
            }
            let mut last = 0;
            for &cut in &slices {
                let piece = &tokens[last..cut];
                if let (Some(&a), Some(&b)) = (piece.first(), piece.last()) {
                    let start = (a.saturating_sub(ts_begin)) as f64 * TIME_PRECISION;
                    let end = (b.saturating_sub(ts_begin)) as f64 * TIME_PRECISION;
                    pieces.push((start, end, piece));
                }
                last = cut;
            }
            if !single_timestamp_ending {
                let last_ts = tokens[last - 1].saturating_sub(ts_begin) as usize;
                consumed_frames = Some(last_ts * INPUT_STRIDE);
            }
        } else {
            let mut end = duration;
            if let Some(&last) = tokens.iter().rev().find(|&&t| is_ts(t)) {
                if last != ts_begin {
                    end = (last - ts_begin) as f64 * TIME_PRECISION;
                }
            }
            pieces.push((0.0, end, tokens));
        }
        let segments = pieces
            .into_iter()
            .map(|(start, end, piece)| WindowSegment {
                start: time_offset + start,
                end: (time_offset + end).min(time_offset + duration),
                tokens: piece.to_vec(),
                words: None,
            })
            .collect();
        WindowSplit {
            segments,
            consumed_frames,
            single_timestamp_ending,
        }
    }

    /// A window's segments as the transcript's, their times (and their
    /// words') mapped by `to_original`, empty ones dropped; `seek_original`
    /// is where the window starts on the original timeline. Ids are left at
    /// 0 for the caller to number.
    pub(super) fn window_segments(
        &self,
        window: Vec<WindowSegment>,
        result: &WindowResult,
        seek_original: f64,
        to_original: &dyn Fn(f64, bool) -> f64,
    ) -> Result<Vec<Segment>, WhisperError> {
        let frame_s = HOP_LENGTH as f64 / SAMPLE_RATE as f64;
        let mut out = Vec::with_capacity(window.len());
        for piece in window {
            let text = self.decode_text(&piece.tokens)?;
            if text.is_empty() || piece.end <= piece.start {
                continue;
            }
            let words = piece.words.map(|words| {
                words
                    .into_iter()
                    .map(|w| Word {
                        start: round_ms(to_original(w.start, false)),
                        end: round_ms(to_original(w.end, true)),
                        ..w
                    })
                    .collect()
            });
            out.push(Segment {
                id: 0,
                start: round_ms(to_original(piece.start, false)),
                end: round_ms(to_original(piece.end, true)),
                text,
                speaker: None,
                words,
                seek: Some((seek_original / frame_s).round() as u64),
                tokens: piece.tokens,
                temperature: Some(result.temperature),
                avg_logprob: Some(result.avg_logprob),
                compression_ratio: Some(result.compression_ratio),
                no_speech_prob: Some(result.no_speech_prob),
            });
        }
        Ok(out)
    }
}

/// A recording [`WhisperModel::transcribe_regions_streamed`] reads front to
/// back, as many times as it needs, in pieces of any size (16 kHz mono).
pub trait ChunkSource {
    /// Why a read failed; its message becomes [`WhisperError::Input`]'s.
    type Error: std::fmt::Display;
    type Reader: Iterator<Item = Result<Vec<f32>, Self::Error>>;
    /// Starts a read from the first sample.
    fn open(&self) -> Self::Reader;
}

/// A spectrogram the long-form loop takes its 30 s windows from: whole in
/// memory, or computed window by window from a recording read as it goes.
trait MelSource {
    fn n_mels(&self) -> usize;
    fn n_frames(&self) -> usize;
    /// Frames `start..start + len` as `[n_mels, N_FRAMES]`, zero padded;
    /// asked for front to back.
    fn window(&mut self, start: usize, len: usize) -> Result<Vec<f32>, WhisperError>;
}

impl MelSource for LogMel {
    fn n_mels(&self) -> usize {
        self.n_mels
    }

    fn n_frames(&self) -> usize {
        self.n_frames
    }

    fn window(&mut self, start: usize, len: usize) -> Result<Vec<f32>, WhisperError> {
        Ok(LogMel::window(self, start, len))
    }
}

impl<R: FnMut(&mut Vec<f32>) -> Result<bool, WhisperError>> MelSource for MelWindows<'_, R> {
    fn n_mels(&self) -> usize {
        MelWindows::n_mels(self)
    }

    fn n_frames(&self) -> usize {
        MelWindows::n_frames(self)
    }

    fn window(&mut self, start: usize, len: usize) -> Result<Vec<f32>, WhisperError> {
        MelWindows::window(self, start, len)?.ok_or_else(|| {
            WhisperError::Input("the audio ended before the length it had the first time".into())
        })
    }
}

/// What the long-form loop found: the language (asked for or detected), the
/// detection's ranked candidates when it ran, and the segments.
type Decoded = (Option<String>, Option<Vec<LanguageCandidate>>, Vec<Segment>);

/// Languages reported beside the detected one.
const LANGUAGE_CANDIDATES: usize = 5;

/// Shortest rest of audio decoded again after a window that stopped early
/// (1 s), in both long-form loops: less is the tail of a word or a breath,
/// and decoded alone Whisper makes words up.
pub(super) const MIN_TAIL_SAMPLES: usize = SAMPLE_RATE;

/// How much of a window may follow its text and still be skipped with it.
const STOPPED_SHORT_S: f64 = 5.0;

/// The least a window heard on from within itself (a rest, or where a
/// sentence is said again) moves the loop on: 1 s, so that no recording,
/// however made, has the loop decode a window per few frames.
const MIN_ADVANCE_FRAMES: usize = MIN_TAIL_SAMPLES / HOP_LENGTH;

/// Ends a window's segments, and their words, by `at` (seconds): the
/// window goes on from there.
pub(super) fn end_window_at(window: &mut [WindowSegment], at: f64) {
    for segment in window.iter_mut() {
        segment.start = segment.start.min(at);
        segment.end = segment.end.min(at).max(segment.start);
        for word in segment.words.iter_mut().flatten() {
            word.start = word.start.min(at);
            word.end = word.end.min(at).max(word.start);
        }
    }
}

/// Where a window that would be skipped whole (it ended on a single
/// timestamp, or had no timestamp pair: `consumed_frames` is `None`) goes
/// on from, when its text ends `text_end` seconds into it and that is
/// [`STOPPED_SHORT_S`] or more before its `duration`: the text's end, in
/// frames from the window's start; `None` to skip the window as openai-whisper
/// and faster-whisper do.
///
/// The model ends a window early when it hears nothing more, and sometimes
/// when there is: base, int8, on a recording of read prose, ended a window
/// after "should do this." (1.5 s) and the loop skipped the other 28 s of
/// speech. Heard again as the next window, the rest is transcribed, or, if
/// it is silence, skipped by the no-speech check at the cost of one more
/// window. The loop asks with the last timestamp first, then with where
/// the aligned text ends: a timestamp that ends before the speech it
/// closes would have the next window hear that speech again. It does not
/// ask for the last window, nor for a window that is itself such a rest,
/// unless the repetition guard cut the window's text (there was more).
fn stopped_short(
    consumed_frames: Option<usize>,
    text_end: Option<f64>,
    duration: f64,
) -> Option<usize> {
    let end = text_end?;
    let frame_s = HOP_LENGTH as f64 / SAMPLE_RATE as f64;
    let frames = (end / frame_s).round() as usize;
    (consumed_frames.is_none() && frames >= MIN_ADVANCE_FRAMES && duration - end >= STOPPED_SHORT_S)
        .then_some(frames)
}

/// The language a transcript reports: none when nothing was said, unless
/// the caller named one.
pub(super) fn reported_language(
    segments: &[Segment],
    opts: &DecodeOptions,
    language: String,
    detected: Option<Vec<LanguageCandidate>>,
) -> (Option<String>, Option<Vec<LanguageCandidate>>) {
    if segments.is_empty() && opts.language.is_none() {
        (None, None)
    } else {
        (Some(language), detected)
    }
}

pub(super) fn finish(
    language: Option<String>,
    detected: Option<Vec<LanguageCandidate>>,
    duration_s: f64,
    segments: Vec<Segment>,
) -> Transcript {
    let text = segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Transcript {
        language_probability: detected
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.probability),
        language_candidates: detected,
        language,
        duration_s,
        text,
        segments,
        speakers: None,
    }
}

fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_that_stops_short_is_heard_again_from_its_text_end() {
        // Ended on a single timestamp 1.5 s into a full window: go on from
        // there (150 frames of 10 ms).
        assert_eq!(stopped_short(None, Some(1.5), 30.0), Some(150));
        // A shorter window too (the loop asks only for windows that more
        // audio follows, so never for a last, partial one).
        assert_eq!(stopped_short(None, Some(2.0), 12.0), Some(200));
        // Text to within 5 s of the end, none at all, or a timestamp pair
        // (the loop seeks to it already): skipped or seeked as before.
        assert_eq!(stopped_short(None, Some(25.5), 30.0), None);
        assert_eq!(stopped_short(None, None, 30.0), None);
        assert_eq!(stopped_short(None, Some(0.0), 30.0), None);
        assert_eq!(stopped_short(Some(150), Some(1.5), 30.0), None);
        // Less than a second in: the loop would crawl; skipped.
        assert_eq!(stopped_short(None, Some(0.5), 30.0), None);
        assert_eq!(stopped_short(None, Some(1.0), 30.0), Some(100));
    }
}
