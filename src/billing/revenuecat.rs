//! RevenueCat drives tiers: webhook events (kept durably, applied once, in
//! `event_timestamp_ms` order), an optional REST sync that trusts
//! RevenueCat's own entitlements, and the expiry of paid tiers whose end
//! passes with no event.
//!
//! The webhook handler records the raw event and flushes before it
//! answers; [`process`] then applies it in one store transaction that also
//! marks it applied, so a crash in between is repaired by [`replay`] at the
//! next start and a replayed id changes nothing.

use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;

use super::TierTable;
use crate::config::RevenueCatSettings;
use crate::outbound::{Outbound, Redirects};
use crate::store::{Store, StoreError, Subscription, SubscriptionChange, Tenant, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("RevenueCat REST sync failed: {0}")]
    Sync(String),
}

/// The fields of a RevenueCat webhook `event` Murmur reads; the rest is
/// kept in the stored copy only.
#[derive(Debug, Clone, Deserialize)]
pub struct RcEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub app_user_id: Option<String>,
    #[serde(default)]
    pub original_app_user_id: Option<String>,
    #[serde(default)]
    pub aliases: Option<Vec<String>>,
    #[serde(default)]
    pub product_id: Option<String>,
    #[serde(default)]
    pub new_product_id: Option<String>,
    #[serde(default)]
    pub entitlement_ids: Option<Vec<String>>,
    #[serde(default)]
    pub period_type: Option<String>,
    #[serde(default)]
    pub purchased_at_ms: Option<i64>,
    #[serde(default)]
    pub expiration_at_ms: Option<i64>,
    #[serde(default)]
    pub grace_period_expiration_at_ms: Option<i64>,
    #[serde(default)]
    pub event_timestamp_ms: i64,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub cancel_reason: Option<String>,
    #[serde(default)]
    pub expiration_reason: Option<String>,
    /// `TRANSFER` events: the app users purchases moved from and to.
    #[serde(default)]
    pub transferred_from: Option<Vec<String>>,
    #[serde(default)]
    pub transferred_to: Option<Vec<String>>,
}

/// Event types that grant the entitled tier until `expiration_at_ms`.
const GRANTS: &[&str] = &[
    "INITIAL_PURCHASE",
    "RENEWAL",
    "UNCANCELLATION",
    "PRODUCT_CHANGE",
    "SUBSCRIPTION_EXTENDED",
    "TEMPORARY_ENTITLEMENT_GRANT",
    "NON_RENEWING_PURCHASE",
];

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The highest-ranked tier any of `entitlements` maps to.
fn best_tier<'a>(
    tiers: &TierTable,
    entitlements: impl Iterator<Item = &'a str>,
) -> Option<(String, String)> {
    entitlements
        .filter_map(|e| tiers.tier_for_entitlement(e).map(|t| (e, t)))
        .max_by_key(|(_, t)| t.rank)
        .map(|(e, t)| (e.to_string(), t.name.clone()))
}

fn keep(outcome: &str) -> SubscriptionChange {
    SubscriptionChange {
        tier: None,
        outcome: outcome.to_string(),
    }
}

