//! Whisper speech recognition on candle, with our own decoding loop.
//!
//! The encoder is candle-transformers' `AudioEncoder`; the decoder is ours
//! ([`decoder::TextDecoder`]) because it keeps a self-attention key/value
//! cache. On top sits the long-form algorithm of OpenAI's `transcribe()`:
//! 30 s windows that seek to the last timestamp the model emitted, timestamp
//! tokens turned into segments, language detection, the translate task,
//! temperature fallback (compression ratio, average log-probability,
//! no-speech probability), an initial prompt and conditioning on previous
//! text, plus a guard against repetition loops.
//!
//! A model directory holds `model.safetensors` (HF names, see [`crate::ct2`]),
//! `config.json` and `tokenizer.json`, as installed by [`crate::fetch`].

pub mod decoder;
mod regions;

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::model::{AudioEncoder, Whisper};
pub use candle_transformers::models::whisper::Config;
use tokenizers::Tokenizer;

use crate::mel::{
    self, LogMel, MelFilters, MelMax, MelWindows, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE,
};
use crate::transcript::{Segment, SpeechRegion, Transcript};
use decoder::{DecoderState, TextDecoder};
use regions::RegionMap;
pub use regions::SampleSource;

/// Seconds per timestamp token step.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per encoder output position (conv2 has stride 2).
const INPUT_STRIDE: usize = 2;

/// Everything that can stop a transcription.
#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    #[error(
        "model file {path} is missing; install the model again (`murmur models fetch {name}`)"
    )]
    MissingFile { path: PathBuf, name: String },
    #[error(
        "cannot read {path}: {detail}; the model directory is damaged, install the model again"
    )]
    BadModelFile { path: PathBuf, detail: String },
    #[error(
        "the tokenizer has no token `{0}`; this tokenizer.json does not belong to a Whisper model"
    )]
    MissingToken(String),
    #[error("unknown language code `{0}`; use an ISO 639-1 code Whisper knows, such as en, de, fr, es, ja")]
    UnknownLanguage(String),
    #[error("`{model}` is an English-only model: {what}; use a multilingual model such as `base`")]
    EnglishOnly { model: String, what: &'static str },
    #[error("transcription cancelled")]
    Cancelled,
    #[error("inference failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("reading the audio failed: {0}")]
    Input(String),
}

/// Transcribe in the spoken language, or translate into English.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    #[default]
    Transcribe,
    Translate,
}

/// Decoding settings; the defaults are OpenAI's `transcribe()` defaults
/// (greedy at temperature 0, one sample at each fallback temperature).
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub task: Task,
    /// ISO 639-1 code; `None` detects it on the first window (multilingual
    /// models) or means English (`.en` models).
    pub language: Option<String>,
    /// Tried in order until a result passes the thresholds below.
    pub temperatures: Vec<f64>,
    /// Retry when the text's gzip compression ratio is above this (repetitive).
    pub compression_ratio_threshold: Option<f64>,
    /// Retry when the average token log-probability is below this.
    pub logprob_threshold: Option<f64>,
    /// A window whose no-speech probability is above this and whose average
    /// log-probability is below `logprob_threshold` is treated as silence.
    pub no_speech_threshold: Option<f64>,
    /// Prompt each window with the text of the previous ones.
    pub condition_on_previous_text: bool,
    /// Text to prompt the first window with (spellings, names, style).
    pub initial_prompt: Option<String>,
    /// Latest allowed first timestamp of a window, in seconds.
    pub max_initial_timestamp: f64,
    /// Stop and retry a window whose text ends in the same phrase repeated
    /// over and over (a typical Whisper hallucination).
    pub suppress_repetition_loops: bool,
    /// Seed of the sampler used at temperatures above 0.
    pub seed: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            task: Task::Transcribe,
            language: None,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            initial_prompt: None,
            max_initial_timestamp: 1.0,
            suppress_repetition_loops: true,
            seed: 0x6d75_726d_7572,
        }
    }
}

/// Where a transcription is; passed to the progress callback at the start of
/// each window, every few decoded tokens, and once per new segment.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Seconds of audio (original timeline) fully handled.
    pub processed_s: f64,
    pub total_s: f64,
    /// The segment just decoded, when this report is about one.
    pub segment: Option<Segment>,
}

