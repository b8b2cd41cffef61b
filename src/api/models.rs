//! `GET /v1/models`: the Whisper models a job may name, whether this
//! server has each installed (or can install it), and whether the caller's
//! tier may use it. The Flowise nodes and the dashboard fill their model
//! lists from it.

use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{auth_header, json_reply, op, respond, tag_tenant, with_state, ApiError, AppState};
use crate::store::Role;
use murmur_actors::params::MODEL_NAMES;
use murmur_models::fetch;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("v1" / "models")
        .and(warp::get())
        .and(with_state(state))
        .and(auth_header())
        .then(|s, a| async move { respond(list(s, a).await) })
        .boxed()
}

/// Whether jobs can run `model` here: installed, or installable on demand.
pub fn model_available(state: &AppState, model: &str) -> bool {
    fetch::installed(&state.settings.models_dir(), model).is_some()
        || (state.settings.models.fetch_missing && fetch::find(model).is_some())
}

async fn list(state: AppState, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("jobs:read", Role::Viewer))
        .await?;
    let models_dir = state.settings.models_dir();
    let items: Vec<_> = MODEL_NAMES
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "installed": fetch::installed(&models_dir, name).is_some(),
                "available": model_available(&state, name),
                "allowed": caller.tier.allows_model(name),
                "default": *name == state.settings.models.default_model,
                "english_only": name.ends_with(".en"),
            })
        })
        .collect();
    Ok(tag_tenant(
        json_reply(
            StatusCode::OK,
            &json!({"items": items, "next_cursor": null}),
        ),
        &caller,
    ))
}
