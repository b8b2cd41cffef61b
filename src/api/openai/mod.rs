//! OpenAI-compatible speech endpoints: `POST /v1/audio/transcriptions` and
//! `/v1/audio/translations` (multipart `file`, `model`, `language`,
//! `prompt`, `response_format`, `temperature`, `timestamp_granularities[]`). Each uploads the file for
//! the caller's tenant, runs a job under the same gates as `/v1/jobs`, and
//! answers when it ends, so OpenAI clients work against Murmur unchanged.
//! As with OpenAI, the upload is not kept: the file is deleted once its job
//! ends (so it does not fill the tenant's storage); the job and its result
//! stay, listed under `/v1/jobs`. That holds also when the request ends
//! first (the client went away, the wait limit passed): a background task
//! then deletes the upload when the job ends.
//!
//! `stream=true` on transcriptions answers server-sent events instead
//! (`stream.rs`).

mod stream;

use std::collections::HashMap;
use std::time::Duration;

use murmur_actors::params::MODEL_NAMES;
use murmur_models::formats::{self, Format};
use murmur_models::transcript::Transcript;
use serde_json::json;
use warp::filters::multipart::FormData;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::files::{authenticate_upload, multipart_form, receive_form};
use super::{auth_header, json_reply, op, tag_tenant, with_state, ApiError, AppState};
use crate::store::{JobStatus, Role};

/// The text fields these endpoints take beside `file` (OpenAI's names);
/// any other field is refused by name. `timestamp_granularities[]` may
/// repeat (`segment`, `word`): `word` with `verbose_json` times every word
/// (top-level `words`); segments are always timed.
const OPENAI_FIELDS: &[&str] = &[
    "model",
    "language",
    "prompt",
    "response_format",
    "temperature",
    "timestamp_granularities[]",
    "stream",
];

/// Longest a request waits for its job before answering 503 (the job goes
/// on; its id is in the answer).
const WAIT_LIMIT: Duration = Duration::from_secs(3600);

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let transcriptions = warp::path!("v1" / "audio" / "transcriptions")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::header::optional::<u64>("content-length"))
        .and(multipart_form())
        .then(|s, a, len, form| async move {
            openai_respond(speech(s, a, len, form, "transcribe").await)
        });
    let translations = warp::path!("v1" / "audio" / "translations")
        .and(warp::post())
        .and(with_state(state))
        .and(auth_header())
        .and(warp::header::optional::<u64>("content-length"))
        .and(multipart_form())
        .then(|s, a, len, form| async move {
            openai_respond(speech(s, a, len, form, "translate").await)
        });
    transcriptions.or(translations).unify().boxed()
}

/// Errors carry OpenAI's `error` object beside the problem fields.
fn openai_respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_openai_response)
}