/// Token ids the decoding loop needs.
#[derive(Debug, Clone)]
struct Specials {
    eot: u32,
    sot: u32,
    translate: u32,
    transcribe: u32,
    sot_prev: u32,
    no_speech: u32,
    no_timestamps: u32,
    timestamp_begin: u32,
    /// Language tokens of multilingual models (empty for `.en`).
    languages: Vec<u32>,
}

/// The outcome of decoding one window at one temperature.
#[derive(Debug, Clone)]
struct WindowResult {
    /// Sampled tokens (text and timestamps), without the prompt or EOT.
    tokens: Vec<u32>,
    avg_logprob: f64,
    no_speech_prob: f64,
    temperature: f64,
    compression_ratio: f64,
    /// Decoding stopped on a repetition loop.
    looped: bool,
}

/// A loaded Whisper model, ready to transcribe. Holds its weights (hundreds
/// of MB for larger sizes); not `Clone`, share it behind a lock or keep one
/// per worker. `transcribe` takes `&mut self` because candle's encoder
/// keeps scratch state.
pub struct WhisperModel {
    name: String,
    config: Config,
    encoder: AudioEncoder,
    decoder: TextDecoder,
    tokenizer: Tokenizer,
    specials: Specials,
    /// Always suppressed while sampling.
    suppress: Vec<u32>,
    /// Suppressed at the first sampled position (blank, EOT).
    suppress_begin: Vec<u32>,
    filters: MelFilters,
    device: Device,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn read_file(dir: &Path, file: &str, name: &str) -> Result<PathBuf, WhisperError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(WhisperError::MissingFile {
            path,
            name: name.to_string(),
        })
    }
}

impl WhisperModel {
    /// Loads a model directory (see the module docs) onto `device`. Weights
    /// are stored in float16 and computed in float32 on the CPU; on CUDA
    /// they stay float32 as well for now.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, WhisperError> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let cfg_path = read_file(dir, "config.json", &name)?;
        let weights_path = read_file(dir, "model.safetensors", &name)?;
        let tok_path = read_file(dir, "tokenizer.json", &name)?;
        let bad = |path: &Path, detail: String| WhisperError::BadModelFile {
            path: path.to_path_buf(),
            detail,
        };

