//! Subscription and billing: `/v1/usage`, `/v1/subscription`, the
//! RevenueCat webhook, and the operator's loopback-only tier endpoint.

use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{
    auth_header, json_body, json_reply, op, parse_json, respond, tag_tenant, with_state, ApiError,
    AppState, Caller,
};
use crate::billing::revenuecat;
use crate::store::{usage_period, BillingEvent, Role, TenantId};

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let usage = warp::path!("v1" / "usage")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(warp::query::<UsageQuery>())
        .then(|s, a, q| async move { respond(usage(s, a, q).await) });
    let subscription = warp::path!("v1" / "subscription")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(auth_header())
        .then(|s, a| async move { respond(subscription(s, a).await) });
    let webhook = warp::path!("v1" / "billing" / "revenuecat")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, a, b| async move { respond(webhook(s, a, b).await) });
    let set_tier = warp::path!("v1" / "admin" / "set-tier")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(super::remote_addr())
        .and(auth_header())
        .and(json_body(&state))
        .then(|s, r, a, b| async move { respond(set_tier(s, r, a, b).await) });
    usage
        .or(subscription)
        .unify()
        .or(webhook)
        .unify()
        .or(set_tier)
        .unify()
        .boxed()
}

#[derive(Deserialize)]
struct UsageQuery {
    /// `YYYY-MM`; the current month when absent.
    period: Option<String>,
}

fn check_period(period: Option<String>) -> Result<String, ApiError> {
    match period {
        None => Ok(usage_period(Utc::now())),
        Some(p) => {
            let ok = p.len() == 7
                && chrono::NaiveDate::parse_from_str(&format!("{p}-01"), "%Y-%m-%d").is_ok();
            if ok {
                Ok(p)
            } else {
                Err(ApiError::invalid("period must be a month as YYYY-MM"))
            }
        }
    }
}

fn usage_view(state: &AppState, caller: &Caller, period: &str) -> Result<Value, ApiError> {
    let tenant = caller.tenant_id();
    let u = state.store.usage(tenant, period)?;
    Ok(json!({
        "period": period,
        "audio_seconds": u.audio_seconds,
        "jobs": u.jobs,
        "jobs_by_kind": u.jobs_by_kind,
        "translation_jobs": u.translation_jobs,
        "storage_bytes": state.store.storage_used(tenant)?,
    }))
}

async fn usage(state: AppState, auth: Option<String>, q: UsageQuery) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("tenant:read", Role::Viewer))
        .await?;
    let period = check_period(q.period)?;
    let body = usage_view(&state, &caller, &period)?;
    Ok(tag_tenant(json_reply(StatusCode::OK, &body), &caller))
}

fn ms_to_time(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or(Value::Null, |t| json!(t))
}

async fn subscription(state: AppState, auth: Option<String>) -> Result<Response, ApiError> {
    let caller = state
        .authenticate(auth.as_deref(), op("tenant:read", Role::Viewer))
        .await?;
    let sub = state
        .store
        .subscription(caller.tenant_id())?
        .unwrap_or_default();
    let period = usage_period(Utc::now());
    let body = json!({
        "tier": caller.tier.name,
        "tier_epoch": caller.tenant.tier_epoch,
        "limits": caller.tier,
        "usage": usage_view(&state, &caller, &period)?,
        "subscription": {
            "source": sub.source,
            "entitlement": sub.entitlement,
            "product_id": sub.product_id,
            "store": sub.store,
            "environment": sub.environment,
            "period_type": sub.period_type,
            "expires_at": ms_to_time(sub.expires_at_ms),
            "will_renew": sub.will_renew,
            "billing_issue": sub.billing_issue,
            "cancel_reason": sub.cancel_reason,
            "expiration_reason": sub.expiration_reason,
            "last_event_type": sub.last_event_type,
            "last_event_at": ms_to_time(Some(sub.last_event_ms).filter(|m| *m > 0)),
            "last_sync_at": ms_to_time(sub.last_sync_ms),
        },
    });
    Ok(tag_tenant(json_reply(StatusCode::OK, &body), &caller))
}

