//! Operations: health, readiness, metrics, the OpenAPI document.

use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{json_reply, with_state, ApiError, AppState};

/// The OpenAPI description of docs/API.md, kept beside the code it describes.
const OPENAPI: &str = include_str!("openapi.json");

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .map(readyz);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: AppState| {
            metrics::gauge!("murmur_store_bytes_on_disk").set(state.store.size_on_disk() as f64);
            let mut res = state.metrics.render().into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            res
        });
    let openapi = warp::path!("openapi.json").and(warp::get()).map(|| {
        let mut res = OPENAPI.into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        res
    });
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
        .boxed()
}

fn readyz(state: AppState) -> Response {
    // The store answers reads: probe one.
    if let Err(e) = state
        .store
        .tenant(&crate::store::TenantId::trusted("readyz-probe"))
    {
        if !matches!(e, crate::store::StoreError::NotFound) {
            return ApiError::unavailable(format!("store is not readable: {e}")).into_response();
        }
    }
    // Jobs need the default Whisper model and the VAD.
    let default_model = &state.settings.models.default_model;
    let models_dir = state.settings.models_dir();
    let missing: Vec<&str> = [default_model.as_str(), murmur_models::fetch::VAD_MODEL]
        .into_iter()
        .filter(|m| murmur_models::fetch::installed(&models_dir, m).is_none())
        .collect();
    if !missing.is_empty() {
        return ApiError::unavailable(format!(
            "models not installed yet: {} (run `murmur models fetch`, or wait for the \
             download started at launch)",
            missing.join(", ")
        ))
        .into_response();
    }
    json_reply(
        StatusCode::OK,
        &json!({"status": "ready", "store": "ok", "default_model": default_model}),
    )
}
