//! A Murmur job in the shape of Whisper-WebUI's `TaskStatusResponse`:
//! its status names, task types, result shapes and `duration` (seconds the
//! task ran, not the audio's length).

use serde_json::{json, Value};

use crate::store::{Job, JobStatus};

/// Silero's rate: that backend's VAD results count samples at 16 kHz.
const VAD_RATE: f64 = 16_000.0;

/// Names of the stems in the separation result and the ZIP, in that
/// backend's words, with the Murmur stem each one is.
pub const STEM_NAMES: [(&str, &str); 2] = [("instrumental", "accompaniment"), ("vocal", "vocals")];

/// A stem's label: its ZIP entry is this with `.wav`.
pub fn stem_label(job_id: &str, stem: &str) -> String {
    format!("{job_id}-{stem}")
}

/// That backend's status name for a Murmur job status.
pub fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "in_progress",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// A job's status there: a job queued again after a transient fault (it
/// keeps the fault as its error) is `retrying`.
pub fn task_status(job: &Job) -> &'static str {
    if job.status == JobStatus::Queued && job.error.is_some() {
        "retrying"
    } else {
        status_name(job.status)
    }
}

/// `GET /task/{identifier}`'s answer for `job`.
pub fn view(job: &Job) -> Value {
    let completed = job.status == JobStatus::Completed;
    let separation = job.job_type == "bgm_separation";
    let result = if completed {
        job.result.as_ref().map(|r| result(job, r))
    } else {
        None
    };
    let duration = match (job.started_at, job.finished_at) {
        (Some(start), Some(end)) => Some((end - start).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    json!({
        "identifier": job.id,
        "status": task_status(job),
        "task_type": job.job_type,
        "result_type": if separation && completed { "filepath" } else { "json" },
        "result": result,
        "task_params": task_params(&job.params),
        "error": job.error,
        "duration": duration,
        "progress": (job.progress * 100.0).round() / 100.0,
    })
}

/// A completed job's result in that backend's shape.
fn result(job: &Job, stored: &Value) -> Value {
    match job.job_type.as_str() {
        // Its `Segment`s; what Murmur does not compute is null, as there
        // when the engine does not report it.
        "transcription" => {
            let segments = stored["segments"].as_array().cloned().unwrap_or_default();
            Value::Array(
                segments
                    .iter()
                    .map(|s| {
                        let field = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
                        let mut seg = json!({
                            "id": s["id"], "seek": field("seek"), "text": s["text"],
                            "start": s["start"], "end": s["end"], "tokens": field("tokens"),
                            "temperature": field("temperature"),
                            "avg_logprob": field("avg_logprob"),
                            "compression_ratio": field("compression_ratio"),
                            "no_speech_prob": field("no_speech_prob"),
                            // faster-whisper's `Word`s (word, start, end,
                            // probability) when words were timed.
                            "words": s.get("words").cloned().unwrap_or(Value::Null),
                        });
                        if let Some(speaker) = s.get("speaker") {
                            seg["speaker"] = speaker.clone();
                        }
                        seg
                    })
                    .collect(),
            )
        }
        // Silero's speech chunks: sample offsets at 16 kHz.
        "vad" => Value::Array(
            stored["speech"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let at = |k: &str| (r[k].as_f64().unwrap_or(0.0) * VAD_RATE).round() as u64;
                    json!({"start": at("start"), "end": at("end")})
                })
                .collect(),
        ),
        // There, content hashes that find the files on its disk; here,
        // the names of the stems in this task's ZIP (`GET /task/file/{id}`).
        "bgm_separation" => json!({
            "instrumental_hash": stem_label(&job.id, STEM_NAMES[0].0),
            "vocal_hash": stem_label(&job.id, STEM_NAMES[1].0),
        }),
        _ => stored.clone(),
    }
}

/// The parameters of a Murmur job in that backend's names, for
/// `task_params`: what will run, not what was sent.
pub fn task_params(params: &murmur_actors::params::JobParams) -> Value {
    use murmur_actors::params::{JobType, Task};
    let vad = &params.vad;
    let vad_view = json!({
        "vad_filter": vad.enabled,
        "threshold": vad.threshold,
        "min_speech_duration_ms": vad.min_speech_ms,
        "max_speech_duration_s": vad.max_speech_s,
        "min_silence_duration_ms": vad.min_silence_ms,
        "speech_pad_ms": vad.speech_pad_ms,
    });
    match params.job_type {
        JobType::Transcription => {
            let mut view = json!({
                "model_size": params.model,
                "lang": params.language,
                "is_translate": params.task == Task::Translate,
                "temperature": params.temperature,
                "initial_prompt": params.initial_prompt,
                "is_diarize": params.diarize.enabled,
                "is_separate_bgm": params.separate_bgm.enabled,
                "word_timestamps": params.word_timestamps,
            });
            if let (Some(view), Some(vad)) = (view.as_object_mut(), vad_view.as_object()) {
                view.extend(vad.clone());
            }
            view
        }
        JobType::Vad => vad_view,
        JobType::BgmSeparation => json!({"uvr_model_size": murmur_models::fetch::SEPARATION_MODEL}),
    }
}
