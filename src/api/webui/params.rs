//! Whisper-WebUI query parameters → Murmur job parameters.
//!
//! That backend takes the fields of its `WhisperParams`, `VadParams`,
//! `BGMSeparationParams` and `DiarizationParams` as query parameters, and
//! its own clients send all of them (a `model_dump()` of each). Every name
//! falls in one of four groups here (docs/API.md, "Whisper-WebUI
//! compatibility"):
//!
//! - mapped onto Murmur's parameters ([`map`]);
//! - decoding knobs Murmur does not have: accepted at that backend's
//!   default, accepted but named in the answer's `message` otherwise (the
//!   result would be close, not what was asked for);
//! - deployment knobs (device, compute type, offloading, tokens): ignored at
//!   any value, since they choose how the other server ran, not what it
//!   produced;
//! - asked-for results Murmur cannot give (a `prefix`, `hotwords`):
//!   refused with 422 `unsupported_parameter`.
//!
//! Any other name is refused (400), so a typo never silently runs the
//! default.

use serde_json::{json, Value};
use warp::http::StatusCode;

use super::values::{blank, boolean, number, parse_bool, whole};
use crate::api::ApiError;
use murmur_actors::params::MODEL_NAMES;

/// Which route the parameters came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Transcription,
    Vad,
    BgmSeparation,
}

