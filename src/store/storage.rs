//! The storage quota's ledger: per tenant, the bytes its stored uploads hold
//! (`used`) and the bytes uploads still streaming have claimed (`reserved`).
//!
//! An upload claims room chunk by chunk *before* writing it, against
//! `used + reserved`, under one lock: parallel uploads can never store more
//! than the quota together (a read-then-write check let ten of them store
//! 2.4 times it). Storing the row turns the claim into use under the same
//! lock; a [`Reservation`] dropped unstored (refused, failed, or a client
//! that went away) gives its bytes back.
//!
//! Limits: the ledger lives in memory. `used` is counted from the file rows
//! the first time a tenant is seen in a process, and every file row write
//! goes through here afterwards, so it cannot drift; reservations need no
//! recovery because the partial files they cover are swept at start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::scoped::Scoped;
use super::{FileRecord, StoreError, TenantId};

/// Bytes one tenant holds and has claimed.
#[derive(Default)]
struct Account {
    used: u64,
    reserved: u64,
}

/// Shared by every clone of the store.
pub(super) struct Ledger {
    files: Scoped<FileRecord>,
    /// Tenant id -> its account. A `std` mutex: held for a sled call or a
    /// scan of one tenant's rows, never across an `.await`.
    accounts: Mutex<HashMap<String, Account>>,
}

/// The ledger, locked, with the rows it counts.
pub(super) struct Locked<'a> {
    files: &'a Scoped<FileRecord>,
    accounts: MutexGuard<'a, HashMap<String, Account>>,
}

impl Ledger {
    pub(super) fn new(files: Scoped<FileRecord>) -> Arc<Ledger> {
        Arc::new(Ledger {
            files,
            accounts: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn lock(&self) -> Locked<'_> {
        Locked {
            files: &self.files,
            // A panic elsewhere while holding the lock leaves the counts
            // whole (each change is one assignment), so keep using them.
            accounts: self.accounts.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl Locked<'_> {
    fn account(&mut self, tenant: &TenantId) -> Result<&mut Account, StoreError> {
        if !self.accounts.contains_key(tenant.as_str()) {
            let mut used = 0;
            self.files.for_each(tenant, |f| used += f.size)?;
            self.accounts
                .insert(tenant.as_str().to_string(), Account { used, reserved: 0 });
        }
        self.accounts
            .get_mut(tenant.as_str())
            .ok_or(StoreError::NotFound)
    }

    pub(super) fn used(&mut self, tenant: &TenantId) -> Result<u64, StoreError> {
        Ok(self.account(tenant)?.used)
    }

    /// Records a stored row of `size` bytes (`replaced`: the size of the row
    /// it overwrote), turning `claimed` reserved bytes into use.
    pub(super) fn stored(
        &mut self,
        tenant: &TenantId,
        size: u64,
        replaced: Option<u64>,
        claimed: u64,
    ) -> Result<(), StoreError> {
        let account = self.account(tenant)?;
        account.used = (account.used + size).saturating_sub(replaced.unwrap_or(0));
        account.reserved = account.reserved.saturating_sub(claimed);
        Ok(())
    }

    pub(super) fn removed(&mut self, tenant: &TenantId, size: u64) -> Result<(), StoreError> {
        let account = self.account(tenant)?;
        account.used = account.used.saturating_sub(size);
        Ok(())
    }

    pub(super) fn files(&self) -> &Scoped<FileRecord> {
        self.files
    }
}

/// Room one upload has claimed in its tenant's storage quota. Grows as the
/// body arrives; given back when dropped unless stored with
/// `Store::put_file_reserved`.
pub struct Reservation {
    ledger: Arc<Ledger>,
    tenant: TenantId,
    limit: u64,
    bytes: u64,
}

/// The quota has no room for the bytes asked.
#[derive(Debug, thiserror::Error)]
#[error("the storage quota of {limit} bytes has no room for {asked} more")]
pub struct QuotaFull {
    pub limit: u64,
    pub asked: u64,
}

impl Reservation {
    pub(super) fn new(ledger: Arc<Ledger>, tenant: TenantId, limit: u64) -> Reservation {
        Reservation {
            ledger,
            tenant,
            limit,
            bytes: 0,
        }
    }

    /// Claims `n` more bytes, or refuses when the tenant's stored and
    /// claimed bytes would pass the limit.
    pub fn grow(&mut self, n: u64) -> Result<(), ReserveError> {
        let mut locked = self.ledger.lock();
        let account = locked.account(&self.tenant)?;
        let after = account
            .used
            .saturating_add(account.reserved)
            .saturating_add(n);
        if after > self.limit {
            return Err(ReserveError::Full(QuotaFull {
                limit: self.limit,
                asked: n,
            }));
        }
        account.reserved += n;
        self.bytes += n;
        Ok(())
    }

    /// Claims up to `n` more bytes: as many as the tenant's limit leaves,
    /// possibly none. Never refuses; `grow` decides when bytes arrive.
    pub fn grow_up_to(&mut self, n: u64) -> Result<(), StoreError> {
        let mut locked = self.ledger.lock();
        let account = locked.account(&self.tenant)?;
        let left = self
            .limit
            .saturating_sub(account.used.saturating_add(account.reserved));
        let take = n.min(left);
        account.reserved += take;
        self.bytes += take;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Marks the claim as turned into use (the ledger was updated by the
    /// caller under its lock), so dropping gives nothing back.
    pub(super) fn spent(&mut self) {
        self.bytes = 0;
    }
}

/// Why a reservation did not grow.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error(transparent)]
    Full(QuotaFull),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut locked = self.ledger.lock();
        if let Some(account) = locked.accounts.get_mut(self.tenant.as_str()) {
            account.reserved = account.reserved.saturating_sub(self.bytes);
        }
    }
}
