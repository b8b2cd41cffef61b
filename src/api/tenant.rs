//! `/v1/tenant`: an owner's export of everything the tenant holds, and the
//! deletion of the tenant with all of it.
//!
//! Both need the owner role and a login session (never an API key): they
//! touch every row the tenant has. Deletion must be confirmed with the
//! tenant's id, cancels unfinished jobs and waits for them to stop, then
//! removes rows and bytes (see `store::lifecycle`).

use std::time::Duration;

use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{auth_header, json_body, op, parse_json, respond, with_state, ApiError, AppState};
use crate::store::Role;

/// How long a deletion waits for the tenant's running jobs to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let export = warp::path!("v1" / "tenant" / "export")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|s, a| async move { respond(export(s, a).await) });
    let delete = warp::path!("v1" / "tenant")
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(delete(s, a, b).await) });
    export.or(delete).unify().boxed()
}

fn owner_session(caller: &super::Caller) -> Result<(), ApiError> {
    if caller.principal.api_key_id.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "session_required",
            "exporting or deleting a tenant needs the owner's login session, not an API key",
        ));
    }
    Ok(())
}

/// `GET /v1/tenant/export`: newline-delimited JSON, one row per line,
/// streamed as it is read (a long history is never held whole).
async fn export(state: AppState, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("tenant:read", Role::Owner))
        .await?;
    owner_session(&caller)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let (store, tenant) = (state.store.clone(), caller.tenant_id().clone());
    state.background.spawn_blocking(move || {
        let sent = store.export(&tenant, |row| {
            let mut line = serde_json::to_vec(&row).unwrap_or_default();
            line.push(b'\n');
            // The client went away: stop reading.
            tx.blocking_send(Ok(line.into())).map_err(|_| ())
        });
        if let Err(e) = sent {
            tracing::error!(tenant = %tenant, error = %e, "export failed part-way");
            let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
        }
    });
    let mut res = super::download::streamed(tokio_stream_from(rx));
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(v) = format!(
        "attachment; filename=\"murmur-export-{}.ndjson\"",
        caller.tenant.id
    )
    .parse()
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(super::tag_tenant(res, &caller))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    /// The tenant's id, typed again: nothing is deleted by accident.
    confirm: String,
}

/// `DELETE /v1/tenant` with `{"confirm": "<tenant id>"}`.
async fn delete(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("tenant:write", Role::Owner))
        .await?;
    owner_session(&caller)?;
    let body: DeleteBody = parse_json(body)?;
    if body.confirm != caller.tenant.id {
        return Err(ApiError::invalid(
            "confirm must be this tenant's id (see GET /v1/me)",
        ));
    }
    let tenant = caller.tenant_id().clone();
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    loop {
        let running = state.store.unfinished_job_ids(&tenant)?;
        if running.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::conflict(format!(
                "{} job(s) are still stopping; retry the deletion shortly",
                running.len()
            )));
        }
        for id in running {
            // Already ending, or ended meanwhile: both fine here.
            let _ = super::jobs::cancel_job(&state, &tenant, &id).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    state.store.delete_tenant(&tenant).await?;
    tracing::info!(target: "audit", tenant = %tenant, user = %caller.principal.user_id, "tenant deleted with all its data");
    Ok(StatusCode::NO_CONTENT.into_response())
}