/// A knob's value at that backend's default, for the decoding knobs.
#[derive(Clone, Copy)]
enum Default {
    Num(f64),
    Bool(bool),
    Text(&'static str),
    /// `None` there: absent, empty or `null` here.
    Unset,
}

/// Decoding knobs Murmur does not have (it has its own fallback
/// thresholds), with that backend's defaults.
const DECODING: &[(&str, Default)] = &[
    ("repetition_penalty", Default::Num(1.0)),
    ("no_repeat_ngram_size", Default::Num(0.0)),
    ("log_prob_threshold", Default::Num(-1.0)),
    ("no_speech_threshold", Default::Num(0.6)),
    ("compression_ratio_threshold", Default::Num(2.4)),
    ("condition_on_previous_text", Default::Bool(true)),
    ("prompt_reset_on_temperature", Default::Num(0.5)),
    ("suppress_blank", Default::Bool(true)),
    ("suppress_tokens", Default::Text("-1")),
    ("max_initial_timestamp", Default::Num(1.0)),
    ("prepend_punctuations", Default::Text("\"'“¿([{-")),
    (
        "append_punctuations",
        Default::Text("\"'.。,，!！?？:：”)]}、"),
    ),
    ("max_new_tokens", Default::Unset),
    ("chunk_length", Default::Num(30.0)),
    ("hallucination_silence_threshold", Default::Unset),
    ("language_detection_threshold", Default::Num(0.5)),
    ("language_detection_segments", Default::Num(1.0)),
];

/// How the other server ran, not what it produced: ignored at any value.
const DEPLOYMENT: &[&str] = &[
    "compute_type",
    "batch_size",
    "enable_offload",
    "uvr_device",
    "segment_size",
    "save_file",
    "diarization_device",
    "hf_token",
];

/// Results Murmur cannot produce: refused unless off or empty.
const UNSUPPORTED: &[&str] = &["prefix", "hotwords"];

/// `VadParams`' names, mapped on every route that takes them.
const VAD: &[&str] = &[
    "vad_filter",
    "threshold",
    "min_speech_duration_ms",
    "max_speech_duration_s",
    "min_silence_duration_ms",
    "speech_pad_ms",
];

/// `WhisperParams`' and the feature switches' names that Murmur maps.
const TRANSCRIPTION: &[&str] = &[
    "model_size",
    "lang",
    "is_translate",
    "temperature",
    "beam_size",
    "best_of",
    "patience",
    "length_penalty",
    "initial_prompt",
    "is_diarize",
    "is_separate_bgm",
    "word_timestamps",
];

/// The model `large`, `large-v1` and `large-v2` (that backend's default)
/// run as: the one large model Murmur has.
const LARGE_STAND_IN: &str = "large-v3";

/// What a request asked for, as Murmur will run it.
#[derive(Debug)]
pub struct Mapped {
    /// `params` for [`crate::api::jobs::submit_job`].
    pub params: Value,
    /// Parameters honoured only in part or not at all, for the answer's
    /// `message` (empty when everything asked for is what will run).
    pub notes: Vec<String>,
}

/// Maps `pairs` (the query string, decoded) for `route`.
pub fn map(route: Route, pairs: &[(String, String)]) -> Result<Mapped, ApiError> {
    let mut params = match route {
        Route::Transcription => json!({"job_type": "transcription", "vad": {"enabled": false}}),
        Route::Vad => json!({"job_type": "vad", "vad": {"enabled": true}}),
        Route::BgmSeparation => json!({"job_type": "bgm_separation"}),
    };
    let mut notes = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut uvr_model = None;
    for (name, value) in pairs {
        let name = name.as_str();
        // `suppress_tokens` is a list: its values arrive repeated.
        let repeated = seen.contains(&name);
        if repeated && name != "suppress_tokens" {
            return Err(ApiError::invalid(format!(
                "query parameter {} is sent more than once",
                clip(name)
            )));
        }
        seen.push(name);
        let value = value.trim();
        if VAD.contains(&name) {
            map_vad(route, name, value, &mut params)?;
        } else if route == Route::Transcription && TRANSCRIPTION.contains(&name) {
            map_transcription(name, value, &mut params, &mut notes)?;
        } else if route == Route::Transcription && UNSUPPORTED.contains(&name) {
            if !(blank(value) || value.eq_ignore_ascii_case("false")) {
                return Err(unsupported(name, value));
            }
        } else if let Some((_, default)) = DECODING.iter().find(|(n, _)| *n == name) {
            // Ignored or not, a value that backend would refuse is refused.
            match default {
                Default::Num(_) => {
                    number(name, value)?;
                }
                Default::Bool(_) => {
                    boolean(name, value)?;
                }
                Default::Text(_) | Default::Unset => {}
            }
            if route == Route::Transcription
                && !repeated
                && !at_default(name, value, *default, pairs)
            {
                notes.push(format!(
                    "{name}={} (Murmur has no such setting)",
                    clip(value)
                ));
            }
        } else if name == "uvr_model_size" {
            uvr_model = Some(value);
        } else if DEPLOYMENT.contains(&name) || (route != Route::Transcription && is_known(name)) {
            // Another route's parameter, as that backend's clients send
            // whole parameter sets: it has no effect there either.
        } else {
            return Err(ApiError::invalid(format!(
                "unknown query parameter {:?}; see docs/API.md, \"Whisper-WebUI compatibility\"",
                clip(name)
            )));
        }
    }
    // Named only where a separation runs: with another model than asked.
    let separates =
        route == Route::BgmSeparation || params["separate_bgm"]["enabled"] == json!(true);
    if let Some(model) = uvr_model.filter(|_| separates) {
        notes.push(format!(
            "uvr_model_size={} (Murmur separates with Spleeter 2 stems)",
            clip(model)
        ));
    }
    Ok(Mapped { params, notes })
}

/// At most 64 characters of a client's name or value, for an answer.
fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

fn is_known(name: &str) -> bool {
    VAD.contains(&name)
        || TRANSCRIPTION.contains(&name)
        || UNSUPPORTED.contains(&name)
        || DECODING.iter().any(|(n, _)| *n == name)
        || DEPLOYMENT.contains(&name)
        || name == "uvr_model_size"
}

fn unsupported(name: &str, value: &str) -> ApiError {
    let why = "Murmur's decoder cannot be steered with it";
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported_parameter",
        format!(
            "{name}={} cannot be honoured: {why}; leave it unset",
            clip(value)
        ),
    )
}

