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

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{fact, string, BlockBuilder};
use biscuit_auth::datalog::RunLimits;
use biscuit_auth::macros::{authorizer, biscuit, rule};
use biscuit_auth::{Biscuit, KeyPair, PrivateKey};
use chrono::{DateTime, Utc};

use crate::billing::gates::{self, TierGate};
use crate::billing::{tiers::model_family, Tier};
use crate::store::{Role, Store, TenantId};

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
    pub token: Biscuit,
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

/// What the sealed signing key is bound to.
const ROOT_KEY_CONTEXT: &str = "root key";

/// The server's signing key pair, kept in the data dir. Cheap to share via
/// `Arc`; never serialised into any answer.
pub struct TokenKeys {
    root: KeyPair,
}

impl TokenKeys {
    /// Loads `<data_dir>/root_key` or creates it (mode 0600) on first start.
    /// The file is sealed by the store's master key (encryption at rest: a
    /// copy of the data directory must not let anyone mint tokens); a key
    /// written in clear by an older build is read and sealed in place.
    pub fn load_or_create(data_dir: &Path, store: &Store) -> Result<TokenKeys, TokenError> {
        let path = data_dir.join("root_key");
        let err = |reason: String| TokenError::RootKey {
            path: path.display().to_string(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // `None`: written in clear by an older build, sealed below.
                let sealed = store
                    .open_secret(ROOT_KEY_CONTEXT, &text)
                    .map_err(|e| err(e.to_string()))?;
                let in_clear = sealed.is_none();
                let hex = match sealed {
                    Some(plain) => String::from_utf8(plain).map_err(|e| err(e.to_string()))?,
                    None => text.trim().to_string(),
                };
                let private = PrivateKey::from_bytes_hex(&hex, Default::default())
                    .map_err(|e| err(e.to_string()))?;
                let keys = TokenKeys {
                    root: KeyPair::from(&private),
                };
                if in_clear {
                    keys.save(data_dir, store)?;
                }
                Ok(keys)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = TokenKeys {
                    root: KeyPair::new(),
                };
                keys.save(data_dir, store)?;
                Ok(keys)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes the signing key to `<data_dir>/root_key` (0600, atomically),
    /// sealed by the store's master key as it is now (also after a
    /// rotation).
    pub fn save(&self, data_dir: &Path, store: &Store) -> Result<(), TokenError> {
        let path = data_dir.join("root_key");
        let err = |reason: String| TokenError::RootKey {
            path: path.display().to_string(),
            reason,
        };
        let hex = zeroize::Zeroizing::new(self.root.private().to_bytes_hex());
        let text = store.seal_secret(ROOT_KEY_CONTEXT, hex.as_bytes());
        let tmp = data_dir.join(".root_key.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| err(e.to_string()))?;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
    }

    fn authority(
        &self,
        user_id: &str,
        tenant: &TenantId,
        role: Role,
        tier: &Tier,
        tier_epoch: u64,
    ) -> Result<biscuit_auth::builder::BiscuitBuilder, TokenError> {
        let build = |e: biscuit_auth::error::Token| TokenError::Build(e.to_string());
        let mut builder = biscuit!(
            r#"user({user}); tenant({tenant}); role({role}); tier({tier}); tier_epoch({epoch});"#,
            user = user_id,
            tenant = tenant.as_str(),
            role = role.as_str(),
            tier = tier.name.as_str(),
            epoch = tier_epoch as i64,
        );
        for c in gates::capabilities(tier) {
            builder = builder
                .fact(fact("capability", &[string(c.fact())]))
                .map_err(build)?;
        }
        for m in &tier.models {
            builder = builder.fact(fact("model", &[string(m)])).map_err(build)?;
        }
        Ok(builder)
    }

    /// A login token valid until `expires_at`.
    pub fn mint_login(
        &self,
        user_id: &str,
        tenant: &TenantId,
        role: Role,
        tier: &Tier,
        tier_epoch: u64,
        expires_at: DateTime<Utc>,
    ) -> Result<String, TokenError> {
        self.authority(user_id, tenant, role, tier, tier_epoch)?
            .check(expiry_check(expires_at))
            .and_then(|b| b.fact(fact("session", &[string("login")])))
            .and_then(|b| {
                b.fact(fact(
                    "issued_ms",
                    &[biscuit_auth::builder::int(Utc::now().timestamp_millis())],
                ))
            })
            .and_then(|b| b.build(&self.root))
            .and_then(|t| t.to_base64())
            .map_err(|e| TokenError::Build(e.to_string()))
    }

    /// An API key: an authority block naming the key, attenuated by a block
    /// with the operations its scopes allow and its expiry. Answers the
    /// token and its revocation ids (hex).
    #[allow(clippy::too_many_arguments)]
    pub fn mint_api_key(
        &self,
        key_id: &str,
        user_id: &str,
        tenant: &TenantId,
        role: Role,
        tier: &Tier,
        tier_epoch: u64,
        scopes: &[String],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(String, Vec<String>), TokenError> {
        let build = |e: biscuit_auth::error::Token| TokenError::Build(e.to_string());
        let token = self
            .authority(user_id, tenant, role, tier, tier_epoch)?
            .fact(fact("api_key", &[string(key_id)]))
            .and_then(|b| b.build(&self.root))
            .map_err(build)?;
        let mut block = BlockBuilder::new();
        for op in OPERATIONS
            .iter()
            .filter(|op| scopes.is_empty() || scopes.iter().any(|s| scope_allows(s, op)))
        {
            block = block.fact(fact("scope_op", &[string(op)])).map_err(build)?;
        }
        block = block
            .check(biscuit_auth::macros::check!(
                "check if operation($op), scope_op($op)"
            ))
            .map_err(build)?;
        if let Some(expires_at) = expires_at {
            block = block.check(expiry_check(expires_at)).map_err(build)?;
        }
        let token = token.append(block).map_err(build)?;
        let ids = token
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect();
        Ok((token.to_base64().map_err(build)?, ids))
    }

    /// Decodes `token`, verifies its signatures and accepts it only in a
    /// shape this server mints (see the module docs). Runs no Datalog, so
    /// its cost is bounded by [`MAX_TOKEN_BYTES`] whatever the token holds.
    pub fn check_shape(&self, token: &str) -> Result<CheckedToken, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge);
        }
        let biscuit =
            Biscuit::from_base64(token, self.root.public()).map_err(|_| TokenError::Invalid)?;
        if biscuit.external_public_keys().iter().any(Option::is_some) {
            return Err(TokenError::Attenuated);
        }
        let shape = match biscuit.block_count() {
            1 => TokenShape::Login,
            2 => TokenShape::ApiKey {
                scope_block: biscuit
                    .revocation_identifiers()
                    .pop()
                    .ok_or(TokenError::Invalid)?,
            },
            _ => return Err(TokenError::Attenuated),
        };
        Ok(CheckedToken { biscuit, shape })
    }

    /// Verifies a token end to end: [`Self::check_shape`], then asks
    /// `is_minted_key` whether an API key's scope block is one the server
    /// minted, and only then runs the token's own checks (expiry, scopes)
    /// and requires a role that may perform `op`. Revocation is the
    /// caller's check (it needs the store).
    pub fn verify(
        &self,
        token: &str,
        op: Operation,
        is_minted_key: impl FnOnce(&[u8]) -> Result<bool, TokenError>,
    ) -> Result<Principal, TokenError> {
        let checked = self.check_shape(token)?;
        if let TokenShape::ApiKey { scope_block } = &checked.shape {
            if !is_minted_key(scope_block)? {
                return Err(TokenError::Attenuated);
            }
        }
        self.authorize(checked, op)
    }

    /// Runs the authorizer on a token whose shape was checked and whose
    /// scope block (for an API key) is known to be the server's own.
    fn authorize(&self, checked: CheckedToken, op: Operation) -> Result<Principal, TokenError> {
        let CheckedToken { biscuit, shape } = checked;
        let mut authorizer = authorizer!(
            r#"
            time({now});
            operation({op});
            role_level("viewer", 0); role_level("member", 1);
            role_level("admin", 2); role_level("owner", 3);
            allow if user($u), tenant($t), role($r), role_level($r, $n), $n >= {min};
            "#,
            now = SystemTime::now(),
            op = op.name,
            min = role_level(op.min_role),
        )
        .set_limits(limits())
        .build(&biscuit)
        .map_err(invalid_or_busy)?;
        authorizer.authorize().map_err(classify_failure)?;
        let who: Vec<(String, String, String, String, i64)> = authorizer
            .query(rule!(
                "who($u, $t, $r, $tier, $e) <- user($u), tenant($t), role($r), tier($tier), tier_epoch($e)"
            ))
            .map_err(invalid_or_busy)?;
        let [(user_id, tenant, role, tier, epoch)] =
            <[_; 1]>::try_from(who).map_err(|_| TokenError::Invalid)?;
        let keys: Vec<(String,)> = authorizer
            .query(rule!("key($k) <- api_key($k)"))
            .map_err(invalid_or_busy)?;
        let models: Vec<(String,)> = authorizer
            .query(rule!("m($m) <- model($m)"))
            .map_err(invalid_or_busy)?;
        let issued: Vec<(i64,)> = authorizer
            .query(rule!("issued($t) <- issued_ms($t)"))
            .map_err(invalid_or_busy)?;
        let api_key_id = keys.into_iter().next().map(|(k,)| k);
        // A key's authority block never travels without its scope block,
        // and a login token never has one.
        if api_key_id.is_some() != matches!(shape, TokenShape::ApiKey { .. }) {
            return Err(TokenError::Invalid);
        }
        let role = Role::parse(&role).ok_or(TokenError::Invalid)?;
        Ok(Principal {
            states_capabilities: !models.is_empty(),
            user_id,
            tenant: TenantId::trusted(tenant),
            role,
            token_tier: tier,
            tier_epoch: epoch.max(0) as u64,
            api_key_id,
            revocation_ids: biscuit.revocation_identifiers(),
            issued_at: issued
                .into_iter()
                .next()
                .and_then(|(ms,)| DateTime::<Utc>::from_timestamp_millis(ms)),
            token: biscuit,
        })
    }

    /// Checks a job's needs (model family, capabilities) in the token's
    /// authorizer. A current token answers from its own authority block
    /// (and the check also requires its `tier_epoch` to be `current_epoch`);
    /// a stale one from facts re-derived here from `current`, the tenant's
    /// tier now. Answers the first need refused.
    pub fn authorize_gates(
        &self,
        principal: &Principal,
        current: &Tier,
        current_epoch: u64,
        needs: &[TierGate],
    ) -> Result<(), GateError> {
        use biscuit_auth::macros::check;
        let build =
            |e: biscuit_auth::error::Token| GateError::Token(TokenError::Build(e.to_string()));
        let fresh = principal.tier_is_current(&current.name, current_epoch);
        let epoch = current_epoch as i64;
        // The token's own checks (expiry, API-key scopes) run again here:
        // state the time and the job operation they look at.
        let mut builder = authorizer!(
            r#"time({now}); operation("jobs:write"); allow if true;"#,
            now = SystemTime::now()
        )
        .set_limits(limits());
        if !fresh {
            for c in gates::capabilities(current) {
                builder = builder
                    .fact(fact("current_capability", &[string(c.fact())]))
                    .map_err(build)?;
            }
            for m in &current.models {
                builder = builder
                    .fact(fact("current_model", &[string(m)]))
                    .map_err(build)?;
            }
        }
        for need in needs {
            let c = match (need, fresh) {
                (TierGate::Model(m), true) => check!(
                    r#"check if model({m}), tier_epoch({epoch}) or model("*"), tier_epoch({epoch})"#,
                    m = model_family(m),
                    epoch = epoch,
                ),
                (TierGate::Model(m), false) => check!(
                    r#"check if current_model({m}) or current_model("*")"#,
                    m = model_family(m),
                ),
                (TierGate::Feature(c), true) => check!(
                    "check if capability({c}), tier_epoch({epoch})",
                    c = c.fact(),
                    epoch = epoch,
                ),
                (TierGate::Feature(c), false) => {
                    check!("check if current_capability({c})", c = c.fact())
                }
            };
            builder = builder.check(c).map_err(build)?;
        }
        let mut authorizer = builder
            .build(&principal.token)
            .map_err(|_| GateError::Token(TokenError::Invalid))?;
        match authorizer.authorize() {
            Ok(_) => Ok(()),
            Err(biscuit_auth::error::Token::FailedLogic(
                biscuit_auth::error::Logic::Unauthorized { checks, .. },
            )) => {
                let first = checks
                    .iter()
                    .filter_map(|c| match c {
                        biscuit_auth::error::FailedCheck::Authorizer(a) => Some(a.check_id),
                        biscuit_auth::error::FailedCheck::Block(_) => None,
                    })
                    .min();
                match first.and_then(|i| needs.get(i as usize)) {
                    Some(need) => Err(GateError::Refused(need.clone())),
                    // A failed block check (an expiry passed meanwhile).
                    None => Err(GateError::Token(TokenError::Expired)),
                }
            }
            Err(e) => Err(GateError::Token(classify_failure(e))),
        }
    }
}

/// The check that ends a token (or an API key's block) at `expires_at`;
/// [`classify_failure`] recognises its `time($t)` to answer "expired".
fn expiry_check(expires_at: DateTime<Utc>) -> biscuit_auth::builder::Check {
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(expires_at.timestamp().max(0) as u64);
    biscuit_auth::macros::check!("check if time($t), $t <= {exp}", exp = exp)
}

/// Tells an expired token (a failed `time` check: log in again) from one
/// that may not do this (role or scope: 403) and from a broken one.
/// A token that cannot be read as ours is invalid, unless the check only ran
/// out of time (see [`limits`]).
fn invalid_or_busy(e: biscuit_auth::error::Token) -> TokenError {
    match e {
        biscuit_auth::error::Token::RunLimit(biscuit_auth::error::RunLimit::Timeout) => {
            TokenError::Busy
        }
        _ => TokenError::Invalid,
    }
}

fn classify_failure(e: biscuit_auth::error::Token) -> TokenError {
    use biscuit_auth::error::{FailedCheck, Logic, Token};
    let checks = match &e {
        Token::FailedLogic(Logic::Unauthorized { checks, .. })
        | Token::FailedLogic(Logic::NoMatchingPolicy { checks }) => checks,
        Token::FailedLogic(_) => return TokenError::Denied,
        other => return invalid_or_busy(other.clone()),
    };
    let expired = checks.iter().any(|c| match c {
        FailedCheck::Block(b) => b.rule.contains("time($t)"),
        FailedCheck::Authorizer(_) => false,
    });
    if expired {
        TokenError::Expired
    } else {
        TokenError::Denied
    }
}

fn role_level(role: Role) -> i64 {
    match role {
        Role::Viewer => 0,
        Role::Member => 1,
        Role::Admin => 2,
        Role::Owner => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Operation = Operation {
        name: "files:read",
        min_role: Role::Viewer,
    };
    const WRITE: Operation = Operation {
        name: "files:write",
        min_role: Role::Member,
    };

    fn tier(name: &str) -> Tier {
        crate::billing::TierTable::load("")
            .unwrap()
            .get(name)
            .unwrap()
            .clone()
    }

    fn basic() -> Tier {
        tier("basic")
    }

    #[test]
    fn capabilities_follow_the_current_tier_epoch() {
        use crate::billing::Capability;
        let (_d, keys) = new_keys();
        let t = TenantId::trusted("t1");
        let future = Utc::now() + chrono::Duration::hours(1);
        let premium = tier("premium");
        let token = keys
            .mint_login("u1", &t, Role::Owner, &premium, 3, future)
            .unwrap();
        let p = keys.verify(&token, READ, minted).unwrap();
        assert!(p.states_capabilities);
        let diarize = [TierGate::Feature(Capability::Diarization)];
        let small = [TierGate::Model("small.en".into())];
        // Current: the token's own facts answer.
        assert!(keys.authorize_gates(&p, &premium, 3, &diarize).is_ok());
        assert!(keys.authorize_gates(&p, &premium, 3, &small).is_ok());
        // The tenant moved to basic since (epoch 4): re-derived, refused.
        let refused =
            keys.authorize_gates(&p, &basic(), 4, &[small[0].clone(), diarize[0].clone()]);
        assert!(matches!(refused, Err(GateError::Refused(TierGate::Model(m))) if m == "small.en"));
        assert!(matches!(
            keys.authorize_gates(&p, &basic(), 4, &diarize),
            Err(GateError::Refused(TierGate::Feature(
                Capability::Diarization
            )))
        ));
        // A basic token after an upgrade gains at once.
        let old = keys
            .mint_login("u1", &t, Role::Owner, &basic(), 0, future)
            .unwrap();
        let p = keys.verify(&old, READ, minted).unwrap();
        assert!(keys.authorize_gates(&p, &basic(), 0, &diarize).is_err());
        assert!(keys.authorize_gates(&p, &premium, 1, &diarize).is_ok());
    }

    /// Every scope block counts as minted (the store's check, stubbed for
    /// tests that are not about it).
    fn minted(_: &[u8]) -> Result<bool, TokenError> {
        Ok(true)
    }

    fn new_keys() -> (tempfile::TempDir, TokenKeys) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let keys = TokenKeys::load_or_create(dir.path(), &store).unwrap();
        (dir, keys)
    }

    #[test]
    fn root_key_persists_with_private_mode() {
        let (dir, keys) = new_keys();
        let t = TenantId::trusted("t1");
        let token = keys
            .mint_login(
                "u1",
                &t,
                Role::Member,
                &basic(),
                0,
                Utc::now() + chrono::Duration::hours(1),
            )
            .unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let again = TokenKeys::load_or_create(dir.path(), &store).unwrap();
        let p = again.verify(&token, READ, minted).unwrap();
        // Sealed: the file does not hold the key in clear.
        let text = std::fs::read_to_string(dir.path().join("root_key")).unwrap();
        assert!(text.starts_with("sealed:"), "{text}");
        assert!(!text.contains(&keys.root.private().to_bytes_hex()));
        assert_eq!((p.user_id.as_str(), p.tenant.as_str()), ("u1", "t1"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("root_key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn expired_forged_and_low_role_tokens_are_refused() {
        let (_d, keys) = new_keys();
        let (_d2, other) = new_keys();
        let t = TenantId::trusted("t1");
        let past = Utc::now() - chrono::Duration::seconds(5);
        let expired = keys
            .mint_login("u1", &t, Role::Owner, &basic(), 0, past)
            .unwrap();
        assert!(matches!(
            keys.verify(&expired, READ, minted),
            Err(TokenError::Expired)
        ));
        let future = Utc::now() + chrono::Duration::hours(1);
        let foreign = other
            .mint_login("u1", &t, Role::Owner, &basic(), 0, future)
            .unwrap();
        assert!(matches!(
            keys.verify(&foreign, READ, minted),
            Err(TokenError::Invalid)
        ));
        let viewer = keys
            .mint_login("u1", &t, Role::Viewer, &basic(), 0, future)
            .unwrap();
        assert!(keys.verify(&viewer, READ, minted).is_ok());
        assert!(matches!(
            keys.verify(&viewer, WRITE, minted),
            Err(TokenError::Denied)
        ));
        let truncated = &viewer[..viewer.len() / 2];
        assert!(matches!(
            keys.verify(truncated, READ, minted),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn api_key_scopes_and_expiry_attenuate() {
        let (_d, keys) = new_keys();
        let t = TenantId::trusted("t1");
        let (read_only, ids) = keys
            .mint_api_key(
                "k1",
                "u1",
                &t,
                Role::Owner,
                &basic(),
                0,
                &["read".into()],
                None,
            )
            .unwrap();
        assert_eq!(ids.len(), 2);
        let p = keys.verify(&read_only, READ, minted).unwrap();
        assert_eq!(p.api_key_id.as_deref(), Some("k1"));
        assert!(matches!(
            keys.verify(&read_only, WRITE, minted),
            Err(TokenError::Denied)
        ));
        let past = Utc::now() - chrono::Duration::seconds(1);
        let (expired, _) = keys
            .mint_api_key("k2", "u1", &t, Role::Owner, &basic(), 0, &[], Some(past))
            .unwrap();
        assert!(matches!(
            keys.verify(&expired, READ, minted),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn only_minted_shapes_reach_the_authorizer() {
        let (_d, keys) = new_keys();
        let t = TenantId::trusted("t1");
        let future = Utc::now() + chrono::Duration::hours(1);
        let login = keys
            .mint_login("u1", &t, Role::Owner, &basic(), 0, future)
            .unwrap();
        assert_eq!(
            keys.check_shape(&login).unwrap().shape(),
            &TokenShape::Login
        );
        // A login token with any block appended, hostile or harmless.
        let parsed = Biscuit::from_base64(&login, keys.root.public()).unwrap();
        let hostile = crate::auth::forge::append_join_bomb(&login, 70).unwrap();
        let started = std::time::Instant::now();
        let refused = keys.verify(&hostile, READ, |_| Ok(false));
        assert!(
            matches!(refused, Err(TokenError::Attenuated)),
            "{refused:?}"
        );
        // Shape refusal does no Datalog: far below one evaluation round of
        // the join (tens of seconds); generous for a loaded machine.
        assert!(started.elapsed() < Duration::from_secs(1));
        let narrowed = parsed
            .append(BlockBuilder::new().check(rule_check()).unwrap())
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(matches!(
            keys.verify(&narrowed, READ, |_| Ok(false)),
            Err(TokenError::Attenuated)
        ));

        // An API key passes only with the scope block the store recorded.
        let (key, ids) = keys
            .mint_api_key("k1", "u1", &t, Role::Owner, &basic(), 0, &[], None)
            .unwrap();
        let scope_block = hex::decode(&ids[1]).unwrap();
        let recorded = |id: &[u8]| Ok(id == scope_block.as_slice());
        assert_eq!(
            keys.verify(&key, READ, recorded)
                .unwrap()
                .api_key_id
                .as_deref(),
            Some("k1")
        );
        assert!(matches!(
            keys.verify(&key, READ, |_| Ok(false)),
            Err(TokenError::Attenuated)
        ));
        // A third block on a real key is refused before the store is asked.
        let three = crate::auth::forge::append_join_bomb(&key, 70).unwrap();
        assert!(matches!(
            keys.verify(&three, READ, |_| panic!("store asked for a 3-block token")),
            Err(TokenError::Attenuated)
        ));
        // Oversized input is refused before decoding.
        let huge = "A".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(keys.check_shape(&huge), Err(TokenError::TooLarge)));
    }

    #[test]
    fn minted_tokens_fit_the_size_bound_with_room() {
        let (_d, keys) = new_keys();
        let t = TenantId::trusted("t_01HZX3K4M5N6P7Q8R9S0T1V2W3");
        let future = Utc::now() + chrono::Duration::hours(1);
        let enterprise = tier("enterprise");
        let login = keys
            .mint_login(
                "u_01HZX3K4M5N6P7Q8R9S0T1V2W3",
                &t,
                Role::Owner,
                &enterprise,
                9,
                future,
            )
            .unwrap();
        let (key, _) = keys
            .mint_api_key(
                "k_01HZX3K4M5N6P7Q8R9S0T1V2W3",
                "u_01HZX3K4M5N6P7Q8R9S0T1V2W3",
                &t,
                Role::Owner,
                &enterprise,
                9,
                &[],
                Some(future),
            )
            .unwrap();
        assert!(
            login.len() * 2 < MAX_TOKEN_BYTES,
            "login token {}",
            login.len()
        );
        assert!(key.len() * 2 < MAX_TOKEN_BYTES, "API key {}", key.len());
    }

    #[test]
    fn login_tokens_say_when_they_were_issued() {
        let (_d, keys) = new_keys();
        let t = TenantId::trusted("t1");
        let before = Utc::now() - chrono::Duration::seconds(1);
        let login = keys
            .mint_login(
                "u1",
                &t,
                Role::Owner,
                &basic(),
                0,
                Utc::now() + chrono::Duration::hours(1),
            )
            .unwrap();
        let issued = keys
            .verify(&login, READ, minted)
            .unwrap()
            .issued_at
            .unwrap();
        assert!(issued >= before && issued <= Utc::now() + chrono::Duration::seconds(1));
    }

    fn rule_check() -> biscuit_auth::builder::Check {
        biscuit_auth::macros::check!("check if operation(\"files:read\")")
    }
}
