//! Subscription tiers and what they allow, RevenueCat webhooks and sync,
//! and the expiry of paid tiers.

pub mod gates;
pub mod revenuecat;
pub mod tiers;
pub mod transfer;

pub use gates::{Capability, TierGate};
pub use tiers::{Tier, TierTable, Translation};

use crate::store::{Store, StoreError, Tenant};

/// An operator moves a tenant to `tier` (`murmur admin set-tier`, directly
/// on the store or through a running server): the change, its audit line
/// and its metric, the same whichever way it came. `tier` is assumed
/// checked against the tier table. Answers the tenant before and after.
pub async fn set_tier_by_operator(
    store: &Store,
    tenant: &str,
    tier: &str,
    operator: &str,
    via: &str,
) -> Result<(Tenant, Tenant), StoreError> {
    let (id, before) = store.tenant_for_operator(tenant)?;
    let after = store.set_tier(&id, tier).await?;
    tracing::info!(
        target: "audit",
        operator = %operator,
        tenant = %after.id,
        from = %before.subscription_tier,
        to = %after.subscription_tier,
        tier_epoch = after.tier_epoch,
        via,
        "admin set-tier"
    );
    revenuecat::audit_tier_change(&before, &after, "admin", "admin set-tier");
    Ok((before, after))
}
