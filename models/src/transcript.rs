//! The timed transcript every model stage produces and every output format
//! reads. Its JSON shape is the job result of docs/API.md.

use serde::{Deserialize, Serialize};

/// One stretch of speech with its text, in seconds on the original timeline.
/// The decoding figures (`seek` to `no_speech_prob`) are Whisper's for the
/// 30 s window the segment came from, as openai-whisper reports them; they
/// are absent from segments made elsewhere (parsed subtitles) and from
/// results stored before they existed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub id: u32,
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// Set by diarization only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
    /// The segment's words, when word timestamps were asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<Word>>,
    /// Where the window started, in 10 ms spectrogram frames on the
    /// original timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seek: Option<u64>,
    /// Whisper's tokens of the segment (text and timestamp tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<u32>,
    /// The sampling temperature the window was decoded at (after fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Mean log-probability of the window's sampled tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_logprob: Option<f64>,
    /// The window text's zlib compression ratio (high: repetitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    /// Probability of `<|nospeech|>` at the window's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_speech_prob: Option<f64>,
}

/// One word of a segment, in seconds on the original timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// The word as Whisper spells it, with its leading space and any
    /// punctuation attached: a segment's words joined and trimmed give its
    /// text.
    pub word: String,
    pub start: f64,
    pub end: f64,
    /// Mean probability of the word's tokens (0 to 1).
    pub probability: f64,
    /// The speaker diarization heard during the word, when it ran (and
    /// found a turn within 1 s of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<String>,
}

/// A whole file's transcript (docs/API.md, "Results").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// ISO 639-1 code detected or forced, e.g. "en"; `None` when nothing
    /// was said and no language was asked for.
    pub language: Option<String>,
    /// When the language was detected rather than asked for: how likely
    /// Whisper found it (0 to 1), from its first window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_probability: Option<f64>,
    /// With detection: the most likely languages, best first (at most 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_candidates: Option<Vec<LanguageCandidate>>,
    pub duration_s: f64,
    pub text: String,
    pub segments: Vec<Segment>,
    /// Speaker labels in order of first appearance; set by diarization only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speakers: Option<Vec<String>>,
}

/// One language Whisper's detection weighed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanguageCandidate {
    /// ISO 639-1 code, e.g. "en".
    pub language: String,
    pub probability: f64,
}

/// A region of speech found by voice-activity detection, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeechRegion {
    pub start: f64,
    pub end: f64,
}
