//! Brakes on password work, which a client can ask for without a token:
//! at most `auth.max_concurrent_hashes` Argon2 runs at once (each takes the
//! configured memory, 19 MiB by default, and a core for tens of
//! milliseconds), and token buckets on login attempts per client address
//! and on failed logins per (account, address).
//!
//! Hashes run on that many dedicated threads rather than tokio's blocking
//! pool: the allocator keeps a freed 19 MiB block in the arena of the
//! thread that used it, so hashes spread over many pool threads kept
//! ~400 MiB resident after 64 logins even two at a time; a few fixed
//! threads reuse their few blocks.
//!
//! Failures are counted per account *and* address so that someone guessing
//! one account's password cannot lock its owner out from elsewhere, nor
//! lock out other accounts; the per-address bucket bounds how fast any one
//! client may try at all. Limits: buckets live in memory (a restart forgets
//! them), and the address is the TCP peer's, so behind a reverse proxy all
//! clients share the proxy's bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::passwords::{self, PasswordCost};

/// Most buckets one limiter keeps; beyond it full (idle) buckets are
/// dropped first, then arbitrary ones, so memory stays bounded whatever
/// number of addresses or emails a client makes up.
const MAX_BUCKETS: usize = 65_536;

/// The settings of `[auth]` these brakes use.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Argon2 runs at once; 0 means one per core.
    pub max_concurrent_hashes: usize,
    pub login_attempts_per_minute_per_address: u32,
    pub login_failures_per_minute_per_account: u32,
}

/// Shared by every request (in `AppState`); cheap to reach through an Arc.
pub struct AuthLimits {
    /// Work for the hashing threads; they stop when this is dropped.
    hashes: Mutex<std::sync::mpsc::Sender<HashJob>>,
    addresses: Buckets,
    accounts: Buckets,
}

/// A login refused for now; try again after `retry_after`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimited {
    pub retry_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password hashing threads are gone (shutting down, or one panicked)")]
    Closed,
}

/// One hash or verification, run on a hashing thread.
type HashJob = Box<dyn FnOnce(PasswordCost) + Send>;

impl AuthLimits {
    pub fn new(settings: LimitSettings, cost: PasswordCost) -> AuthLimits {
        let threads = match settings.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("murmur-hash-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(cost),
                        Err(_) => return, // AuthLimits dropped
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        AuthLimits {
            hashes: Mutex::new(tx),
            addresses: Buckets::per_minute(settings.login_attempts_per_minute_per_address),
            accounts: Buckets::per_minute(settings.login_failures_per_minute_per_account),
        }
    }

    /// Runs `work` on a hashing thread when one is free (jobs wait in
    /// order; each waiting request holds one of the server's connections,
    /// so the queue is bounded by `server.max_connections`).
    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce(PasswordCost) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move |cost| {
            let _ = reply.send(work(cost));
        });
        self.hashes
            .lock()
            .map_err(|_| HashError::Closed)?
            .send(job)
            .map_err(|_| HashError::Closed)?;
        answer.await.map_err(|_| HashError::Closed)
    }

    /// An Argon2id PHC string of `password`, for storage.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.hashing(move |cost| passwords::hash(&password, cost))
            .await
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown
    /// user) it verifies against a hash nobody knows the password of, so
    /// the time taken does not tell which emails exist.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        self.hashing(move |cost| {
            let stored = stored.unwrap_or_else(|| unknown_user_hash(cost));
            passwords::verify(&password, &stored)
        })
        .await
    }

    /// Counts one login attempt from `addr`, and refuses it when that
    /// address or this account from it has used its budget.
    pub fn admit_login(&self, addr: Option<IpAddr>, email: &str) -> Result<(), RateLimited> {
        let addr = address_key(addr);
        self.accounts.check(&account_key(&addr, email))?;
        self.addresses.take(&addr)
    }

    /// Counts one signup attempt from `addr` against the same budget as
    /// logins (each runs an Argon2 hash), refusing it when none is left.
    pub fn admit_signup(&self, addr: Option<IpAddr>) -> Result<(), RateLimited> {
        self.addresses.take(&address_key(addr))
    }

    /// Counts a failed login against the account from this address.
    pub fn login_failed(&self, addr: Option<IpAddr>, email: &str) {
        let _ = self.accounts.take(&account_key(&address_key(addr), email));
    }

    /// A successful login clears the account's failures from this address.
    pub fn login_succeeded(&self, addr: Option<IpAddr>, email: &str) {
        self.accounts
            .forget(&account_key(&address_key(addr), email));
    }
}

