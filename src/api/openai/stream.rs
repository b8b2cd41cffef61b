//! `stream=true` on `POST /v1/audio/transcriptions`: the transcript as
//! server-sent events in OpenAI's shapes, so the official SDKs' streaming
//! works. Each `data:` line is one JSON event:
//!
//! - `{"type": "transcript.text.delta", "delta": "..."}` as segments are
//!   decoded (read from the job's checkpoint, which the engine saves after
//!   every segment);
//! - `{"type": "transcript.text.done", "text": "...", "usage": {"type":
//!   "duration", "seconds": N}}` once the job completes; `text` is the
//!   result's, the deltas laid end to end;
//! - `{"type": "error", "error": {...}}` when the job fails (the SDKs raise
//!   it), then the stream ends.
//!
//! A comment line every 15 s keeps idle proxies from closing the stream.
//! The job and its result stay, listed under `/v1/jobs`; the upload is
//! deleted when the job ends, also when the client goes away first.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use murmur_models::transcript::Transcript;
use serde_json::{json, Value};
use warp::http::{header, HeaderValue};
use warp::reply::Response;

use crate::api::pending::PendingUpload;
use crate::api::AppState;
use crate::store::{Job, JobStatus, TenantId};

/// How often the job is read while it runs.
const POLL: Duration = Duration::from_millis(250);
/// Longest silence on the stream before a comment line.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The transcript events of `job_id` as a streaming response.
pub(super) fn transcript_events(
    state: AppState,
    tenant: TenantId,
    job_id: String,
    upload: PendingUpload,
) -> Response {
    let follow = Follow {
        state,
        tenant,
        job_id,
        upload,
        sent: 0,
        text_sent: false,
        phase: Phase::Running,
        last_frame: Instant::now(),
    };
    let frames = futures_util::stream::unfold(follow, |mut f| async move {
        let frame = f.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), f))
    });
    let mut res = crate::api::download::streamed(frames);
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer responses (nginx) pass this one through as it comes.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

enum Phase {
    Running,
    /// The job ended; its last delta (if any) went out, the closing event
    /// has not.
    Ending(Box<Job>),
    Done,
}

/// One client's stream over one job.
struct Follow {
    state: AppState,
    tenant: TenantId,
    job_id: String,
    /// Deleted when the job ends, or after, if the stream is dropped first.
    upload: PendingUpload,
    /// Segments already sent as deltas.
    sent: usize,
    /// Whether any text went out yet.
    text_sent: bool,
    phase: Phase,
    last_frame: Instant,
}

fn frame(event: &Value) -> Bytes {
    Bytes::from(format!("data: {event}\n\n"))
}

fn error_frame(code: &str, message: &str) -> Bytes {
    frame(&json!({
        "type": "error",
        "error": {"message": message, "type": code, "param": null, "code": code},
    }))
}

/// The text of `segments` past the first `sent`, as the result's text
/// joins them (trimmed, one space apart), with the space before it when
/// text went out already: the deltas laid end to end are the result's text.
fn text_after(segments: &[Value], sent: usize, text_sent: bool) -> String {
    let mut out = String::new();
    for text in segments
        .iter()
        .skip(sent)
        .filter_map(|s| s.get("text").and_then(Value::as_str))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if text_sent || !out.is_empty() {
            out.push(' ');
        }
        out.push_str(text);
    }
    out
}

impl Follow {
    /// The next frame, or `None` once the stream is over.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Ending(job) => return Some(self.close(*job).await),
                Phase::Running => self.phase = Phase::Running,
            }
            let job = match self.state.store.job(&self.tenant, &self.job_id) {
                Ok(Some(job)) => job,
                Ok(None) => {
                    self.phase = Phase::Done;
                    return Some(error_frame("not_found", "the job was deleted"));
                }
                Err(e) => {
                    tracing::error!(error = %e, job = %self.job_id, "transcript stream");
                    self.phase = Phase::Done;
                    return Some(error_frame("internal", "the job could not be read"));
                }
            };
            if job.status.is_finished() {
                // What the last reads missed comes from the result.
                let rest = match (&job.status, &job.result) {
                    (JobStatus::Completed, Some(result)) => result
                        .get("segments")
                        .and_then(Value::as_array)
                        .map(|s| text_after(s, self.sent, self.text_sent))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                self.phase = Phase::Ending(Box::new(job));
                if !rest.is_empty() {
                    return Some(self.delta(rest));
                }
                continue;
            }
            let segments = job
                .checkpoint
                .as_ref()
                .and_then(|c| c.get("segments"))
                .and_then(Value::as_array);
            if let Some(segments) = segments.filter(|s| s.len() > self.sent) {
                let text = text_after(segments, self.sent, self.text_sent);
                self.sent = segments.len();
                if !text.is_empty() {
                    return Some(self.delta(text));
                }
            }
            if self.last_frame.elapsed() >= KEEP_ALIVE {
                self.last_frame = Instant::now();
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.state.stopping.cancelled() => {
                    self.phase = Phase::Done;
                    return Some(error_frame(
                        "unavailable",
                        &format!(
                            "the server is shutting down; the job goes on after its restart \
                             (follow it at /v1/jobs/{})",
                            self.job_id
                        ),
                    ));
                }
            }
        }
    }

    fn delta(&mut self, text: String) -> Bytes {
        self.last_frame = Instant::now();
        self.text_sent = true;
        frame(&json!({"type": "transcript.text.delta", "delta": text}))
    }

    /// The closing event of an ended job; the upload is deleted first.
    async fn close(&mut self, job: Job) -> Bytes {
        self.upload.delete().await;
        if job.status != JobStatus::Completed {
            let detail = job
                .error
                .clone()
                .unwrap_or_else(|| format!("the job ended {}", job.status.as_str()));
            return error_frame("invalid_audio", &detail);
        }
        match serde_json::from_value::<Transcript>(job.result.clone().unwrap_or_default()) {
            Ok(t) => frame(&json!({
                "type": "transcript.text.done",
                "text": t.text,
                "usage": {"type": "duration", "seconds": t.duration_s.ceil()},
            })),
            Err(e) => {
                tracing::error!(error = %e, job = %job.id, "a stored result does not parse");
                error_frame("internal", "the job's result could not be read")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_join_into_the_result_text() {
        let segments = [
            json!({"text": " And so my fellow Americans,"}),
            json!({"text": "  "}),
            json!({"text": " ask not."}),
        ];
        let first = text_after(&segments[..1], 0, false);
        let rest = text_after(&segments, 1, true);
        assert_eq!(first, "And so my fellow Americans,");
        assert_eq!(rest, " ask not.");
        assert_eq!(
            text_after(&segments, 0, false),
            "And so my fellow Americans, ask not."
        );
        assert_eq!(text_after(&segments, 3, true), "");
    }
}
