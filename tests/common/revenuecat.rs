//! RevenueCat webhook helpers shared by the billing tests.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Answer, Base, Server};

/// The webhook secret the billing tests configure.
pub const SECRET: &str = "Bearer rc-webhook-secret";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A RevenueCat event as the webhook documentation shapes it.
pub fn rc_event(
    id: &str,
    kind: &str,
    user: &str,
    entitlement: &str,
    ts: i64,
    exp: Option<i64>,
) -> Value {
    json!({
        "id": id,
        "type": kind,
        "app_user_id": user,
        "original_app_user_id": user,
        "aliases": [user],
        "product_id": "murmur_monthly",
        "entitlement_ids": [entitlement],
        "period_type": "NORMAL",
        "purchased_at_ms": ts,
        "expiration_at_ms": exp,
        "event_timestamp_ms": ts,
        "environment": "PRODUCTION",
        "store": "APP_STORE",
        "cancel_reason": null,
        "expiration_reason": null,
        "new_product_id": null
    })
}

pub async fn webhook(server: &Server, secret: Option<&str>, event: Value) -> Answer {
    let c = server.client();
    let mut rb = c
        .request(reqwest::Method::POST, "/v1/billing/revenuecat")
        .json(&json!({"api_version": "1.0", "event": event}));
    if let Some(s) = secret {
        rb = rb.header("authorization", s);
    }
    c.send(rb).await
}
