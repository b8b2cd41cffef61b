//! Whisper-WebUI backend compatibility: the routes of that FastAPI backend
//! (`POST /transcription/`, `/vad/`, `/bgm-separation/`, `GET
//! /task/{identifier}`, `GET /task/file/{identifier}`), so its clients work
//! against Murmur with an API key added in the Authorization header.
//!
//! Each submission is a Murmur job of the caller's tenant and tier: the
//! upload goes through [`files::receive_form`] (sealed at rest, size and
//! storage limits as bytes arrive) and the job through
//! [`submit_job`](super::jobs::submit_job) (every gate, quota and error of `/v1/jobs`). A
//! task's identifier is the job's id, so the job is also under `/v1/jobs`.
//! As at that backend, the upload is not kept: it is deleted once its job
//! ends ([`PendingUpload`](super::pending::PendingUpload)).
//!
//! What maps and what does not is in `params.rs` and docs/API.md,
//! "Whisper-WebUI compatibility". Errors are Murmur's problem bodies, whose
//! `detail` is where that backend's clients read its `detail`.

mod params;
mod task;
mod values;
mod zip;

use warp::filters::multipart::FormData;
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Filter;

use self::params::Route;
use super::files::{self, authenticate_upload, multipart_form, receive_form};
use super::{auth_header, json_reply, op, respond, tag_tenant, with_state, ApiError, AppState};
use crate::store::{Job, JobStatus, Role};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let submit = |name: &'static str, route: Route| {
        warp::path(name)
            .and(warp::path::end())
            .and(warp::post())
            .and(with_state(state.clone()))
            .and(auth_header())
            .and(warp::header::optional::<u64>("content-length"))
            .and(raw_query())
            .and(multipart_form())
            .then(move |s, a, len, q, form| async move {
                respond(submit(s, a, len, q, form, route).await)
            })
    };
    let task = warp::path!("task" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(get_task(s, a, id).await) });
    let file = warp::path!("task" / "file" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(get_file(s, a, id).await) });
    submit("transcription", Route::Transcription)
        .or(submit("vad", Route::Vad))
        .unify()
        .or(submit("bgm-separation", Route::BgmSeparation))
        .unify()
        .or(task)
        .unify()
        .or(file)
        .unify()
        .boxed()
}

/// The query string, empty when there is none (never a rejection, which
/// would let warp answer 405 from another route).
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// That backend's words for what was queued.
fn queued_message(route: Route) -> &'static str {
    match route {
        Route::Transcription => "Transcription task has queued",
        Route::Vad => "VAD task has queued",
        Route::BgmSeparation => "BGM Separation task has queued",
    }
}

async fn submit(
    state: AppState,
    auth: Option<String>,
    content_length: Option<u64>,
    query: String,
    form: Result<FormData, ApiError>,
    route: Route,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mapped = params::map(route, &pairs);
    let (caller, form) = authenticate_upload(
        &state,
        auth.as_deref(),
        op("jobs:write", Role::Member),
        form,
    )
    .await?;
    let mapped = match mapped {
        Ok(m) => m,
        Err(e) => {
            files::discard(form).await;
            return Err(e);
        }
    };
    // The file is the only part that backend reads from the body.
    // That backend keeps no upload: it goes once the job ends.
    let (upload, _) = receive_form(&state, &caller, content_length, form, &[]).await?;
    let (job, _upload) = upload.submit(&caller, &mapped.params).await?;
    let mut message = queued_message(route).to_string();
    if !mapped.notes.is_empty() {
        message.push_str("; not applied as asked: ");
        message.push_str(&mapped.notes.join(", "));
    }
    let body = serde_json::json!({
        "identifier": job.id,
        "status": task::status_name(job.status),
        "message": message,
    });
    Ok(tag_tenant(json_reply(StatusCode::CREATED, &body), &caller))
}

/// That backend's answer for an identifier it does not know; also the
/// answer for another tenant's.
fn unknown_identifier() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "Identifier not found")
}

async fn readable_job(
    state: &AppState,
    auth: Option<String>,
    id: &str,
) -> Result<(super::Caller, Job), ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    let job = state
        .store
        .job(caller.tenant_id(), id)?
        .ok_or_else(unknown_identifier)?;
    Ok((caller, job))
}

async fn get_task(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let (caller, job) = readable_job(&state, auth, &id).await?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &task::view(&job)),
        &caller,
    ))
}

/// `GET /task/file/{identifier}`: a completed separation's two stems as a
/// streamed ZIP (`instrumental` first, as there).
async fn get_file(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let (caller, job) = readable_job(&state, auth, &id).await?;
    if job.job_type != "bgm_separation" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "File download is only supported for bgm separation. The given type is {}",
                job.job_type
            ),
        ));
    }
    if job.status != JobStatus::Completed {
        return Err(ApiError::conflict(format!(
            "the task has no files yet (status {})",
            task::status_name(job.status)
        )));
    }
    let dir = state.store.artifact_dir(caller.tenant_id(), &job.id);
    let key = state.store.data_key(caller.tenant_id())?;
    let mut entries = Vec::new();
    for (label, stem) in task::STEM_NAMES {
        let path = murmur_engine::stem_path(&dir, stem);
        let context = murmur_actors::sealed::artifact_context(&job.id, stem);
        let stored = match super::download::stored_body(&path, &key, &context).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::not_found("stem (it was removed)"))
            }
            Err(e) => return Err(ApiError::internal(format!("stem {stem} of job {id}: {e}"))),
        };
        let entry = zip::Entry {
            name: format!("{}.wav", task::stem_label(&job.id, label)),
            len: stored.len,
        };
        entries.push((entry, stored.body));
    }
    let metas: Vec<zip::Entry> = entries
        .iter()
        .map(|(e, _)| zip::Entry {
            name: e.name.clone(),
            len: e.len,
        })
        .collect();
    let total = zip::layout(&metas).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!(
                "these stems are too large for one ZIP (over 4 GiB); download them one by one \
                 from /v1/jobs/{id}/stems/vocals and /v1/jobs/{id}/stems/accompaniment"
            ),
        )
    })?;
    let modified = zip::dos_time(job.finished_at.unwrap_or(job.updated_at));
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let job_id = job.id.clone();
    // Owned by the server's tracker; ends at the archive's end, when the
    // client goes away (the channel closes) or when the server stops (a
    // client that stopped reading must not hold up shutdown).
    let stopping = state.stopping.clone();
    state.background.spawn(async move {
        tokio::select! {
            written = zip::write(entries, modified, &tx) => {
                if let Err(e) = written {
                    tracing::warn!(job = %job_id, error = %e, "the stems ZIP stopped early");
                }
            }
            _ = stopping.cancelled() => {}
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let mut res = super::download::streamed(body);
    let headers = res.headers_mut();
    super::download::attachment(
        headers,
        "application/zip",
        &format!("{}_bgm_separation.zip", job.id),
    );
    headers.insert(header::CONTENT_LENGTH, total.into());
    Ok(tag_tenant(res, &caller))
}
