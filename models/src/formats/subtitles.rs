//! SubRip and WebVTT writers, and how their cues are laid out.
//!
//! By default one segment is one cue, its text as Whisper wrote it. The
//! [`SubtitleOptions`] Whisper-WebUI users know (openai-whisper's writer
//! options) lay cues out from the words instead:
//!
//! - `max_line_width`: at most this many characters on a line (a longer
//!   word stands alone on its line). Without word timestamps it only wraps
//!   each segment's text.
//! - `max_words_per_line`: at most this many words on a line.
//! - `max_line_count`: at most this many lines in a cue; a full cue starts
//!   the next one, and cues then run across segments (breaking where the
//!   speaker changes or after a silence of more than 3 s). Unset, a cue
//!   holds one segment, wrapped onto as many lines as it needs; but with
//!   `max_words_per_line` alone every line is its own cue, so
//!   `max_words_per_line=1` gives one cue per word.
//! - `highlight_words`: every word gets its own cue, spanning the word's
//!   time, showing its whole cue with that word underlined (`<u>…</u>`);
//!   silences between words show the cue plainly.
//!
//! A cue laid out from words runs from its first word's start to its last
//! word's end. The speaker prefix (`[NAME]: ` or `<v NAME>`) is not counted
//! in a line's width.

use std::fmt::Write as _;

use super::{format_timestamp, FormatError};
use crate::transcript::Segment;

/// The largest value a numeric option takes.
pub const MAX_OPTION: usize = 1000;
/// A silence longer than this ends a cue that runs across segments.
const LONG_PAUSE_S: f64 = 3.0;

/// How cues are laid out; the default is one cue per segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubtitleOptions {
    pub max_line_width: Option<usize>,
    pub max_line_count: Option<usize>,
    pub max_words_per_line: Option<usize>,
    pub highlight_words: bool,
}

impl SubtitleOptions {
    /// Whether any option is set.
    pub fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// Whether the layout needs each word's time.
    pub fn needs_words(&self) -> bool {
        self.max_line_count.is_some() || self.max_words_per_line.is_some() || self.highlight_words
    }

    /// Refuses values outside 1 to [`MAX_OPTION`], naming the option.
    pub fn validate(&self) -> Result<(), FormatError> {
        for (name, value) in [
            ("max_line_width", self.max_line_width),
            ("max_line_count", self.max_line_count),
            ("max_words_per_line", self.max_words_per_line),
        ] {
            if value.is_some_and(|v| !(1..=MAX_OPTION).contains(&v)) {
                return Err(FormatError::Options(format!(
                    "{name} must be between 1 and {MAX_OPTION}"
                )));
            }
        }
        Ok(())
    }
}

/// A piece of cue text: a word (with the space before it, unless it opens
/// its line) or, without word timestamps, a segment's line.
#[derive(Debug, Clone)]
struct Piece {
    text: String,
    start: f64,
    end: f64,
}

/// One cue before it is written: its lines of pieces.
#[derive(Debug, Default)]
struct Cue {
    speaker: Option<String>,
    lines: Vec<Vec<Piece>>,
}

impl Cue {
    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn start(&self) -> f64 {
        self.lines
            .first()
            .and_then(|l| l.first())
            .map_or(0.0, |p| p.start)
    }

    fn end(&self) -> f64 {
        self.lines
            .last()
            .and_then(|l| l.last())
            .map_or(0.0, |p| p.end)
    }

    fn pieces(&self) -> impl Iterator<Item = &Piece> {
        self.lines.iter().flatten()
    }

    /// The cue's text, each piece through `escape`, the `highlight`th piece
    /// (counting across lines) underlined.
    fn text(&self, escape: &dyn Fn(&str) -> String, highlight: Option<usize>) -> String {
        let mut index = 0;
        let mut lines = Vec::with_capacity(self.lines.len());
        for line in &self.lines {
            let mut text = String::new();
            for piece in line {
                if highlight == Some(index) {
                    let body = piece.text.trim_start();
                    let space = &piece.text[..piece.text.len() - body.len()];
                    let _ = write!(text, "{space}<u>{}</u>", escape(body));
                } else {
                    text.push_str(&escape(&piece.text));
                }
                index += 1;
            }
            lines.push(text);
        }
        lines.join("\n")
    }
}

