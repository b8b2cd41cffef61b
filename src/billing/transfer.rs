//! RevenueCat `TRANSFER` events: purchases moved from one app user to
//! another (a restore on a shared store account, or a transfer made in
//! RevenueCat's dashboard). The event names the users (`transferred_from`,
//! `transferred_to`) and no entitlements, and no other event follows for
//! the source; so Murmur moves what it knows: the best still-active
//! entitlement among the known source tenants goes to the first known
//! destination tenant, and the sources fall back to the default tier.
//!
//! Order makes it safe to replay: the destination is written first without
//! marking the event applied, then the sources, the last of which marks it.
//! A crash in between replays the event with the sources' subscriptions
//! still intact, and writing the destination again changes nothing.

use crate::billing::TierTable;
use crate::store::{Store, StoreError, Subscription, SubscriptionChange, TenantId};

use super::revenuecat::{known_tenants, RcEvent};

/// What a source tenant held that the destination receives.
#[derive(Debug, Clone)]
struct Moved {
    entitlement: String,
    tier: String,
    rank: u32,
    sub: Subscription,
}

/// Applies a `TRANSFER` event; answers the outcome and every tenant it
/// changed (for the REST sync, when configured).
pub async fn apply(
    store: &Store,
    tiers: &TierTable,
    ev: &RcEvent,
    event_id: &str,
    now_ms: i64,
) -> Result<(String, Vec<TenantId>), StoreError> {
    let known = |ids: &Option<Vec<String>>| known_tenants(store, ids.iter().flatten(), usize::MAX);
    let to = known(&ev.transferred_to)?;
    let from: Vec<TenantId> = known(&ev.transferred_from)?
        .into_iter()
        .filter(|t| !to.contains(t))
        .collect();
    if to.is_empty() && from.is_empty() {
        store.finish_billing_event(event_id, "unknown_user").await?;
        return Ok(("unknown_user".into(), Vec::new()));
    }
    // The best entitlement still active among the sources.
    let mut moved: Option<Moved> = None;
    for tid in &from {
        let Some(sub) = store.subscription(tid)? else {
            continue;
        };
        let active = sub.expires_at_ms.is_none_or(|e| e > now_ms);
        let Some(entitlement) = sub.entitlement.clone().filter(|_| active) else {
            continue;
        };
        let Some(tier) = tiers.tier_for_entitlement(&entitlement) else {
            continue;
        };
        if moved.as_ref().is_none_or(|m| tier.rank > m.rank) {
            moved = Some(Moved {
                entitlement,
                tier: tier.name.clone(),
                rank: tier.rank,
                sub,
            });
        }
    }
    let default = tiers.default_tier().to_string();
    let mut changed = Vec::new();
    if let Some(dest) = to.first() {
        let last_write = from.is_empty();
        let (before, after, outcome) = store
            .change_subscription(dest, last_write.then_some(event_id), |_, sub| {
                receive(sub, ev, moved.as_ref())
            })
            .await?;
        super::revenuecat::audit_tier_change(&before, &after, "revenuecat", "TRANSFER");
        changed.push(dest.clone());
        if last_write {
            return Ok((outcome, changed));
        }
    }
    let mut outcome = String::new();
    for (i, src) in from.iter().enumerate() {
        let last = i + 1 == from.len();
        let (before, after, o) = store
            .change_subscription(src, last.then_some(event_id), |_, sub| {
                give_away(sub, ev, &default)
            })
            .await?;
        super::revenuecat::audit_tier_change(&before, &after, "revenuecat", "TRANSFER");
        outcome = o;
        changed.push(src.clone());
    }
    Ok((outcome, changed))
}

fn stamp(sub: &mut Subscription, ev: &RcEvent) {
    sub.last_event_ms = ev.event_timestamp_ms;
    sub.last_event_id = Some(ev.id.clone());
    sub.last_event_type = Some(ev.kind.clone());
    sub.source = Some("revenuecat".into());
    sub.updated_at = Some(chrono::Utc::now());
}

/// The destination's side: takes the moved entitlement, if any.
fn receive(sub: &mut Subscription, ev: &RcEvent, moved: Option<&Moved>) -> SubscriptionChange {
    if ev.event_timestamp_ms < sub.last_event_ms {
        return SubscriptionChange {
            tier: None,
            outcome: "stale".into(),
        };
    }
    stamp(sub, ev);
    let Some(m) = moved else {
        return SubscriptionChange {
            tier: None,
            outcome: "transferred_nothing_active".into(),
        };
    };
    sub.entitlement = Some(m.entitlement.clone());
    sub.product_id = m.sub.product_id.clone();
    sub.store = m.sub.store.clone().or(ev.store.clone());
    sub.environment = m.sub.environment.clone().or(ev.environment.clone());
    sub.period_type = m.sub.period_type.clone();
    sub.expires_at_ms = m.sub.expires_at_ms;
    sub.will_renew = m.sub.will_renew;
    sub.billing_issue = m.sub.billing_issue;
    sub.cancel_reason = None;
    sub.expiration_reason = None;
    SubscriptionChange {
        tier: Some(m.tier.clone()),
        outcome: "transferred".into(),
    }
}

/// A source's side: its purchases left it, so its paid tier ends now.
fn give_away(sub: &mut Subscription, ev: &RcEvent, default: &str) -> SubscriptionChange {
    if ev.event_timestamp_ms < sub.last_event_ms {
        return SubscriptionChange {
            tier: None,
            outcome: "stale".into(),
        };
    }
    stamp(sub, ev);
    sub.entitlement = None;
    sub.product_id = None;
    sub.expires_at_ms = None;
    sub.will_renew = false;
    sub.expiration_reason = Some("TRANSFERRED".into());
    SubscriptionChange {
        tier: Some(default.to_string()),
        outcome: "transferred".into(),
    }
}