/// What `event` does to a tenant's subscription at `now`: the pure rule,
/// applied inside the store's transaction.
pub fn decide(
    tiers: &TierTable,
    tenant: &Tenant,
    sub: &mut Subscription,
    ev: &RcEvent,
    now: i64,
) -> SubscriptionChange {
    if ev.event_timestamp_ms < sub.last_event_ms {
        return keep("stale");
    }
    let default = tiers.default_tier().to_string();
    let handled = GRANTS.contains(&ev.kind.as_str())
        || matches!(
            ev.kind.as_str(),
            "CANCELLATION" | "EXPIRATION" | "BILLING_ISSUE"
        );
    if !handled {
        return keep("ignored");
    }
    sub.last_event_ms = ev.event_timestamp_ms;
    sub.last_event_id = Some(ev.id.clone());
    sub.last_event_type = Some(ev.kind.clone());
    sub.source = Some("revenuecat".into());
    sub.environment = ev.environment.clone().or(sub.environment.take());
    sub.store = ev.store.clone().or(sub.store.take());
    sub.period_type = ev.period_type.clone().or(sub.period_type.take());
    sub.updated_at = Some(Utc::now());
    let entitlements = ev.entitlement_ids.iter().flatten().map(String::as_str);
    match ev.kind.as_str() {
        kind if GRANTS.contains(&kind) => {
            let Some((entitlement, tier)) = best_tier(tiers, entitlements) else {
                return keep("no_entitlement");
            };
            sub.entitlement = Some(entitlement);
            sub.product_id = match kind {
                "PRODUCT_CHANGE" => ev.new_product_id.clone().or(ev.product_id.clone()),
                _ => ev.product_id.clone(),
            };
            sub.expires_at_ms = ev.expiration_at_ms;
            sub.will_renew = kind != "NON_RENEWING_PURCHASE";
            sub.billing_issue = false;
            sub.cancel_reason = None;
            sub.expiration_reason = None;
            if sub.expires_at_ms.is_some_and(|e| e <= now) {
                sub.expires_at_ms = None;
                sub.entitlement = None;
                return SubscriptionChange {
                    tier: Some(default),
                    outcome: "expired".into(),
                };
            }
            SubscriptionChange {
                tier: Some(tier),
                outcome: "applied".into(),
            }
        }
        "CANCELLATION" => {
            sub.will_renew = false;
            sub.cancel_reason = ev.cancel_reason.clone();
            if ev.expiration_at_ms.is_some() {
                sub.expires_at_ms = ev.expiration_at_ms;
            }
            // A refund ends the entitlement now: its expiry is already past.
            if sub.expires_at_ms.is_some_and(|e| e <= now) && tenant.subscription_tier != default {
                sub.expires_at_ms = None;
                sub.entitlement = None;
                return SubscriptionChange {
                    tier: Some(default),
                    outcome: "expired".into(),
                };
            }
            keep("applied")
        }
        "EXPIRATION" => {
            // The expiry of a product the tenant no longer holds (it moved
            // to another) leaves the current one alone.
            let other_product = matches!((&sub.product_id, &ev.product_id), (Some(a), Some(b)) if a != b)
                && sub.expires_at_ms.is_none_or(|e| e > now);
            if other_product {
                return keep("ignored");
            }
            sub.expires_at_ms = None;
            sub.entitlement = None;
            sub.will_renew = false;
            sub.expiration_reason = ev.expiration_reason.clone();
            SubscriptionChange {
                tier: Some(default),
                outcome: "applied".into(),
            }
        }
        "BILLING_ISSUE" => {
            // The tier lasts through the grace period.
            sub.billing_issue = true;
            let grace = ev.grace_period_expiration_at_ms.or(ev.expiration_at_ms);
            if let (Some(g), Some(e)) = (grace, sub.expires_at_ms) {
                sub.expires_at_ms = Some(g.max(e));
            }
            keep("applied")
        }
        _ => keep("ignored"),
    }
}

/// The tenant an event is about: `app_user_id`, else one of `aliases`,
/// else `original_app_user_id`, whichever is a tenant id here.
fn resolve_tenant(store: &Store, ev: &RcEvent) -> Result<Option<TenantId>, StoreError> {
    let candidates = ev
        .app_user_id
        .iter()
        .chain(ev.aliases.iter().flatten())
        .chain(ev.original_app_user_id.iter());
    Ok(known_tenants(store, candidates, 1)?.pop())
}

