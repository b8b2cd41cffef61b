//! Verification: the shape check, the authorizer run for a request's
//! operation, and a job's tier gates.

use std::sync::Arc;
use std::time::SystemTime;

use biscuit_auth::builder::{fact, string};
use biscuit_auth::macros::{authorizer, rule};

use super::{
    cache, limits, role_level, CheckedToken, GateError, Operation, Principal, TokenError,
    TokenKeys, TokenShape, MAX_TOKEN_BYTES,
};
use crate::billing::gates::{self, TierGate};
use crate::billing::{tiers::model_family, Tier};
use biscuit_auth::Biscuit;
use chrono::{DateTime, Utc};

use crate::store::{Role, TenantId};

impl TokenKeys {
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
    ///
    /// A token verified for `op` in the last minute answers from memory
    /// (see `cache`): [`Self::remembered`].
    pub fn verify(
        &self,
        token: &str,
        op: Operation,
        is_minted_key: impl FnOnce(&[u8]) -> Result<bool, TokenError>,
    ) -> Result<Principal, TokenError> {
        let key = cache::key(token, op);
        if let Some(principal) = self.verified.get(&key) {
            return still_minted(principal, is_minted_key);
        }
        let checked = self.check_shape(token)?;
        if let TokenShape::ApiKey { scope_block } = &checked.shape {
            if !is_minted_key(scope_block)? {
                return Err(TokenError::Attenuated);
            }
        }
        let (answer, until) = cache::decide_for_a_while(
            |at| self.authorize(&checked, op, at),
            |e| matches!(e, TokenError::Expired),
        );
        if let (Ok(principal), Some(until)) = (&answer, until) {
            // Only the text this server writes for the token: any other
            // spelling that decodes the same is checked each time rather
            // than filling the memo (see `cache`).
            if checked.biscuit.to_base64().ok().as_deref() == Some(token.trim()) {
                self.verified
                    .put(key, &principal.tenant, principal.clone(), until);
            }
        }
        answer
    }

    /// [`Self::verify`]'s answer if `token` was verified for `op` lately
    /// and is still valid; `None` means `verify` has the work to do. Cheap
    /// (a hash, a map lookup and, for an API key, `is_minted_key`): callers
    /// on the async runtime ask this first and send only the rest to the
    /// blocking pool.
    pub fn remembered(
        &self,
        token: &str,
        op: Operation,
        is_minted_key: impl FnOnce(&[u8]) -> Result<bool, TokenError>,
    ) -> Option<Result<Principal, TokenError>> {
        let principal = self.verified.get(&cache::key(token, op))?;
        Some(still_minted(principal, is_minted_key))
    }

    /// Runs the authorizer, as of `at`, on a token whose shape was checked
    /// and whose scope block (for an API key) is known to be the server's
    /// own.
    fn authorize(
        &self,
        checked: &CheckedToken,
        op: Operation,
        at: SystemTime,
    ) -> Result<Principal, TokenError> {
        let CheckedToken { biscuit, shape } = checked;
        let mut authorizer = authorizer!(
            r#"
            time({now});
            operation({op});
            role_level("viewer", 0); role_level("member", 1);
            role_level("admin", 2); role_level("owner", 3);
            allow if user($u), tenant($t), role($r), role_level($r, $n), $n >= {min};
            "#,
            now = at,
            op = op.name,
            min = role_level(op.min_role),
        )
        .set_limits(limits())
        .build(biscuit)
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
            token: Arc::new(biscuit.clone()),
        })
    }

    /// Checks a job's needs (model family, capabilities) in the token's
    /// authorizer. A current token answers from its own authority block
    /// (and the check also requires its `tier_epoch` to be `current_epoch`);
    /// a stale one from facts re-derived here from `current`, the tenant's
    /// tier now. Answers the first need refused.
    ///
    /// Needs a token passed within the last minute under the same tier
    /// pass again from memory (see `cache`).
    pub fn authorize_gates(
        &self,
        principal: &Principal,
        current: &Tier,
        current_epoch: u64,
        needs: &[TierGate],
    ) -> Result<(), GateError> {
        let key = cache::gates_key(principal, current, current_epoch, needs);
        if self.gates_passed.get(&key).is_some() {
            return Ok(());
        }
        let (answer, until) = cache::decide_for_a_while(
            |at| self.run_gates(principal, current, current_epoch, needs, at),
            |e| matches!(e, GateError::Token(TokenError::Expired)),
        );
        if let (Ok(()), Some(until)) = (&answer, until) {
            self.gates_passed.put(key, &principal.tenant, (), until);
        }
        answer
    }

    /// [`Self::authorize_gates`]'s authorizer run, as of `at`.
    fn run_gates(
        &self,
        principal: &Principal,
        current: &Tier,
        current_epoch: u64,
        needs: &[TierGate],
        at: SystemTime,
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
            now = at
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

/// `principal`, remembered from an earlier check, if an API key's scope
/// block is still one the store says the server minted (asked again, as
/// [`TokenKeys::verify`] asks every token it checks in full).
fn still_minted(
    principal: Principal,
    is_minted_key: impl FnOnce(&[u8]) -> Result<bool, TokenError>,
) -> Result<Principal, TokenError> {
    if principal.api_key_id.is_some() {
        let scope_block = principal.revocation_ids.last().ok_or(TokenError::Invalid)?;
        if !is_minted_key(scope_block)? {
            return Err(TokenError::Attenuated);
        }
    }
    Ok(principal)
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
