//! Biscuit tokens: the server's root key, login tokens, API keys and their
//! verification.
//!
//! A token's authority block (signed by the root key) says who it is for:
//! `user`, `tenant`, `role`, `tier`, `tier_epoch` and, for login tokens, an
//! expiry check. An API key is a token minted for the key with no expiry of
//! its own, then attenuated by a second block that lists the operations its
//! scopes allow (`scope_op`) and its optional expiry. The request's
//! authorizer states the operation and the time and requires a role level.
//!
//! The authority block also states what the tenant's tier allows:
//! `capability("diarization")`, `capability("bgm_separation")`,
//! `capability("translation")` and one `model("<family>")` per model family
//! (`model("*")` for every model). A job's needs are checked against them
//! by [`TokenKeys::authorize_gates`], and only while the token's
//! `tier_epoch` and `tier` are the tenant's current ones: a token minted
//! before a tier change is stale, and its capabilities are then re-derived
//! from the tenant's current tier instead of trusted.
//!
//! ## Only the shapes this server mints
//!
//! Anyone holding a biscuit can append a block to it without a key, and a
//! block may carry Datalog rules whose evaluation is exponential in the
//! facts it joins (biscuit's time limit is only checked between rounds).
//! So no appended block is ever evaluated: before any Datalog runs,
//! [`TokenKeys::check_shape`] accepts exactly two shapes and refuses
//! everything else in microseconds:
//!
//! - a **login token**: the authority block alone;
//! - an **API key**: the authority block plus the one scope block the
//!   server appended when it minted the key, recognised by that block's
//!   revocation id, which the store records for every key it mints.
//!
//! No attenuation by a holder is accepted: a narrower key is created with
//! narrower `scopes` and an `expires_at` instead. Third-party blocks are
//! refused, and so is any token longer than [`MAX_TOKEN_BYTES`].

mod cache;
mod keys;
#[cfg(test)]
mod tests;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use biscuit_auth::datalog::RunLimits;
use biscuit_auth::{Biscuit, KeyPair};
use chrono::{DateTime, Utc};

use crate::billing::gates::TierGate;
use crate::store::{Role, TenantId};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed, was not issued by this server, or has been altered")]
    Invalid,
    /// A block was appended to a token after the server minted it.
    #[error(
        "the token carries a block this server did not add; Murmur accepts its login tokens \
         and API keys only exactly as it issued them (create a narrower API key instead)"
    )]
    Attenuated,
    #[error(
        "the token is longer than any token this server issues ({MAX_TOKEN_BYTES} bytes at most)"
    )]
    TooLarge,
    /// The store could not be read to check the token.
    #[error("cannot check the token against the store: {0}")]
    Store(String),
    #[error("the token does not allow this operation")]
    Denied,
    #[error("the token has expired; log in again or use a current API key")]
    Expired,
    #[error("cannot read or create the root key {path}: {reason}")]
    RootKey { path: String, reason: String },
    #[error("cannot build a token: {0}")]
    Build(String),
    /// The authorizer ran out of its time budget: the server is overloaded,
    /// the token may well be fine. Never reported as a bad token.
    #[error("the server is too busy to check the token now; retry shortly")]
    Busy,
}

/// What every request that passed token verification knows about its caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub tenant: TenantId,
    pub role: Role,
    /// The tier the token was minted under; the store's tier wins when the
    /// tenant's tier epoch moved since.
    pub token_tier: String,
    pub tier_epoch: u64,
    /// Set when the caller is an API key rather than a login session.
    pub api_key_id: Option<String>,
    /// Revocation ids of the token's blocks, checked against the store.
    pub revocation_ids: Vec<Vec<u8>>,
    /// Whether the authority block states the tier's models (tokens minted
    /// before capabilities existed do not: they are always re-derived).
    pub states_capabilities: bool,
    /// When a login token was minted (`None` for API keys and for login
    /// tokens minted before the fact existed): a user's "tokens valid
    /// after" time ends sessions minted before it.
    pub issued_at: Option<DateTime<Utc>>,
    /// The verified token, kept for the per-operation capability checks.
    pub token: Arc<Biscuit>,
}

impl Principal {
    /// Whether the token's tier facts still describe the tenant: same tier
    /// epoch, same tier, and capabilities stated at all.
    pub fn tier_is_current(&self, tier: &str, tier_epoch: u64) -> bool {
        self.states_capabilities && self.tier_epoch == tier_epoch && self.token_tier == tier
    }
}

/// Why a job's tier gates could not be passed.
#[derive(Debug)]
pub enum GateError {
    /// The tier lacks what the job needs.
    Refused(TierGate),
    Token(TokenError),
}

/// The longest token accepted, in characters of base64. Minted tokens are
/// about 600 (login) to 1,100 (API key with every scope) characters; the
/// bound leaves room for more tier facts while refusing big crafted tokens
/// before they are even decoded.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What [`TokenKeys::check_shape`] found: a signed token of a shape this
/// server mints, not yet authorized.
pub struct CheckedToken {
    biscuit: Biscuit,
    shape: TokenShape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenShape {
    /// The authority block alone.
    Login,
    /// Authority block plus one scope block with this revocation id, which
    /// must be one the store recorded when it minted a key.
    ApiKey { scope_block: Vec<u8> },
}

impl CheckedToken {
    pub fn shape(&self) -> &TokenShape {
        &self.shape
    }
}

/// Bounds on one authorization. Facts and iterations bound the work a
/// token can cause; the time bound is wall-clock, so it is generous: on a
/// loaded machine the thread may wait for a core far longer than the logic
/// takes (20 ms once turned valid keys into 401s under load).
fn limits() -> RunLimits {
    RunLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_secs(2),
    }
}

/// The operation a route performs, for roles and API-key scopes: each is
/// `resource:read` or `resource:write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub name: &'static str,
    /// The least role allowed to perform it.
    pub min_role: Role,
}

/// Every operation, so API-key scopes can list what they allow.
pub const OPERATIONS: &[&str] = &[
    "tenant:read",
    "tenant:write",
    "users:read",
    "users:write",
    "keys:read",
    "keys:write",
    "files:read",
    "files:write",
    "workflows:read",
    "workflows:write",
    "jobs:read",
    "jobs:write",
    "webhooks:read",
    "webhooks:write",
];

/// API-key scopes: `read` (every read but webhooks'), `jobs` (upload, run
/// and read jobs), `full` (all the creating user's rights). No scope means
/// `full`. Webhooks are `full` only: an endpoint receives every job of the
/// tenant, so managing or inspecting one is an administrator's act.
pub const SCOPES: &[&str] = &["read", "jobs", "full"];

fn scope_allows(scope: &str, op: &str) -> bool {
    match scope {
        "full" => true,
        "read" => op.ends_with(":read") && !op.starts_with("webhooks:"),
        "jobs" => matches!(
            op,
            "tenant:read"
                | "files:read"
                | "files:write"
                | "jobs:read"
                | "jobs:write"
                | "workflows:read"
        ),
        _ => false,
    }
}

/// The server's signing key pair, kept in the data dir. Cheap to share via
/// `Arc`; never serialised into any answer.
pub struct TokenKeys {
    root: KeyPair,
    /// Tokens verified lately, and job needs they passed (see `cache`).
    verified: cache::Verified,
    gates_passed: cache::GatesPassed,
}

fn role_level(role: Role) -> i64 {
    match role {
        Role::Viewer => 0,
        Role::Member => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }
}
