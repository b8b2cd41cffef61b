//! `GET /v1/models` and `GET /v1/models/{id}`: the Whisper models a job may
//! name, in OpenAI's list and object shapes (so `client.models.list()` and
//! `retrieve()` of the official SDKs work), each with Murmur's own fields:
//! whether this server has it installed (or can install it) and whether
//! the caller's tier may use it. `whisper-1`, the name OpenAI clients send,
//! is listed as an alias of the server's default model. The Flowise nodes
//! and the dashboard fill their model lists from it.

use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{auth_header, json_reply, op, respond, tag_tenant, with_state, ApiError, AppState};
use crate::billing::Tier;
use crate::store::Role;
use murmur_actors::params::MODEL_NAMES;
use murmur_models::fetch;

/// The model name OpenAI clients send; it means the server's default.
pub const OPENAI_ALIAS: &str = "whisper-1";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let list = warp::path!("v1" / "models")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|s, a| async move { respond(list(s, a).await) });
    let one = warp::path!("v1" / "models" / String)
        .and(warp::get())
        .and(with_state(state))
        .and(auth_header())
        .then(|id, s, a| async move {
            one(s, a, id)
                .await
                .unwrap_or_else(ApiError::into_openai_response)
        });
    list.or(one).unify().boxed()
}

/// Whether jobs can run `model` here (see [`crate::admission`]).
fn model_available(state: &AppState, model: &str) -> bool {
    crate::admission::model_available(&state.settings, model)
}

/// When the model was installed here (Unix seconds), as OpenAI's `created`;
/// 0 when it is not installed.
fn installed_at(state: &AppState, name: &str) -> i64 {
    fetch::installed(&state.settings.models_dir(), name)
        .and_then(|m| std::fs::metadata(&m.path).ok()?.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// One model object: OpenAI's fields, then Murmur's.
fn model_object(state: &AppState, tier: &Tier, name: &str) -> Value {
    let default = &state.settings.models.default_model;
    let (target, alias_of) = if name == OPENAI_ALIAS {
        (default.as_str(), Some(default.as_str()))
    } else {
        (name, None)
    };
    let mut object = json!({
        "id": name,
        "object": "model",
        "created": installed_at(state, target),
        "owned_by": "openai",
        "installed": fetch::installed(&state.settings.models_dir(), target).is_some(),
        "available": model_available(state, target),
        "allowed": tier.allows_model(target),
        "default": name == default,
        "english_only": target.ends_with(".en"),
    });
    if let Some(of) = alias_of {
        object["alias_of"] = json!(of);
    }
    if object["installed"] == false {
        // What the operator runs to install it (fetch, or import weights).
        object["install"] = json!(murmur_models::import::install_hint(target));
    }
    object
}

async fn list(state: AppState, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    let data: Vec<Value> = MODEL_NAMES
        .iter()
        .copied()
        .chain([OPENAI_ALIAS])
        .map(|name| model_object(&state, &caller.tier, name))
        .collect();
    // `items` and `next_cursor` are Murmur's list shape, kept for the
    // clients written against it; `object` and `data` are OpenAI's.
    Ok(tag_tenant(
        json_reply(
            StatusCode::OK,
            &json!({"object": "list", "data": data, "items": data, "next_cursor": null}),
        ),
        &caller,
    ))
}

async fn one(state: AppState, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    if id != OPENAI_ALIAS && !MODEL_NAMES.contains(&id.as_str()) {
        return Err(ApiError::not_found("model"));
    }
    Ok(tag_tenant(
        json_reply(StatusCode::OK, &model_object(&state, &caller.tier, &id)),
        &caller,
    ))
}
