//! `/v1/jobs`: submit, list, read, cancel, results.

use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState, Caller,
};
use crate::admission::JobRequest;
use crate::store::{EventType, Job, JobCallback, JobStatus, PageRequest, Role, StoreError};
use murmur_models::formats::SubtitleOptions;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "jobs")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(create(s, a, b).await) });
    let list = warp::path!("v1" / "jobs")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<ListQuery>())
        .then(|s, a, q| async move { respond(list(s, a, q).await) });
    let one = warp::path!("v1" / "jobs" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(get(s, a, id).await) });
    let cancel = warp::path!("v1" / "jobs" / String / "cancel")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(cancel(s, a, id).await) });
    let events = warp::path!("v1" / "jobs" / String / "events")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<EventsQuery>())
        .then(|id, s, a, q| async move { respond(events(s, a, id, q).await) });
    let stem = warp::path!("v1" / "jobs" / String / "stems" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, name, s, a| async move { respond(stem(s, a, id, name).await) });
    let delete = warp::path!("v1" / "jobs" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(delete(s, a, id).await) });
    let result = warp::path!("v1" / "jobs" / String / "result")
        .and(warp::get())
        .and(with_state(state))
        .and(auth_header())
        .and(warp::query::<ResultQuery>())
        .then(|id, s, a, q| async move { respond(result(s, a, id, q).await) });
    create
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(cancel)
        .unify()
        .or(result)
        .unify()
        .or(events)
        .unify()
        .or(stem)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

pub fn job_view(j: &Job) -> Value {
    json!({
        "id": j.id, "file_id": j.file_id, "workflow_id": j.workflow_id,
        "job_type": j.job_type, "params": j.params, "status": j.status, "stage": j.stage,
        "progress": j.progress, "attempts": j.attempts, "error": j.error,
        "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    /// The audio: an uploaded file, or `source_url` to fetch it first.
    file_id: Option<String>,
    source_url: Option<String>,
    workflow_id: Option<String>,
    #[serde(default)]
    params: Value,
    /// Receives this job's events (signed; see docs/API.md, "Webhooks").
    callback_url: Option<String>,
}

async fn create(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:write", Role::Member))
        .await?;
    let body: NewJob = parse_json(body)?;
    let callback = match &body.callback_url {
        Some(url) => Some(JobCallback {
            url: super::webhooks::checked_url(&state, "callback_url", url).await?,
            secret: crate::webhooks::new_secret(),
        }),
        None => None,
    };
    let (file_id, fetched) = match (body.file_id, &body.source_url) {
        (Some(id), None) => (id, false),
        (None, Some(url)) => {
            // Fetching stores a file, which the caller must be allowed to.
            state
                .authenticate(auth.as_deref(), op("files:write", Role::Member))
                .await?;
            let file =
                super::url_input::fetch_to_file(&state, &caller, "source_url", url, None).await?;
            (file.id, true)
        }
        _ => {
            return Err(ApiError::invalid(
                "send either file_id or source_url (exactly one)",
            ))
        }
    };
    let submitted = submit_job(
        &state,
        &caller,
        &file_id,
        body.workflow_id.as_deref(),
        &body.params,
        callback.as_ref(),
    )
    .await;
    let job = match submitted {
        Ok(job) => job,
        Err(e) => {
            // A file fetched for a job that was refused is not kept.
            if fetched {
                let _ = state.store.delete_file(caller.tenant_id(), &file_id).await;
            }
            return Err(e);
        }
    };
    let mut view = job_view(&job);
    if let Some(cb) = &callback {
        // The only time the callback's secret leaves the server.
        view["callback_url"] = json!(cb.url);
        view["callback_secret"] = json!(cb.secret);
    }
    Ok(tag_tenant(json_reply(StatusCode::ACCEPTED, &view), &caller))
}

/// Creates a job for the caller on one of its files, through every rule
/// of [`crate::admission`]. Every entry point that starts jobs goes through
/// here.
pub async fn submit_job(
    state: &AppState,
    caller: &Caller,
    file_id: &str,
    workflow_id: Option<&str>,
    params: &Value,
    callback: Option<&JobCallback>,
) -> Result<Job, ApiError> {
    let request = JobRequest {
        file_id,
        workflow_id,
        params,
        callback,
    };
    Ok(state.rules().submit(caller, request).await?)
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(state: AppState, auth: Option<String>, q: ListQuery) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::invalid("status must be queued, running, completed, failed or cancelled")
        })?),
    };
    let page = PageRequest {
        limit: q.limit,
        cursor: q.cursor,
    };
    let jobs = state
        .store
        .list_jobs(caller.tenant_id(), &page, status)?
        .map(|j| job_view(&j));
    Ok(tag_tenant(json_reply(StatusCode::OK, &jobs), &caller))
}

