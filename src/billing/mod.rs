//! Subscription tiers and what they allow, RevenueCat webhooks and sync,
//! and the expiry of paid tiers.

pub mod gates;
pub mod http;
pub mod revenuecat;
pub mod tiers;

pub use gates::{Capability, TierGate};
pub use tiers::{Tier, TierTable, Translation};
