//! `POST /v1/files` with a JSON body `{"url": ...}`: audio fetched from a
//! URL instead of uploaded. The fetch goes through the guarded outbound
//! client (SSRF guard, every redirect checked, `outbound.fetch_timeout_ms`),
//! and its body takes the multipart upload's path (`files::store_stream`):
//! the tier's `max_file_bytes` enforced while streaming, the storage quota
//! claimed as bytes arrive, sealed at rest, measured as audio.
//!
//! `POST /v1/jobs` with `source_url` fetches the same way
//! ([`fetch_to_file`]) and then submits the job on the new file.
//!
//! Limits: the whole fetch happens within the request (the caller waits
//! for it); a URL that answers slowly holds the request up to the timeout.

use futures_util::TryStreamExt;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::files::{clean_name, file_view, store_stream, too_large};
use super::webhooks::{checked_url, url_error};
use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState, Caller,
};
use crate::outbound::{OutboundError, Redirects};
use crate::store::{FileRecord, Role};

/// The route, for JSON bodies only: anything else falls through to the
/// multipart upload.
pub fn route(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "files")
        .and(warp::post())
        .and(json_content())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(fetch(s, a, b).await) })
        .boxed()
}

fn json_content() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::<String>("content-type")
        .and_then(|ct: String| async move {
            if ct
                .trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
            {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlInput {
    url: String,
    /// The file's name; the URL's last path segment when absent.
    name: Option<String>,
}

fn fetch_failed(detail: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "url_fetch_failed", detail)
}

async fn fetch(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("files:write", Role::Member))
        .await?;
    let input: UrlInput = parse_json(body)?;
    let record = fetch_to_file(&state, &caller, "url", &input.url, input.name.as_deref()).await?;
    Ok(tag_tenant(
        json_reply(StatusCode::CREATED, &file_view(&record)),
        &caller,
    ))
}

/// Fetches `url` (the request's field `field`) into a new file of the
/// caller's, as an upload: see the module docs. `name` overrides the
/// name taken from the URL.
pub async fn fetch_to_file(
    state: &AppState,
    caller: &Caller,
    field: &str,
    url: &str,
    name: Option<&str>,
) -> Result<FileRecord, ApiError> {
    let url: reqwest::Url = checked_url(state, field, url)
        .await?
        .parse()
        .map_err(|e| ApiError::invalid(format!("url: {e}")))?;
    let tier = &caller.tier;
    let request = state
        .outbound
        .request(reqwest::Method::GET, &url, Redirects::Follow)
        .map_err(|e| url_error(field, e))?
        .timeout(std::time::Duration::from_millis(
            state.outbound.settings().fetch_timeout_ms.max(1),
        ))
        .header(
            "accept",
            "audio/*, video/*, application/octet-stream;q=0.5, */*;q=0.1",
        );
    let response = state.outbound.send(request).await.map_err(|e| match e {
        e @ (OutboundError::Refused(_) | OutboundError::BadUrl(_) | OutboundError::Lookup(_)) => {
            url_error(field, e)
        }
        other => fetch_failed(other.to_string()),
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(fetch_failed(format!(
            "{} answered {status}; give a URL that answers the audio itself",
            response.url()
        )));
    }
    // A length announced over the limit is refused before a byte is read.
    let declared = response.content_length();
    if declared.is_some_and(|n| n > tier.max_file_bytes) {
        return Err(too_large(tier.max_file_bytes, &tier.name));
    }
    let name = clean_name(
        name.or_else(|| {
            response
                .url()
                .path_segments()
                .and_then(|mut s| s.next_back())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("download"),
    );
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let source = response.url().to_string();
    let stream = Box::pin(
        response
            .bytes_stream()
            .map_err(move |e| fetch_failed(format!("{source}: the download broke off: {e}"))),
    );
    let record = store_stream(state, caller, name, content_type, declared, stream).await?;
    tracing::info!(tenant = %caller.tenant.id, file = %record.id, "file fetched from a URL");
    Ok(record)
}
