//! Operations: health, readiness, metrics, the OpenAPI document, and the
//! operator's view of the inference workers (loopback and operator token
//! only, see [`super::operator_only`]).

use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{auth_header, json_reply, respond, with_state, ApiError, AppState};

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
        .and(with_state(state.clone()))
        .map(|state: AppState| {
            metrics::gauge!("murmur_store_bytes_on_disk").set(state.store.size_on_disk() as f64);
            let mut res = state.metrics.render().into_response();
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            res
        });
    let workers = warp::path!("v1" / "ops" / "workers")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(super::remote_addr())
        .and(auth_header())
        .then(|s, r, a| async move { respond(workers(s, r, a).await) });
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
        .or(workers)
        .unify()
        .boxed()
}

/// `GET /v1/ops/workers`: each inference worker's state and counts, and
/// the requests waiting by tier, as the pool answers them.
async fn workers(
    state: AppState,
    remote: Option<std::net::SocketAddr>,
    auth: Option<String>,
) -> Result<Response, ApiError> {
    super::operator_only(&state, remote, auth.as_deref())?;
    let view = state
        .jobs
        .workers()
        .await
        .ok_or_else(|| ApiError::unavailable("the inference pool did not answer; try again"))?;
    Ok(json_reply(StatusCode::OK, &view))
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
