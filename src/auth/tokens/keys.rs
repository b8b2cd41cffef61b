//! The server's signing key (kept sealed in the data dir) and minting:
//! login tokens and API keys.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{fact, string, BlockBuilder};
use biscuit_auth::macros::biscuit;
use biscuit_auth::{KeyPair, PrivateKey};
use chrono::{DateTime, Utc};

use super::{scope_allows, TokenError, TokenKeys, OPERATIONS};
use crate::billing::{gates, Tier};
use crate::store::{Role, Store, TenantId};

/// What the sealed signing key is bound to.
const ROOT_KEY_CONTEXT: &str = "root key";

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
                    verified: Default::default(),
                    gates_passed: Default::default(),
                };
                if in_clear {
                    keys.save(data_dir, store)?;
                }
                Ok(keys)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = TokenKeys {
                    root: KeyPair::new(),
                    verified: Default::default(),
                    gates_passed: Default::default(),
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
}

/// The check that ends a token (or an API key's block) at `expires_at`;
/// [`classify_failure`] recognises its `time($t)` to answer "expired".
fn expiry_check(expires_at: DateTime<Utc>) -> biscuit_auth::builder::Check {
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(expires_at.timestamp().max(0) as u64);
    biscuit_auth::macros::check!("check if time($t), $t <= {exp}", exp = exp)
}
