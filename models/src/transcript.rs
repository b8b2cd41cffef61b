//! The timed transcript every model stage produces and every output format
//! reads. Its JSON shape is the job result of docs/API.md.

use serde::{Deserialize, Serialize};

/// One stretch of speech with its text, in seconds on the original timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// A whole file's transcript (docs/API.md, "Results").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// ISO 639-1 code detected or forced, e.g. "en".
    pub language: String,
    pub duration_s: f64,
    pub text: String,
    pub segments: Vec<Segment>,
    /// Speaker labels in order of first appearance; set by diarization only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speakers: Option<Vec<String>>,
}

/// A region of speech found by voice-activity detection, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeechRegion {
    pub start: f64,
    pub end: f64,
}
