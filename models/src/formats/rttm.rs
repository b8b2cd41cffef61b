//! NIST RTTM for speaker turns.

use std::fmt::Write as _;

use super::{millis, FormatError};

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
