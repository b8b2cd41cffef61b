//! Output formats for a [`Transcript`]: JSON (docs/API.md's result), SRT, WebVTT,
//! plain text and Whisper's TSV; parsers for SRT and WebVTT (so tests and
//! clients can read subtitles back); RTTM for speaker turns.
//!
//! Rules shared by the subtitle writers: times are rounded to whole
//! milliseconds (negative or non-finite times become 0, hours grow past 99 as
//! needed); cue text is trimmed and has no blank lines, since a blank line
//! ends a cue; segments with no text are left out. A speaker, when set, is
//! written as `[NAME]: ` before the text (WebVTT uses its voice tag
//! `<v NAME>`), and the parsers read it back.
//!
//! Subtitle writers live in `subtitles.rs`, their parsers in `parse.rs`,
//! RTTM in `rttm.rs`.

mod parse;
mod rttm;
#[cfg(test)]
mod subtitle_tests;
mod subtitles;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::str::FromStr;

use crate::transcript::{Segment, Transcript};

pub use parse::{parse_srt, parse_vtt};
pub use rttm::{parse_rttm, to_rttm, SpeakerTurn};
pub use subtitles::{to_srt, to_srt_with, to_vtt, to_vtt_with, SubtitleOptions};

/// A result format of `GET /v1/jobs/{id}/result?format=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Srt,
    Vtt,
    Txt,
    Tsv,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown format `{0}`; expected one of json, srt, vtt, txt, tsv")]
    UnknownFormat(String),
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    /// Subtitle options that are out of range, need word timestamps the
    /// transcript lacks, or were given for a format that is not subtitles.
    #[error("{0}")]
    Options(String),
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Json,
        Format::Srt,
        Format::Vtt,
        Format::Txt,
        Format::Tsv,
    ];

    /// The HTTP `Content-Type` to serve it with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Srt => "application/x-subrip; charset=utf-8",
            Format::Vtt => "text/vtt; charset=utf-8",
            Format::Txt => "text/plain; charset=utf-8",
            Format::Tsv => "text/tab-separated-values; charset=utf-8",
        }
    }

    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Txt => "txt",
            Format::Tsv => "tsv",
        }
    }

    pub fn as_str(self) -> &'static str {
        self.extension()
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = FormatError;

    /// Case-insensitive; also accepts `webvtt`, `text` and `subrip`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "srt" | "subrip" => Ok(Format::Srt),
            "vtt" | "webvtt" => Ok(Format::Vtt),
            "txt" | "text" => Ok(Format::Txt),
            "tsv" => Ok(Format::Tsv),
            _ => Err(FormatError::UnknownFormat(s.to_string())),
        }
    }
}

/// Renders `transcript` in `format`.
pub fn render(transcript: &Transcript, format: Format) -> String {
    match format {
        Format::Json => to_json(transcript),
        Format::Srt => to_srt(&transcript.segments),
        Format::Vtt => to_vtt(&transcript.segments),
        Format::Txt => to_txt(transcript),
        Format::Tsv => to_tsv(&transcript.segments),
    }
}

/// Renders `transcript` in `format`, subtitle cues laid out by `opts`
/// (which only SRT and WebVTT take).
pub fn render_with(
    transcript: &Transcript,
    format: Format,
    opts: &SubtitleOptions,
) -> Result<String, FormatError> {
    check_options(format, opts)?;
    match format {
        Format::Srt => to_srt_with(&transcript.segments, opts),
        Format::Vtt => to_vtt_with(&transcript.segments, opts),
        _ => Ok(render(transcript, format)),
    }
}

/// Refuses subtitle options out of range, or given for a format other than
/// SRT and WebVTT.
pub fn check_options(format: Format, opts: &SubtitleOptions) -> Result<(), FormatError> {
    opts.validate()?;
    if opts.is_set() && !matches!(format, Format::Srt | Format::Vtt) {
        return Err(FormatError::Options(format!(
            "subtitle options apply to srt and vtt, not {format}"
        )));
    }
    Ok(())
}

/// docs/API.md's result JSON (pretty-printed, newline-terminated).
pub fn to_json(transcript: &Transcript) -> String {
    // Serialising plain strings and numbers cannot fail; non-finite floats
    // become null.
    let mut text = serde_json::to_string_pretty(transcript).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// Whole milliseconds of `seconds`, rounded; negative and non-finite give 0.
pub(crate) fn millis(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0).round() as u64
    } else {
        0
    }
}

/// `HH:MM:SS<sep>mmm`; hours take more digits past 99.
pub fn format_timestamp(seconds: f64, decimal_separator: char) -> String {
    let ms = millis(seconds);
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    format!("{h:02}:{m:02}:{s:02}{decimal_separator}{ms:03}")
}

pub(crate) fn speaker_prefix(segment: &Segment) -> String {
    match &segment.speaker {
        Some(name) if !name.is_empty() => format!("[{}]: ", name.replace(['\n', '\r'], " ")),
        _ => String::new(),
    }
}

/// Plain text, one segment per line (Whisper's `txt`); the transcript's
/// `text` when it has no segments.
pub fn to_txt(transcript: &Transcript) -> String {
    if transcript.segments.is_empty() {
        let text = transcript.text.trim();
        return if text.is_empty() {
            String::new()
        } else {
            format!("{text}\n")
        };
    }
    let mut out = String::new();
    for segment in &transcript.segments {
        let text = segment
            .text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}{text}", speaker_prefix(segment));
    }
    out
}

/// Whisper's TSV: a `start\tend\ttext` header, then times in integer
/// milliseconds; tabs and newlines in text become spaces.
pub fn to_tsv(segments: &[Segment]) -> String {
    let mut out = String::from("start\tend\ttext\n");
    for segment in segments {
        let text = segment
            .text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{}\t{}\t{}{text}",
            millis(segment.start),
            millis(segment.end),
            speaker_prefix(segment)
        );
    }
    out
}
