//! The HTTP API (warp): one module per resource, composed here.
//!
//! Every route matches on path and method only, then runs an async handler
//! that authenticates, does its work and answers either a reply or an
//! [`ApiError`]. Doing auth inside handlers (not as rejecting filters) keeps
//! a failed check from falling through to other routes.

mod billing;
pub mod client_ip;
mod cors;
mod download;
mod errors;
pub mod files;
pub mod jobs;
mod keys;
mod models;
mod openai;
mod ops;
mod pending;
mod session;
mod tenant;
pub mod url_input;
mod users;
mod web;
mod webhooks;
mod webui;
mod workflows;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

pub use crate::auth::Caller;
pub use errors::ApiError;

use crate::admission::Rules;
use crate::auth::{Operation, PasswordCost, Principal, TokenKeys};
use crate::billing::TierTable;
use crate::config::Settings;
use crate::store::{Role, Store};

/// Everything a handler needs; cloning is shallow.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub keys: Arc<TokenKeys>,
    pub tiers: Arc<TierTable>,
    /// The actor system that runs jobs.
    pub jobs: murmur_actors::System,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The secret `murmur admin` presents to the loopback-only operator
    /// endpoint; written to `<data_dir>/operator.json` (mode 0600) at start.
    pub operator_token: Arc<String>,
    /// Slots for token verification on the blocking pool (see
    /// [`AppState::authenticate`]).
    pub token_checks: Arc<tokio::sync::Semaphore>,
    /// Owner of every task a request or the server starts in the
    /// background (lapsed-tier recording, RevenueCat syncs, exports, model
    /// prefetch, sweeps): `serve` closes it and awaits them before the
    /// final flush, so none writes after it.
    pub background: tokio_util::task::TaskTracker,
    /// Cancelled when the server begins to stop: background loops end.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Bounds on password hashing and login attempts (see `auth::limits`).
    pub auth_limits: Arc<crate::auth::AuthLimits>,
    /// The one outbound HTTP client, behind the SSRF guard (webhooks,
    /// URL input, RevenueCat's REST sync).
    pub outbound: crate::outbound::Outbound,
    /// Proxies whose `X-Forwarded-For` names the client for rate limiting.
    pub trusted_proxies: client_ip::TrustedProxies,
}

/// Shorthand for an operation in handlers.
pub const fn op(name: &'static str, min_role: Role) -> Operation {
    Operation { name, min_role }
}

impl AppState {
    pub fn password_cost(&self) -> PasswordCost {
        PasswordCost {
            memory_kib: self.settings.auth.argon2_memory_kib,
            iterations: self.settings.auth.argon2_iterations,
        }
    }

