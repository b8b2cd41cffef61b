//! The service's view of audio: checking uploads and rendering results,
//! through the speech engine (`murmur-models`) off the async runtime.

use std::path::Path;

use murmur_models::formats::{self, Format, FormatError};
use murmur_models::transcript::Transcript;
use warp::http::header::{self, HeaderValue};
use warp::reply::Response;
use warp::Reply;

/// Checks that `path` holds audio Murmur can decode and answers its
/// duration in seconds. The error is a sentence for the uploader, naming the
/// file as they named it and never the server's own paths.
pub async fn probe(path: &Path, name: &str) -> Result<f64, String> {
    let owned = path.to_path_buf();
    let outcome = tokio::task::spawn_blocking(move || murmur_models::audio::probe_duration(&owned))
        .await
        .map_err(|e| format!("the audio probe failed: {e}"))?;
    outcome.map_err(|e| e.to_string().replace(&path.display().to_string(), name))
}

/// A stored job result in the asked format, with its content type and a
/// download file name.
pub fn render_result(
    result: &serde_json::Value,
    format: &str,
    job_id: &str,
) -> Result<Response, String> {
    if format.eq_ignore_ascii_case("rttm") {
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
    let (body, content_type) = if format == Format::Json {
        (result.to_string(), format.content_type())
    } else {
        let transcript: Transcript = serde_json::from_value(result.clone()).map_err(|_| {
            "this job's result is not a transcript; ask for format=json".to_string()
        })?;
        (formats::render(&transcript, format), format.content_type())
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