/// The tenants among app user `ids` that exist here, in order, without
/// repeats, at most `limit`; ids of no tenant are skipped.
pub(super) fn known_tenants<'a>(
    store: &Store,
    ids: impl Iterator<Item = &'a String>,
    limit: usize,
) -> Result<Vec<TenantId>, StoreError> {
    let mut out = Vec::new();
    for id in ids {
        if out.len() == limit {
            break;
        }
        match store.tenant_for_operator(id) {
            Ok((tid, _)) if !out.contains(&tid) => out.push(tid),
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Logs (audit) and counts a tier change.
pub fn audit_tier_change(before: &Tenant, after: &Tenant, source: &str, reason: &str) {
    if before.subscription_tier == after.subscription_tier {
        return;
    }
    tracing::info!(
        target: "audit",
        tenant = %after.id,
        from = %before.subscription_tier,
        to = %after.subscription_tier,
        tier_epoch = after.tier_epoch,
        source,
        reason,
        "tier changed"
    );
    metrics::counter!(
        "murmur_tier_changes_total",
        "from" => before.subscription_tier.clone(),
        "to" => after.subscription_tier.clone(),
        "source" => source.to_string()
    )
    .increment(1);
}

/// Applies a recorded event (once: an applied one is left alone) and
/// answers what it did. The REST sync, when configured, is the caller's
/// next step (see [`sync`]).
pub async fn process(
    store: &Store,
    tiers: &TierTable,
    settings: &RevenueCatSettings,
    event_id: &str,
) -> Result<(String, Vec<TenantId>), BillingError> {
    let Some(record) = store.billing_event(event_id)? else {
        return Ok(("unknown_event".into(), Vec::new()));
    };
    if record.processed {
        return Ok((record.outcome.unwrap_or_default(), Vec::new()));
    }
    let finish = |outcome: &'static str| async move {
        store.finish_billing_event(event_id, outcome).await?;
        metrics::counter!("murmur_revenuecat_events_total", "outcome" => outcome).increment(1);
        Ok::<_, BillingError>((outcome.to_string(), Vec::new()))
    };
    let ev: RcEvent = match serde_json::from_value(record.event.clone()) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(event = %event_id, error = %e, "RevenueCat event not understood");
            return finish("malformed").await;
        }
    };
    if ev.kind == "TEST" {
        return finish("test").await;
    }
    if ev.environment.as_deref() == Some("SANDBOX") && !settings.allow_sandbox {
        return finish("sandbox_ignored").await;
    }
    if ev.kind == "TRANSFER" {
        let (outcome, tenants) =
            super::transfer::apply(store, tiers, &ev, event_id, now_ms()).await?;
        tracing::info!(event = %event_id, kind = "TRANSFER", tenants = tenants.len(), outcome = %outcome, "RevenueCat event");
        metrics::counter!("murmur_revenuecat_events_total", "outcome" => outcome.clone())
            .increment(1);
        return Ok((outcome, tenants));
    }
    let Some(tid) = resolve_tenant(store, &ev)? else {
        tracing::warn!(event = %event_id, app_user_id = ?ev.app_user_id, "RevenueCat event for no known tenant");
        return finish("unknown_user").await;
    };
    let now = now_ms();
    let (before, after, outcome) = store
        .change_subscription(&tid, Some(event_id), |t, sub| {
            decide(tiers, t, sub, &ev, now)
        })
        .await?;
    tracing::info!(event = %event_id, kind = %ev.kind, tenant = %tid, outcome = %outcome, "RevenueCat event");
    metrics::counter!("murmur_revenuecat_events_total", "outcome" => outcome.clone()).increment(1);
    audit_tier_change(&before, &after, "revenuecat", &ev.kind);
    Ok((outcome, vec![tid]))
}

/// Applies every event received but not applied (a crash came between),
/// at start, oldest first.
pub async fn replay(
    store: &Store,
    tiers: &TierTable,
    settings: &RevenueCatSettings,
    outbound: &Outbound,
) -> Result<usize, BillingError> {
    let pending = store.unprocessed_billing_events()?;
    for ev in &pending {
        // One event that cannot be applied must not keep the server down:
        // it stays unapplied and is tried again at the next start.
        let tenants = match process(store, tiers, settings, &ev.id).await {
            Ok((_, tenants)) => tenants,
            Err(e) => {
                tracing::error!(event = %ev.id, error = %e, "cannot apply a stored RevenueCat event");
                continue;
            }
        };
        for tid in tenants.iter().filter(|_| settings.rest_sync) {
            if let Err(e) = sync(store, tiers, settings, outbound, tid).await {
                tracing::warn!(tenant = %tid, error = %e, "RevenueCat sync failed");
            }
        }
    }
    Ok(pending.len())
}

#[derive(Deserialize)]
struct SubscriberAnswer {
    #[serde(default)]
    request_date_ms: Option<i64>,
    subscriber: Subscriber,
}

#[derive(Deserialize)]
struct Subscriber {
    #[serde(default)]
    entitlements: std::collections::BTreeMap<String, RestEntitlement>,
}

#[derive(Deserialize)]
struct RestEntitlement {
    #[serde(default)]
    expires_date: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    grace_period_expires_date: Option<chrono::DateTime<Utc>>,
    #[serde(default)]
    product_identifier: Option<String>,
}

impl RestEntitlement {
    /// The end of access: the later of expiry and grace; `None` never ends.
    fn ends_ms(&self) -> Option<i64> {
        let e = self.expires_date?.timestamp_millis();
        Some(
            self.grace_period_expires_date
                .map_or(e, |g| g.timestamp_millis().max(e)),
        )
    }
}

