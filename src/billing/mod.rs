//! Subscription tiers and what they allow. RevenueCat and usage metering
//! arrive with the billing issue; the tier table is needed from the start
//! because every upload and job is checked against it.

pub mod gates;
pub mod tiers;

pub use gates::TierGate;
pub use tiers::{Tier, TierTable, Translation};
