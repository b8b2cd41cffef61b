//! `/v1/users`: the tenant's people and their roles: create, list, change
//! a role, remove a user, end a user's login sessions.
//!
//! Changing users needs a login session (never an API key) and a role at
//! least as high as both the user's current and new role; a tenant always
//! keeps one owner.

use chrono::Utc;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::session::{check_email, check_password, user_view};
use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState,
};
use crate::ids::new_id;
use crate::store::{PageRequest, Role, User, UserChangeError};

use super::Caller;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "users")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(create(s, a, b).await) });
    let list = warp::path!("v1" / "users")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<PageRequest>())
        .then(|s, a, p| async move { respond(list(s, a, p).await) });
    let change = warp::path!("v1" / "users" / String)
        .and(warp::patch())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|id, s, a, b| async move { respond(change_role(s, a, id, b).await) });
    let remove = warp::path!("v1" / "users" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|id, s, a| async move { respond(remove(s, a, id).await) });
    let end_sessions = warp::path!("v1" / "users" / String / "sessions")
        .and(warp::delete())
        .and(with_state(state))
        .and(auth_header())
        .then(|id, s, a| async move { respond(end_sessions(s, a, id).await) });
    create
        .or(list)
        .unify()
        .or(change)
        .unify()
        .or(remove)
        .unify()
        .or(end_sessions)
        .unify()
        .boxed()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    password: String,
    role: String,
}

async fn create(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("users:write", Role::Admin))
        .await?;
    let body: NewUser = parse_json(body)?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::invalid("role must be owner, admin, member or viewer"))?;
    if role > caller.principal.role {
        return Err(ApiError::forbidden(format!(
            "a {} cannot create a user with the higher role {}",
            caller.principal.role.as_str(),
            role.as_str()
        )));
    }
    let email = check_email(&body.email)?;
    check_password(&body.password)?;
    let hashed_password = super::session::hash_password(&state, body.password).await?;
    let user = User {
        id: new_id("u"),
        email,
        hashed_password,
        tenant_id: caller.tenant.id.clone(),
        role,
        created_at: Utc::now(),
        tokens_valid_after: None,
    };
    state.store.create_user(caller.tenant_id(), &user).await?;
    Ok(tag_tenant(
        json_reply(StatusCode::CREATED, &user_view(&user)),
        &caller,
    ))
}

async fn list(
    state: AppState,
    auth: Option<String>,
    page: PageRequest,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("users:read", Role::Viewer))
        .await?;
    let users = state
        .store
        .list_users(caller.tenant_id(), &page)?
        .map(|u| user_view(&u));
    Ok(tag_tenant(json_reply(StatusCode::OK, &users), &caller))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleChange {
    role: String,
}

/// The caller's tenant's user `id` (404 otherwise, another tenant's
/// included), refused (403) when their role is above the caller's.
fn target_user(state: &AppState, caller: &Caller, id: &str) -> Result<User, ApiError> {
    let target = state
        .store
        .user(caller.tenant_id(), id)?
        .ok_or_else(|| ApiError::not_found("user"))?;
    outranks(caller, &target)?;
    Ok(target)
}

/// Refuses a change to `target` by a caller whose role is below it.
fn outranks(caller: &Caller, target: &User) -> Result<(), ApiError> {
    if target.role > caller.principal.role {
        return Err(ApiError::forbidden(format!(
            "a {} cannot change a user whose role is {}",
            caller.principal.role.as_str(),
            target.role.as_str()
        )));
    }
    Ok(())
}

fn change_error(e: UserChangeError) -> ApiError {
    match e {
        UserChangeError::NotFound => ApiError::not_found("user"),
        UserChangeError::LastOwner => ApiError::conflict(e.to_string()),
    }
}

/// `PATCH /v1/users/{id}` with `{"role": ...}`.
async fn change_role(
    state: AppState,
    auth: Option<String>,
    id: String,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("users:write", Role::Admin))
        .await?;
    let body: RoleChange = parse_json(body)?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::invalid("role must be owner, admin, member or viewer"))?;
    target_user(&state, &caller, &id)?;
    if role > caller.principal.role {
        return Err(ApiError::forbidden(format!(
            "a {} cannot give the higher role {}",
            caller.principal.role.as_str(),
            role.as_str()
        )));
    }
    let user = state
        .store
        .set_user_role(caller.tenant_id(), &id, role)
        .await?
        .map_err(change_error)?;
    tracing::info!(tenant = %caller.tenant.id, user = %id, role = role.as_str(), "user role changed");
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &user_view(&user)),
        &caller,
    ))
}

/// `DELETE /v1/users/{id}`: the user, their login and their API keys go;
/// every token they hold is refused from the next request on.
async fn remove(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("users:write", Role::Admin))
        .await?;
    target_user(&state, &caller, &id)?;
    state
        .store
        .delete_user(caller.tenant_id(), &id)
        .await?
        .map_err(change_error)?;
    tracing::info!(tenant = %caller.tenant.id, user = %id, "user removed");
    Ok(tag_tenant(StatusCode::NO_CONTENT.into_response(), &caller))
}

/// `DELETE /v1/users/{id}/sessions`: every login token of the user minted
/// until now is refused (open WebSockets close within seconds). Anyone may
/// end their own sessions; ending another's needs `users:write`.
async fn end_sessions(
    state: AppState,
    auth: Option<String>,
    id: String,
) -> Result<Response, ApiError> {
    let own = op("tenant:read", Role::Viewer);
    let caller = state.authenticate(auth.as_deref(), own).await?;
    let caller = if id == caller.principal.user_id && caller.principal.api_key_id.is_none() {
        caller
    } else {
        state
            .authenticate(auth.as_deref(), op("users:write", Role::Admin))
            .await?
    };
    target_user(&state, &caller, &id)?;
    let valid_after = state
        .store
        .end_sessions(caller.tenant_id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    tracing::info!(tenant = %caller.tenant.id, user = %id, "user sessions ended");
    Ok(tag_tenant(
        json_reply(
            StatusCode::OK,
            &serde_json::json!({"user_id": id, "tokens_valid_after": valid_after}),
        ),
        &caller,
    ))
}
