//! Whisper speech recognition on candle, with our own decoding loop.
//!
//! Encoder and decoder are ours (the decoder keeps a self-attention
//! key/value cache; both take float or int8 weights). On top sits the
//! long-form algorithm of OpenAI's `transcribe()`. One file per job:
//!
//! - `model.rs`: loading a model directory, tokenizer and special tokens;
//! - `compute.rs`: the compute type (`int8`, `f16`, `f32`) and the linear
//!   layer and token embedding that follow it;
//! - [`quantize`]: the int8 weights, quantized once and cached beside the
//!   safetensors (`model.int8.gguf`, checked by sha256);
//! - `weights_file.rs`: `model.safetensors` read tensor by tensor;
//! - `activations.rs`: the encoder's softmax and GELU, vectorised;
//! - `encoder.rs`: the audio encoder (stateless, shared by every job);
//! - [`decoder`]: the text decoder layers and their key/value cache;
//! - `decoding.rs`: one window at one temperature, language detection, and
//!   the temperature fallback;
//! - `search.rs`: the token search of a window (greedy, best-of-n
//!   sampling, beam search) and the ranking of its candidates;
//! - `filters.rs`: OpenAI's logit filters (suppression, timestamp rules);
//! - `guards.rs`: hallucination guards (compression ratio, repetition loops,
//!   prompt copies);
//! - `align.rs`: the window's text aligned to its audio (alignment heads,
//!   DTW);
//! - `timing.rs`: word timestamps from that alignment, and the retiming of
//!   windows whose timestamps end early;
//! - `transcribe.rs`: the long-form loop (30 s windows, seeking, segments);
//! - `regions.rs`: speech regions joined for decoding and times mapped back.
//!
//! This file holds what callers use: errors, options and progress reports.
//! A model directory holds `model.safetensors` (HF names, see [`crate::ct2`]),
//! `config.json` and `tokenizer.json`, as installed by [`crate::fetch`].

mod activations;
mod align;
mod batch;
mod compute;
pub mod decoder;
mod decoding;
mod encoder;
mod filters;
mod fused_attention;
mod gemm_i8;
mod gemm_q8;
mod guards;
mod model;
pub mod quantize;
mod regions;
mod search;
mod timing;
mod transcribe;
mod weights_file;

use std::path::PathBuf;

pub use candle_transformers::models::whisper::Config;

use crate::mel::SAMPLE_RATE;
use crate::transcript::Segment;
pub use batch::{plan_chunks, MAX_BATCH_SIZE};
pub use compute::{
    int8_encoder_available, quantized_kernels_on_calling_thread, ComputeType, UnknownComputeType,
};
pub use model::WhisperModel;
pub use regions::SampleSource;
pub use transcribe::ChunkSource;

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
/// faster-whisper's and Whisper-WebUI's are `beam_size: 5, best_of: 5`.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub task: Task,
    /// ISO 639-1 code; `None` detects it on the first window (multilingual
    /// models) or means English (`.en` models).
    pub language: Option<String>,
    /// Tried in order until a result passes the thresholds below.
    pub temperatures: Vec<f64>,
    /// Beams searched at temperature 0 (1: greedy). Fallback temperatures
    /// sample instead (`best_of`).
    pub beam_size: usize,
    /// A beam search ends once `round(beam_size * patience)` candidates
    /// have finished (openai's and faster-whisper's `patience`; 1 stops at
    /// `beam_size`, more searches longer).
    pub patience: f64,
    /// Samples drawn at each temperature above 0; the best (ranked as
    /// below) is kept.
    pub best_of: usize,
    /// How finished candidates are ranked: `None` divides their summed
    /// log-probability by their length, `Some(alpha)` by
    /// `((5 + length) / 6)^alpha` (openai-whisper's, from Google's NMT).
    pub length_penalty: Option<f64>,
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
    /// For a transcription resumed part way (from a job's checkpoint): the
    /// tokens of what was transcribed before this audio since the prompt
    /// was last reset, as the long-form loop keeps them (text and
    /// timestamps). The first window is prompted with them after
    /// `initial_prompt`, as it would have been had the loop gone on.
    pub previous_tokens: Vec<u32>,
    /// Latest allowed first timestamp of a window, in seconds.
    pub max_initial_timestamp: f64,
    /// Stop and retry a window whose text ends in the same phrase repeated
    /// over and over (a typical Whisper hallucination).
    pub suppress_repetition_loops: bool,
    /// Seed of the sampler used at temperatures above 0.
    pub seed: u64,
    /// Time every word (cross-attention alignment, see `timing.rs`); the
    /// segments then carry `words`, their edges follow the words, and a
    /// window seeks to the end of its last word as openai-whisper does.
    pub word_timestamps: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            task: Task::Transcribe,
            language: None,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            beam_size: 1,
            patience: 1.0,
            best_of: 1,
            length_penalty: None,
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            initial_prompt: None,
            previous_tokens: Vec::new(),
            max_initial_timestamp: 1.0,
            suppress_repetition_loops: true,
            seed: 0x6d75_726d_7572,
            word_timestamps: false,
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
    /// Set when every segment reported so far is final and a run started
    /// here (original timeline), prompted with those segments' tokens,
    /// would decode the windows this one goes on to: where a checkpoint
    /// resumes. The long-form loop says so at each window's start (its
    /// `seek`), the batched pipeline after each chunk, both at the end.
    pub resumable_at: Option<f64>,
}
