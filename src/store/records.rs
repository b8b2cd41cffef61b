//! The rows Murmur keeps, as stored (JSON values in sled trees).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use murmur_actors::params::JobParams;

/// A paying customer: every other row belongs to exactly one tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub subscription_tier: String,
    /// RevenueCat's subscription (product) id, once one is linked.
    pub subscription_id: Option<String>,
    /// Bumped on every tier change so tokens minted before it are re-derived.
    #[serde(default)]
    pub tier_epoch: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: String,
    pub email: String,
    /// Argon2id PHC string; never leaves the store layer in an answer.
    pub hashed_password: String,
    pub tenant_id: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Login tokens minted before this time are refused: set when the
    /// user's sessions are ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_valid_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Hex revocation ids of every block of the key's biscuit.
    pub revocation_ids: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// An uploaded file: the bytes live on disk at `path` (relative to the data
/// dir), this row says whose they are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub id: String,
    pub name: String,
    pub path: String,
    pub size: u64,
    pub duration_s: Option<f64>,
    pub content_type: Option<String>,
    pub user_id: String,
    pub tenant_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Workflow {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    pub user_id: String,
    /// The stored job parameters (docs/API.md calls them `params`).
    pub config: JobParams,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub use murmur_actors::job::{Job, JobStage, JobStatus};

/// One tenant's metered use in one calendar month (UTC), kept under
/// `<tenant>/<YYYY-MM>` and changed only in the transaction that changes
/// the job it counts, so it is exact across crashes and restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// Seconds of audio of the jobs that completed this month.
    pub audio_seconds: f64,
    /// Jobs that completed this month, and the same by `job_type`.
    pub jobs: u64,
    pub jobs_by_kind: BTreeMap<String, u64>,
    /// Translation jobs accepted this month (the limited-translation
    /// measure): counted when submitted, whatever their end.
    pub translation_jobs: u64,
}

/// A tenant's subscription as RevenueCat (or an operator) last set it.
/// The tier itself lives on the tenant row; this says why and until when.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Subscription {
    /// "revenuecat", "revenuecat_sync" or "admin": who set the tier last.
    pub source: Option<String>,
    /// The entitlement that gives the tier, when RevenueCat gave it.
    pub entitlement: Option<String>,
    pub product_id: Option<String>,
    pub store: Option<String>,
    pub environment: Option<String>,
    pub period_type: Option<String>,
    /// When the paid tier ends (ms since the epoch); `None` never ends.
    pub expires_at_ms: Option<i64>,
    /// False after a CANCELLATION: the tier lasts until `expires_at_ms`.
    pub will_renew: bool,
    /// Set by BILLING_ISSUE, cleared by the next grant.
    pub billing_issue: bool,
    pub cancel_reason: Option<String>,
    pub expiration_reason: Option<String>,
    pub last_event_id: Option<String>,
    pub last_event_type: Option<String>,
    /// `event_timestamp_ms` of the newest applied event: an older one
    /// arriving later changes nothing.
    pub last_event_ms: i64,
    /// `request_date_ms` of the newest applied REST sync.
    pub last_sync_ms: Option<i64>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// A RevenueCat webhook event as received: written and flushed before the
/// webhook answers, applied after, replayed at start until applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BillingEvent {
    pub id: String,
    pub received_at: DateTime<Utc>,
    /// The whole `event` object, as sent.
    pub event: serde_json::Value,
    pub processed: bool,
    /// What applying it did ("applied", "stale", "ignored: sandbox", ...).
    pub outcome: Option<String>,
}
