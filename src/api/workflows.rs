//! `/v1/workflows`: named, stored job parameters.

use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState, Caller,
};
use crate::ids::new_id;
use crate::store::{PageRequest, Role, Workflow};
use murmur_actors::params::JobParams;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "workflows")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(create(s, a, b).await) });
    let list = warp::path!("v1" / "workflows")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<PageRequest>())
        .then(|s, a, p| async move { respond(list(s, a, p).await) });
    let one = warp::path!("v1" / "workflows" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(get(s, a, id).await) });
    let update = warp::path!("v1" / "workflows" / String)
        .and(warp::put())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|id, s, a, b| async move { respond(update(s, a, id, b).await) });
    let delete = warp::path!("v1" / "workflows" / String)
        .and(warp::delete())
        .and(with_state(state))
        .and(auth_header())
        .then(|id, s, a| async move { respond(delete(s, a, id).await) });
    create
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

pub fn workflow_view(w: &Workflow) -> Value {
    json!({"id": w.id, "name": w.name, "params": w.config, "user_id": w.user_id,
           "created_at": w.created_at, "updated_at": w.updated_at})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowBody {
    name: Option<String>,
    #[serde(default)]
    params: Value,
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name must be 1 to 200 characters"));
    }
    Ok(name.to_string())
}

/// Resolves and gates a workflow's parameters for the caller's tier.
fn resolve_params(
    state: &AppState,
    caller: &Caller,
    base: &JobParams,
    params: &Value,
) -> Result<JobParams, ApiError> {
    Ok(state.rules().resolve(caller, base, params)?)
}

async fn create(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("workflows:write", Role::Member))
        .await?;
    let body: WorkflowBody = parse_json(body)?;
    let name = check_name(body.name.as_deref().unwrap_or(""))?;
    let defaults = JobParams::defaults(&state.settings.models.default_model);
    let params = resolve_params(&state, &caller, &defaults, &body.params)?;
    if let Some(max) = caller.tier.max_workflows {
        if state.store.count_workflows(caller.tenant_id())? >= max {
            return Err(ApiError::quota(format!(
                "the {} tier keeps at most {max} workflows; delete one or upgrade",
                caller.tier.name
            )));
        }
    }
    let now = Utc::now();
    let wf = Workflow {
        id: new_id("w"),
        name,
        tenant_id: caller.tenant.id.clone(),
        user_id: caller.principal.user_id.clone(),
        config: params,
        created_at: now,
        updated_at: now,
    };
    state.store.put_workflow(caller.tenant_id(), &wf).await?;
    Ok(tag_tenant(
        json_reply(StatusCode::CREATED, &workflow_view(&wf)),
        &caller,
    ))
}

async fn list(
    state: AppState,
    auth: Option<String>,
    page: PageRequest,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("workflows:read", Role::Viewer))
        .await?;
    let wfs = state
        .store
        .list_workflows(caller.tenant_id(), &page)?
        .map(|w| workflow_view(&w));
    Ok(tag_tenant(json_reply(StatusCode::OK, &wfs), &caller))
}

async fn get(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("workflows:read", Role::Viewer))
        .await?;
    let wf = state
        .store
        .workflow(caller.tenant_id(), &id)?
        .ok_or_else(|| ApiError::not_found("workflow"))?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &workflow_view(&wf)),
        &caller,
    ))
}

async fn update(
    state: AppState,
    auth: Option<String>,
    id: String,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("workflows:write", Role::Member))
        .await?;
    let body: WorkflowBody = parse_json(body)?;
    let mut wf = state
        .store
        .workflow(caller.tenant_id(), &id)?
        .ok_or_else(|| ApiError::not_found("workflow"))?;
    if let Some(name) = &body.name {
        wf.name = check_name(name)?;
    }
    wf.config = resolve_params(&state, &caller, &wf.config, &body.params)?;
    wf.updated_at = Utc::now();
    state.store.put_workflow(caller.tenant_id(), &wf).await?;
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &workflow_view(&wf)),
        &caller,
    ))
}

async fn delete(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("workflows:write", Role::Member))
        .await?;
    if !state.store.delete_workflow(caller.tenant_id(), &id).await? {
        return Err(ApiError::not_found("workflow"));
    }
    Ok(tag_tenant(StatusCode::NO_CONTENT.into_response(), &caller))
}
