//! The format stage: each job type's result document (docs/API.md,
//! "Results") from what the stages produced. Plain data only: what the
//! service adds for its own clients (download links) it adds itself.

use murmur_actors::engine::WorkError;
use murmur_models::formats::SpeakerTurn;
use murmur_models::separate::STEMS;
use murmur_models::transcript::{SpeechRegion, Transcript};
use serde_json::json;

/// A `vad` job's result: the audio's length and its speech regions.
pub(crate) fn vad_result(duration_s: f64, speech: Vec<SpeechRegion>) -> serde_json::Value {
    json!({"duration_s": duration_s, "speech": speech})
}

/// A transcription's result: the transcript and, when diarized, the raw
/// speaker turns beside its segments (what `format=rttm` reads).
pub(crate) fn transcript_result(
    transcript: &Transcript,
    turns: Option<&[SpeakerTurn]>,
) -> Result<serde_json::Value, WorkError> {
    let mut value =
        serde_json::to_value(transcript).map_err(|e| WorkError::Transient(e.to_string()))?;
    if let Some(turns) = turns {
        value["turns"] = json!(turns
            .iter()
            .map(|t| json!({"start": t.start, "end": t.end, "speaker": t.speaker}))
            .collect::<Vec<_>>());
    }
    Ok(value)
}

/// A separation job's result: the source's length and its stems, each
/// named with its audio format (where to fetch one is the service's
/// business).
pub(crate) fn stems_result(duration_s: f64) -> serde_json::Value {
    let stems: Vec<_> = STEMS
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "format": "wav",
                "sample_rate": murmur_models::separate::SAMPLE_RATE,
                "channels": 2,
            })
        })
        .collect();
    json!({"duration_s": duration_s, "stems": stems})
}