    /// Verifies the bearer token for `op`: shape, signature, expiry, scope,
    /// role, revocation, that its user and tenant still exist and that the
    /// user's sessions were not ended since it was minted. The caller's
    /// tier is the store's, and a paid tier whose expiry passed with no
    /// event is already the default one here (the downgrade is written
    /// behind).
    ///
    /// The check runs on the blocking pool, at most
    /// [`AppState::token_checks`] at once: however a token is crafted,
    /// verifying it never holds an async worker thread, and a caller who
    /// cannot get a slot within [`TOKEN_CHECK_WAIT`] is told the server is
    /// busy (503) rather than queued without bound. A token verified for
    /// `op` within the last minute skips that (see [`TokenKeys::verify`]):
    /// the memo lookup and the store checks (a few reads) run here, on the
    /// async worker; no signature or Datalog work ever does.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        op: Operation,
    ) -> Result<Caller, ApiError> {
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
        if token.len() > crate::auth::tokens::MAX_TOKEN_BYTES {
            return Err(crate::auth::TokenError::TooLarge.into());
        }
        let remembered = self
            .keys
            .remembered(token, op, |block| self.is_minted_key(block));
        let (caller, lapsed) = match remembered {
            // Verified lately: only the store's part is left, and it is a
            // few reads, done here.
            Some(principal) => self.admit(principal?, op)?,
            None => {
                let permit = tokio::time::timeout(
                    TOKEN_CHECK_WAIT,
                    self.token_checks.clone().acquire_owned(),
                )
                .await
                .map_err(|_| ApiError::from(crate::auth::TokenError::Busy))?
                .map_err(ApiError::internal)?;
                let (state, token) = (self.clone(), token.to_string());
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    state.authenticate_now(&token, op)
                })
                .await
                .map_err(ApiError::internal)??
            }
        };
        if lapsed {
            let (store, tiers, id) = (
                self.store.clone(),
                self.tiers.clone(),
                caller.principal.tenant.clone(),
            );
            self.background.spawn(async move {
                if let Err(e) = crate::billing::revenuecat::expire_lapsed(&store, &tiers, &id).await
                {
                    tracing::warn!(tenant = %id, error = %e, "cannot record a lapsed subscription");
                }
            });
        }
        Ok(caller)
    }

    /// [`Self::authenticate`]'s work for a token not verified lately, on a
    /// blocking thread.
    fn authenticate_now(&self, token: &str, op: Operation) -> Result<(Caller, bool), ApiError> {
        let principal = self
            .keys
            .verify(token, op, |block| self.is_minted_key(block))?;
        self.admit(principal, op)
    }

    /// Whether the store recorded minting this API-key scope block, as
    /// token verification asks it.
    fn is_minted_key(&self, scope_block: &[u8]) -> Result<bool, crate::auth::TokenError> {
        self.store
            .is_minted_key(scope_block)
            .map_err(|e| crate::auth::TokenError::Store(e.to_string()))
    }

    /// The store's part of a token check, for a principal whose token was
    /// verified: the key not revoked, tenant and user still there, the
    /// session not ended, the user's role now and the tenant's tier now.
    /// Also answers whether the tenant's paid tier lapsed and is yet to be
    /// recorded.
    fn admit(&self, mut principal: Principal, op: Operation) -> Result<(Caller, bool), ApiError> {
        let store = &self.store;
        if store.is_revoked(&principal.revocation_ids)? {
            return Err(ApiError::unauthorized("this API key has been revoked"));
        }
        let mut tenant = match store.tenant(&principal.tenant) {
            Ok(t) => t,
            Err(crate::store::StoreError::NotFound) => {
                return Err(ApiError::unauthorized(
                    "the token's tenant no longer exists",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let user = store
            .user(&principal.tenant, &principal.user_id)?
            .ok_or_else(|| ApiError::unauthorized("the token's user has been removed"))?;
        if principal.api_key_id.is_none() {
            if let Some(cut) = user.tokens_valid_after {
                if principal.issued_at.is_none_or(|t| t < cut) {
                    return Err(ApiError::unauthorized(
                        "this session has been ended; log in again",
                    ));
                }
            }
        }
        // A token keeps the role it was minted with only while the user
        // still has it: a demotion takes effect on the next request.
        principal.role = principal.role.min(user.role);
        if principal.role < op.min_role {
            return Err(crate::auth::TokenError::Denied.into());
        }
        if SESSION_ONLY.contains(&op.name) && principal.api_key_id.is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "session_required",
                "creating or removing users and API keys needs a login session, not an API key",
            ));
        }
        let lapsed = crate::billing::revenuecat::has_lapsed(store, &self.tiers, &tenant)?;
        if lapsed {
            tenant.subscription_tier = self.tiers.default_tier().to_string();
        }
        let tier = self.tiers.get_or_default(&tenant.subscription_tier).clone();
        Ok((
            Caller {
                principal,
                tenant,
                tier,
            },
            lapsed,
        ))
    }
}

/// Operations only a login session may perform. An API key cannot make
/// people or keys, so no credential can outlive the expiry or revocation
/// of the key that would have made it.
const SESSION_ONLY: &[&str] = &["users:write", "keys:write", "tenant:write"];

