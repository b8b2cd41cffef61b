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

use std::fmt::Write as _;
use std::str::FromStr;

use crate::transcript::{Segment, Transcript};

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

/// docs/API.md's result JSON (pretty-printed, newline-terminated).
pub fn to_json(transcript: &Transcript) -> String {
    // Serialising plain strings and numbers cannot fail; non-finite floats
    // become null.
    let mut text = serde_json::to_string_pretty(transcript).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// Whole milliseconds of `seconds`, rounded; negative and non-finite give 0.
fn millis(seconds: f64) -> u64 {
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

/// Cue text: trimmed lines, no blank ones, so a cue never ends early.
fn cue_lines(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn speaker_prefix(segment: &Segment) -> String {
    match &segment.speaker {
        Some(name) if !name.is_empty() => format!("[{}]: ", name.replace(['\n', '\r'], " ")),
        _ => String::new(),
    }
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

fn vtt_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&lrm;", "\u{200e}")
        .replace("&rlm;", "\u{200f}")
        .replace("&amp;", "&")
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

/// Parses `[H]H:MM:SS(,|.)mmm` or (`allow_short`, WebVTT) `MM:SS.mmm`.
fn parse_timestamp(s: &str, allow_short: bool) -> Option<f64> {
    let s = s.trim();
    let (clock, frac) = s.rsplit_once([',', '.'])?;
    if frac.len() != 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let parts: Vec<&str> = clock.split(':').collect();
    let (h, m, sec) = match parts[..] {
        [h, m, s] => (h, m, s),
        [m, s] if allow_short => ("0", m, s),
        _ => return None,
    };
    let num = |x: &str| -> Option<u64> {
        (!x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
            .then(|| x.parse().ok())
            .flatten()
    };
    let (h, m, sec, ms) = (num(h)?, num(m)?, num(sec)?, num(frac)?);
    if m > 59 || sec > 59 {
        return None;
    }
    // One correctly rounded division, so a time written from whole
    // milliseconds reads back as the identical f64.
    Some(((h * 3600 + m * 60 + sec) * 1000 + ms) as f64 / 1000.0)
}

fn parse_timing(line: &str, line_no: usize, allow_short: bool) -> Result<(f64, f64), FormatError> {
    let err = |message: String| FormatError::Parse {
        line: line_no,
        message,
    };
    let (start, rest) = line
        .split_once("-->")
        .ok_or_else(|| err(format!("expected a timing line, got `{line}`")))?;
    // WebVTT cue settings may follow the end time.
    let end = rest.split_whitespace().next().unwrap_or("");
    let start_s = parse_timestamp(start, allow_short)
        .ok_or_else(|| err(format!("bad start time `{}`", start.trim())))?;
    let end_s =
        parse_timestamp(end, allow_short).ok_or_else(|| err(format!("bad end time `{end}`")))?;
    Ok((start_s, end_s))
}

/// Splits a leading `[NAME]: ` speaker prefix off cue text.
fn split_speaker(text: &str) -> (Option<String>, String) {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((name, body)) = rest.split_once("]: ") {
            if !name.is_empty() && !name.contains('\n') {
                return (Some(name.to_string()), body.to_string());
            }
        }
    }
    (None, text.to_string())
}

/// Lines with their 1-based numbers, BOM and `\r` removed.
fn numbered_lines(input: &str) -> Vec<(usize, &str)> {
    input
        .strip_prefix('\u{feff}')
        .unwrap_or(input)
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// Blocks of non-blank lines.
fn blocks<'a>(lines: &[(usize, &'a str)]) -> Vec<Vec<(usize, &'a str)>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for &(n, line) in lines {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push((n, line));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Parses SubRip into segments numbered from 0 in file order.
pub fn parse_srt(input: &str) -> Result<Vec<Segment>, FormatError> {
    let lines = numbered_lines(input);
    let mut segments = Vec::new();
    for block in blocks(&lines) {
        let mut it = block.iter().peekable();
        // The counter line is optional in practice.
        if let Some((_, first)) = it.peek() {
            if !first.contains("-->") && first.trim().bytes().all(|b| b.is_ascii_digit()) {
                it.next();
            }
        }
        let Some(&(line_no, timing)) = it.next() else {
            continue;
        };
        let (start, end) = parse_timing(timing, line_no, false)?;
        let text = it.map(|(_, l)| l.trim()).collect::<Vec<_>>().join("\n");
        let (speaker, text) = split_speaker(&text);
        segments.push(Segment {
            id: segments.len() as u32,
            start,
            end,
            text,
            speaker,
            ..Segment::default()
        });
    }
    Ok(segments)
}

/// Removes markup tags (`<i>`, `<c.x>`, `</v>`, inline timestamps).
fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Parses WebVTT cues into segments numbered from 0; a leading voice span
/// `<v NAME>` (or a `[NAME]: ` prefix) becomes the speaker.
pub fn parse_vtt(input: &str) -> Result<Vec<Segment>, FormatError> {
    let lines = numbered_lines(input);
    match lines.first() {
        Some((_, first))
            if *first == "WEBVTT"
                || first.starts_with("WEBVTT ")
                || first.starts_with("WEBVTT\t") => {}
        _ => {
            return Err(FormatError::Parse {
                line: 1,
                message: "a WebVTT file must start with `WEBVTT`".into(),
            })
        }
    }
    let mut segments = Vec::new();
    // The first block is the header.
    for block in blocks(&lines).into_iter().skip(1) {
        let first = block[0].1;
        if first.starts_with("NOTE") || first == "STYLE" || first == "REGION" {
            continue;
        }
        let mut it = block.iter();
        let mut timing = it.next().copied();
        if let Some((_, line)) = timing {
            if !line.contains("-->") {
                // A cue identifier.
                timing = it.next().copied();
            }
        }
        let Some((line_no, timing)) = timing else {
            continue;
        };
        let (start, end) = parse_timing(timing, line_no, true)?;
        let raw = it.map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
        let (speaker, body) = match raw.strip_prefix("<v") {
            Some(rest) if rest.starts_with([' ', '.', '\t']) => match rest.split_once('>') {
                Some((tag, body)) => {
                    // `<v.loud Name>`: classes come before the first space.
                    let name = if tag.starts_with('.') {
                        tag.split_once(char::is_whitespace).map_or("", |(_, n)| n)
                    } else {
                        tag
                    };
                    (Some(vtt_unescape(name.trim())), body.to_string())
                }
                None => (None, raw.clone()),
            },
            _ => (None, raw.clone()),
        };
        let text = vtt_unescape(&strip_tags(&body));
        let (speaker, text) = match speaker {
            Some(s) => (Some(s), text),
            None => split_speaker(&text),
        };
        segments.push(Segment {
            id: segments.len() as u32,
            start,
            end,
            text,
            speaker,
            ..Segment::default()
        });
    }
    Ok(segments)
}

/// One speaker turn, as diarization produces and RTTM stores.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeakerTurn {
    pub start: f64,
    pub end: f64,
    pub speaker: String,
}

/// NIST RTTM: `SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`.
/// Spaces in names become underscores (fields are space-separated).
pub fn to_rttm(file_id: &str, turns: &[SpeakerTurn]) -> String {
    let clean = |s: &str| s.split_whitespace().collect::<Vec<_>>().join("_");
    let file = clean(file_id);
    let mut out = String::new();
    for turn in turns {
        let start = millis(turn.start) as f64 / 1000.0;
        let duration = millis(turn.end).saturating_sub(millis(turn.start)) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "SPEAKER {file} 1 {start:.3} {duration:.3} <NA> <NA> {} <NA> <NA>",
            clean(&turn.speaker)
        );
    }
    out
}

/// Reads the `SPEAKER` lines of an RTTM file.
pub fn parse_rttm(input: &str) -> Result<Vec<SpeakerTurn>, FormatError> {
    let mut turns = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"SPEAKER") {
            continue;
        }
        let err = |message: &str| FormatError::Parse {
            line: i + 1,
            message: message.into(),
        };
        if fields.len() < 8 {
            return Err(err("an RTTM SPEAKER line has at least 8 fields"));
        }
        let start: f64 = fields[3].parse().map_err(|_| err("bad onset"))?;
        let duration: f64 = fields[4].parse().map_err(|_| err("bad duration"))?;
        turns.push(SpeakerTurn {
            start,
            end: start + duration,
            speaker: fields[7].to_string(),
        });
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u32, start: f64, end: f64, text: &str, speaker: Option<&str>) -> Segment {
        Segment {
            id,
            start,
            end,
            text: text.into(),
            speaker: speaker.map(Into::into),
            ..Segment::default()
        }
    }

    fn transcript(segments: Vec<Segment>) -> Transcript {
        Transcript {
            language_probability: None,
            language_candidates: None,
            language: Some("en".into()),
            duration_s: 11.0,
            text: segments
                .iter()
                .map(|s| s.text.trim())
                .collect::<Vec<_>>()
                .join(" "),
            segments,
            speakers: None,
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(1.0, ','), "00:00:01,000");
        assert_eq!(format_timestamp(1.0, '.'), "00:00:01.000");
        assert_eq!(format_timestamp(3661.5, ','), "01:01:01,500");
        assert_eq!(format_timestamp(0.0005, '.'), "00:00:00.001");
        assert_eq!(format_timestamp(59.9996, '.'), "00:01:00.000");
        assert_eq!(
            format_timestamp(100.0 * 3600.0 + 0.25, ','),
            "100:00:00,250"
        );
        assert_eq!(format_timestamp(-3.0, ','), "00:00:00,000");
        assert_eq!(format_timestamp(f64::NAN, ','), "00:00:00,000");
        assert_eq!(parse_timestamp("100:00:00,250", false), Some(360_000.25));
        assert_eq!(parse_timestamp("01:02.500", true), Some(62.5));
        assert_eq!(parse_timestamp("01:02.500", false), None);
        assert_eq!(parse_timestamp("00:61:00,000", false), None);
    }

    #[test]
    fn format_names() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string(), f.extension());
        }
        assert_eq!("WebVTT".parse::<Format>().unwrap(), Format::Vtt);
        assert_eq!(
            Format::Srt.content_type(),
            "application/x-subrip; charset=utf-8"
        );
        assert_eq!(Format::Vtt.content_type(), "text/vtt; charset=utf-8");
        assert!(matches!(
            "docx".parse::<Format>(),
            Err(FormatError::UnknownFormat(_))
        ));
    }

    #[test]
    fn srt_shape() {
        let t = transcript(vec![
            seg(0, 0.0, 2.5, " And so my fellow Americans,", None),
            seg(1, 2.5, 3661.0, "ask not", Some("SPEAKER_00")),
        ]);
        assert_eq!(
            render(&t, Format::Srt),
            "1\n00:00:00,000 --> 00:00:02,500\nAnd so my fellow Americans,\n\n\
             2\n00:00:02,500 --> 01:01:01,000\n[SPEAKER_00]: ask not\n\n"
        );
    }

    #[test]
    fn vtt_shape_and_escaping() {
        let t = transcript(vec![
            seg(0, 0.0, 1.0, "Tom & Jerry <3", None),
            seg(1, 1.0, 2.0, "a --> b", Some("Ann <host>")),
        ]);
        assert_eq!(
            render(&t, Format::Vtt),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nTom &amp; Jerry &lt;3\n\n\
             00:00:01.000 --> 00:00:02.000\n<v Ann &lt;host&gt;>a --&gt; b\n\n"
        );
        let back = parse_vtt(&render(&t, Format::Vtt)).unwrap();
        assert_eq!(back, t.segments);
    }

    #[test]
    fn newlines_never_end_a_cue_early() {
        let segments = vec![
            seg(0, 0.0, 1.0, "line one\n\n\nline two\r\n", None),
            seg(1, 1.0, 2.0, "   ", None),
            seg(2, 2.0, 3.0, "next", None),
        ];
        let srt = to_srt(&segments);
        assert!(srt.contains("line one\nline two\n\n2\n"), "{srt}");
        let back = parse_srt(&srt).unwrap();
        assert_eq!(back.len(), 2, "the empty segment is left out");
        assert_eq!(back[0].text, "line one\nline two");
        assert_eq!(back[1].text, "next");
        let vtt = parse_vtt(&to_vtt(&segments)).unwrap();
        assert_eq!(vtt[0].text, "line one\nline two");
        assert_eq!(
            to_srt(&[seg(0, 0.0, 1.0, "x --> y", None)]).lines().nth(2),
            Some("x -> y")
        );
    }

    #[test]
    fn srt_and_vtt_round_trip() {
        let segments = vec![
            seg(0, 0.0, 2.34, "And so my fellow Americans,", None),
            seg(
                1,
                2.34,
                7.5,
                "ask not what your country can do for you,",
                None,
            ),
            seg(2, 7.5, 11.0, "ask what you can do for your country.", None),
            seg(
                3,
                4000.125,
                4001.0,
                "Later, with \"quotes\" & <angle brackets>",
                Some("SPEAKER_01"),
            ),
            seg(4, 4001.0, 4002.0, "[Music]", None),
        ];
        assert_eq!(parse_srt(&to_srt(&segments)).unwrap(), segments);
        assert_eq!(parse_vtt(&to_vtt(&segments)).unwrap(), segments);
    }

    #[test]
    fn millisecond_times_read_back_identically() {
        for ms in (0..200_000u64).step_by(7) {
            let t = ms as f64 / 1000.0;
            let srt = to_srt(&[seg(0, t, t + 0.001, "x", None)]);
            let back = parse_srt(&srt).unwrap();
            assert_eq!((back[0].start, back[0].end), (t, (ms + 1) as f64 / 1000.0));
        }
    }

    #[test]
    fn parsers_accept_common_variants() {
        let srt = "\u{feff}1\r\n00:00:01,000 --> 00:00:02,000\r\nHello\r\n\r\n\r\n2\r\n00:00:02.500 --> 00:00:03,000\r\nWorld\r\n";
        let s = parse_srt(srt).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[1].start, s[1].text.as_str()), (2.5, "World"));

        let vtt = "WEBVTT - a title\n\nNOTE a comment\nspanning lines\n\nSTYLE\n::cue { color: red }\n\n\
                   cue-1\n00:01.000 --> 00:02.000 align:start position:10%\n<v.loud Bob>Hi <i>there</i>&nbsp;!\n\n\
                   00:00:03.000 --> 00:00:04.000\n<c.yellow>plain</c>\n";
        let v = parse_vtt(vtt).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].speaker.as_deref(), Some("Bob"));
        assert_eq!(v[0].text, "Hi there\u{a0}!");
        assert_eq!((v[0].start, v[0].end), (1.0, 2.0));
        assert_eq!(
            (v[1].text.as_str(), v[1].speaker.as_deref()),
            ("plain", None)
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        let err = parse_srt("1\n00:00:01 --> 00:00:02,000\nx\n").unwrap_err();
        assert_eq!(
            err,
            FormatError::Parse {
                line: 2,
                message: "bad start time `00:00:01`".into()
            }
        );
        assert!(matches!(
            parse_vtt("1\n00:00.000 --> 00:01.000\nx"),
            Err(FormatError::Parse { line: 1, .. })
        ));
        assert!(parse_srt("").unwrap().is_empty());
    }

    #[test]
    fn txt_and_tsv() {
        let t = transcript(vec![
            seg(0, 0.0, 2.3456, " Hello\tthere\nfriend ", None),
            seg(1, 2.3456, 4.0, "Bye.", Some("B")),
        ]);
        assert_eq!(render(&t, Format::Txt), "Hello there friend\n[B]: Bye.\n");
        assert_eq!(
            render(&t, Format::Tsv),
            "start\tend\ttext\n0\t2346\tHello there friend\n2346\t4000\t[B]: Bye.\n"
        );
        let empty = Transcript {
            language_probability: None,
            language_candidates: None,
            segments: vec![],
            text: " just text ".into(),
            ..t.clone()
        };
        assert_eq!(to_txt(&empty), "just text\n");
    }

    #[test]
    fn json_is_the_api_shape() {
        let mut t = transcript(vec![seg(0, 0.0, 1.5, "Hi", Some("SPEAKER_00"))]);
        t.speakers = Some(vec!["SPEAKER_00".into()]);
        let v: serde_json::Value = serde_json::from_str(&render(&t, Format::Json)).unwrap();
        assert_eq!(v["language"], "en");
        assert_eq!(v["duration_s"], 11.0);
        assert_eq!(v["segments"][0]["speaker"], "SPEAKER_00");
        assert_eq!(v["segments"][0]["end"], 1.5);
        assert_eq!(v["speakers"][0], "SPEAKER_00");
        let plain = transcript(vec![seg(0, 0.0, 1.0, "Hi", None)]);
        let v: serde_json::Value = serde_json::from_str(&to_json(&plain)).unwrap();
        assert!(v.get("speakers").is_none() && v["segments"][0].get("speaker").is_none());
    }

    #[test]
    fn rttm_round_trip() {
        let turns = vec![
            SpeakerTurn {
                start: 0.5,
                end: 2.25,
                speaker: "SPEAKER_00".into(),
            },
            SpeakerTurn {
                start: 2.0,
                end: 3.0,
                speaker: "speaker two".into(),
            },
        ];
        let text = to_rttm("my file", &turns);
        assert_eq!(
            text.lines().next(),
            Some("SPEAKER my_file 1 0.500 1.750 <NA> <NA> SPEAKER_00 <NA> <NA>")
        );
        let back = parse_rttm(&text).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].speaker, "speaker_two");
        assert!((back[0].end - 2.25).abs() < 1e-9);
    }
}
