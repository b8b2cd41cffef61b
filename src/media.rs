//! The service's view of audio: measuring uploads and rendering results,
//! through the speech engine (`murmur-models`) off the async runtime.
//!
//! An upload's length is measured by decoding all of it, never read from its
//! header: usage, the tier's length limits and job deadlines all follow from
//! it. Measuring costs CPU (a 3 h FLAC is a few seconds of decoding) but no
//! memory, runs on the blocking pool a few at a time ([`measure_permits`]),
//! and stops as soon as the file passes the tier's maximum or the client
//! goes away.

use murmur_actors::sealed::StoredFile;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use murmur_models::audio::{self, AudioError};
use murmur_models::formats::{self, Format, FormatError, SubtitleOptions};
use murmur_models::transcript::Transcript;
use tokio::sync::Semaphore;
use warp::http::header::{self, HeaderValue};
use warp::reply::Response;
use warp::Reply;

/// Uploads measured at once: half the cores (at least one), so a burst of
/// uploads queues here instead of taking every core from running jobs and
/// from the HTTP runtime.
fn measure_permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Semaphore::new((cores / 2).max(1))
    })
}

/// Why an upload's audio is refused.
#[derive(Debug)]
pub enum Refusal {
    /// It decodes to more than `limit_s` seconds (decoding stopped there).
    TooLong { limit_s: u64 },
    /// Its header claims a length the decoded audio does not have.
    Inconsistent { header_s: f64, decoded_s: f64 },
    /// It is not audio Murmur can decode: a sentence for the uploader,
    /// naming the file as they named it and never the server's own paths.
    Invalid(String),
}

/// Sets the stop flag when the upload's future is dropped (the client went
/// away), so the blocking decode stops at its next check.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decodes all of `stored` and answers its length in seconds, or why it is
/// refused: longer than `max_s`, a header that lies about its length, or
/// not audio at all.
pub async fn measure(stored: StoredFile, name: &str, max_s: u64) -> Result<f64, Refusal> {
    let _permit = measure_permits()
        .acquire()
        .await
        .map_err(|e| Refusal::Invalid(format!("the audio probe failed: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let path = stored.path().display().to_string();
    let limit = max_s as f64;
    let outcome = tokio::task::spawn_blocking(move || {
        audio::measure_duration(stored.input(), Some(limit), &|| {
            stop.load(Ordering::Relaxed)
        })
    })
    .await
    .map_err(|e| Refusal::Invalid(format!("the audio probe failed: {e}")))?;
    match outcome {
        Ok(length) if length.header_disagrees() => Err(Refusal::Inconsistent {
            header_s: length.header_s.unwrap_or(0.0),
            decoded_s: length.duration_s,
        }),
        Ok(length) => Ok(length.duration_s),
        Err(AudioError::TooLong { .. }) => Err(Refusal::TooLong { limit_s: max_s }),
        Err(e) => Err(Refusal::Invalid(e.to_string().replace(&path, name))),
    }
}

/// A stored job result in the asked format (subtitles laid out by
/// `subtitles`), with its content type and a download file name.
pub fn render_result(
    result: &serde_json::Value,
    format: &str,
    subtitles: &SubtitleOptions,
    job_id: &str,
) -> Result<Response, String> {
    if format.eq_ignore_ascii_case("rttm") {
        if subtitles.is_set() {
            return Err("subtitle options apply to srt and vtt, not rttm".into());
        }
        return Ok(download(
            rttm(result, job_id)?,
            "text/plain; charset=utf-8",
            job_id,
            "rttm",
        ));
    }
    let format: Format = format
        .parse()
        .map_err(|e: FormatError| format!("{e}, or rttm"))?;
    let (body, content_type) = if format == Format::Json && !subtitles.is_set() {
        (result.to_string(), format.content_type())
    } else {
        let transcript: Transcript = serde_json::from_value(result.clone()).map_err(|_| {
            "this job's result is not a transcript; ask for format=json".to_string()
        })?;
        let body =
            formats::render_with(&transcript, format, subtitles).map_err(|e| e.to_string())?;
        (body, format.content_type())
    };
    Ok(download(body, content_type, job_id, format.extension()))
}

fn download(body: String, content_type: &'static str, job_id: &str, extension: &str) -> Response {
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{job_id}.{extension}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// The speaker turns a diarized job stored beside its segments, as RTTM.
fn rttm(result: &serde_json::Value, job_id: &str) -> Result<String, String> {
    let turns = result
        .get("turns")
        .and_then(serde_json::Value::as_array)
        .ok_or("this job ran without speaker diarization; RTTM needs diarize.enabled")?;
    let turns: Vec<formats::SpeakerTurn> = turns
        .iter()
        .filter_map(|t| {
            Some(formats::SpeakerTurn {
                start: t.get("start")?.as_f64()?,
                end: t.get("end")?.as_f64()?,
                speaker: t.get("speaker")?.as_str()?.to_string(),
            })
        })
        .collect();
    Ok(formats::to_rttm(job_id, &turns))
}
