//! Tokens recently verified, so a client that sends the same token with
//! every request pays for the signature check and the Datalog once a
//! minute, not every time (they were most of an authenticated request's
//! work: decoding, two ed25519 verifications, building the authorizer).
//! Job submissions also remember the tier gates a token passed.
//!
//! What is remembered is exactly [`super::TokenKeys::verify`]'s answer for
//! one token and one operation (or that
//! [`super::TokenKeys::authorize_gates`] let one token's job needs
//! through under one tier), and only an answer that stays true for the
//! whole time it is kept. Everything in a token this server mints is fixed
//! when it is signed except the time its checks look at, and every time
//! check this server writes is an upper bound (`$t <= expiry`). So a
//! token authorized as of [`REMEMBER`] from now is valid until then and is
//! remembered that long (by the monotonic clock and by the wall clock, so
//! a clock step or a paused machine does not stretch it); one that expires
//! sooner is checked at every request, as before. What can change
//! meanwhile is the store's (a key revoked, sessions ended, a user removed
//! or demoted, the tenant's tier): the caller checks that at every
//! request, remembered or not.
//!
//! Keyed by SHA-256 of what the answer depends on (the operation and the
//! token's text; for gates, the token's revocation ids, the tier's name,
//! epoch, capabilities and models, and the needs). Only a token in the
//! exact text this server encodes is remembered: biscuit's decoder skips
//! what it does not know, so one token could be sent in endless spellings
//! that all verify, each a new entry. The token's text is not kept; its
//! parsed form is, in the principal, until the entry is swept (expired
//! entries go at most a second after a lookup or an insert finds them).
//!
//! Bounded: [`CAPACITY`] entries in all and [`PER_TENANT`] per tenant.
//! A tenant at its share replaces its own entry that ends first; a full
//! map drops expired entries, then the one that ends first. So one tenant
//! can cost others at most their memo, never more than every request paid
//! before it existed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::{Operation, Principal};
use crate::billing::gates::{self, TierGate};
use crate::billing::{tiers::model_family, Tier};
use crate::store::TenantId;

/// How long a verified token is remembered.
pub(super) const REMEMBER: Duration = Duration::from_secs(60);

/// Entries at most (a principal with its token is a few kilobytes).
const CAPACITY: usize = 2048;

/// Entries at most per tenant.
const PER_TENANT: usize = 256;

/// Expired entries are looked for at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub(super) type Key = [u8; 32];

/// The key of `token` verified for `op`.
pub(super) fn key(token: &str, op: Operation) -> Key {
    let mut h = Sha256::new();
    // Operation names are fixed and hold no NUL: the first 0 ends it.
    h.update(op.name.as_bytes());
    h.update([0, super::role_level(op.min_role) as u8, 0]);
    h.update(token.trim().as_bytes());
    h.finalize().into()
}

/// The key of `needs` passed by `principal`'s token under `tier` at
/// `epoch`. Every list is preceded by its length and every part by its
/// length (and each need by its kind), so two different inputs never
/// write the same bytes.
pub(super) fn gates_key(principal: &Principal, tier: &Tier, epoch: u64, needs: &[TierGate]) -> Key {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(&(principal.revocation_ids.len() as u64).to_be_bytes());
    for id in &principal.revocation_ids {
        part(id);
    }
    part(tier.name.as_bytes());
    part(&epoch.to_be_bytes());
    let capabilities = gates::capabilities(tier);
    part(&(capabilities.len() as u64).to_be_bytes());
    for c in capabilities {
        part(c.fact().as_bytes());
    }
    part(&(tier.models.len() as u64).to_be_bytes());
    for m in &tier.models {
        part(m.as_bytes());
    }
    part(&(needs.len() as u64).to_be_bytes());
    for need in needs {
        match need {
            TierGate::Model(m) => {
                part(b"model");
                part(model_family(m).as_bytes());
            }
            TierGate::Feature(c) => {
                part(b"feature");
                part(c.fact().as_bytes());
            }
        }
    }
    h.finalize().into()
}

/// Runs `decide` as of [`REMEMBER`] from now. If that passes, the answer
/// holds all the way there (every time check this server mints is an
/// upper bound) and comes with how long it may be kept. If it fails only
/// by a time check (`expired`), it is decided again as of now and is not
/// to be kept: a token in its last minute, or expired, so costs two
/// runs, each bounded by the authorizer's limits.
pub(super) fn decide_for_a_while<T, E>(
    decide: impl Fn(SystemTime) -> Result<T, E>,
    expired: impl Fn(&E) -> bool,
) -> (Result<T, E>, Option<Until>) {
    let now = SystemTime::now();
    let until = Until::remember_from(now);
    match decide(now + REMEMBER) {
        Ok(answer) => (Ok(answer), Some(until)),
        Err(e) if expired(&e) => (decide(now), None),
        Err(e) => (Err(e), None),
    }
}

/// Until when an entry holds, by both clocks.
#[derive(Clone, Copy)]
pub(super) struct Until {
    instant: Instant,
    wall: SystemTime,
}

