//! SubRip and WebVTT writers.

use std::fmt::Write as _;

use super::{format_timestamp, speaker_prefix};
use crate::transcript::Segment;

/// Cue text: trimmed lines, no blank ones, so a cue never ends early.
fn cue_lines(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// SubRip. SRT has no escapes; a literal `-->` in text (which some players
/// take for a timing line) is written as `->`.
pub fn to_srt(segments: &[Segment]) -> String {
    let mut out = String::new();
    let mut index = 0;
    for segment in segments {
        let text = cue_lines(&segment.text).replace("-->", "->");
        if text.is_empty() {
            continue;
        }
        index += 1;
        let _ = write!(
            out,
            "{index}\n{} --> {}\n{}{}\n\n",
            format_timestamp(segment.start, ','),
            format_timestamp(segment.end, ','),
            speaker_prefix(segment),
            text
        );
    }
    out
}

/// WebVTT text escaping: `&`, `<`, `>` as entities (which also covers `-->`).
fn vtt_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// WebVTT, speakers as voice spans (`<v NAME>text`).
pub fn to_vtt(segments: &[Segment]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for segment in segments {
        let text = cue_lines(&segment.text);
        if text.is_empty() {
            continue;
        }
        let voice = match &segment.speaker {
            Some(name) if !name.is_empty() => {
                format!("<v {}>", vtt_escape(&name.replace(['\n', '\r'], " ")))
            }
            _ => String::new(),
        };
        let _ = write!(
            out,
            "{} --> {}\n{voice}{}\n\n",
            format_timestamp(segment.start, '.'),
            format_timestamp(segment.end, '.'),
            vtt_escape(&text)
        );
    }
    out
}