fn map_transcription(
    name: &str,
    value: &str,
    params: &mut Value,
    notes: &mut Vec<String>,
) -> Result<(), ApiError> {
    match name {
        "model_size" => {
            let model = match value {
                "large" | "large-v1" | "large-v2" => {
                    notes.push(format!("model_size={value} (runs as {LARGE_STAND_IN})"));
                    LARGE_STAND_IN
                }
                m if MODEL_NAMES.contains(&m) => m,
                other => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unsupported_parameter",
                        format!(
                            "model_size {:?} is not a model Murmur runs; choose one of {}",
                            clip(other),
                            MODEL_NAMES.join(", ")
                        ),
                    ))
                }
            };
            params["model"] = json!(model);
        }
        // That backend's "automatic detection" is an absent language.
        "lang" if !(blank(value) || value.eq_ignore_ascii_case("automatic detection")) => {
            params["language"] = json!(value.to_ascii_lowercase());
        }
        "is_translate" => {
            let task = if boolean(name, value)? {
                "translate"
            } else {
                "transcribe"
            };
            params["task"] = json!(task);
        }
        "temperature" => params["temperature"] = json!(number(name, value)?),
        // Out-of-range values are refused by the job's own validation (400
        // naming the field); tiers may bound them (403).
        "beam_size" | "best_of" => params[name] = json!(count(name, value)?),
        "patience" => params["patience"] = json!(number(name, value)?),
        // faster-whisper (CTranslate2) divides a beam's log-probability by
        // length^alpha; its default 1 is Murmur's default (divide by the
        // length). Another alpha runs openai-whisper's penalty
        // ((5 + length) / 6)^alpha instead: close, not the same.
        "length_penalty" if !blank(value) => {
            let alpha = number(name, value)?;
            if (alpha - 1.0).abs() < 1e-9 {
                params["length_penalty"] = Value::Null;
            } else {
                params["length_penalty"] = json!(alpha);
                notes.push(format!(
                    "length_penalty={} (ranked by ((5 + length) / 6)^alpha as openai-whisper \
                     does, not length^alpha)",
                    clip(value)
                ));
            }
        }
        "initial_prompt" if !blank(value) => params["initial_prompt"] = json!(value),
        "is_diarize" => params["diarize"] = json!({"enabled": boolean(name, value)?}),
        "is_separate_bgm" => params["separate_bgm"] = json!({"enabled": boolean(name, value)?}),
        "word_timestamps" => params["word_timestamps"] = json!(boolean(name, value)?),
        _ => {}
    }
    Ok(())
}

/// A whole, non-negative count (`beam_size`, `best_of`).
fn count(name: &str, value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .map_err(|_| ApiError::invalid(format!("{name} must be a whole number such as 5")))
}