impl Until {
    /// [`REMEMBER`] from `wall_now` (the time the answer was decided as of
    /// `wall_now` + [`REMEMBER`]).
    fn remember_from(wall_now: SystemTime) -> Until {
        Until {
            instant: Instant::now() + REMEMBER,
            wall: wall_now + REMEMBER,
        }
    }

    fn holds(&self, now: Instant, wall: SystemTime) -> bool {
        now < self.instant && wall < self.wall
    }
}

struct Entry<V> {
    until: Until,
    tenant: TenantId,
    value: V,
}

struct Entries<V> {
    map: HashMap<Key, Entry<V>>,
    swept: Instant,
}

impl<V> Entries<V> {
    /// Drops expired entries, at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant, wall: SystemTime) {
        if now.duration_since(self.swept) >= SWEEP_EVERY {
            self.swept = now;
            self.map.retain(|_, e| e.until.holds(now, wall));
        }
    }

    /// Drops the entry (of `tenant`, or of anyone) that ends first.
    fn drop_soonest(&mut self, tenant: Option<&TenantId>) {
        let soonest = self
            .map
            .iter()
            .filter(|(_, e)| tenant.is_none_or(|t| &e.tenant == t))
            .min_by_key(|(_, e)| e.until.instant)
            .map(|(k, _)| *k);
        if let Some(k) = soonest {
            self.map.remove(&k);
        }
    }
}

/// Answers kept for a while, by key.
pub(super) struct Remembered<V> {
    entries: Mutex<Entries<V>>,
}

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Remembered {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }
}

/// Principals of tokens verified lately.
pub(super) type Verified = Remembered<Principal>;

/// Job needs that tokens passed lately.
pub(super) type GatesPassed = Remembered<()>;

impl<V: Clone> Remembered<V> {
    /// The answer kept under `key`, while it is still valid.
    pub(super) fn get(&self, key: &Key) -> Option<V> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.sweep(now, wall);
        match entries.map.get(key) {
            Some(e) if e.until.holds(now, wall) => Some(e.value.clone()),
            Some(_) => {
                entries.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value`, an answer about `tenant`'s token, under `key` until
    /// `until`.
    pub(super) fn put(&self, key: Key, tenant: &TenantId, value: V, until: Until) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.sweep(now, wall);
        if !entries.map.contains_key(&key) {
            let own = entries.map.values().filter(|e| &e.tenant == tenant).count();
            if own >= PER_TENANT {
                entries.drop_soonest(Some(tenant));
            } else if entries.map.len() >= CAPACITY {
                entries.map.retain(|_, e| e.until.holds(now, wall));
                if entries.map.len() >= CAPACITY {
                    entries.drop_soonest(None);
                }
            }
        }
        entries.map.insert(
            key,
            Entry {
                until,
                tenant: tenant.clone(),
                value,
            },
        );
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: usize) -> Key {
        Sha256::digest(i.to_be_bytes()).into()
    }

    #[test]
    fn one_tenant_keeps_to_its_share_and_others_keep_theirs() {
        let memo = Remembered::<()>::default();
        let (a, b) = (TenantId::trusted("a"), TenantId::trusted("b"));
        let until = Until::remember_from(SystemTime::now());
        for i in 0..10 {
            memo.put(k(i), &b, (), until);
        }
        for i in 100..100 + 5 * PER_TENANT {
            memo.put(k(i), &a, (), until);
        }
        assert_eq!(memo.len(), PER_TENANT + 10);
        assert!((0..10).all(|i| memo.get(&k(i)).is_some()), "b kept all");
        // The newest of a's are there, not necessarily the oldest.
        assert!(memo.get(&k(100 + 5 * PER_TENANT - 1)).is_some());
    }

    #[test]
    fn a_full_memo_drops_what_ends_first() {
        let memo = Remembered::<()>::default();
        let wall = SystemTime::now();
        let per = CAPACITY / PER_TENANT + 1;
        let mut n = 0;
        for t in 0..per {
            let tenant = TenantId::trusted(format!("t{t}"));
            for _ in 0..PER_TENANT.min(CAPACITY - n) {
                memo.put(k(n), &tenant, (), Until::remember_from(wall));
                n += 1;
            }
        }
        assert_eq!(memo.len(), CAPACITY);
        let late = TenantId::trusted("late");
        memo.put(k(usize::MAX), &late, (), Until::remember_from(wall));
        assert_eq!(memo.len(), CAPACITY);
        assert!(memo.get(&k(usize::MAX)).is_some());
        assert!(memo.get(&k(0)).is_none(), "the first in ends first");
    }

    #[test]
    fn an_entry_ends_by_either_clock() {
        let memo = Remembered::<()>::default();
        let t = TenantId::trusted("t");
        // Decided as of a wall clock already more than a minute back (as
        // after the clock stepped forward): not valid, whatever the
        // monotonic clock says.
        let stepped = SystemTime::now() - REMEMBER - Duration::from_secs(1);
        memo.put(k(1), &t, (), Until::remember_from(stepped));
        assert!(memo.get(&k(1)).is_none());
        memo.put(k(2), &t, (), Until::remember_from(SystemTime::now()));
        assert!(memo.get(&k(2)).is_some());
    }
}
