//! `/v1/webhooks`: a tenant's endpoints for job events, and their recent
//! delivery attempts. Deliveries themselves are the worker's
//! (`crate::webhooks`); the outbox is the store's (`store::webhooks`).
//!
//! Admins and owners (or a `full`-scope key) only: an endpoint receives
//! every job of the tenant, whoever submitted it. Also
//! `GET /v1/jobs/{id}/deliveries`: attempts to a job's own callback, for
//! whoever may read the job.

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState, Caller,
};
use crate::ids::new_id;
use crate::outbound::OutboundError;
use crate::store::{PageRequest, Role, Webhook, WEBHOOK_EVENTS};

/// Longest URL accepted for an endpoint or a callback.
pub const MAX_URL_CHARS: usize = 2048;

/// Most attempts one `deliveries` answer lists.
const MAX_ATTEMPTS_LISTED: usize = 100;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "webhooks")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(create(s, a, b).await) });
    let list = warp::path!("v1" / "webhooks")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<PageRequest>())
        .then(|s, a, p| async move { respond(list(s, a, p).await) });
    let one = warp::path!("v1" / "webhooks" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(get(s, a, id).await) });
    let delete = warp::path!("v1" / "webhooks" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(delete(s, a, id).await) });
    let deliveries = warp::path!("v1" / "webhooks" / String / "deliveries")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<AttemptsQuery>())
        .then(|id, s, a, q| async move { respond(deliveries(s, a, id, q).await) });
    let callback_deliveries = warp::path!("v1" / "jobs" / String / "deliveries")
        .and(warp::get())
        .and(with_state(state))
        .and(auth_header())
        .and(warp::query::<AttemptsQuery>())
        .then(|id, s, a, q| async move { respond(callback_deliveries(s, a, id, q).await) });
    create
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(delete)
        .unify()
        .or(deliveries)
        .unify()
        .or(callback_deliveries)
        .unify()
        .boxed()
}

/// The problem answer for a URL the outbound client will not use
/// (docs/API.md, "Errors"): 422 in every case, with a code per reason.
pub fn url_error(field: &str, e: OutboundError) -> ApiError {
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    match e {
        OutboundError::Refused(r) => {
            ApiError::new(status, "url_not_allowed", format!("{field}: {r}"))
        }
        OutboundError::Lookup(m) => {
            ApiError::new(status, "url_unresolvable", format!("{field}: {m}"))
        }
        other => ApiError::new(status, "invalid_url", format!("{field}: {other}")),
    }
}

/// Checks a URL a tenant gives (length, shape, SSRF guard).
pub async fn checked_url(state: &AppState, field: &str, url: &str) -> Result<String, ApiError> {
    if url.len() > MAX_URL_CHARS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_url",
            format!("{field}: URLs of at most {MAX_URL_CHARS} characters are accepted"),
        ));
    }
    let parsed = state
        .outbound
        .check_url(url)
        .await
        .map_err(|e| url_error(field, e))?;
    Ok(parsed.to_string())
}

fn view(w: &Webhook) -> serde_json::Value {
    json!({"id": w.id, "url": w.url, "events": w.events, "description": w.description,
           "created_at": w.created_at})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    url: String,
    /// Every event when absent.
    events: Option<Vec<String>>,
    description: Option<String>,
}

async fn create(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("webhooks:write", Role::Admin))
        .await?;
    let body: NewWebhook = parse_json(body)?;
    let mut events = match body.events {
        None => WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect(),
        Some(events) => events,
    };
    if events.is_empty() {
        return Err(ApiError::invalid("events must name at least one event"));
    }
    if let Some(bad) = events
        .iter()
        .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
    {
        return Err(ApiError::invalid(format!(
            "unknown event {bad:?}; events are {}",
            WEBHOOK_EVENTS.join(", ")
        )));
    }
    events.sort();
    events.dedup();
    let description = body.description.map(|d| d.trim().to_string());
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        return Err(ApiError::invalid("description is at most 500 characters"));
    }
    let url = checked_url(&state, "url", &body.url).await?;
    let tenant = caller.tenant_id();
    let max = state.settings.webhooks.max_per_tenant;
    if state.store.count_webhooks(tenant)? >= max {
        return Err(ApiError::quota(format!(
            "a tenant may register at most {max} webhooks; delete one first"
        )));
    }
    let hook = Webhook {
        id: new_id("wh"),
        tenant_id: caller.tenant.id.clone(),
        user_id: caller.principal.user_id.clone(),
        url,
        events,
        description,
        secret: crate::webhooks::new_secret(),
        created_at: Utc::now(),
    };
    state.store.put_webhook(tenant, &hook).await?;
    tracing::info!(tenant = %caller.tenant.id, webhook = %hook.id, "webhook registered");
    let mut answer = view(&hook);
    // The only time the secret leaves the server.
    answer["secret"] = json!(hook.secret);
    Ok(tag_tenant(
        json_reply(StatusCode::CREATED, &answer),
        &caller,
    ))
}

async fn list(
    state: AppState,
    auth: Option<String>,
    page: PageRequest,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("webhooks:read", Role::Admin))
        .await?;
    let hooks = state
        .store
        .list_webhooks(caller.tenant_id(), &page)?
        .map(|w| view(&w));
    Ok(tag_tenant(json_reply(StatusCode::OK, &hooks), &caller))
}

async fn get(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("webhooks:read", Role::Admin))
        .await?;
    let hook = state
        .store
        .webhook(caller.tenant_id(), &id)?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &view(&hook)),
        &caller,
    ))
}

async fn delete(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("webhooks:write", Role::Admin))
        .await?;
    if !state.store.delete_webhook(caller.tenant_id(), &id).await? {
        return Err(ApiError::not_found("webhook"));
    }
    tracing::info!(tenant = %caller.tenant.id, webhook = %id, "webhook deleted");
    Ok(tag_tenant(StatusCode::NO_CONTENT.into_response(), &caller))
}

#[derive(Deserialize)]
struct AttemptsQuery {
    limit: Option<usize>,
}

async fn deliveries(
    state: AppState,
    auth: Option<String>,
    id: String,
    q: AttemptsQuery,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("webhooks:read", Role::Admin))
        .await?;
    if state.store.webhook(caller.tenant_id(), &id)?.is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    attempts_reply(&state, &caller, &id, &q)
}

/// Recent attempts to a job's own `callback_url` (empty when it has none):
/// whoever may read the job may read them.
async fn callback_deliveries(
    state: AppState,
    auth: Option<String>,
    id: String,
    q: AttemptsQuery,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    if state.store.job(caller.tenant_id(), &id)?.is_none() {
        return Err(ApiError::not_found("job"));
    }
    attempts_reply(&state, &caller, &id, &q)
}

/// The recent delivery attempts logged under `owner` (a webhook or a job
/// the caller was checked to own).
fn attempts_reply(
    state: &AppState,
    caller: &Caller,
    owner: &str,
    q: &AttemptsQuery,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_ATTEMPTS_LISTED);
    let items = state
        .store
        .delivery_attempts(caller.tenant_id(), owner, limit)?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &json!({"items": items})),
        caller,
    ))
}
