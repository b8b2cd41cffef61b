//! Who may call: users, their login sessions' cut-off, API keys, and the
//! revocation and minting records that token verification consults.
//!
//! Every API key the server mints is recorded twice: its row (for listing
//! and revoking) and the revocation id of its scope block in `minted_keys`,
//! which is how a two-block token is known to be a key this server made
//! rather than a login token with a block appended by its holder.

use chrono::{DateTime, Utc};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{
    decode, encode, scoped_key, tx_error, ApiKey, Role, Store, StoreError, TenantId, User,
};
use super::{Page, PageRequest};

/// Why a change to a user was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserChangeError {
    #[error("the tenant has no such user")]
    NotFound,
    #[error("a tenant keeps at least one owner; make another user owner first")]
    LastOwner,
}

impl Store {
    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let Some(key) = self.emails.get(email.to_lowercase().as_bytes())? else {
            return Ok(None);
        };
        match self.users.tree().get(&key)? {
            Some(bytes) => decode(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    pub fn user(&self, tenant: &TenantId, id: &str) -> Result<Option<User>, StoreError> {
        self.users.get(tenant, id)
    }

    pub async fn create_user(&self, tenant: &TenantId, user: &User) -> Result<(), StoreError> {
        let email = user.email.to_lowercase();
        (&self.emails, self.users.tree())
            .transaction(|(emails, users)| {
                if emails.get(email.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                        "a user with this email already exists".into(),
                    )));
                }
                let key = scoped_key(tenant, &user.id);
                emails.insert(email.as_bytes(), key.clone())?;
                users.insert(key, encode(user))?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush().await
    }

    pub fn list_users(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<User>, StoreError> {
        self.users.list(tenant, page, |_| true)
    }

    fn owners(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let mut owners = 0;
        self.users.for_each(tenant, |u| {
            if u.role == Role::Owner {
                owners += 1;
            }
        })?;
        Ok(owners)
    }

    /// Gives a user a new role. Their tokens keep working with the lower of
    /// the token's role and this one (checked on every request), so a
    /// demotion takes effect at once and a promotion at their next login.
    pub async fn set_user_role(
        &self,
        tenant: &TenantId,
        id: &str,
        role: Role,
    ) -> Result<Result<User, UserChangeError>, StoreError> {
        let Some(user) = self.users.get(tenant, id)? else {
            return Ok(Err(UserChangeError::NotFound));
        };
        if user.role == Role::Owner && role != Role::Owner && self.owners(tenant)? <= 1 {
            return Ok(Err(UserChangeError::LastOwner));
        }
        let updated = self.users.update(tenant, id, |u| {
            u.role = role;
            true
        })?;
        self.flush().await?;
        Ok(updated.ok_or(UserChangeError::NotFound))
    }

    /// Ends every login session of a user minted before now: their tokens
    /// answer 401 from the next request on (API keys are revoked one by one).
    pub async fn end_sessions(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = Utc::now();
        let updated = self.users.update(tenant, id, |u| {
            u.tokens_valid_after = Some(now);
            true
        })?;
        self.flush().await?;
        Ok(updated.map(|_| now))
    }

    /// Removes a user, their email's login and every API key they created
    /// (revoked, so copies of them are refused too).
    pub async fn delete_user(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Result<User, UserChangeError>, StoreError> {
        let Some(user) = self.users.get(tenant, id)? else {
            return Ok(Err(UserChangeError::NotFound));
        };
        if user.role == Role::Owner && self.owners(tenant)? <= 1 {
            return Ok(Err(UserChangeError::LastOwner));
        }
        let mut keys = Vec::new();
        self.api_keys.for_each(tenant, |k| {
            if k.user_id == user.id {
                keys.push(k.id);
            }
        })?;
        let key = scoped_key(tenant, id);
        let email = user.email.to_lowercase();
        (&self.emails, self.users.tree())
            .transaction(|(emails, users)| {
                users.remove(key.as_slice())?;
                if emails.get(email.as_bytes())?.as_deref() == Some(key.as_slice()) {
                    emails.remove(email.as_bytes())?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        // A key the user creates between the scan and the removal still
        // dies: every token of a user who no longer exists is refused.
        for k in keys {
            self.revoke_api_key(tenant, &k).await?;
        }
        self.flush().await?;
        Ok(Ok(user))
    }

    // ---- API keys, minting and revocation ---------------------------------

    /// Records a newly minted key: its row and its scope block's id.
    pub async fn put_api_key(&self, tenant: &TenantId, key: &ApiKey) -> Result<(), StoreError> {
        let row = scoped_key(tenant, &key.id);
        let scope_block = scope_block_id(&row, key)?;
        (self.api_keys.tree(), &self.minted_keys)
            .transaction(|(keys, minted)| {
                keys.insert(row.as_slice(), encode(key))?;
                if let Some(id) = &scope_block {
                    minted.insert(id.as_slice(), row.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush().await
    }

    /// Whether `scope_block` is the revocation id of a key scope block this
    /// server minted (revoked or not: revocation is checked separately).
    pub fn is_minted_key(&self, scope_block: &[u8]) -> Result<bool, StoreError> {
        Ok(self.minted_keys.contains_key(scope_block)?)
    }

    /// Fills `minted_keys` from the key rows, once, for keys minted before
    /// the record existed; from then on `put_api_key` writes both together.
    pub(super) fn record_minted_keys(&self) -> Result<(), StoreError> {
        const DONE: &str = "minted_keys_recorded";
        let meta = self.db.open_tree("meta")?;
        if meta.contains_key(DONE)? {
            return Ok(());
        }
        for item in self.api_keys.tree().iter() {
            let (row, bytes) = item?;
            let key: ApiKey = decode(&row, &bytes)?;
            if let Some(id) = scope_block_id(&row, &key)? {
                self.minted_keys.insert(id, row.as_ref())?;
            }
        }
        meta.insert(DONE, &[1u8])?;
        Ok(())
    }

    pub fn list_api_keys(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<ApiKey>, StoreError> {
        self.api_keys.list(tenant, page, |_| true)
    }

    /// Deletes the key and records its revocation ids so the token is
    /// refused from now on. `false` if the tenant has no such key.
    pub async fn revoke_api_key(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let key = scoped_key(tenant, id);
        let now = chrono::Utc::now().to_rfc3339();
        let found = (self.api_keys.tree(), &self.revoked)
            .transaction(|(keys, revoked)| {
                let Some(bytes) = keys.remove(key.as_slice())? else {
                    return Ok(false);
                };
                let api_key: ApiKey =
                    decode(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
                for rid in &api_key.revocation_ids {
                    let raw = hex::decode(rid).map_err(|e| {
                        ConflictableTransactionError::Abort(StoreError::Corrupt {
                            key: String::from_utf8_lossy(&key).into_owned(),
                            reason: e.to_string(),
                        })
                    })?;
                    revoked.insert(raw, now.as_bytes())?;
                }
                Ok(true)
            })
            .map_err(tx_error)?;
        if found {
            self.flush().await?;
        }
        Ok(found)
    }

    pub fn is_revoked(&self, revocation_ids: &[Vec<u8>]) -> Result<bool, StoreError> {
        for id in revocation_ids {
            if self.revoked.contains_key(id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The raw revocation id of a key's scope block (its last block), if the
/// row lists one.
fn scope_block_id(row: &[u8], key: &ApiKey) -> Result<Option<Vec<u8>>, StoreError> {
    match key.revocation_ids.get(1) {
        Some(hex_id) => hex::decode(hex_id)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(row).into_owned(),
                reason: e.to_string(),
            }),
        None => Ok(None),
    }
}
