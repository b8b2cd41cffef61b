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
    let format: Format = format.parse().map_err(|e: FormatError| e.to_string())?;
    let (body, content_type) = if format == Format::Json {
        (result.to_string(), format.content_type())
    } else {
        let transcript: Transcript = serde_json::from_value(result.clone()).map_err(|_| {
            "this job's result is not a transcript; ask for format=json".to_string()
        })?;
        (formats::render(&transcript, format), format.content_type())
    };
    let mut res = body.into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "inline; filename=\"{job_id}.{}\"",
        format.extension()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}