/// How long a request waits for a token-check slot before answering 503.
const TOKEN_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Token checks allowed at once: enough to keep every core busy with
/// requests' own checks, few enough that a flood cannot fill the blocking
/// pool.
pub fn token_check_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

impl AppState {
    /// The job admission rules (`crate::admission`) over this state.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            store: &self.store,
            settings: &self.settings,
            keys: &self.keys,
            jobs: &self.jobs,
        }
    }
}

/// A JSON request body as read by [`json_body`], or the problem to answer.
pub type JsonBody = Result<Bytes, ApiError>;

/// Parses a JSON body with a problem answer on failure.
pub fn parse_json<T: DeserializeOwned>(body: JsonBody) -> Result<T, ApiError> {
    let body = body?;
    if body.is_empty() {
        return Err(ApiError::invalid("the request needs a JSON body"));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}")))
}

/// A JSON answer with a status.
pub fn json_reply<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// Collapses a handler's result into a response.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| e.into_response())
}

/// The state, for `.and(with_state(..))`.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The optional `Authorization` header.
pub fn auth_header(
) -> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
}

/// A JSON request body of at most `server.max_json_bytes`, with or without
/// a Content-Length (chunked), or the 413 to answer, as a value: a
/// rejection here would let warp try the other routes and answer 405.
pub fn json_body(state: &AppState) -> BoxedFilter<(JsonBody,)> {
    let limit = state.settings.server.max_json_bytes;
    warp::body::stream()
        .then(move |body| read_limited(body, limit))
        .boxed()
}

/// After a body passed its limit, read at most this much more of it so the
/// client sees the answer rather than a reset connection.
const JSON_DRAIN_BUDGET: u64 = 8 * 1024 * 1024;

async fn read_limited<S, B>(body: S, limit: u64) -> JsonBody
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    futures_util::pin_mut!(body);
    let mut out = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::invalid(format!("cannot read the body: {e}")))?;
        seen += chunk.remaining() as u64;
        if seen > limit {
            if seen > limit.saturating_add(JSON_DRAIN_BUDGET) {
                break;
            }
            continue;
        }
        while chunk.has_remaining() {
            let slice = chunk.chunk();
            out.extend_from_slice(slice);
            let n = slice.len();
            chunk.advance(n);
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the JSON body is larger than this server's limit of {limit} bytes"),
        ));
    }
    Ok(out.freeze())
}

/// The client's address as the server accepted it; see [`RemoteAddr`].
/// The operator endpoints' guard: a loopback caller holding the operator
/// token (in `<data_dir>/operator.json`, mode 0600). Anyone else is told
/// 404, as if there were no such route, so the endpoints stay invisible.
pub(crate) fn operator_only(
    state: &AppState,
    remote: Option<std::net::SocketAddr>,
    auth: Option<&str>,
) -> Result<(), ApiError> {
    let token = auth.and_then(|h| h.strip_prefix("Bearer "));
    let allowed = remote.is_some_and(|r| r.ip().is_loopback())
        && token.is_some_and(|t| billing::same_secret(t, &state.operator_token));
    if allowed {
        Ok(())
    } else {
        Err(ApiError::not_found("route"))
    }
}

pub fn remote_addr(
) -> impl Filter<Extract = (Option<std::net::SocketAddr>,), Error = std::convert::Infallible> + Clone
{
    warp::ext::optional::<RemoteAddr>()
        .and(warp::addr::remote())
        .map(
            |ours: Option<RemoteAddr>, warps: Option<std::net::SocketAddr>| {
                ours.map(|a| a.0).or(warps)
            },
        )
}