        let cfg_text =
            std::fs::read_to_string(&cfg_path).map_err(|e| bad(&cfg_path, e.to_string()))?;
        let config: Config =
            serde_json::from_str(&cfg_text).map_err(|e| bad(&cfg_path, e.to_string()))?;
        let extra: serde_json::Value =
            serde_json::from_str(&cfg_text).map_err(|e| bad(&cfg_path, e.to_string()))?;
        let tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| bad(&tok_path, e.to_string()))?;

        // Load every tensor once as f32 and share it between candle's
        // encoder and our decoder (tensors are reference counted).
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| bad(&weights_path, e.to_string()))?;
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
            .collect::<Result<std::collections::HashMap<_, _>, candle_core::Error>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let encoder = Whisper::load(&vb, config.clone())
            .map_err(|e| bad(&weights_path, e.to_string()))?
            .encoder;
        let decoder = TextDecoder::load(&config, vb.pp("model.decoder"))
            .map_err(|e| bad(&weights_path, e.to_string()))?;

        let token = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| WhisperError::MissingToken(t.to_string()))
        };
        let no_timestamps = token("<|notimestamps|>")?;
        let sot = token("<|startoftranscript|>")?;
        let translate = token("<|translate|>")?;
        let multilingual = config.vocab_size >= 51865;
        let specials = Specials {
            eot: token("<|endoftext|>")?,
            sot,
            translate,
            transcribe: token("<|transcribe|>")?,
            sot_prev: token("<|startofprev|>")?,
            no_speech: token("<|nospeech|>").or_else(|_| token("<|nocaptions|>"))?,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
            languages: if multilingual {
                (sot + 1..translate).collect()
            } else {
                Vec::new()
            },
        };
        let ids = |key: &str| -> Vec<u32> {
            extra
                .get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut suppress = config.suppress_tokens.clone();
        // The special tokens OpenAI's "-1" adds, in case the config lacks them.
        suppress.extend([
            specials.transcribe,
            specials.translate,
            specials.sot,
            specials.sot_prev,
            specials.no_speech,
        ]);
        if let Some(lm) = tokenizer.token_to_id("<|startoflm|>") {
            suppress.push(lm);
        }
        suppress.sort_unstable();
        suppress.dedup();
        suppress.retain(|&t| (t as usize) < config.vocab_size);
        let mut suppress_begin = ids("begin_suppress_tokens");
        if suppress_begin.is_empty() {
            suppress_begin = tokenizer
                .encode(" ", false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default();
            suppress_begin.push(specials.eot);
        }
        let filters = MelFilters::slaney(config.num_mel_bins, mel::N_FFT, SAMPLE_RATE);
        Ok(Self {
            name,
            config,
            encoder,
            decoder,
            tokenizer,
            specials,
            suppress,
            suppress_begin,
            filters,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the model knows languages other than English.
    pub fn is_multilingual(&self) -> bool {
        !self.specials.languages.is_empty()
    }

    fn language_code(&self, token: u32) -> String {
        self.tokenizer
            .id_to_token(token)
            .map(|t| {
                t.trim_start_matches("<|")
                    .trim_end_matches("|>")
                    .to_string()
            })
            .unwrap_or_else(|| "en".into())
    }

    fn language_token(&self, code: &str) -> Result<u32, WhisperError> {
        let token = self
            .tokenizer
            .token_to_id(&format!("<|{}|>", code.to_ascii_lowercase()))
            .filter(|t| self.specials.languages.contains(t));
        token.ok_or_else(|| WhisperError::UnknownLanguage(code.to_string()))
    }

    /// Transcribes (or translates) 16 kHz mono audio. `on_progress` returning
    /// `false` cancels with [`WhisperError::Cancelled`].
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        opts: &DecodeOptions,
        on_progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Transcript, WhisperError> {
        let total_s = samples.len() as f64 / SAMPLE_RATE as f64;
        let mut mel = mel::log_mel_spectrogram(samples, &self.filters, N_SAMPLES);
        let (language, segments) = self.run(
            &mut mel,
            samples.is_empty(),
            opts,
            &mut |p| on_progress(p),
            &|t, _| t,
            total_s,
        )?;
        Ok(finish(language, total_s, segments))
    }

    /// Transcribes only the `regions` of `samples` (VAD output, seconds on
    /// the timeline of `samples`): the regions are cut out, joined and
    /// decoded together, and every timestamp is mapped back to the original
    /// timeline. No regions gives an empty transcript.
    pub fn transcribe_regions<S: SampleSource + ?Sized>(
        &mut self,
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
        let (language, segments) = self.run(
            &mut mel,
            map.joined_len() == 0,
            opts,
            &mut |p| on_progress(p),
            &|t, is_end| map.to_original(t, is_end),
            total_s,
        )?;
        Ok(finish(language, total_s, segments))
    }

    /// [`WhisperModel::transcribe_regions`] over a recording of `n_samples`
    /// samples that is read, front to back and twice, from `source` rather
    /// than held: the first read finds the spectrogram's maximum (Whisper
    /// floors every value at `max - 8` over the whole signal), the second
    /// feeds the 30 s windows as the long-form loop asks for them. Memory is
    /// a window of samples and of spectrogram, whatever the length; the
    /// transcript is the one `transcribe_regions` gives on the same samples.
    pub fn transcribe_regions_streamed<C: ChunkSource + ?Sized>(
        &mut self,
        source: &C,
        n_samples: usize,
        regions: &[SpeechRegion],
        opts: &DecodeOptions,
        on_progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Transcript, WhisperError> {
        let total_s = n_samples as f64 / SAMPLE_RATE as f64;
        let map = RegionMap::new(regions, n_samples);
        let joined_len = map.joined_len();
        // The windows borrow the filters while the loop borrows the model.
        let filters = self.filters.clone();
        let mut max = MelMax::new(&filters);
        let mut joiner = map.joiner();
        for (i, piece) in source.open().enumerate() {
            let piece = piece.map_err(WhisperError::Input)?;
            joiner.feed(&piece, &mut |p| max.push(p));
            // A stop is honoured during the first read too (asked now and
            // then: a read is many small pieces).
            if i % 32 == 0
                && !on_progress(Progress {
                    processed_s: 0.0,
                    total_s,
                    segment: None,
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
                    let piece = piece.map_err(WhisperError::Input)?;
                    joiner.feed(&piece, &mut |p| out.extend_from_slice(p));
                    Ok(true)
                }
                None => Ok(false),
            }
        };
        let mut mel = MelWindows::new(&filters, joined_len, N_SAMPLES, max, read);
        let (language, segments) = self.run(
            &mut mel,
            joined_len == 0,
            opts,
            &mut |p| on_progress(p),
            &|t, is_end| map.to_original(t, is_end),
            total_s,
        )?;
        Ok(finish(language, total_s, segments))
    }

    /// The long-form loop over the spectrogram `mel` (`empty`: of no
    /// samples). `to_original(t, is_end)` maps seconds of the spectrogram
    /// to the caller's timeline (`is_end`: the time closes a segment, so a
    /// time on a seam between joined regions belongs to the region before
    /// it).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        mel: &mut dyn MelSource,
        empty: bool,
        opts: &DecodeOptions,
        on_progress: &mut dyn FnMut(Progress) -> bool,
        to_original: &dyn Fn(f64, bool) -> f64,
        total_s: f64,
    ) -> Result<(String, Vec<Segment>), WhisperError> {
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
        let mut language_token = match (&opts.language, multilingual) {
            (Some(code), true) => Some(self.language_token(code)?),
            _ => None,
        };
        let mut language = opts
            .language
            .clone()
            .unwrap_or_else(|| "en".to_string())
            .to_ascii_lowercase();
        if empty {
            return Ok((language, Vec::new()));
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
        let mut prompt_reset_since = 0;
        let mut segments: Vec<Segment> = Vec::new();
        let mut seek = 0usize;
        while seek < content_frames {
            let time_offset = seek as f64 * frame_s;
            if !on_progress(Progress {
                processed_s: to_original(time_offset, false),
                total_s,
                segment: None,
            }) {
                return Err(WhisperError::Cancelled);
            }
            let segment_size = N_FRAMES.min(content_frames - seek);
            let segment_duration = segment_size as f64 * frame_s;
            let audio = self.encode(mel.window(seek, segment_size)?, mel.n_mels())?;
            let mut state = self.decoder.start(&audio)?;

            if multilingual && language_token.is_none() {
                let token = self.detect_language(&mut state)?;
                language = self.language_code(token);
                language_token = Some(token);
            }
            let mut sot_sequence = vec![self.specials.sot];
            if let Some(lang) = language_token {
                sot_sequence.push(lang);
                sot_sequence.push(match opts.task {
                    Task::Transcribe => self.specials.transcribe,
                    Task::Translate => self.specials.translate,
                });
            }
            let prompt = &all_tokens[prompt_reset_since..];
            let mut check = || {
                on_progress(Progress {
                    processed_s: to_original(time_offset, false),
                    total_s,
                    segment: None,
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

            let tokens = &result.tokens;
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
            if !consecutive.is_empty() {
                let mut slices = consecutive.clone();
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
                if single_timestamp_ending {
                    seek += segment_size;
                } else {
                    let last_ts = tokens[last - 1].saturating_sub(ts_begin) as usize;
                    seek += last_ts * INPUT_STRIDE;
                }
            } else {
                let mut duration = segment_duration;
                if let Some(&last) = tokens.iter().rev().find(|&&t| is_ts(t)) {
                    if last != ts_begin {
                        duration = (last - ts_begin) as f64 * TIME_PRECISION;
                    }
                }
                pieces.push((0.0, duration, tokens));
                seek += segment_size;
            }

            let mut window_tokens = Vec::new();
            for (start, end, piece) in pieces {
                let text = self.decode_text(piece)?;
                let start = time_offset + start;
                let end = (time_offset + end).min(time_offset + segment_duration);
                if text.is_empty() || end <= start {
                    continue;
                }
                window_tokens.extend_from_slice(piece);
                let segment = Segment {
                    id: segments.len() as u32,
                    start: round_ms(to_original(start, false)),
                    end: round_ms(to_original(end, true)),
                    text,
                    speaker: None,
                };
                segments.push(segment.clone());
                let processed = to_original(seek as f64 * frame_s, true).min(total_s);
                if !on_progress(Progress {
                    processed_s: processed,
                    total_s,
                    segment: Some(segment),
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
        });
        Ok((language, segments))
    }

    /// Encoder output `[1, 1500, d]` for a `[n_mels, N_FRAMES]` window.
    fn encode(&mut self, window: Vec<f32>, n_mels: usize) -> Result<Tensor, WhisperError> {
        let input = Tensor::from_vec(window, (1, n_mels, N_FRAMES), &self.device)?;
        Ok(self.encoder.forward(&input, true)?)
    }

    fn detect_language(&self, state: &mut DecoderState) -> Result<u32, WhisperError> {
        state.reset_tokens();
        let hidden = self.decoder.forward(&[self.specials.sot], state)?;
        let logits = self
            .decoder
            .logits(&decoder::last_row(&hidden)?)?
            .i(0)?
            .to_vec1::<f32>()?;
        state.reset_tokens();
        let best = self
            .specials
            .languages
            .iter()
            .copied()
            .max_by(|&a, &b| logits[a as usize].total_cmp(&logits[b as usize]))
            .unwrap_or(self.specials.sot + 1);
        Ok(best)
    }

    fn decode_with_fallback(
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
        let mut best: Option<WindowResult> = None;
        for &t in temperatures {
            let result = self.decode_window(state, prompt, sot_sequence, t, opts, rng, check)?;
            let mut needs_fallback = result.looped;
            if let Some(cr) = opts.compression_ratio_threshold {
                if result.compression_ratio > cr {
                    needs_fallback = true;
                }
            }
            if let Some(lp) = opts.logprob_threshold {
                if result.avg_logprob < lp {
                    needs_fallback = true;
                }
            }
            if let Some(ns) = opts.no_speech_threshold {
                if result.no_speech_prob > ns {
                    needs_fallback = false;
                }
            }
            if !needs_fallback {
                return Ok(result);
            }
            // Keep the least bad attempt in case every temperature fails:
            // prefer one that did not loop, then the higher log-probability.
            let better = match &best {
                None => true,
                Some(b) => {
                    (b.looped && !result.looped)
                        || (b.looped == result.looped && result.avg_logprob > b.avg_logprob)
                }
            };
            if better {
                best = Some(result);
            }
        }
        best.ok_or(WhisperError::Cancelled)
    }

    /// Decodes one window at one temperature.
    #[allow(clippy::too_many_arguments)]
    fn decode_window(
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
        let n_ctx = self.decoder.n_ctx();
        let sample_len = n_ctx / 2;
        let mut initial: Vec<u32> = Vec::new();
        if !prompt.is_empty() {
            initial.push(self.specials.sot_prev);
            let keep = (n_ctx / 2).saturating_sub(1);
            initial.extend_from_slice(&prompt[prompt.len().saturating_sub(keep)..]);
        }
        let sot_index = initial.len();
        initial.extend_from_slice(sot_sequence);

        let hidden = self.decoder.forward(&initial, state)?;
        let no_speech_prob = {
            let logits = self.decoder.logits(&decoder::row(&hidden, sot_index)?)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?;
            probs
                .i((0, self.specials.no_speech as usize))?
                .to_scalar::<f32>()? as f64
        };
        let mut logits = self
            .decoder
            .logits(&decoder::last_row(&hidden)?)?
            .i(0)?
            .to_vec1::<f32>()?;

        let mut tokens: Vec<u32> = Vec::new();
        let mut sum_logprob = 0f64;
        let mut looped = false;
        let max_initial = (opts.max_initial_timestamp / TIME_PRECISION).round() as u32;
        loop {
            self.apply_filters(&mut logits, &tokens, max_initial);
            let logprobs = log_softmax(&logits);
            let next = if temperature <= 0.0 {
                argmax(&logits)
            } else {
                sample(&logits, temperature, rng)
            };
            if next == self.specials.eot || tokens.len() >= sample_len {
                if next == self.specials.eot {
                    sum_logprob += logprobs[next as usize] as f64;
                }
                break;
            }
            sum_logprob += logprobs[next as usize] as f64;
            tokens.push(next);
            if opts.suppress_repetition_loops {
                if let Some(cut) = repetition_loop(&tokens, self.specials.timestamp_begin) {
                    tokens.truncate(cut);
                    looped = true;
                    break;
                }
            }
            if state.len() + 1 > n_ctx {
                break;
            }
            if tokens.len().is_multiple_of(16) && !check() {
                return Err(WhisperError::Cancelled);
            }
            let hidden = self.decoder.forward(&[next], state)?;
            logits = self
                .decoder
                .logits(&decoder::last_row(&hidden)?)?
                .i(0)?
                .to_vec1::<f32>()?;
        }
        let text = self.decode_text(&tokens)?;
        Ok(WindowResult {
            avg_logprob: sum_logprob / (tokens.len() + 1) as f64,
            no_speech_prob,
            temperature,
            compression_ratio: compression_ratio(&text),
            tokens,
            looped,
        })
    }

    /// OpenAI's logit filters: blank/EOT suppression at the start, the
    /// suppressed-token list, and the timestamp rules (timestamps come in
    /// pairs, never go backwards, the first token is a timestamp no later
    /// than `max_initial`, and a timestamp wins when the timestamps together
    /// are likelier than any text token).
    fn apply_filters(&self, logits: &mut [f32], tokens: &[u32], max_initial: u32) {
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
            return;
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
        let logprobs = log_softmax(logits);
        let ts_logprob = log_sum_exp(&logprobs[ts_begin..]);
        let max_text = logprobs[..ts_begin]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if ts_logprob > max_text {
            logits[..ts_begin].fill(neg);
        }
    }

    fn encode_text(&self, text: &str) -> Result<Vec<u32>, WhisperError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| WhisperError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of the non-special tokens, trimmed.
    fn decode_text(&self, tokens: &[u32]) -> Result<String, WhisperError> {
        let text: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&t| t < self.specials.eot)
            .collect();
        let s = self
            .tokenizer
            .decode(&text, true)
            .map_err(|e| WhisperError::Tokenizer(e.to_string()))?;
        Ok(s.trim().to_string())
    }
}

/// A recording [`WhisperModel::transcribe_regions_streamed`] reads front to
/// back, as many times as it needs, in pieces of any size (16 kHz mono).
pub trait ChunkSource {
    type Reader: Iterator<Item = Result<Vec<f32>, String>>;
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

fn finish(language: String, duration_s: f64, segments: Vec<Segment>) -> Transcript {
    let text = segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Transcript {
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

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn log_sum_exp(v: &[f32]) -> f32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + v.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

fn log_softmax(v: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(v);
    v.iter().map(|&x| x - lse).collect()
}

fn sample(logits: &[f32], temperature: f64, rng: &mut SplitMix64) -> u32 {
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

/// gzip-style compression ratio of the text (deflate via zlib, as OpenAI's
/// Whisper computes it): repetitive text compresses well.
fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    if enc.write_all(text.as_bytes()).is_err() {
        return 0.0;
    }
    match enc.finish() {
        Ok(compressed) if !compressed.is_empty() => text.len() as f64 / compressed.len() as f64,
        _ => 0.0,
    }
}

/// Detects a decoding loop in the text tokens (timestamps ignored): either
/// they end with the same block of `p` tokens repeated enough times (16 for
/// one token, 8 for two, 4 for longer blocks), or their last
/// [`PROMPT_COPY_TOKENS`] tokens already appeared earlier in the window (a
/// whole sentence said twice, typically with new timestamps: Whisper
/// re-reading itself). Returns where to cut `tokens` so one copy is kept.
fn repetition_loop(tokens: &[u32], ts_begin: u32) -> Option<usize> {
    let text: Vec<(usize, u32)> = tokens
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, t)| t < ts_begin)
        .collect();
    let n = text.len();
    for p in 1..=32usize {
        let repeats = match p {
            1 => 16,
            2 => 8,
            _ => 4,
        };
        if n < p * repeats {
            continue;
        }
        let tail = &text[n - p * repeats..];
        let block = &tail[..p];
        if tail
            .chunks(p)
            .all(|c| c.iter().zip(block).all(|(a, b)| a.1 == b.1))
        {
            // Keep everything up to the end of the first copy.
            return Some(tail[p - 1].0 + 1);
        }
    }
    let k = PROMPT_COPY_TOKENS;
    if n > k {
        let tail = &text[n - k..];
        let earlier = (0..n - k).any(|start| {
            text[start..start + k]
                .iter()
                .zip(tail)
                .all(|(a, b)| a.1 == b.1)
        });
        if earlier {
            return Some(tail[0].0);
        }
    }
    None
}

/// Whether the text tokens of `tokens` repeat a run of at least
/// [`PROMPT_COPY_TOKENS`] consecutive text tokens of `prompt`.
fn copies_prompt(tokens: &[u32], prompt: &[u32], eot: u32) -> bool {
    let a: Vec<u32> = tokens.iter().copied().filter(|&t| t < eot).collect();
    let b: Vec<u32> = prompt.iter().copied().filter(|&t| t < eot).collect();
    if a.len() < PROMPT_COPY_TOKENS || b.len() < PROMPT_COPY_TOKENS {
        return false;
    }
    // Longest common substring, one DP row at a time.
    let mut prev = vec![0usize; b.len() + 1];
    for &x in &a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, &y) in b.iter().enumerate() {
            if x == y {
                cur[j + 1] = prev[j] + 1;
                if cur[j + 1] >= PROMPT_COPY_TOKENS {
                    return true;
                }
            }
        }
        prev = cur;
    }
    false
}

/// Length of a verbatim copy of the prompt that counts as a hallucination
/// (about a dozen words: a repeated sentence, not a repeated phrase).
const PROMPT_COPY_TOKENS: usize = 12;

/// Small deterministic PRNG for temperature sampling.
struct SplitMix64(u64);

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

    #[test]
    fn loop_detection_keeps_one_copy() {
        let ts = 50_000;
        let mut tokens = vec![1, 2, 3];
        for _ in 0..4 {
            tokens.extend([7, 8, 9]);
        }
        let cut = repetition_loop(&tokens, ts).expect("loop");
        assert_eq!(&tokens[..cut], &[1, 2, 3, 7, 8, 9]);
        assert_eq!(repetition_loop(&[1, 2, 3, 1, 2, 3], ts), None);

        // A sentence of 12+ tokens said again later, with timestamps around.
        let sentence: Vec<u32> = (200..214).collect();
        let mut tokens = vec![ts, 1, 2];
        tokens.extend(&sentence);
        tokens.extend([ts + 50, ts + 50, 5, 6]);
        let second = tokens.len();
        tokens.extend(&sentence[..12]);
        let cut = repetition_loop(&tokens, ts).expect("repeat");
        assert_eq!(cut, second);
    }

    /// Workers move loaded models between threads.
    #[test]
    fn model_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<WhisperModel>();
    }

    #[test]
    fn prompt_copies_are_detected() {
        let eot = 50_257;
        let prompt: Vec<u32> = (100..130).collect();
        let copy: Vec<u32> = [1, 2].into_iter().chain(110..124).collect();
        assert!(copies_prompt(&copy, &prompt, eot));
        let short: Vec<u32> = (110..118).collect();
        assert!(!copies_prompt(&short, &prompt, eot));
        assert!(!copies_prompt(&copy, &[], eot));
    }

    #[test]
    fn compression_ratio_flags_repetition() {
        let normal = "And so my fellow Americans, ask not what your country can do for you.";
        let looped = "thank you ".repeat(30);
        assert!(compression_ratio(normal) < 2.4);
        assert!(compression_ratio(&looped) > 2.4);
    }
}
