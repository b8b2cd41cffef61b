//! `/v1/api-keys`: attenuated biscuits for programs (Flowise, scripts).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState,
};
use crate::auth::SCOPES;
use crate::ids::new_id;
use crate::store::{ApiKey, PageRequest, Role};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "api-keys")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(create(s, a, b).await) });
    let list = warp::path!("v1" / "api-keys")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<PageRequest>())
        .then(|s, a, p| async move { respond(list(s, a, p).await) });
    let delete = warp::path!("v1" / "api-keys" / String)
        .and(warp::delete())
        .and(with_state(state))
        .and(auth_header())
        .then(|id, s, a| async move { respond(delete(s, a, id).await) });
    create.or(list).unify().or(delete).unify().boxed()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
}

fn key_view(k: &ApiKey) -> serde_json::Value {
    json!({"id": k.id, "name": k.name, "scopes": k.scopes, "expires_at": k.expires_at,
           "created_at": k.created_at, "user_id": k.user_id})
}

async fn create(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("keys:write", Role::Admin))
        .await?;
    let body: NewKey = parse_json(body)?;
    let name = body.name.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name must be 1 to 200 characters"));
    }
    if let Some(bad) = body.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown scope {bad:?}; scopes are {}",
            SCOPES.join(", ")
        )));
    }
    if body.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(ApiError::invalid("expires_at is in the past"));
    }
    let id = new_id("k");
    let (token, revocation_ids) = state.keys.mint_api_key(
        &id,
        &caller.principal.user_id,
        caller.tenant_id(),
        caller.principal.role,
        &caller.tier,
        caller.tenant.tier_epoch,
        &body.scopes,
        body.expires_at,
    )?;
    let key = ApiKey {
        id,
        tenant_id: caller.tenant.id.clone(),
        user_id: caller.principal.user_id.clone(),
        name,
        scopes: body.scopes,
        expires_at: body.expires_at,
        revocation_ids,
        created_at: Utc::now(),
    };
    state.store.put_api_key(caller.tenant_id(), &key).await?;
    let mut view = key_view(&key);
    view["token"] = json!(token);
    Ok(tag_tenant(json_reply(StatusCode::CREATED, &view), &caller))
}

async fn list(
    state: AppState,
    auth: Option<String>,
    page: PageRequest,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("keys:read", Role::Viewer))
        .await?;
    let keys = state
        .store
        .list_api_keys(caller.tenant_id(), &page)?
        .map(|k| key_view(&k));
    Ok(tag_tenant(json_reply(StatusCode::OK, &keys), &caller))
}

async fn delete(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("keys:write", Role::Admin))
        .await?;
    if !state.store.revoke_api_key(caller.tenant_id(), &id).await? {
        return Err(ApiError::not_found("API key"));
    }
    tracing::info!(tenant = %caller.tenant.id, key = %id, "API key revoked");
    Ok(tag_tenant(StatusCode::NO_CONTENT.into_response(), &caller))
}
