//! Durable state on sled: one narrow module so no sled type leaks into the
//! API or the actors (docs/ARCHITECTURE.md, "Beyond one machine").
//!
//! Every tenant-owned key is `<tenant id>/<row id>`, and every call on
//! tenant-owned data takes a [`TenantId`], which only token verification,
//! signup and the store itself create. Writes the API acknowledges are
//! flushed to disk before the call returns: sled buffers writes otherwise.

mod accounts;
mod commit;
mod files;
mod jobs;
mod keyring;
mod lifecycle;
mod records;
mod reseal;
mod scoped;
mod storage;
mod tenants;
mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use accounts::UserChangeError;
pub use jobs::{NewJob, TranslationLimit};
pub use keyring::{
    master_key_source, read_master_key, write_key_file, MasterKeySource, MASTER_KEY_ENV,
};
pub use murmur_actors::job::{Event, EventType};
pub use murmur_seal::DataKey;
pub use records::*;
use scoped::Scoped;
pub use scoped::{Page, PageRequest};
pub use storage::{QuotaFull, Reservation, ReserveError};
pub use tenants::SubscriptionChange;
pub use webhooks::{
    event_payload, webhook_event_name, Delivery, DeliveryAttempt, DeliveryTarget, JobCallback,
    Webhook, WEBHOOK_EVENTS,
};

/// Version of the on-disk layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored row {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the data directory was written by a newer Murmur (schema {found}, this build reads \
         up to {supported}); upgrade Murmur or point --data-dir elsewhere"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("not found")]
    NotFound,
    #[error("{open} of at most {limit} jobs are queued or running")]
    QueueFull { open: u64, limit: u64 },
    #[error("{used} of {limit} used in {period}")]
    LimitReached {
        used: u64,
        limit: u64,
        period: String,
    },
}