/// Compares secrets without stopping at the first difference.
pub(super) fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RevenueCat's webhook: the Authorization header must be exactly the
/// configured secret. The event is stored and flushed before anything
/// else (a crash after the answer cannot lose it), an id seen before
/// changes nothing, and the event is applied before the answer (a few
/// local writes); the REST sync, when on, runs after it in the background.
async fn webhook(
    state: AppState,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    let settings = &state.settings.billing.revenuecat;
    let secret = settings.webhook_secret.as_str();
    if secret.is_empty() || !auth.as_deref().is_some_and(|a| same_secret(a, secret)) {
        return Err(ApiError::unauthorized(
            "the Authorization header is not this server's RevenueCat webhook secret",
        ));
    }
    let envelope: Value = parse_json(body)?;
    let event = envelope
        .get("event")
        .filter(|e| e.is_object())
        .cloned()
        .ok_or_else(|| ApiError::invalid("the body needs an \"event\" object"))?;
    let id = event
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 200)
        .ok_or_else(|| ApiError::invalid("event.id must be a non-empty string"))?
        .to_string();
    let record = BillingEvent {
        id: id.clone(),
        received_at: Utc::now(),
        event,
        processed: false,
        outcome: None,
    };
    if !state.store.record_billing_event(&record).await? {
        metrics::counter!("murmur_revenuecat_events_total", "outcome" => "duplicate").increment(1);
        return Ok(json_reply(
            StatusCode::OK,
            &json!({"id": id, "status": "duplicate"}),
        ));
    }
    let outcome = match revenuecat::process(&state.store, &state.tiers, settings, &id).await {
        Ok((outcome, tenants)) => {
            for tid in tenants.into_iter().filter(|_| settings.rest_sync) {
                spawn_sync(&state, tid);
            }
            outcome
        }
        Err(e) => {
            // Stored: the next start applies it.
            tracing::error!(event = %id, error = %e, "RevenueCat event stored but not applied");
            "pending".to_string()
        }
    };
    Ok(json_reply(
        StatusCode::OK,
        &json!({"id": id, "status": "received", "outcome": outcome}),
    ))
}

fn spawn_sync(state: &AppState, tenant: TenantId) {
    let (store, tiers, settings, outbound) = (
        state.store.clone(),
        state.tiers.clone(),
        state.settings.clone(),
        state.outbound.clone(),
    );
    state.background.spawn(async move {
        let rc = &settings.billing.revenuecat;
        match revenuecat::sync(&store, &tiers, rc, &outbound, &tenant).await {
            Ok(outcome) => tracing::info!(tenant = %tenant, outcome = %outcome, "RevenueCat sync"),
            Err(e) => tracing::warn!(tenant = %tenant, error = %e, "RevenueCat sync failed"),
        }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTierBody {
    tenant: String,
    tier: String,
    #[serde(default)]
    operator: Option<String>,
}

/// `murmur admin set-tier` against a running server: loopback callers
/// holding the operator token (in `<data_dir>/operator.json`, mode 0600)
/// only. Everything else answers 404, as if there were no such route.
async fn set_tier(
    state: AppState,
    remote: Option<std::net::SocketAddr>,
    auth: Option<String>,
    body: super::JsonBody,
) -> Result<Response, ApiError> {
    super::operator_only(&state, remote, auth.as_deref())?;
    let body: SetTierBody = parse_json(body)?;
    if state.tiers.get(&body.tier).is_none() {
        return Err(ApiError::invalid(format!(
            "unknown tier {}; tiers are {}",
            body.tier,
            state.tiers.names().collect::<Vec<_>>().join(", ")
        )));
    }
    let operator = body.operator.unwrap_or_else(|| "unknown".into());
    let (before, after) = crate::billing::set_tier_by_operator(
        &state.store,
        &body.tenant,
        &body.tier,
        &operator,
        "server",
    )
    .await
    .map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found("tenant"),
        other => other.into(),
    })?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"tenant": after.id, "from": before.subscription_tier,
                "to": after.subscription_tier, "tier_epoch": after.tier_epoch}),
    ))
}