async fn get(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    let job = state
        .store
        .job(caller.tenant_id(), &id)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &job_view(&job)),
        &caller,
    ))
}

async fn cancel(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:write", Role::Member))
        .await?;
    let job = cancel_job(&state, caller.tenant_id(), &id).await?;
    Ok(tag_tenant(
        json_reply(StatusCode::ACCEPTED, &job_view(&job)),
        &caller,
    ))
}

/// Ends a queued job at once, or flags a running one and tells its actor
/// (it ends `cancelled` at its next check). 409 once the job has ended
/// otherwise.
pub(super) async fn cancel_job(
    state: &AppState,
    tenant: &crate::store::TenantId,
    id: &str,
) -> Result<Job, ApiError> {
    let job = state
        .store
        .job(tenant, id)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    if job.status.is_finished() {
        return Err(ApiError::conflict(format!(
            "the job has already ended ({})",
            job.status.as_str()
        )));
    }
    let now = Utc::now();
    // A queued job ends here; nothing runs it yet.
    let ended = state
        .store
        .transition_job(tenant, id, None, EventType::Cancelled, |j| {
            if j.status != JobStatus::Queued {
                return false;
            }
            j.cancel_requested = true;
            j.status = JobStatus::Cancelled;
            j.finished_at = Some(now);
            j.updated_at = now;
            true
        })
        .await?;
    match ended {
        Some((job, event)) => {
            state.jobs.publish(event);
            state.jobs.cancel(tenant.as_str(), id);
            Ok(job)
        }
        None => {
            let job = state
                .store
                .update_job(tenant, id, |j| {
                    if j.status.is_finished() {
                        return false;
                    }
                    j.cancel_requested = true;
                    j.updated_at = now;
                    true
                })
                .await?
                .ok_or_else(|| ApiError::not_found("job"))?;
            if job.status.is_finished() && job.status != JobStatus::Cancelled {
                return Err(ApiError::conflict(format!(
                    "the job has already ended ({})",
                    job.status.as_str()
                )));
            }
            state.jobs.cancel(tenant.as_str(), id);
            Ok(job)
        }
    }
}

/// `DELETE /v1/jobs/{id}`: a finished job, its result, event log and
/// stems. Usage it counted stays (it is the billing record).
async fn delete(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:write", Role::Member))
        .await?;
    match state.store.delete_job(caller.tenant_id(), &id).await {
        Ok(Some(_)) => Ok(tag_tenant(StatusCode::NO_CONTENT.into_response(), &caller)),
        Ok(None) => Err(ApiError::not_found("job")),
        Err(StoreError::Conflict(why)) => Err(ApiError::conflict(why)),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// The polling fallback of the live events: the job's durable log after
/// `after`.
async fn events(
    state: AppState,
    auth: Option<String>,
    id: String,
    q: EventsQuery,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    let tenant = caller.tenant_id();
    if state.store.job(tenant, &id)?.is_none() {
        return Err(ApiError::not_found("job"));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 1000);
    let items = state.store.events_after(tenant, &id, q.after, limit)?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &json!({"items": items})),
        &caller,
    ))
}