fn map_vad(route: Route, name: &str, value: &str, params: &mut Value) -> Result<(), ApiError> {
    if route == Route::BgmSeparation {
        return Ok(());
    }
    let vad = &mut params["vad"];
    match name {
        // `/vad` detects speech whatever this says, as that backend does.
        "vad_filter" => {
            let on = boolean(name, value)?;
            if route == Route::Transcription {
                vad["enabled"] = json!(on);
            }
        }
        "threshold" => vad["threshold"] = json!(number(name, value)?),
        "min_speech_duration_ms" => vad["min_speech_ms"] = json!(whole(name, value)?),
        "min_silence_duration_ms" => vad["min_silence_ms"] = json!(whole(name, value)?),
        "speech_pad_ms" => vad["speech_pad_ms"] = json!(whole(name, value)?),
        // Unlimited there is `inf` (or the UI's 9999 stand-in): unset here.
        "max_speech_duration_s" => {
            let s = number(name, value)?;
            if s.is_finite() && s < 9999.0 {
                vad["max_speech_s"] = json!(s);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether `value` is that backend's default for a decoding knob.
fn at_default(name: &str, value: &str, default: Default, pairs: &[(String, String)]) -> bool {
    let unset = blank(value);
    match default {
        Default::Num(d) => value.parse::<f64>().is_ok_and(|v| (v - d).abs() < 1e-9),
        Default::Bool(d) => parse_bool(value) == Some(d),
        Default::Unset => unset,
        Default::Text(d) if name == "suppress_tokens" => {
            // `[-1]` sent as one value, or repeated values that are only -1.
            let all: Vec<&str> = pairs
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.trim())
                .collect();
            all.iter().all(|v| *v == d || *v == "[-1]" || v.is_empty())
        }
        Default::Text(d) => value == d || unset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_map_quietly_and_other_values_are_named() {
        let m = map(
            Route::Transcription,
            &pairs(&[
                ("model_size", "tiny.en"),
                ("beam_size", "5"),
                ("compute_type", "float32"),
                ("suppress_tokens", "-1"),
                ("vad_filter", "true"),
                ("max_speech_duration_s", "inf"),
                ("word_timestamps", "false"),
            ]),
        )
        .unwrap();
        assert!(m.notes.is_empty(), "{:?}", m.notes);
        assert_eq!(m.params["model"], "tiny.en");
        assert_eq!(m.params["vad"]["enabled"], true);
        assert!(m.params["vad"].get("max_speech_s").is_none());
        assert_eq!(m.params["word_timestamps"], false);

        let m = map(Route::Transcription, &pairs(&[("word_timestamps", "true")])).unwrap();
        assert_eq!(m.params["word_timestamps"], true);
        assert!(m.notes.is_empty());

        // The search is mapped: that backend's defaults are Murmur's.
        let search = [
            ("beam_size", "1"),
            ("best_of", "3"),
            ("patience", "2"),
            ("length_penalty", "1"),
        ];
        let m = map(Route::Transcription, &pairs(&search)).unwrap();
        assert!(m.notes.is_empty(), "{:?}", m.notes);
        assert_eq!(m.params["beam_size"], 1);
        assert_eq!(m.params["best_of"], 3);
        assert_eq!(m.params["patience"], 2.0);
        assert!(m.params["length_penalty"].is_null());
        let m = map(Route::Transcription, &pairs(&[("length_penalty", "0.5")])).unwrap();
        assert_eq!(m.params["length_penalty"], 0.5);
        assert!(
            m.notes[0].starts_with("length_penalty=0.5"),
            "{:?}",
            m.notes
        );
        let e = map(Route::Transcription, &pairs(&[("beam_size", "2.5")])).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        let m = map(
            Route::Transcription,
            &pairs(&[("repetition_penalty", "1.2")]),
        )
        .unwrap();
        assert_eq!(m.notes.len(), 1);
        assert!(m.notes[0].starts_with("repetition_penalty=1.2"));

        // A list arrives as repeated values: named once.
        let tokens = [("suppress_tokens", "1"), ("suppress_tokens", "2")];
        let m = map(Route::Transcription, &pairs(&tokens)).unwrap();
        assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
        let e = map(
            Route::Transcription,
            &pairs(&[("lang", "en"), ("lang", "de")]),
        )
        .unwrap_err();
        assert!(e.detail.contains("more than once"));
    }

    #[test]
    fn what_cannot_be_done_is_refused() {
        for (name, value) in [("hotwords", "Murmur"), ("prefix", "So")] {
            let e = map(Route::Transcription, &pairs(&[(name, value)])).unwrap_err();
            assert_eq!(e.code, "unsupported_parameter");
        }
        let e = map(Route::Transcription, &pairs(&[("langauge", "en")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = map(Route::Vad, &pairs(&[("threshold", "high")])).unwrap_err();
        assert_eq!(e.code, "invalid_request");
    }

    #[test]
    fn vad_always_detects_and_separation_ignores_vad() {
        let m = map(
            Route::Vad,
            &pairs(&[("vad_filter", "false"), ("threshold", "0.4")]),
        )
        .unwrap();
        assert_eq!(m.params["vad"]["enabled"], true);
        assert_eq!(m.params["vad"]["threshold"], 0.4);
        let m = map(Route::BgmSeparation, &pairs(&[("threshold", "0.4")])).unwrap();
        assert!(m.params.get("vad").is_none());
    }
}
