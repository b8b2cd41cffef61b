//! Signup, login and `/v1/me`.
//!
//! Password hashing runs through `AppState::auth_limits`: a bounded number
//! at once, on the blocking pool. Login and signup attempts are rate limited
//! per client address, failed logins per (account, address); a refused
//! attempt answers 429 `rate_limited` with `Retry-After` before any hashing.

use std::net::IpAddr;

use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    auth_header, client_ip::client_ip, json_body, json_reply, op, parse_json, respond, tag_tenant,
    with_state, ApiError, AppState, JsonBody,
};
use crate::auth::limits::RateLimited;
use crate::ids::new_id;
use crate::store::{Role, Tenant, TenantId, User};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let proxies = state.trusted_proxies.clone();
    let signup = warp::path!("v1" / "auth" / "signup")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client_ip(proxies.clone()))
        .and(json_body(&state))
        .then(|s, r, b| async move { respond(signup(s, r, b).await) });
    let login = warp::path!("v1" / "auth" / "login")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(client_ip(proxies))
        .and(json_body(&state))
        .then(|s, r, b| async move { respond(login(s, r, b).await) });
    let me = warp::path!("v1" / "me")
        .and(warp::get())
        .and(with_state(state))
        .and(auth_header())
        .then(|s, a| async move { respond(me(s, a).await) });
    signup.or(login).unify().or(me).unify().boxed()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    tenant: String,
    email: String,
    password: String,
}

/// Rejects addresses that cannot be an email; delivery is not our job.
pub fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(email)
    } else {
        Err(ApiError::invalid("email is not a valid address"))
    }
}

pub fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < 8 {
        return Err(ApiError::invalid(
            "password must have at least 8 characters",
        ));
    }
    if password.len() > 1024 {
        return Err(ApiError::invalid(
            "password is too long (at most 1024 bytes)",
        ));
    }
    Ok(())
}

pub fn user_view(u: &User) -> serde_json::Value {
    json!({"id": u.id, "email": u.email, "role": u.role, "created_at": u.created_at})
}

fn tenant_view(t: &Tenant) -> serde_json::Value {
    json!({"id": t.id, "name": t.name, "tier": t.subscription_tier, "created_at": t.created_at})
}

pub async fn hash_password(state: &AppState, password: String) -> Result<String, ApiError> {
    state
        .auth_limits
        .hash(password)
        .await
        .map_err(ApiError::internal)
}

/// 429 `rate_limited` with the seconds to wait in `Retry-After`.
fn rate_limited(refused: RateLimited) -> Response {
    let secs = refused.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut res = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many attempts; try again in {secs} s"),
    )
    .into_response();
    res.headers_mut()
        .insert(warp::http::header::RETRY_AFTER, secs.into());
    res
}

fn login_token(
    state: &AppState,
    user: &User,
    tenant: &Tenant,
) -> Result<(String, chrono::DateTime<Utc>), ApiError> {
    let expires_at = Utc::now() + chrono::Duration::hours(state.settings.auth.token_ttl_hours);
    let token = state.keys.mint_login(
        &user.id,
        &TenantId::trusted(&tenant.id),
        user.role,
        state.tiers.get_or_default(&tenant.subscription_tier),
        tenant.tier_epoch,
        expires_at,
    )?;
    Ok((token, expires_at))
}

async fn signup(
    state: AppState,
    client: Option<IpAddr>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let body: SignupBody = parse_json(body)?;
    if let Err(refused) = state.auth_limits.admit_signup(client) {
        return Ok(rate_limited(refused));
    }
    let name = body.tenant.trim().to_string();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::invalid(
            "tenant must be a name of 1 to 200 characters",
        ));
    }
    let email = check_email(&body.email)?;
    check_password(&body.password)?;
    let now = Utc::now();
    let tenant = Tenant {
        id: new_id("t"),
        name,
        subscription_tier: state.tiers.default_tier().to_string(),
        subscription_id: None,
        tier_epoch: 0,
        created_at: now,
    };
    let user = User {
        id: new_id("u"),
        email,
        hashed_password: hash_password(&state, body.password).await?,
        tenant_id: tenant.id.clone(),
        role: Role::Owner,
        created_at: now,
        tokens_valid_after: None,
    };
    state.store.create_tenant(&tenant, &user).await?;
    let (token, expires_at) = login_token(&state, &user, &tenant)?;
    tracing::info!(tenant = %tenant.id, user = %user.id, "tenant signed up");
    Ok(json_reply(
        StatusCode::CREATED,
        &json!({"tenant": tenant_view(&tenant), "user": user_view(&user), "token": token, "expires_at": expires_at}),
    ))
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(
    state: AppState,
    client: Option<IpAddr>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let body: LoginBody = parse_json(body)?;
    let wrong = || ApiError::unauthorized("wrong email or password");
    let ip = client;
    let limits = &state.auth_limits;
    if let Err(refused) = limits.admit_login(ip, &body.email) {
        return Ok(rate_limited(refused));
    }
    let user = state.store.user_by_email(body.email.trim())?;
    // An unknown user is verified against a hash nobody knows the password
    // of, so timing does not tell which emails exist.
    let stored = user.as_ref().map(|u| u.hashed_password.clone());
    let ok = limits
        .verify(body.password, stored)
        .await
        .map_err(ApiError::internal)?;
    let user = match user {
        Some(u) if ok => u,
        _ => {
            limits.login_failed(ip, &body.email);
            return Err(wrong());
        }
    };
    limits.login_succeeded(ip, &body.email);
    let tenant = state.store.tenant(&TenantId::trusted(&user.tenant_id))?;
    let (token, expires_at) = login_token(&state, &user, &tenant)?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"token": token, "expires_at": expires_at}),
    ))
}

async fn me(state: AppState, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("tenant:read", Role::Viewer))
        .await?;
    let user = state
        .store
        .user(caller.tenant_id(), &caller.principal.user_id)?
        .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
    let body = json!({
        "user": user_view(&user),
        "tenant": tenant_view(&caller.tenant),
        "tier": caller.tier.name,
        "limits": caller.tier,
        "api_key_id": caller.principal.api_key_id,
    });
    Ok(tag_tenant(json_reply(StatusCode::OK, &body), &caller))
}