fn address_key(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

fn account_key(addr: &str, email: &str) -> String {
    format!("{}\n{addr}", email.trim().to_lowercase())
}

/// An Argon2id hash of a random password nobody knows, made once.
fn unknown_user_hash(cost: PasswordCost) -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let secret = hex::encode(rand::random::<[u8; 32]>());
        passwords::hash(&secret, cost)
    })
    .clone()
}

/// Token buckets by key: each holds up to `burst` tokens and regains
/// `burst` per minute.
struct Buckets {
    burst: f64,
    per_second: f64,
    /// A `std` mutex: tiny critical sections, never held across `.await`.
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Buckets {
    fn per_minute(n: u32) -> Buckets {
        let burst = f64::from(n.max(1));
        Buckets {
            burst,
            per_second: burst / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket of `key` refilled to now (not stored).
    fn current(&self, map: &HashMap<String, Bucket>, key: &str, now: Instant) -> Bucket {
        match map.get(key) {
            Some(b) => Bucket {
                tokens: (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_second)
                    .min(self.burst),
                at: now,
            },
            None => Bucket {
                tokens: self.burst,
                at: now,
            },
        }
    }

    fn refused(&self, bucket: Bucket) -> RateLimited {
        let missing = (1.0 - bucket.tokens).max(0.0);
        RateLimited {
            retry_after: Duration::from_secs_f64(missing / self.per_second),
        }
    }

    /// Refuses when `key` has no token left, without taking one.
    fn check(&self, key: &str) -> Result<(), RateLimited> {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = self.current(&map, key, Instant::now());
        if bucket.tokens < 1.0 {
            return Err(self.refused(bucket));
        }
        Ok(())
    }

    /// Takes a token of `key`, or refuses when there is none.
    fn take(&self, key: &str) -> Result<(), RateLimited> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut bucket = self.current(&map, key, now);
        if bucket.tokens < 1.0 {
            return Err(self.refused(bucket));
        }
        bucket.tokens -= 1.0;
        if !map.contains_key(key) && map.len() >= MAX_BUCKETS {
            self.make_room(&mut map, now);
        }
        map.insert(key.to_string(), bucket);
        Ok(())
    }

    fn forget(&self, key: &str) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }

    /// Drops buckets that have refilled (as good as absent), then, if the
    /// table is still full, an arbitrary tenth of it.
    fn make_room(&self, map: &mut HashMap<String, Bucket>, now: Instant) {
        let (burst, rate) = (self.burst, self.per_second);
        map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        if map.len() >= MAX_BUCKETS {
            let victims: Vec<String> = map.keys().take(MAX_BUCKETS / 10).cloned().collect();
            for k in victims {
                map.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refuse_when_empty_and_keep_keys_apart() {
        let b = Buckets::per_minute(2);
        assert!(b.take("a").is_ok());
        assert!(b.take("a").is_ok());
        let refused = b.take("a").expect_err("a is empty");
        assert!(refused.retry_after > Duration::ZERO);
        assert!(refused.retry_after <= Duration::from_secs(30));
        assert!(b.check("a").is_err());
        assert!(b.take("b").is_ok(), "another key has its own bucket");
        b.forget("a");
        assert!(b.take("a").is_ok(), "forgotten keys start full");
    }

    #[test]
    fn failures_count_per_account_and_address() {
        let limits = AuthLimits::new(
            LimitSettings {
                max_concurrent_hashes: 1,
                login_attempts_per_minute_per_address: 100,
                login_failures_per_minute_per_account: 2,
            },
            PasswordCost {
                memory_kib: 1024,
                iterations: 1,
            },
        );
        let x = Some(IpAddr::from([10, 0, 0, 1]));
        let y = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..2 {
            limits.admit_login(x, "a@x.example").unwrap();
            limits.login_failed(x, "a@x.example");
        }
        assert!(limits.admit_login(x, "A@x.example ").is_err());
        assert!(limits.admit_login(y, "a@x.example").is_ok());
        assert!(limits.admit_login(x, "b@x.example").is_ok());
    }
}