/// Asks RevenueCat's REST API for the tenant's subscriber record
/// (`GET {rest_base_url}/v1/subscribers/{app_user_id}`) and trusts its
/// entitlements: the best active mapped one gives the tier (active: no
/// expiry, or an expiry or grace end in the future), none gives the
/// default tier. An answer older than one applied before changes nothing.
pub async fn sync(
    store: &Store,
    tiers: &TierTable,
    settings: &RevenueCatSettings,
    outbound: &Outbound,
    tenant: &TenantId,
) -> Result<String, BillingError> {
    let url = format!(
        "{}/v1/subscribers/{}",
        settings.rest_base_url.trim_end_matches('/'),
        tenant.as_str()
    );
    let parsed: reqwest::Url = url
        .parse()
        .map_err(|e| BillingError::Sync(format!("{url}: {e}")))?;
    let request = outbound
        .request(reqwest::Method::GET, &parsed, Redirects::Follow)
        .map_err(|e| BillingError::Sync(e.to_string()))?
        .bearer_auth(&settings.rest_api_key)
        .header("accept", "application/json")
        .timeout(Duration::from_millis(settings.rest_timeout_ms));
    let (status, body) = outbound
        .call(request)
        .await
        .map_err(|e| BillingError::Sync(e.to_string()))?;
    if status != 200 {
        return Err(BillingError::Sync(format!("{url} answered {status}")));
    }
    let answer: SubscriberAnswer = serde_json::from_slice(&body)
        .map_err(|e| BillingError::Sync(format!("{url}: unexpected answer: {e}")))?;
    let now = now_ms();
    let asked_at = answer.request_date_ms.unwrap_or(now);
    let active: Vec<(&String, &RestEntitlement)> = answer
        .subscriber
        .entitlements
        .iter()
        .filter(|(_, e)| e.ends_ms().is_none_or(|end| end > now))
        .collect();
    let best = best_tier(tiers, active.iter().map(|(name, _)| name.as_str()));
    let default = tiers.default_tier().to_string();
    let (before, after, outcome) = store
        .change_subscription(tenant, None, |_, sub| {
            if sub.last_sync_ms.is_some_and(|s| s > asked_at) {
                return keep("stale");
            }
            sub.last_sync_ms = Some(asked_at);
            sub.source = Some("revenuecat_sync".into());
            sub.updated_at = Some(Utc::now());
            match &best {
                Some((entitlement, tier)) => {
                    let ent = active.iter().find(|(n, _)| *n == entitlement);
                    sub.entitlement = Some(entitlement.clone());
                    sub.expires_at_ms = ent.and_then(|(_, e)| e.ends_ms());
                    if let Some(p) = ent.and_then(|(_, e)| e.product_identifier.clone()) {
                        sub.product_id = Some(p);
                    }
                    SubscriptionChange {
                        tier: Some(tier.clone()),
                        outcome: "synced".into(),
                    }
                }
                None => {
                    sub.entitlement = None;
                    sub.expires_at_ms = None;
                    SubscriptionChange {
                        tier: Some(default.clone()),
                        outcome: "synced".into(),
                    }
                }
            }
        })
        .await?;
    audit_tier_change(&before, &after, "revenuecat_sync", "REST subscriber sync");
    Ok(outcome)
}

/// Whether the tenant's paid tier ended by its expiry time with no event
/// saying so (cheap for tenants on the default tier: no read).
pub fn has_lapsed(store: &Store, tiers: &TierTable, tenant: &Tenant) -> Result<bool, StoreError> {
    if tenant.subscription_tier == tiers.default_tier() {
        return Ok(false);
    }
    let sub = store.subscription(&TenantId::trusted(&tenant.id))?;
    Ok(sub
        .and_then(|s| s.expires_at_ms)
        .is_some_and(|e| e <= now_ms()))
}

