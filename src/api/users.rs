//! `/v1/users`: the tenant's people and their roles.

use chrono::Utc;
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::session::{check_email, check_password, user_view};
use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState,
};
use crate::ids::new_id;
use crate::store::{PageRequest, Role, User};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let create = warp::path!("v1" / "users")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(create(s, a, b).await) });
    let list = warp::path!("v1" / "users")
        .and(warp::get())
        .and(with_state(state))
        .and(auth_header())
        .and(warp::query::<PageRequest>())
        .then(|s, a, p| async move { respond(list(s, a, p).await) });
    create.or(list).unify().boxed()
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
    let caller = state.authenticate(auth.as_deref(), op("users:write", Role::Admin))?;
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
    let caller = state.authenticate(auth.as_deref(), op("users:read", Role::Viewer))?;
    let users = state
        .store
        .list_users(caller.tenant_id(), &page)?
        .map(|u| user_view(&u));
    Ok(tag_tenant(json_reply(StatusCode::OK, &users), &caller))
}
