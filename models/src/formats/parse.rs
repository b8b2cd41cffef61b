//! Parsers for SubRip and WebVTT, so tests and clients can read subtitles
//! back: the speaker forms the writers use (`[NAME]: `, `<v NAME>`) become
//! the segment's speaker again.

use super::FormatError;
use crate::transcript::Segment;

fn vtt_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&lrm;", "\u{200e}")
        .replace("&rlm;", "\u{200f}")
        .replace("&amp;", "&")
}

/// Parses `[H]H:MM:SS(,|.)mmm` or (`allow_short`, WebVTT) `MM:SS.mmm`.
pub(super) fn parse_timestamp(s: &str, allow_short: bool) -> Option<f64> {
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
