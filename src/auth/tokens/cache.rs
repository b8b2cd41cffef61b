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
//! remembered that long; one that expires sooner is checked at every
//! request, as before. What can change meanwhile is the store's (a key
//! revoked, sessions ended, a user removed or demoted, the tenant's tier):
//! the caller checks that at every request, remembered or not.
//!
//! Keyed by SHA-256 of what the answer depends on (the operation and the
//! token; for gates, the token's revocation ids, the tier's name, epoch,
//! capabilities and models, and the needs), so the token itself is not
//! kept. Bounded by [`CAPACITY`] entries for all tenants together: when
//! full, expired entries go, and if none had, all of them. A tenant that
//! churns through many keys can at worst make every token pay the full
//! check again, which is what every request paid before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Operation, Principal};
use crate::billing::gates::{self, TierGate};
use crate::billing::{tiers::model_family, Tier};

/// How long a verified token is remembered.
pub(super) const REMEMBER: Duration = Duration::from_secs(60);

/// Entries at most (a principal with its token is a few kilobytes).
const CAPACITY: usize = 2048;

pub(super) type Key = [u8; 32];

/// The key of `token` verified for `op`.
pub(super) fn key(token: &str, op: Operation) -> Key {
    let mut h = Sha256::new();
    h.update(op.name.as_bytes());
    h.update([0, super::role_level(op.min_role) as u8, 0]);
    h.update(token.trim().as_bytes());
    h.finalize().into()
}

/// The key of `needs` passed by `principal`'s token under `tier` at
/// `epoch`. Each part is written with its length, so no two different
/// inputs run together into the same bytes.
pub(super) fn gates_key(principal: &Principal, tier: &Tier, epoch: u64, needs: &[TierGate]) -> Key {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(b"gates");
    for id in &principal.revocation_ids {
        part(id);
    }
    part(tier.name.as_bytes());
    part(&epoch.to_be_bytes());
    for c in gates::capabilities(tier) {
        part(c.fact().as_bytes());
    }
    part(b"models");
    for m in &tier.models {
        part(m.as_bytes());
    }
    part(b"needs");
    for need in needs {
        match need {
            TierGate::Model(m) => part(model_family(m).as_bytes()),
            TierGate::Feature(c) => part(c.fact().as_bytes()),
        }
    }
    h.finalize().into()
}

/// Answers kept for a while, by key.
pub(super) struct Remembered<V> {
    entries: Mutex<HashMap<Key, (Instant, V)>>,
}

impl<V> Default for Remembered<V> {
    fn default() -> Self {
        Remembered {
            entries: Mutex::default(),
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
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some((until, value)) if Instant::now() < *until => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` under `key` until `until`.
    pub(super) fn put(&self, key: Key, value: V, until: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, (until, _)| now < *until);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (until, value));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
