//! The rows Murmur keeps, as stored (JSON values in sled trees).

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
    /// The stored job parameters (API.md calls them `params`).
    pub config: JobParams,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub use murmur_actors::job::{Job, JobStage, JobStatus};