/// The peer address of a connection, put in each request's extensions by
/// `server::serve`'s accept loop (warp only knows it when it runs the
/// server itself, as in-process tests do).
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// The whole API: every route, problem answers for unmatched requests,
/// request logs and metrics.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let api = session::routes(state.clone())
        .or(users::routes(state.clone()))
        .unify()
        .or(tenant::routes(state.clone()))
        .unify()
        .or(keys::routes(state.clone()))
        .unify()
        .or(files::routes(state.clone()))
        .unify()
        .or(workflows::routes(state.clone()))
        .unify()
        .or(jobs::routes(state.clone()))
        .unify()
        .or(ops::routes(state.clone()))
        .unify()
        .or(ws::routes(state.clone()))
        .unify()
        .or(models::routes(state.clone()))
        .unify()
        .or(openai::routes(state.clone()))
        .unify()
        .or(billing::routes(state.clone()))
        .unify()
        .or(webhooks::routes(state.clone()))
        .unify()
        .or(webui::routes(state.clone()))
        .unify()
        .or(web::routes(state.clone()))
        .unify()
        .recover(errors::recover)
        .unify()
        .boxed();
    let cors = cors::Cors::new(&state.settings.server.cors_allowed_origins);
    let preflight_cors = cors.clone();
    // A CORS preflight is answered before any route sees it.
    let preflight = warp::options()
        .and(warp::header::<String>("origin"))
        .and(warp::header::<String>("access-control-request-method"))
        .and_then(move |origin: String, _method: String| {
            let answer = preflight_cors.preflight(&origin);
            async move { answer.ok_or_else(warp::reject) }
        });
    let api = preflight.or(api).unify().boxed();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::optional::<String>("origin"))
        .and(api)
        .map(move |started: Instant, method: warp::http::Method, path: warp::path::FullPath, origin: Option<String>, mut res: Response| {
            cors.decorate(res.headers_mut(), origin.as_deref());
            let route = route_label(path.as_str());
            let status = res.status().as_u16();
            let elapsed = started.elapsed();
            let request_id = ulid::Ulid::new().to_string();
            let tenant = res
                .extensions_mut()
                .remove::<TenantTag>()
                .map(|t| t.0)
                .unwrap_or_default();
            tracing::info!(
                request_id = %request_id,
                tenant = %tenant,
                method = %method,
                route = %route,
                status,
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
            metrics::counter!("murmur_http_requests_total", "method" => method.to_string(), "route" => route.clone(), "status" => status.to_string()).increment(1);
            metrics::histogram!("murmur_http_request_duration_seconds", "method" => method.to_string(), "route" => route).record(elapsed.as_secs_f64());
            if let Ok(v) = warp::http::HeaderValue::from_str(&request_id) {
                res.headers_mut().insert("x-request-id", v);
            }
            // No answer of ours is meant to be type-guessed by a browser.
            res.headers_mut().insert(
                warp::http::header::X_CONTENT_TYPE_OPTIONS,
                warp::http::HeaderValue::from_static("nosniff"),
            );
            res
        })
        .boxed()
}

/// Attached to a response by handlers that know the caller's tenant, so the
/// request log can name it; removed before the answer leaves.
#[derive(Clone)]
pub struct TenantTag(pub String);

/// Tags `res` with the caller's tenant for the request log.
pub fn tag_tenant(mut res: Response, caller: &Caller) -> Response {
    res.extensions_mut()
        .insert(TenantTag(caller.tenant.id.clone()));
    res
}

/// A route label for metrics: ids replaced by `{id}` so labels stay few.
fn route_label(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        let is_id = seg.len() >= 20 || seg.chars().filter(|c| c.is_ascii_digit()).count() >= 4;
        out.push_str(if is_id { "{id}" } else { seg });
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_hide_ids() {
        assert_eq!(
            super::route_label("/v1/jobs/j_01HZX3K4M5N6P7Q8R9S0T1V2W3/result"),
            "/v1/jobs/{id}/result"
        );
        assert_eq!(super::route_label("/"), "/");
        assert_eq!(super::route_label("/v1/files"), "/v1/files");
    }
}