/// Chars of a line.
fn width(line: &[Piece]) -> usize {
    line.iter().map(|p| p.text.chars().count()).sum()
}

/// Cue text: trimmed lines, no blank ones, so a cue never ends early.
fn cue_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Wraps `line` at spaces into lines of at most `max` chars.
fn wrap(line: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in line.split_whitespace() {
        match out.last_mut() {
            Some(last) if last.chars().count() + 1 + word.chars().count() <= max => {
                last.push(' ');
                last.push_str(word);
            }
            _ => out.push(word.to_string()),
        }
    }
    out
}

/// One cue per segment, its text's lines (wrapped to `max_line_width`).
fn segment_cues(segments: &[Segment], opts: &SubtitleOptions) -> Vec<Cue> {
    segments
        .iter()
        .filter_map(|segment| {
            let lines: Vec<Vec<Piece>> = cue_lines(&segment.text)
                .iter()
                .flat_map(|l| match opts.max_line_width {
                    Some(max) => wrap(l, max),
                    None => vec![l.clone()],
                })
                .map(|text| {
                    vec![Piece {
                        text,
                        start: segment.start,
                        end: segment.end,
                    }]
                })
                .collect();
            (!lines.is_empty()).then(|| Cue {
                speaker: segment.speaker.clone(),
                lines,
            })
        })
        .collect()
}

/// Cues laid out from the segments' words; `None` when a segment with text
/// has no words.
fn word_cues(segments: &[Segment], opts: &SubtitleOptions) -> Option<Vec<Cue>> {
    let max_width = opts.max_line_width.unwrap_or(usize::MAX);
    let max_words = opts.max_words_per_line.unwrap_or(usize::MAX);
    let max_lines = match (opts.max_line_count, opts.max_words_per_line) {
        (Some(n), _) => n,
        (None, Some(_)) => 1,
        (None, None) => usize::MAX,
    };
    // With a line count, cues run across segments.
    let flowing = opts.max_line_count.is_some();
    let mut cues = Vec::new();
    let mut cue = Cue::default();
    let mut last_end = f64::NEG_INFINITY;
    for segment in segments {
        let words = segment.words.as_deref().unwrap_or(&[]);
        if words.is_empty() {
            if segment.text.trim().is_empty() {
                continue;
            }
            return None;
        }
        for (i, word) in words.iter().enumerate() {
            let text = word.word.replace(['\n', '\r'], " ");
            if text.trim().is_empty() {
                continue;
            }
            let new_segment = i == 0 && (!flowing || cue.speaker != segment.speaker);
            let pause = flowing && word.start - last_end > LONG_PAUSE_S;
            last_end = word.end;
            let piece = Piece {
                text,
                start: word.start,
                end: word.end,
            };
            if !cue.is_empty() && !new_segment && !pause {
                let line = cue.lines.last_mut().expect("a cue has a line");
                if line.len() < max_words && width(line) + piece.text.chars().count() <= max_width {
                    line.push(piece);
                    continue;
                }
                if cue.lines.len() < max_lines {
                    cue.lines.push(vec![first_on_line(piece)]);
                    continue;
                }
            }
            if !cue.is_empty() {
                cues.push(std::mem::take(&mut cue));
            }
            cue.speaker = segment.speaker.clone();
            cue.lines.push(vec![first_on_line(piece)]);
        }
    }
    if !cue.is_empty() {
        cues.push(cue);
    }
    Some(cues)
}

/// A word opening a line loses the space before it.
fn first_on_line(mut piece: Piece) -> Piece {
    piece.text = piece.text.trim_start().to_string();
    piece
}

/// A cue ready to write: its text has been through the format's escaping.
struct Written {
    start: f64,
    end: f64,
    speaker: Option<String>,
    text: String,
}