/// Moves a tenant whose paid tier lapsed to the default tier.
pub async fn expire_lapsed(
    store: &Store,
    tiers: &TierTable,
    tenant: &TenantId,
) -> Result<(), StoreError> {
    let now = now_ms();
    let default = tiers.default_tier().to_string();
    let (before, after, _) = store
        .change_subscription(tenant, None, |t, sub| {
            if sub.expires_at_ms.is_none_or(|e| e > now) {
                return keep("current");
            }
            sub.expires_at_ms = None;
            sub.entitlement = None;
            sub.will_renew = false;
            sub.expiration_reason = Some("expired with no event".into());
            SubscriptionChange {
                tier: (t.subscription_tier != default).then(|| default.clone()),
                outcome: "expired".into(),
            }
        })
        .await?;
    audit_tier_change(&before, &after, "expiry", "expiry time passed");
    Ok(())
}

/// Downgrades every lapsed tenant every `every`, so tiers end on time even
/// for tenants that make no request. Runs on `tasks` (owned by
/// `server::serve`) until `stop`, never in the middle of a write.
pub fn spawn_expiry_sweep(
    store: Store,
    tiers: std::sync::Arc<TierTable>,
    every: Duration,
    tasks: &tokio_util::task::TaskTracker,
    stop: tokio_util::sync::CancellationToken,
) {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let lapsed = match store.lapsed_subscriptions(now_ms()) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot scan subscriptions for expiry");
                    continue;
                }
            };
            for tid in lapsed {
                if let Err(e) = expire_lapsed(&store, &tiers, &tid).await {
                    tracing::warn!(tenant = %tid, error = %e, "cannot expire a subscription");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, ts: i64, exp: Option<i64>) -> RcEvent {
        serde_json::from_value(json!({
            "id": format!("e{ts}"), "type": kind, "app_user_id": "t1",
            "entitlement_ids": ["premium"], "product_id": "monthly",
            "event_timestamp_ms": ts, "expiration_at_ms": exp,
            "environment": "PRODUCTION"
        }))
        .unwrap()
    }

    fn tenant(tier: &str) -> Tenant {
        Tenant {
            id: "t1".into(),
            name: "T".into(),
            subscription_tier: tier.into(),
            subscription_id: None,
            tier_epoch: 0,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn event_rules() {
        let tiers = TierTable::load("").unwrap();
        let now = 1_000_000;
        let mut sub = Subscription::default();
        let grant = decide(
            &tiers,
            &tenant("basic"),
            &mut sub,
            &event("INITIAL_PURCHASE", 10, Some(now + 50)),
            now,
        );
        assert_eq!(grant.tier.as_deref(), Some("premium"));
        assert_eq!(sub.expires_at_ms, Some(now + 50));
        // Older than what was applied: nothing.
        let before = sub.clone();
        let old = decide(
            &tiers,
            &tenant("premium"),
            &mut sub,
            &event("EXPIRATION", 5, None),
            now,
        );
        assert_eq!((old.tier, old.outcome.as_str()), (None, "stale"));
        assert_eq!(sub, before);
        // Cancellation keeps the tier until expiry.
        let c = decide(
            &tiers,
            &tenant("premium"),
            &mut sub,
            &event("CANCELLATION", 20, Some(now + 50)),
            now,
        );
        assert_eq!(c.tier, None);
        assert!(!sub.will_renew);
        // Billing issue keeps it through the grace period.
        let mut bi = event("BILLING_ISSUE", 30, None);
        bi.grace_period_expiration_at_ms = Some(now + 500);
        assert_eq!(
            decide(&tiers, &tenant("premium"), &mut sub, &bi, now).tier,
            None
        );
        assert_eq!(sub.expires_at_ms, Some(now + 500));
        let exp = decide(
            &tiers,
            &tenant("premium"),
            &mut sub,
            &event("EXPIRATION", 40, None),
            now,
        );
        assert_eq!(exp.tier.as_deref(), Some("basic"));
        // A refund (cancellation whose expiry is past) ends it now.
        let mut sub = Subscription::default();
        decide(
            &tiers,
            &tenant("basic"),
            &mut sub,
            &event("RENEWAL", 10, Some(now + 50)),
            now,
        );
        let refund = decide(
            &tiers,
            &tenant("premium"),
            &mut sub,
            &event("CANCELLATION", 11, Some(now - 1)),
            now,
        );
        assert_eq!(refund.tier.as_deref(), Some("basic"));
        let mut unknown = event("INITIAL_PURCHASE", 12, None);
        unknown.entitlement_ids = Some(vec!["gold".into()]);
        assert_eq!(
            decide(&tiers, &tenant("basic"), &mut sub, &unknown, now).outcome,
            "no_entitlement"
        );
    }
}
