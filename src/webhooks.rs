//! The delivery worker: sends the outbox's due deliveries (see
//! `store::webhooks`) through the guarded outbound client, signed by the
//! Standard Webhooks scheme, and retries failures with exponential backoff
//! and jitter until `webhooks.give_up_after_hours` after their event.
//!
//! One task, owned by `AppState.background` and stopped by `stopping`: it
//! sleeps until the next row is due or the store rings the outbox signal.
//! Rows survive restarts (they are the store's), so a delivery interrupted
//! by a crash is sent again: at least once, same `webhook-id`.
//!
//! Signature: `webhook-signature: v1,<base64 HMAC-SHA256>` of
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the base64
//! decoding of the secret after its `whsec_` prefix.

use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::config::WebhookSettings;
use crate::outbound::{Outbound, Redirects};
use crate::store::{Delivery, DeliveryAttempt, DeliveryTarget, Store, TenantId};

/// Prefix of signing secrets, as Standard Webhooks names them.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    let key: [u8; 24] = rand::random();
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The `webhook-signature` value for one attempt.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        // Secrets are made by `new_secret`; a row that is not base64
        // signs with its bytes rather than not at all.
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The delay before attempt `attempt + 1` (attempt counts from 1):
/// `base * 2^(attempt-1)`, capped, then jittered to [half, all] of it.
pub fn backoff(settings: &WebhookSettings, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let full = settings
        .retry_base_ms
        .saturating_mul(1u64 << exp)
        .min(settings.retry_max_ms)
        .max(1);
    let jittered = rand::thread_rng().gen_range(full / 2..=full);
    Duration::from_millis(jittered.max(1))
}

/// Starts the worker on `tasks`; it ends when `stopping` is cancelled.
pub fn spawn(
    store: Store,
    outbound: Outbound,
    settings: WebhookSettings,
    tasks: &tokio_util::task::TaskTracker,
    stopping: tokio_util::sync::CancellationToken,
) {
    tasks.spawn(async move {
        let signal = store.outbox_signal();
        while !stopping.is_cancelled() {
            let batch = match store.due_deliveries(Utc::now(), 64) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the webhook outbox");
                    Vec::new()
                }
            };
            let worked = !batch.is_empty();
            let unrecorded = std::sync::atomic::AtomicUsize::new(0);
            futures_util::stream::iter(batch)
                .for_each_concurrent(settings.concurrency.max(1), |d| {
                    let (store, outbound, settings) = (&store, &outbound, &settings);
                    let unrecorded = &unrecorded;
                    async move {
                        if let Err(e) = attempt(store, outbound, settings, d).await {
                            tracing::error!(error = %e, "cannot record a webhook delivery");
                            unrecorded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
                .await;
            // One flush for the batch's records (see `record_delivery`).
            if worked {
                if let Err(e) = store.flush().await {
                    tracing::error!(error = %e, "cannot flush webhook delivery records");
                }
            }
            if unrecorded.into_inner() > 0 {
                // Unrecorded rows are still due: pause rather than resend
                // them in a tight loop while the store is failing.
                tokio::select! {
                    _ = stopping.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            } else if worked {
                // More may be due already: look again before sleeping.
                continue;
            }
            let wait = match store.next_delivery_due() {
                Ok(Some(at)) => (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_secs(60)),
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                _ = stopping.cancelled() => break,
                _ = signal.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
            }
        }
    });
}

/// One attempt of one delivery, recorded in the store.
async fn attempt(
    store: &Store,
    outbound: &Outbound,
    settings: &WebhookSettings,
    delivery: Delivery,
) -> Result<(), crate::store::StoreError> {
    let tenant = TenantId::trusted(&delivery.tenant_id);
    if let DeliveryTarget::Webhook(id) = &delivery.target {
        if store.webhook(&tenant, id)?.is_none() {
            return store.drop_delivery(&delivery);
        }
    }
    let number = delivery.attempts + 1;
    let started = std::time::Instant::now();
    let (status, error) = match send(outbound, settings, &delivery).await {
        Ok(code) => (Some(code), None),
        Err(e) => (None, Some(e)),
    };
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    let now = Utc::now();
    let deadline = delivery.created_at
        + chrono::Duration::hours(settings.give_up_after_hours.min(24 * 365) as i64);
    let next = (!delivered)
        .then(|| now + chrono::Duration::from_std(backoff(settings, number)).unwrap_or_default())
        .filter(|at| *at <= deadline);
    let outcome = match (delivered, next) {
        (true, _) => "delivered",
        (false, Some(_)) => "retrying",
        (false, None) => "failed",
    };
    let error = error.or_else(|| {
        status
            .filter(|_| !delivered)
            .map(|s| format!("the receiver answered {s}"))
    });
    let level_failed = outcome == "failed";
    if level_failed {
        tracing::warn!(tenant = %tenant, delivery = %delivery.id, attempts = number, "webhook delivery given up");
    }
    metrics::counter!("murmur_webhook_attempts_total", "outcome" => outcome).increment(1);
    let record = DeliveryAttempt {
        id: crate::ids::new_id("att"),
        delivery_id: delivery.id.clone(),
        event_type: delivery.event_type.clone(),
        job_id: delivery.job_id.clone(),
        attempt: number,
        status_code: status,
        error,
        outcome: outcome.to_string(),
        duration_ms: started.elapsed().as_millis() as u64,
        at: now,
        next_attempt_at: next,
    };
    store.record_delivery(&delivery, &record, next, settings.log_per_endpoint.max(1))
}

/// Sends one signed attempt; answers the receiver's status or why none.
async fn send(
    outbound: &Outbound,
    settings: &WebhookSettings,
    delivery: &Delivery,
) -> Result<u16, String> {
    let url: reqwest::Url = delivery.url.parse().map_err(|e| format!("{e}"))?;
    let timestamp = Utc::now().timestamp();
    let signature = sign(&delivery.secret, &delivery.id, timestamp, &delivery.payload);
    let request = outbound
        .request(reqwest::Method::POST, &url, Redirects::Refuse)
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_millis(settings.delivery_timeout_ms.max(1)))
        .header("content-type", "application/json")
        .header("webhook-id", &delivery.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(delivery.payload.clone());
    let response = outbound.send(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    // Only the status counts; a little of the body is read so the
    // connection can be reused, and a large or broken one is ignored.
    let _ = crate::outbound::read_capped(response, 64 * 1024).await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// libraries (secret, id, timestamp, payload and signature).
    #[test]
    fn signatures_match_the_standard_webhooks_reference() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, ts, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let s = WebhookSettings {
            max_per_tenant: 1,
            retry_base_ms: 1000,
            retry_max_ms: 8000,
            give_up_after_hours: 24,
            delivery_timeout_ms: 1000,
            concurrency: 1,
            log_per_endpoint: 10,
        };
        for (attempt, full) in [(1u32, 1000u64), (2, 2000), (3, 4000), (4, 8000), (9, 8000)] {
            for _ in 0..20 {
                let d = backoff(&s, attempt).as_millis() as u64;
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
            }
        }
        assert!(new_secret().starts_with("whsec_"));
    }
}