/// A tenant id that came from a verified token (or signup, or an operator):
/// the only key to tenant-owned rows. Request bodies and paths never make
/// one, which is what keeps tenants apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// An id typed by an operator (admin CLI, benchmarks); never from a
    /// request.
    pub fn for_operator(id: &str) -> TenantId {
        TenantId(id.to_string())
    }

    /// Only for ids the server itself vouches for: a verified token's
    /// authority block, a tenant being created, a row read back from the
    /// store, or an operator's command line.
    pub(crate) fn trusted(id: impl Into<String>) -> TenantId {
        TenantId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Handle to the store; cloning is shallow (sled trees are reference
/// counted), so every filter and actor keeps its own clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    data_dir: PathBuf,
    tenants: sled::Tree,
    /// email (lowercased) -> "<tenant>/<user>": login looks users up by
    /// email before any tenant is known.
    emails: sled::Tree,
    /// revocation id (bytes) -> RFC 3339 time of revocation.
    revoked: sled::Tree,
    /// revocation id of an API key's scope block -> "<tenant>/<key>": the
    /// record that the server minted that block (see `auth::tokens`).
    minted_keys: sled::Tree,
    /// tenant id -> RFC 3339 time: tenants whose deletion began and has
    /// not finished (see `lifecycle`).
    tenant_deletions: sled::Tree,
    users: Scoped<User>,
    api_keys: Scoped<ApiKey>,
    files: Scoped<FileRecord>,
    workflows: Scoped<Workflow>,
    jobs: Scoped<Job>,
    /// "<tenant>/<job>" -> the job's last event seq (u64 big-endian).
    event_seq: sled::Tree,
    /// "<tenant>/<job>/" + seq (u64 big-endian) -> event: the durable log.
    events: sled::Tree,
    /// "<tenant>/<YYYY-MM>" -> [`Usage`], changed with the jobs it counts.
    usage: sled::Tree,
    /// tenant id -> its queued or running jobs (u64 big-endian), changed
    /// with the jobs it counts and recounted at start; bounds a tenant's
    /// queue (the tier's `max_queued_jobs`).
    open_jobs: sled::Tree,
    /// tenant id -> [`Subscription`].
    subscriptions: sled::Tree,
    /// RevenueCat event id -> [`BillingEvent`]: the webhook's durable inbox
    /// and its idempotency record.
    billing_events: sled::Tree,
    /// Stored and reserved upload bytes per tenant (the storage quota);
    /// every file row write goes through it.
    ledger: std::sync::Arc<storage::Ledger>,
    /// Tenant data keys (tree `tenant_keys`), for encryption at rest.
    keyring: Arc<keyring::Keyring>,
    /// The tenants' webhook endpoints (sealed: they hold signing secrets).
    webhooks: Scoped<Webhook>,
    /// "<tenant>/<job>" -> sealed [`JobCallback`]: a job's `callback_url`.
    job_callbacks: sled::Tree,
    /// "<tenant>/<delivery>" -> sealed [`Delivery`]: the durable outbox,
    /// written with the events that owe deliveries (see `webhooks`).
    outbox: sled::Tree,
    /// due time (ms, big-endian) + outbox key -> (): the outbox by due time.
    outbox_due: sled::Tree,
    /// "<tenant>/<endpoint>/<attempt>" -> sealed [`DeliveryAttempt`]:
    /// recent attempts per endpoint, bounded.
    delivery_log: sled::Tree,
    /// Rung when deliveries are written, so the worker sends them at once.
    outbox_signal: Arc<tokio::sync::Notify>,
    /// Shares flushes among concurrent writers (see `commit`).
    commit: commit::GroupCommit,
}

/// The calendar month (UTC) usage of `at` is counted in: `YYYY-MM`.
pub fn usage_period(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m").to_string()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store rows always serialise")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn scoped_key(tenant: &TenantId, id: &str) -> Vec<u8> {
    format!("{}/{}", tenant.as_str(), id).into_bytes()
}

fn event_key(tenant: &TenantId, job_id: &str, seq: u64) -> Vec<u8> {
    let mut key = format!("{}/{}/", tenant.as_str(), job_id).into_bytes();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Sled(e),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl Store {
    /// Opens (or creates) the store under `data_dir` with the master key
    /// from the environment or `<data_dir>/master_key` (see
    /// [`Store::open_with_master_key`]).
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_master_key(data_dir, None)
    }

    /// Opens (or creates) the store under `data_dir`, checks the schema
    /// version, loads the master key (`MURMUR_MASTER_KEY`, else
    /// `master_key_file`, else `<data_dir>/master_key`; created only for a
    /// store without tenant keys) and checks that it wrapped every tenant
    /// key, and removes upload leftovers of a previous crash.
    pub fn open_with_master_key(
        data_dir: &Path,
        master_key_file: Option<&Path>,
    ) -> Result<Store, StoreError> {
        Store::open_inner(data_dir, master_key_file, None)
    }

    /// Opens the store to rotate its master key to `new` (see
    /// [`Store::rotate_master_key`]): tenant keys already wrapped by `new`,
    /// by an interrupted rotation, are accepted.
    pub fn open_for_rotation(
        data_dir: &Path,
        master_key_file: Option<&Path>,
        new: &DataKey,
    ) -> Result<Store, StoreError> {
        Store::open_inner(data_dir, master_key_file, Some(new))
    }

    fn open_inner(
        data_dir: &Path,
        master_key_file: Option<&Path>,
        rotating_to: Option<&DataKey>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        // Private whoever made it: it holds password hashes and tenants' audio.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let db = open_sled(&data_dir.join("db"))?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        key: "meta/schema_version".into(),
                        reason: "not a 4-byte version".into(),
                    })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Older schemas are migrated here when there are any.
            }
        }
        let key_tree = db.open_tree("tenant_keys")?;
        let source = master_key_source(master_key_file, data_dir);
        let master = match (read_master_key(&source)?, &source) {
            (Some(key), _) => key,
            // A new master key file only while no tenant key exists.
            (None, MasterKeySource::File(path)) if key_tree.is_empty() => {
                let key = DataKey::generate();
                write_key_file(path, &key)?;
                tracing::info!(path = %path.display(), id = %key.id(), "created a master key");
                key
            }
            (None, _) => {
                return Err(StoreError::MasterKey(format!(
                    "{source} does not exist, and tenant keys were wrapped by another master \
                     key: give the server the key it was using"
                )))
            }
        };
        let keyring = Arc::new(keyring::Keyring::open(key_tree, master, rotating_to)?);
        let files = Scoped::open_sealed(&db, "files", keyring.clone())?;
        let store = Store {
            data_dir: data_dir.to_path_buf(),
            tenants: db.open_tree("tenants")?,
            emails: db.open_tree("user_emails")?,
            revoked: db.open_tree("revoked")?,
            minted_keys: db.open_tree("minted_keys")?,
            tenant_deletions: db.open_tree("tenant_deletions")?,
            users: Scoped::open(&db, "users")?,
            api_keys: Scoped::open(&db, "api_keys")?,
            ledger: storage::Ledger::new(files.clone()),
            files,
            workflows: Scoped::open_sealed(&db, "workflows", keyring.clone())?,
            jobs: Scoped::open_sealed(&db, "jobs", keyring.clone())?,
            webhooks: Scoped::open_sealed(&db, "webhooks", keyring.clone())?,
            keyring,
            event_seq: db.open_tree("job_event_seq")?,
            events: db.open_tree("job_events")?,
            usage: db.open_tree("usage")?,
            open_jobs: db.open_tree("open_jobs")?,
            subscriptions: db.open_tree("subscriptions")?,
            billing_events: db.open_tree("billing_events")?,
            job_callbacks: db.open_tree("job_callbacks")?,
            outbox: db.open_tree("webhook_outbox")?,
            outbox_due: db.open_tree("webhook_outbox_due")?,
            delivery_log: db.open_tree("webhook_delivery_log")?,
            outbox_signal: Arc::new(tokio::sync::Notify::new()),
            commit: commit::GroupCommit::new(db.clone()),
            db,
        };
        store.sweep_partial_uploads()?;
        store.record_minted_keys()?;
        store.sweep_orphans()?;
        store.recount_open_jobs()?;
        Ok(store)
    }

    /// Makes every write so far durable. Called before a write is
    /// acknowledged to a client.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Concurrent callers share one flush (group commit, see `commit`).
        // Not sled's `flush_async`: it runs the flush on sled's own small
        // thread pool, which also performs the log writes the flush waits
        // for, and under a few dozen concurrent flushes every pool thread
        // waits and nothing writes (a deadlock the orchestrator benchmark
        // hit at ~1000 jobs). The group's flush runs on tokio's blocking
        // pool and leaves sled's threads free.
        self.commit.flush().await
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Bytes of sled's files on disk, for metrics.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    // ---- keys ------------------------------------------------------------

    /// The tenant's data key, which seals its uploads and artifacts (made
    /// on first use for a tenant older than encryption at rest).
    pub fn data_key(&self, tenant: &TenantId) -> Result<Arc<DataKey>, StoreError> {
        self.keyring.key(tenant.as_str())
    }

    /// A server secret (the token signing key) sealed by the master key,
    /// bound to `context`, as text for a file.
    pub fn seal_secret(&self, context: &str, plain: &[u8]) -> String {
        self.keyring.seal_secret(context, plain)
    }

    /// What [`Store::seal_secret`] sealed; `None` when `text` was written
    /// before secrets were sealed.
    pub fn open_secret(&self, context: &str, text: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.keyring.open_secret(context, text)
    }

    /// The id (a hash, not the key) of the master key in use.
    pub fn master_key_id(&self) -> String {
        self.keyring.master_id()
    }

    /// Rewraps every tenant key under `new` (see `murmur admin
    /// rotate-master-key`); answers how many were rewrapped.
    pub fn rotate_master_key(&self, new: DataKey) -> Result<usize, StoreError> {
        self.keyring.rotate(new)
    }

    async fn put_row<T: Serialize + DeserializeOwned>(
        &self,
        tree: &Scoped<T>,
        tenant: &TenantId,
        id: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        tree.put(tenant, id, value)?;
        self.flush().await
    }
}

/// Opens the sled database at `path`. sled lets one process hold it, and
/// lets go a moment after the last handle is dropped (its I/O threads
/// finish first), so a store reopened at once (a restart within one
/// process, a process taking over from one that is exiting) waits up to
/// 3 s for the lock instead of failing.
pub(crate) fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_actors::params::JobParams;

    /// A queued job of `tenant` (the store's tests, and its modules').
    pub(super) fn job(tenant: &TenantId, id: &str, params: JobParams) -> Job {
        Job::queued(
            id.into(),
            tenant.as_str().into(),
            "u1".into(),
            "f1".into(),
            None,
            params,
        )
    }
}