/// The cues of `segments` under `opts`, their text through `escape`.
fn layout(
    segments: &[Segment],
    opts: &SubtitleOptions,
    escape: &dyn Fn(&str) -> String,
) -> Result<Vec<Written>, FormatError> {
    opts.validate()?;
    let has_words = segments
        .iter()
        .any(|s| s.words.as_ref().is_some_and(|w| !w.is_empty()));
    let cues = if has_words && (opts.needs_words() || opts.max_line_width.is_some()) {
        word_cues(segments, opts)
    } else if opts.needs_words() {
        None
    } else {
        // Default options: a segment's own times, whatever words it has.
        Some(segment_cues(segments, opts))
    };
    let cues = cues.ok_or_else(|| {
        FormatError::Options(
            "highlight_words, max_line_count and max_words_per_line need word timestamps: \
             run the job with word_timestamps: true"
                .into(),
        )
    })?;
    let mut out = Vec::new();
    for cue in &cues {
        // A segment cue's pieces all carry the segment's times.
        let (start, end) = (cue.start(), cue.end());
        let written = |start, end, text| Written {
            start,
            end,
            speaker: cue.speaker.clone(),
            text,
        };
        if !opts.highlight_words {
            out.push(written(start, end, cue.text(escape, None)));
            continue;
        }
        let plain = cue.text(escape, None);
        let mut last = start;
        for (i, piece) in cue.pieces().enumerate() {
            if piece.start > last {
                out.push(written(last, piece.start, plain.clone()));
            }
            out.push(written(piece.start, piece.end, cue.text(escape, Some(i))));
            last = piece.end;
        }
    }
    Ok(out)
}

/// A speaker name on one line.
fn one_line(name: &str) -> String {
    name.replace(['\n', '\r'], " ")
}

/// SRT has no escapes; a literal `-->` in text (which some players take
/// for a timing line) is written as `->`, however many dashes lead it.
fn srt_text(text: &str) -> String {
    let mut text = text.to_string();
    while text.contains("-->") {
        text = text.replace("-->", "->");
    }
    text
}

/// SubRip, one cue per segment.
pub fn to_srt(segments: &[Segment]) -> String {
    to_srt_with(segments, &SubtitleOptions::default()).unwrap_or_default()
}

/// SubRip laid out by `opts`; speakers as a `[NAME]: ` prefix.
pub fn to_srt_with(segments: &[Segment], opts: &SubtitleOptions) -> Result<String, FormatError> {
    let mut out = String::new();
    for (index, cue) in layout(segments, opts, &srt_text)?.into_iter().enumerate() {
        let prefix = match cue.speaker {
            Some(name) if !name.is_empty() => format!("[{}]: ", one_line(&name)),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "{}\n{} --> {}\n{prefix}{}\n\n",
            index + 1,
            format_timestamp(cue.start, ','),
            format_timestamp(cue.end, ','),
            cue.text
        );
    }
    Ok(out)
}

/// WebVTT text escaping: `&`, `<`, `>` as entities (which also covers `-->`).
fn vtt_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// WebVTT, one cue per segment.
pub fn to_vtt(segments: &[Segment]) -> String {
    to_vtt_with(segments, &SubtitleOptions::default()).unwrap_or_default()
}

/// WebVTT laid out by `opts`; speakers as voice spans (`<v NAME>text`).
pub fn to_vtt_with(segments: &[Segment], opts: &SubtitleOptions) -> Result<String, FormatError> {
    let mut out = String::from("WEBVTT\n\n");
    for cue in layout(segments, opts, &vtt_escape)? {
        let voice = match cue.speaker {
            Some(name) if !name.is_empty() => format!("<v {}>", vtt_escape(&one_line(&name))),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "{} --> {}\n{voice}{}\n\n",
            format_timestamp(cue.start, '.'),
            format_timestamp(cue.end, '.'),
            cue.text
        );
    }
    Ok(out)
}