async fn speech(
    state: AppState,
    auth: Option<String>,
    content_length: Option<u64>,
    form: Result<FormData, ApiError>,
    task: &'static str,
) -> Result<Response, ApiError> {
    let (caller, form) = authenticate_upload(
        &state,
        auth.as_deref(),
        op("jobs:write", Role::Member),
        form,
    )
    .await?;
    let (mut upload, fields) =
        receive_form(&state, &caller, content_length, form, OPENAI_FIELDS).await?;
    let settings = async {
        let format = response_format(&fields)?;
        let streaming = streaming(&fields, task, format)?;
        let params = job_params(&state, &fields, task, format)?;
        Ok::<_, ApiError>((format, streaming, params))
    }
    .await;
    let (format, streaming, params) = match settings {
        Ok(ok) => ok,
        Err(e) => {
            // Refused (bad fields): keep nothing of the request.
            upload.delete().await;
            return Err(e);
        }
    };
    // A refused job (a gate) deletes the upload; an accepted one keeps it
    // until the job ends, also if this request ends first.
    let (job, mut upload) = upload.submit(&caller, &params).await?;
    if streaming {
        let tenant = caller.tenant_id().clone();
        let events = stream::transcript_events(state.clone(), tenant, job.id.clone(), upload);
        return Ok(tag_tenant(events, &caller));
    }
    let started = std::time::Instant::now();
    let job = loop {
        let current = state
            .store
            .job(caller.tenant_id(), &job.id)?
            .ok_or_else(|| ApiError::not_found("job"))?;
        if current.status.is_finished() {
            break current;
        }
        if started.elapsed() > WAIT_LIMIT {
            return Err(ApiError::unavailable(format!(
                "job {} is still running; follow it at /v1/jobs/{}",
                job.id, job.id
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The job's result is stored with the job; the audio is not needed.
    upload.delete().await;
    if job.status != JobStatus::Completed {
        let detail = job
            .error
            .clone()
            .unwrap_or_else(|| format!("the job ended {}", job.status.as_str()));
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_audio",
            detail,
        ));
    }
    let transcript: Transcript = serde_json::from_value(job.result.clone().unwrap_or_default())
        .map_err(ApiError::internal)?;
    let res = match format {
        "json" => json_reply(StatusCode::OK, &json!({"text": transcript.text})),
        "verbose_json" => {
            let mut body = json!({
                "task": task,
                "language": transcript.language,
                "duration": transcript.duration_s,
                "text": transcript.text,
                // Results stored before the decoding figures were kept
                // answer 0, [] and the job's temperature, as before.
                "segments": transcript.segments.iter().map(|s| json!({
                    "id": s.id, "seek": s.seek.unwrap_or(0), "start": s.start, "end": s.end,
                    "text": s.text, "tokens": s.tokens,
                    "temperature": s.temperature.unwrap_or(job.params.temperature),
                    "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
                    "no_speech_prob": s.no_speech_prob,
                })).collect::<Vec<_>>(),
            });
            if job.params.word_timestamps {
                // OpenAI's words: the whole transcript's, trimmed, no
                // probability.
                body["words"] = transcript
                    .segments
                    .iter()
                    .flat_map(|s| s.words.iter().flatten())
                    .map(|w| json!({"word": w.word.trim(), "start": w.start, "end": w.end}))
                    .collect::<Vec<_>>()
                    .into();
            }
            json_reply(StatusCode::OK, &body)
        }
        other => {
            let (body, ct) = match other {
                "srt" => (
                    formats::render(&transcript, Format::Srt),
                    Format::Srt.content_type(),
                ),
                "vtt" => (
                    formats::render(&transcript, Format::Vtt),
                    Format::Vtt.content_type(),
                ),
                _ => (transcript.text.clone(), "text/plain; charset=utf-8"),
            };
            let mut res = body.into_response();
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            res
        }
    };
    Ok(tag_tenant(res, &caller))
}

fn response_format(fields: &HashMap<String, String>) -> Result<&'static str, ApiError> {
    let asked = fields
        .get("response_format")
        .map(String::as_str)
        .unwrap_or("json");
    ["json", "text", "srt", "verbose_json", "vtt"]
        .into_iter()
        .find(|f| *f == asked)
        .ok_or_else(|| {
            ApiError::invalid("response_format must be json, text, srt, verbose_json or vtt")
        })
}

/// Whether the answer streams (`stream=true`): transcriptions only, as
/// text (`json` or `text` formats), as at OpenAI.
fn streaming(fields: &HashMap<String, String>, task: &str, format: &str) -> Result<bool, ApiError> {
    let asked = match fields.get("stream").map(|s| s.trim().to_ascii_lowercase()) {
        None => false,
        Some(s) if s == "true" => true,
        Some(s) if s == "false" || s.is_empty() => false,
        Some(_) => return Err(ApiError::invalid("stream must be true or false")),
    };
    if asked && task != "transcribe" {
        return Err(ApiError::invalid(
            "stream is accepted on transcriptions only",
        ));
    }
    if asked && !matches!(format, "json" | "text") {
        return Err(ApiError::invalid(
            "a streamed transcription is text: response_format must be json or text",
        ));
    }
    Ok(asked)
}

/// Job parameters from the OpenAI fields (`format`: the response format,
/// as words are timed for `verbose_json` only, the one that shows them).
fn job_params(
    state: &AppState,
    fields: &HashMap<String, String>,
    task: &str,
    format: &str,
) -> Result<serde_json::Value, ApiError> {
    // OpenAI's model names (whisper-1, ...) mean "the server's default".
    let model = fields
        .get("model")
        .filter(|m| MODEL_NAMES.contains(&m.as_str()))
        .cloned()
        .unwrap_or_else(|| state.settings.models.default_model.clone());
    let mut params = json!({"model": model, "task": task});
    if let Some(lang) = fields.get("language").filter(|l| !l.is_empty()) {
        params["language"] = json!(lang.to_lowercase());
    }
    if let Some(prompt) = fields.get("prompt").filter(|p| !p.is_empty()) {
        params["initial_prompt"] = json!(prompt);
    }
    if let Some(t) = fields.get("temperature").filter(|t| !t.is_empty()) {
        let t: f64 = t
            .parse()
            .map_err(|_| ApiError::invalid("temperature must be a number"))?;
        params["temperature"] = json!(t);
    }
    let mut words = false;
    if let Some(granularities) = fields.get("timestamp_granularities[]") {
        for g in granularities.split(',').map(str::trim) {
            match g {
                "word" => words = true,
                "segment" | "" => {}
                _ => {
                    return Err(ApiError::invalid(
                        "timestamp_granularities[] must be word or segment",
                    ))
                }
            }
        }
    }
    if words && format == "verbose_json" {
        params["word_timestamps"] = json!(true);
    }
    Ok(params)
}