/// `?format=` and the subtitle layout options, read as text so a bad
/// value is answered by name.
#[derive(Deserialize)]
struct ResultQuery {
    format: Option<String>,
    max_line_width: Option<String>,
    max_line_count: Option<String>,
    max_words_per_line: Option<String>,
    highlight_words: Option<String>,
}

impl ResultQuery {
    fn subtitle_options(&self) -> Result<SubtitleOptions, ApiError> {
        let count = |name: &str, value: &Option<String>| -> Result<Option<usize>, ApiError> {
            value
                .as_deref()
                .map(|v| {
                    v.trim().parse().map_err(|_| {
                        ApiError::invalid(format!("{name} must be a whole number of at least 1"))
                    })
                })
                .transpose()
        };
        let highlight_words = match self.highlight_words.as_deref().map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(ApiError::invalid("highlight_words must be true or false")),
        };
        Ok(SubtitleOptions {
            max_line_width: count("max_line_width", &self.max_line_width)?,
            max_line_count: count("max_line_count", &self.max_line_count)?,
            max_words_per_line: count("max_words_per_line", &self.max_words_per_line)?,
            highlight_words,
        })
    }
}

async fn result(
    state: AppState,
    auth: Option<String>,
    id: String,
    q: ResultQuery,
) -> Result<Response, ApiError> {
    let (caller, job) = completed_job(&state, auth, &id, "result").await?;
    let result = job
        .result
        .as_ref()
        .ok_or_else(|| ApiError::internal(format!("completed job {} has no result", job.id)))?;
    let format = q.format.as_deref().unwrap_or("json");
    let subtitles = q.subtitle_options()?;
    let res = crate::media::render_result(result, format, &subtitles, &job.id)
        .map_err(ApiError::invalid)?;
    Ok(tag_tenant(res, &caller))
}

/// The caller's job `id` once it has completed (404 when it is not theirs,
/// 409 naming `what` before completion).
async fn completed_job(
    state: &AppState,
    auth: Option<String>,
    id: &str,
    what: &str,
) -> Result<(Caller, Job), ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    let job = state
        .store
        .job(caller.tenant_id(), id)?
        .ok_or_else(|| ApiError::not_found("job"))?;
    if job.status != JobStatus::Completed {
        return Err(ApiError::conflict(format!(
            "the job has no {what} yet (status {})",
            job.status.as_str()
        )));
    }
    Ok((caller, job))
}

/// `GET /v1/jobs/{id}/stems/{vocals|accompaniment}`: a separated stem as WAV.
async fn stem(
    state: AppState,
    auth: Option<String>,
    id: String,
    name: String,
) -> Result<Response, ApiError> {
    let (caller, job) = completed_job(&state, auth, &id, "stems").await?;
    let name = name.strip_suffix(".wav").unwrap_or(&name);
    if !murmur_models::separate::STEMS.contains(&name) {
        return Err(ApiError::not_found("stem"));
    }
    let path =
        murmur_engine::stem_path(&state.store.artifact_dir(caller.tenant_id(), &job.id), name);
    let key = state.store.data_key(caller.tenant_id())?;
    let context = murmur_actors::sealed::artifact_context(&job.id, name);
    let stored = match super::download::stored_body(&path, &key, &context).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(
                "stem (the job did not separate its audio)",
            ))
        }
        Err(e) => return Err(ApiError::internal(format!("stem {name} of job {id}: {e}"))),
    };
    let mut res = super::download::streamed(stored.body);
    let headers = res.headers_mut();
    super::download::attachment(headers, "audio/wav", &format!("{}-{name}.wav", job.id));
    headers.insert(header::CONTENT_LENGTH, stored.len.into());
    Ok(tag_tenant(res, &caller))
}
